//! The EC2 API's Elastic IPs over floating IPs, on the in-process harness
//! (no socket, no VM): AllocateAddress from the external network (the
//! only one, or the one NetworkBorderGroup names), AssociateAddress with
//! and without AllowReassociation, DisassociateAddress, ReleaseAddress,
//! DescribeAddresses by id, address and filter, DescribeInstances' public
//! address, the error codes EC2 uses, the quota, and tenancy: another
//! project's address is not found, nor is its instance.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use axum::http::StatusCode;
use common::ec2::*;
use common::T;
use serde_json::json;

fn external(name: &str, cidr: &str, gateway: &str, pool: &str) -> serde_json::Value {
    json!({"name": name, "cidr": cidr, "external": {"interface": "lan", "gateway": gateway, "pool": pool}})
}

async fn launch(t: &T, token: &str, network: &str) -> String {
    let body = json!({"image": "tiny", "vcpus": 1, "memory_mib": 128, "disk_gib": 1, "networks": [network]});
    t.ok("POST", "/api/v1/instances", token, Some(body)).await["id"].as_str().unwrap().to_string()
}

fn bad(got: (StatusCode, String), code: &str) -> String {
    is_error(got, StatusCode::BAD_REQUEST, code)
}

#[tokio::test]
async fn elastic_ips_allocate_associate_describe_and_release_within_the_project() {
    let t = T::new().await;
    t.add_bridging_host(&["lan"]).await;
    let admin = t.admin.clone();
    let alice = t.user("alice", "team-a", "member").await;
    let bob = t.user("bob", "team-b", "member").await;
    let (ka, kb) = (key(&t, &alice).await, key(&t, &bob).await);

    // No external network yet: nothing to allocate from, said so.
    let body =
        bad(ec2(&t, &ka, &[("Action", "AllocateAddress"), ("Domain", "vpc")]).await, "InsufficientAddressCapacity");
    assert!(body.contains("no external network"), "{body}");
    t.ok(
        "POST",
        "/api/v1/networks",
        &admin,
        Some(external("lan", "192.168.50.0/24", "192.168.50.1", "192.168.50.100-192.168.50.103")),
    )
    .await;

    // AllocateAddress: the one external network is the pool.
    bad(ec2(&t, &ka, &[("Action", "AllocateAddress"), ("Domain", "standard")]).await, "InvalidParameterValue");
    let xml = ok(&t, &ka, &[("Action", "AllocateAddress"), ("Domain", "vpc")]).await;
    assert_eq!(one(&xml, "publicIp"), "192.168.50.101");
    assert_eq!(one(&xml, "domain"), "vpc");
    assert_eq!(one(&xml, "networkBorderGroup"), "lan");
    let alloc = one(&xml, "allocationId");
    // The allocation id is the floating IP's, with another prefix.
    let fips = t.ok("GET", "/api/v1/floating-ips", &alice, None).await;
    assert_eq!(fips[0]["id"].as_str().unwrap().trim_start_matches("fip-"), alloc.trim_start_matches("eipalloc-"));

    // Two external networks: the request must name one.
    t.ok(
        "POST",
        "/api/v1/networks",
        &admin,
        Some(external("wan", "198.51.100.0/24", "198.51.100.1", "198.51.100.10-198.51.100.20")),
    )
    .await;
    let body = bad(ec2(&t, &ka, &[("Action", "AllocateAddress")]).await, "InvalidParameterValue");
    assert!(body.contains("lan, wan") && body.contains("NetworkBorderGroup"), "{body}");
    let body = bad(
        ec2(&t, &ka, &[("Action", "AllocateAddress"), ("NetworkBorderGroup", "moon")]).await,
        "InvalidParameterValue",
    );
    assert!(body.contains("moon") && body.contains("lan, wan"), "{body}");
    let xml = ok(&t, &ka, &[("Action", "AllocateAddress"), ("NetworkBorderGroup", "wan")]).await;
    assert_eq!(one(&xml, "publicIp"), "198.51.100.11");
    let wan_alloc = one(&xml, "allocationId");

    // Alice's instances on her private network; Bob's on his.
    t.ok("POST", "/api/v1/networks", &alice, Some(json!({"name": "blue", "cidr": "10.30.0.0/24"}))).await;
    t.ok("POST", "/api/v1/networks", &bob, Some(json!({"name": "green", "cidr": "10.31.0.0/24"}))).await;
    let i1 = launch(&t, &alice, "blue").await;
    let i2 = launch(&t, &alice, "blue").await;
    let bobs = launch(&t, &bob, "green").await;

    // Bob sees none of Alice's addresses, by id or address, and can use none.
    bad(
        ec2(&t, &kb, &[("Action", "DescribeAddresses"), ("AllocationId.1", &alloc)]).await,
        "InvalidAllocationID.NotFound",
    );
    bad(
        ec2(&t, &kb, &[("Action", "DescribeAddresses"), ("PublicIp.1", "192.168.50.101")]).await,
        "InvalidAddress.NotFound",
    );
    let xml = ok(&t, &kb, &[("Action", "DescribeAddresses")]).await;
    assert!(all(&xml, "allocationId").is_empty(), "{xml}");
    bad(
        ec2(&t, &kb, &[("Action", "AssociateAddress"), ("AllocationId", &alloc), ("InstanceId", &bobs)]).await,
        "InvalidAllocationID.NotFound",
    );
    bad(ec2(&t, &kb, &[("Action", "ReleaseAddress"), ("AllocationId", &alloc)]).await, "InvalidAllocationID.NotFound");
    bad(ec2(&t, &kb, &[("Action", "ReleaseAddress"), ("PublicIp", "192.168.50.101")]).await, "InvalidAddress.NotFound");
    // Nor may Alice point hers at Bob's instance.
    bad(
        ec2(&t, &ka, &[("Action", "AssociateAddress"), ("AllocationId", &alloc), ("InstanceId", &bobs)]).await,
        "InvalidInstanceID.NotFound",
    );
    bad(
        ec2(&t, &ka, &[("Action", "DescribeAddresses"), ("AllocationId.1", "eipalloc-nothex")]).await,
        "InvalidAllocationID.Malformed",
    );

    // Associated: the address names the instance, its NIC and private address.
    let xml = ok(&t, &ka, &[("Action", "AssociateAddress"), ("AllocationId", &alloc), ("InstanceId", &i1)]).await;
    let assoc = one(&xml, "associationId");
    assert_eq!(assoc.trim_start_matches("eipassoc-"), alloc.trim_start_matches("eipalloc-"));
    let xml = ok(&t, &ka, &[("Action", "DescribeAddresses"), ("AllocationId.1", &alloc)]).await;
    assert_eq!(all(&xml, "instanceId"), [i1.as_str()]);
    assert_eq!(one(&xml, "associationId"), assoc);
    assert_eq!(one(&xml, "privateIpAddress"), "10.30.0.2");
    let eni = one(&xml, "networkInterfaceId");
    assert_eq!(eni, format!("eni-{}0", i1.trim_start_matches("i-")));
    // DescribeInstances: the public address, on the instance and its NIC.
    let xml = ok(&t, &ka, &[("Action", "DescribeInstances"), ("InstanceId.1", &i1)]).await;
    assert_eq!(one(&xml, "ipAddress"), "192.168.50.101");
    assert!(xml.contains("<association><publicIp>192.168.50.101</publicIp>"), "{xml}");
    let xml = ok(
        &t,
        &ka,
        &[("Action", "DescribeInstances"), ("Filter.1.Name", "ip-address"), ("Filter.1.Value.1", "192.168.50.101")],
    )
    .await;
    assert_eq!(all(&xml, "instanceId"), [i1.as_str()]);
    let xml = ok(&t, &ka, &[("Action", "DescribeInstances"), ("InstanceId.1", &i2)]).await;
    assert!(all(&xml, "ipAddress").is_empty(), "{xml}");

    // Moving it needs AllowReassociation.
    let body = bad(
        ec2(&t, &ka, &[("Action", "AssociateAddress"), ("AllocationId", &alloc), ("InstanceId", &i2)]).await,
        "Resource.AlreadyAssociated",
    );
    assert!(body.contains(&i1) && body.contains("AllowReassociation"), "{body}");
    ok(
        &t,
        &ka,
        &[
            ("Action", "AssociateAddress"),
            ("AllocationId", &alloc),
            ("InstanceId", &i2),
            ("AllowReassociation", "true"),
        ],
    )
    .await;
    let xml = ok(&t, &ka, &[("Action", "DescribeAddresses"), ("PublicIp.1", "192.168.50.101")]).await;
    assert_eq!(all(&xml, "instanceId"), [i2.as_str()]);
    // By network interface: the wan address goes to i2, whose lan address
    // is then disassociated (and stays allocated), as on EC2.
    let i2_eni = format!("eni-{}0", i2.trim_start_matches("i-"));
    ok(&t, &ka, &[("Action", "AssociateAddress"), ("AllocationId", &wan_alloc), ("NetworkInterfaceId", &i2_eni)]).await;
    let xml = ok(&t, &ka, &[("Action", "DescribeAddresses")]).await;
    assert_eq!(all(&xml, "publicIp"), ["192.168.50.101", "198.51.100.11"]);
    assert_eq!(all(&xml, "instanceId"), [i2.as_str()], "{xml}");
    bad(
        ec2(&t, &ka, &[("Action", "AssociateAddress"), ("AllocationId", &alloc), ("NetworkInterfaceId", "eni-zz")])
            .await,
        "InvalidNetworkInterfaceID.Malformed",
    );
    bad(
        ec2(
            &t,
            &ka,
            &[("Action", "AssociateAddress"), ("AllocationId", &alloc), ("InstanceId", "i-0000000000000000f")],
        )
        .await,
        "InvalidInstanceID.NotFound",
    );
    ok(&t, &ka, &[("Action", "AssociateAddress"), ("PublicIp", "192.168.50.101"), ("InstanceId", &i1)]).await;

    // Filters, each of EC2's; a tag filter matches none (addresses have no tags).
    let (tr, kr) = (&t, &ka);
    let by = |name: &'static str, value: String| async move {
        let xml =
            ok(tr, kr, &[("Action", "DescribeAddresses"), ("Filter.1.Name", name), ("Filter.1.Value.1", &value)]).await;
        all(&xml, "publicIp")
    };
    assert_eq!(by("instance-id", i1.clone()).await, ["192.168.50.101"]);
    assert_eq!(by("association-id", assoc.clone()).await, ["192.168.50.101"]);
    assert_eq!(by("allocation-id", wan_alloc.clone()).await, ["198.51.100.11"]);
    assert_eq!(by("public-ip", "198.51.*".into()).await, ["198.51.100.11"]);
    assert_eq!(by("domain", "vpc".into()).await.len(), 2);
    assert_eq!(by("network-border-group", "lan".into()).await, ["192.168.50.101"]);
    assert_eq!(by("private-ip-address", "10.30.0.2".into()).await, ["192.168.50.101"]);
    assert_eq!(by("network-interface-id", i2_eni.clone()).await, ["198.51.100.11"]);
    assert!(by("tag:Name", "web".into()).await.is_empty());
    bad(
        ec2(&t, &ka, &[("Action", "DescribeAddresses"), ("Filter.1.Name", "colour"), ("Filter.1.Value.1", "x")]).await,
        "InvalidParameterValue",
    );

    // Release is refused while associated; disassociation is idempotent.
    bad(ec2(&t, &ka, &[("Action", "ReleaseAddress"), ("AllocationId", &alloc)]).await, "InvalidIPAddress.InUse");
    bad(
        ec2(&t, &kb, &[("Action", "DisassociateAddress"), ("AssociationId", &assoc)]).await,
        "InvalidAssociationID.NotFound",
    );
    bad(
        ec2(&t, &ka, &[("Action", "DisassociateAddress"), ("AssociationId", "eipassoc-1")]).await,
        "InvalidAssociationID.Malformed",
    );
    ok(&t, &ka, &[("Action", "DisassociateAddress"), ("AssociationId", &assoc)]).await;
    ok(&t, &ka, &[("Action", "DisassociateAddress"), ("AssociationId", &assoc)]).await;
    ok(&t, &ka, &[("Action", "DisassociateAddress"), ("PublicIp", "198.51.100.11")]).await;
    let xml = ok(&t, &ka, &[("Action", "DescribeAddresses")]).await;
    assert!(all(&xml, "instanceId").is_empty() && all(&xml, "associationId").is_empty(), "{xml}");
    let xml = ok(&t, &ka, &[("Action", "DescribeInstances"), ("InstanceId.1", &i1)]).await;
    assert!(all(&xml, "ipAddress").is_empty() && !xml.contains("<association>"), "{xml}");
    ok(&t, &ka, &[("Action", "ReleaseAddress"), ("AllocationId", &alloc)]).await;
    ok(&t, &ka, &[("Action", "ReleaseAddress"), ("PublicIp", "198.51.100.11")]).await;
    bad(
        ec2(&t, &ka, &[("Action", "DescribeAddresses"), ("AllocationId.1", &alloc)]).await,
        "InvalidAllocationID.NotFound",
    );
    assert_eq!(t.ok("GET", "/api/v1/floating-ips", &alice, None).await, json!([]));

    // The quota: AddressLimitExceeded once the project holds its share.
    t.ok("PUT", "/api/v1/projects/team-a/quota", &admin, Some(json!({"floating_ips": 1}))).await;
    ok(&t, &ka, &[("Action", "AllocateAddress"), ("NetworkBorderGroup", "lan")]).await;
    let body = bad(
        ec2(&t, &ka, &[("Action", "AllocateAddress"), ("NetworkBorderGroup", "lan")]).await,
        "AddressLimitExceeded",
    );
    assert!(body.contains("quota"), "{body}");
}
