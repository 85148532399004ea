//! Networks as the EC2 API's VPCs and subnets, and the default network,
//! through the real router on the simulated cloud (no socket, no VM):
//! CreateVpc, DescribeVpcs, DeleteVpc, CreateSubnet, DescribeSubnets,
//! DeleteSubnet with their error codes and tenancy; the default VPC made
//! on first use, once; RunInstances on a subnet with a private address;
//! DescribeInstances' VPC fields; egress rules; and the REST launch that
//! joins the default network where a host can bridge, and only there.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use axum::http::StatusCode;
use common::ec2::*;
use common::T;
use nubo_api::ids::HostId;
use serde_json::{json, Value};

/// A host that joined and registered with an underlay (it runs private
/// networks); its id.
async fn add_bridging_host(t: &T, name: &str, underlay: &str) -> String {
    let (join, _) = t.ctx.store.create_join_token(60_000).await.unwrap();
    let id = HostId::generate();
    let v = t.ok("POST", "/api/v1/agent/join", "", Some(json!({"join_token": join, "host_id": id}))).await;
    let cred = v["credential"].as_str().unwrap().to_string();
    let reg = json!({"host_id": id, "name": name, "accel": "tcg", "vcpus": 64, "memory_mib": 262144,
                     "disk_gib": 1000, "underlay": underlay});
    t.ok("POST", "/api/v1/agent/register", &cred, Some(reg)).await;
    id.to_string()
}

fn launch_body(networks: &[&str]) -> Value {
    json!({"image": "tiny", "vcpus": 1, "memory_mib": 64, "disk_gib": 1, "networks": networks})
}

#[tokio::test]
async fn vpcs_and_subnets_map_networks_with_errors_and_tenancy() {
    let t = T::new().await;
    let alice = t.user("alice", "proj-a", "member").await;
    let bob = t.user("bob", "proj-b", "member").await;
    let (ka, kb) = (key(&t, &alice).await, key(&t, &bob).await);

    // CreateVpc: a network named by its Name tag, without its subnet yet.
    let xml = ok(
        &t,
        &ka,
        &[
            ("Action", "CreateVpc"),
            ("CidrBlock", "10.40.0.0/24"),
            ("TagSpecification.1.ResourceType", "vpc"),
            ("TagSpecification.1.Tag.1.Key", "Name"),
            ("TagSpecification.1.Tag.1.Value", "web"),
        ],
    )
    .await;
    assert!(xml.contains("<vpc><vpcId>vpc-"), "{xml}");
    let vpc = one(&xml, "vpcId");
    assert_eq!(one(&xml, "isDefault"), "false");
    assert_eq!(one(&xml, "cidrBlock"), "10.40.0.0/24");
    let nets = t.ok("GET", "/api/v1/networks", &alice, None).await;
    let net = &nets.as_array().unwrap()[0];
    assert_eq!(net["name"], "web");
    assert_eq!(net["is_default"], false);
    // The ids are the network's, with another prefix.
    assert_eq!(net["id"].as_str().unwrap().trim_start_matches("net-"), vpc.trim_start_matches("vpc-"));
    // Without a Name tag the network is named after its VPC id.
    let xml2 = ok(&t, &ka, &[("Action", "CreateVpc"), ("CidrBlock", "10.41.0.0/24")]).await;
    let vpc2 = one(&xml2, "vpcId");
    let nets = t.ok("GET", "/api/v1/networks", &alice, None).await;
    assert!(nets.as_array().unwrap().iter().any(|n| n["name"] == vpc2.as_str()), "{nets}");

    // DescribeVpcs: by id, by filters (cidr, tag, is-default).
    let xml = ok(&t, &ka, &[("Action", "DescribeVpcs")]).await;
    assert_eq!(all(&xml, "vpcId").len(), 2, "{xml}");
    let xml = ok(&t, &ka, &[("Action", "DescribeVpcs"), ("VpcId.1", &vpc)]).await;
    assert_eq!(all(&xml, "vpcId"), [vpc.as_str()]);
    assert_eq!(all(&xml, "value"), ["web"]);
    let by = |name: &'static str, value: &'static str| {
        [("Action", "DescribeVpcs"), ("Filter.1.Name", name), ("Filter.1.Value.1", value)]
    };
    assert_eq!(all(&ok(&t, &ka, &by("cidr", "10.41.0.0/24")).await, "vpcId"), [vpc2.as_str()]);
    assert_eq!(all(&ok(&t, &ka, &by("tag:Name", "we*")).await, "vpcId"), [vpc.as_str()]);
    assert_eq!(all(&ok(&t, &ka, &by("is-default", "false")).await, "vpcId").len(), 2);
    let e = is_error(ec2(&t, &ka, &by("color", "red")).await, StatusCode::BAD_REQUEST, "InvalidParameterValue");
    assert!(e.contains("is-default"), "{e}");

    // Malformed and unknown ids; another project's VPC does not exist.
    let e = is_error(
        ec2(&t, &ka, &[("Action", "DescribeVpcs"), ("VpcId.1", "vpc-nothex")]).await,
        StatusCode::BAD_REQUEST,
        "InvalidVpcID.Malformed",
    );
    assert!(e.contains("vpc-nothex"), "{e}");
    let unknown = "vpc-0123456789abcdef0";
    is_error(
        ec2(&t, &ka, &[("Action", "DescribeVpcs"), ("VpcId.1", unknown)]).await,
        StatusCode::BAD_REQUEST,
        "InvalidVpcID.NotFound",
    );
    is_error(
        ec2(&t, &kb, &[("Action", "DescribeVpcs"), ("VpcId.1", &vpc)]).await,
        StatusCode::BAD_REQUEST,
        "InvalidVpcID.NotFound",
    );
    is_error(
        ec2(&t, &kb, &[("Action", "DeleteVpc"), ("VpcId", &vpc)]).await,
        StatusCode::BAD_REQUEST,
        "InvalidVpcID.NotFound",
    );
    is_error(
        ec2(&t, &kb, &[("Action", "CreateSubnet"), ("VpcId", &vpc), ("CidrBlock", "10.40.0.0/24")]).await,
        StatusCode::BAD_REQUEST,
        "InvalidVpcID.NotFound",
    );
    assert!(all(&ok(&t, &kb, &[("Action", "DescribeVpcs")]).await, "vpcId").is_empty());
    is_error(
        ec2(&t, &ka, &[("Action", "CreateVpc"), ("CidrBlock", "10.40.0.0/8")]).await,
        StatusCode::BAD_REQUEST,
        "InvalidVpc.Range",
    );

    // No subnet until CreateSubnet, which takes the VPC's range and no other.
    let subnet = vpc.replacen("vpc-", "subnet-", 1);
    assert!(all(&ok(&t, &ka, &[("Action", "DescribeSubnets")]).await, "subnetId").is_empty());
    is_error(
        ec2(&t, &ka, &[("Action", "DescribeSubnets"), ("SubnetId.1", &subnet)]).await,
        StatusCode::BAD_REQUEST,
        "InvalidSubnetID.NotFound",
    );
    let e = is_error(
        ec2(&t, &ka, &[("Action", "CreateSubnet"), ("VpcId", &vpc), ("CidrBlock", "10.40.0.0/25")]).await,
        StatusCode::BAD_REQUEST,
        "InvalidParameterValue",
    );
    assert!(e.contains("one subnet") && e.contains("10.40.0.0/24"), "{e}");
    let xml = ok(
        &t,
        &ka,
        &[
            ("Action", "CreateSubnet"),
            ("VpcId", &vpc),
            ("CidrBlock", "10.40.0.0/24"),
            ("TagSpecification.1.ResourceType", "subnet"),
            ("TagSpecification.1.Tag.1.Key", "tier"),
            ("TagSpecification.1.Tag.1.Value", "front"),
        ],
    )
    .await;
    assert!(xml.contains("<subnet><subnetId>"), "{xml}");
    assert_eq!(one(&xml, "subnetId"), subnet);
    assert_eq!(one(&xml, "vpcId"), vpc);
    assert_eq!(one(&xml, "availableIpAddressCount"), "253");
    assert_eq!(one(&xml, "defaultForAz"), "false");
    let e = is_error(
        ec2(&t, &ka, &[("Action", "CreateSubnet"), ("VpcId", &vpc), ("CidrBlock", "10.40.0.0/24")]).await,
        StatusCode::BAD_REQUEST,
        "InvalidSubnet.Conflict",
    );
    assert!(e.contains("one subnet"), "{e}");
    let xml =
        ok(&t, &ka, &[("Action", "DescribeSubnets"), ("Filter.1.Name", "vpc-id"), ("Filter.1.Value.1", &vpc)]).await;
    assert_eq!(all(&xml, "subnetId"), [subnet.as_str()]);
    let xml =
        ok(&t, &ka, &[("Action", "DescribeSubnets"), ("Filter.1.Name", "tag:tier"), ("Filter.1.Value.1", "front")])
            .await;
    assert_eq!(all(&xml, "subnetId"), [subnet.as_str()]);
    is_error(
        ec2(&t, &kb, &[("Action", "DescribeSubnets"), ("SubnetId.1", &subnet)]).await,
        StatusCode::BAD_REQUEST,
        "InvalidSubnetID.NotFound",
    );
    is_error(
        ec2(&t, &ka, &[("Action", "DescribeSubnets"), ("SubnetId.1", "subnet-x")]).await,
        StatusCode::BAD_REQUEST,
        "InvalidSubnetID.Malformed",
    );
    // Tags on VPCs through CreateTags, and only by the project's members.
    ok(&t, &ka, &[("Action", "CreateTags"), ("ResourceId.1", &vpc2), ("Tag.1.Key", "env"), ("Tag.1.Value", "dev")])
        .await;
    assert_eq!(all(&ok(&t, &ka, &by("tag:env", "dev")).await, "vpcId"), [vpc2.as_str()]);
    is_error(
        ec2(&t, &kb, &[("Action", "CreateTags"), ("ResourceId.1", &vpc2), ("Tag.1.Key", "x"), ("Tag.1.Value", "y")])
            .await,
        StatusCode::BAD_REQUEST,
        "InvalidVpcID.NotFound",
    );

    // DeleteSubnet, then DeleteVpc: gone, with their tags.
    ok(&t, &ka, &[("Action", "DeleteSubnet"), ("SubnetId", &subnet)]).await;
    is_error(
        ec2(&t, &ka, &[("Action", "DeleteSubnet"), ("SubnetId", &subnet)]).await,
        StatusCode::BAD_REQUEST,
        "InvalidSubnetID.NotFound",
    );
    ok(&t, &ka, &[("Action", "DeleteVpc"), ("VpcId", &vpc)]).await;
    ok(&t, &ka, &[("Action", "DeleteVpc"), ("VpcId", &vpc2)]).await;
    is_error(
        ec2(&t, &ka, &[("Action", "DeleteVpc"), ("VpcId", &vpc)]).await,
        StatusCode::BAD_REQUEST,
        "InvalidVpcID.NotFound",
    );
    assert!(all(&ok(&t, &ka, &[("Action", "DescribeTags")]).await, "resourceId").is_empty());
    assert!(t.ok("GET", "/api/v1/networks", &alice, None).await.as_array().unwrap().is_empty());
}

#[tokio::test]
async fn the_default_vpc_is_made_on_first_use_once() {
    let t = T::new().await;
    let alice = t.user("alice", "proj-a", "member").await;
    let k = key(&t, &alice).await;
    // A network of the user's own named "default" is not the default one.
    t.ok("POST", "/api/v1/networks", &alice, Some(json!({"name": "default", "cidr": "10.9.0.0/24"}))).await;
    let default = [("Action", "DescribeVpcs"), ("Filter.1.Name", "is-default"), ("Filter.1.Value.1", "true")];
    // Several at once: one default network, whoever makes it.
    let (a, b, c) = tokio::join!(ok(&t, &k, &default), ok(&t, &k, &default), ok(&t, &k, &default));
    let vpc = one(&a, "vpcId");
    assert_eq!(all(&b, "vpcId"), [vpc.as_str()]);
    assert_eq!(all(&c, "vpcId"), [vpc.as_str()]);
    assert_eq!(one(&a, "isDefault"), "true");
    assert_eq!(one(&a, "cidrBlock"), "172.31.0.0/20");
    // Asked again: the same one.
    assert_eq!(all(&ok(&t, &k, &default).await, "vpcId"), [vpc.as_str()]);
    let nets = t.ok("GET", "/api/v1/networks", &alice, None).await;
    let nets = nets.as_array().unwrap();
    assert_eq!(nets.len(), 2, "{nets:?}");
    let mine = nets.iter().find(|n| n["name"] == "default").unwrap();
    assert_eq!(mine["is_default"], false);
    let made = nets.iter().find(|n| n["is_default"] == true).unwrap();
    assert_eq!(made["name"], "default-2");
    assert_eq!(made["cidr"], "172.31.0.0/20");
    // Its subnet is the default subnet.
    let xml =
        ok(&t, &k, &[("Action", "DescribeSubnets"), ("Filter.1.Name", "default-for-az"), ("Filter.1.Value.1", "true")])
            .await;
    assert_eq!(all(&xml, "subnetId"), [vpc.replacen("vpc-", "subnet-", 1)]);
    assert_eq!(one(&xml, "defaultForAz"), "true");
    assert_eq!(one(&xml, "availableIpAddressCount"), "4093");
    // Deleted, it is made anew on the next use.
    ok(&t, &k, &[("Action", "DeleteVpc"), ("VpcId", &vpc)]).await;
    let again = one(&ok(&t, &k, &default).await, "vpcId");
    assert_ne!(again, vpc);
}

#[tokio::test]
async fn run_instances_on_a_subnet_with_a_private_address() {
    let t = T::new().await;
    let alice = t.user("alice", "proj-a", "member").await;
    let bob = t.user("bob", "proj-b", "member").await;
    let (ka, kb) = (key(&t, &alice).await, key(&t, &bob).await);
    let host = add_bridging_host(&t, "h1", "192.168.77.1").await;
    let vpc = one(&ok(&t, &ka, &[("Action", "CreateVpc"), ("CidrBlock", "10.50.0.0/24")]).await, "vpcId");
    let subnet = one(
        &ok(&t, &ka, &[("Action", "CreateSubnet"), ("VpcId", &vpc), ("CidrBlock", "10.50.0.0/24")]).await,
        "subnetId",
    );
    let sg = one(
        &ok(&t, &ka, &[("Action", "CreateSecurityGroup"), ("GroupName", "web"), ("GroupDescription", "w")]).await,
        "groupId",
    );
    let run = |extra: Vec<(&'static str, String)>| {
        let mut p: Vec<(&str, String)> =
            vec![("Action", "RunInstances".into()), ("ImageId", "tiny".into()), ("MinCount", "1".into())];
        p.extend(extra);
        p
    };
    let params = run(vec![
        ("SubnetId", subnet.clone()),
        ("PrivateIpAddress", "10.50.0.10".into()),
        ("SecurityGroupId.1", sg.clone()),
    ]);
    let refs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let xml = ok(&t, &ka, &refs).await;
    let id = one(&xml, "instanceId");
    let described = ok(&t, &ka, &[("Action", "DescribeInstances"), ("InstanceId.1", &id)]).await;
    assert_eq!(one(&described, "vpcId"), vpc);
    assert_eq!(one(&described, "subnetId"), subnet);
    assert_eq!(one(&described, "privateIpAddress"), "10.50.0.10");
    assert_eq!(one(&described, "privateDnsName"), "ip-10-50-0-10.nubo-1.compute.internal");
    assert!(described.contains("<networkInterfaceSet><item><networkInterfaceId>eni-"), "{described}");
    assert!(all(&described, "groupId").contains(&sg), "{described}");
    assert_eq!(one(&described, "deviceIndex"), "0");
    let inst = t.ok("GET", &format!("/api/v1/instances/{id}"), &alice, None).await;
    assert_eq!(inst["host"], host.as_str());
    assert_eq!(inst["addresses"][0]["address"], "10.50.0.10");
    // The subnet-id filter finds it.
    let xml =
        ok(&t, &ka, &[("Action", "DescribeInstances"), ("Filter.1.Name", "subnet-id"), ("Filter.1.Value.1", &subnet)])
            .await;
    assert_eq!(all(&xml, "instanceId"), [id.as_str()]);

    // The same address again, one outside the subnet, its reserved ones.
    let taken = run(vec![("SubnetId", subnet.clone()), ("PrivateIpAddress", "10.50.0.10".into())]);
    let refs: Vec<(&str, &str)> = taken.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let e = is_error(ec2(&t, &ka, &refs).await, StatusCode::BAD_REQUEST, "InvalidIPAddress.InUse");
    assert!(e.contains("10.50.0.10"), "{e}");
    for outside in ["10.51.0.10", "10.50.0.1", "10.50.0.255", "not-an-address"] {
        let p = run(vec![("SubnetId", subnet.clone()), ("PrivateIpAddress", outside.into())]);
        let refs: Vec<(&str, &str)> = p.iter().map(|(k, v)| (*k, v.as_str())).collect();
        is_error(ec2(&t, &ka, &refs).await, StatusCode::BAD_REQUEST, "InvalidParameterValue");
    }
    let p =
        run(vec![("SubnetId", subnet.clone()), ("PrivateIpAddress", "10.50.0.11".into()), ("MaxCount", "2".into())]);
    let refs: Vec<(&str, &str)> = p.iter().map(|(k, v)| (*k, v.as_str())).collect();
    is_error(ec2(&t, &ka, &refs).await, StatusCode::BAD_REQUEST, "InvalidParameterCombination");
    // Another project's subnet does not exist for bob.
    let p = run(vec![("SubnetId", subnet.clone())]);
    let refs: Vec<(&str, &str)> = p.iter().map(|(k, v)| (*k, v.as_str())).collect();
    is_error(ec2(&t, &kb, &refs).await, StatusCode::BAD_REQUEST, "InvalidSubnetID.NotFound");
    // The one network interface a launch may describe.
    let p = run(vec![
        ("NetworkInterface.1.DeviceIndex", "0".into()),
        ("NetworkInterface.1.SubnetId", subnet.clone()),
        ("NetworkInterface.1.PrivateIpAddress", "10.50.0.20".into()),
    ]);
    let refs: Vec<(&str, &str)> = p.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let id2 = one(&ok(&t, &ka, &refs).await, "instanceId");
    let described = ok(&t, &ka, &[("Action", "DescribeInstances"), ("InstanceId.1", &id2)]).await;
    assert_eq!(one(&described, "privateIpAddress"), "10.50.0.20");

    // In use: neither the subnet nor the VPC can go.
    let e = is_error(
        ec2(&t, &ka, &[("Action", "DeleteSubnet"), ("SubnetId", &subnet)]).await,
        StatusCode::BAD_REQUEST,
        "DependencyViolation",
    );
    assert!(e.contains(&id), "{e}");
    is_error(
        ec2(&t, &ka, &[("Action", "DeleteVpc"), ("VpcId", &vpc)]).await,
        StatusCode::BAD_REQUEST,
        "DependencyViolation",
    );
    // Without a SubnetId the launch is in the default VPC (a host can bridge).
    let p = run(vec![]);
    let refs: Vec<(&str, &str)> = p.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let id3 = one(&ok(&t, &ka, &refs).await, "instanceId");
    let described = ok(&t, &ka, &[("Action", "DescribeInstances"), ("InstanceId.1", &id3)]).await;
    let default =
        ok(&t, &ka, &[("Action", "DescribeVpcs"), ("Filter.1.Name", "is-default"), ("Filter.1.Value.1", "true")]).await;
    assert_eq!(one(&described, "vpcId"), one(&default, "vpcId"));
    assert_eq!(one(&described, "privateIpAddress"), "172.31.0.2");
}

#[tokio::test]
async fn egress_rules_are_authorized_described_and_revoked() {
    let t = T::new().await;
    let alice = t.user("alice", "proj-a", "member").await;
    let bob = t.user("bob", "proj-b", "member").await;
    let (ka, kb) = (key(&t, &alice).await, key(&t, &bob).await);
    let sg = one(
        &ok(&t, &ka, &[("Action", "CreateSecurityGroup"), ("GroupName", "app"), ("GroupDescription", "a")]).await,
        "groupId",
    );
    let rule = |action: &'static str, group: &str| {
        vec![
            ("Action", action.to_string()),
            ("GroupId", group.to_string()),
            ("IpPermissions.1.IpProtocol", "tcp".into()),
            ("IpPermissions.1.FromPort", "443".into()),
            ("IpPermissions.1.ToPort", "443".into()),
            ("IpPermissions.1.IpRanges.1.CidrIp", "10.0.0.0/8".into()),
        ]
    };
    let send = |k: &Key, p: &[(&'static str, String)]| {
        let owned: Vec<(String, String)> = p.iter().map(|(a, b)| (a.to_string(), b.clone())).collect();
        let k = Key { id: k.id.clone(), secret: k.secret.clone() };
        let t = &t;
        async move {
            let refs: Vec<(&str, &str)> = owned.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
            ec2(t, &k, &refs).await
        }
    };
    let (s, xml) = send(&ka, &rule("AuthorizeSecurityGroupEgress", &sg)).await;
    assert_eq!(s, StatusCode::OK, "{xml}");
    assert_eq!(one(&xml, "isEgress"), "true");
    assert_eq!(one(&xml, "cidrIpv4"), "10.0.0.0/8");
    let xml = ok(&t, &ka, &[("Action", "DescribeSecurityGroups"), ("GroupId.1", &sg)]).await;
    let egress = xml.split("<ipPermissionsEgress>").nth(1).unwrap().split("</ipPermissionsEgress>").next().unwrap();
    assert!(egress.contains("<cidrIp>10.0.0.0/8</cidrIp>") && egress.contains("<fromPort>443</fromPort>"), "{xml}");
    let ingress = xml.split("<ipPermissions>").nth(1).unwrap().split("</ipPermissions>").next().unwrap();
    assert!(!ingress.contains("10.0.0.0/8"), "{xml}");
    let groups = t.ok("GET", "/api/v1/security-groups", &alice, None).await;
    let stored = groups.as_array().unwrap().iter().find(|g| g["id"] == sg.as_str()).unwrap();
    assert!(
        stored["rules"].as_array().unwrap().iter().any(|r| r["direction"] == "egress" && r["cidr"] == "10.0.0.0/8"),
        "{stored}"
    );
    is_error(
        send(&ka, &rule("AuthorizeSecurityGroupEgress", &sg)).await,
        StatusCode::BAD_REQUEST,
        "InvalidPermission.Duplicate",
    );
    // The same rule as ingress is another rule: revoking it finds none.
    is_error(
        send(&ka, &rule("RevokeSecurityGroupIngress", &sg)).await,
        StatusCode::BAD_REQUEST,
        "InvalidPermission.NotFound",
    );
    is_error(
        send(&kb, &rule("AuthorizeSecurityGroupEgress", &sg)).await,
        StatusCode::BAD_REQUEST,
        "InvalidGroup.NotFound",
    );
    let by_name: Vec<(&'static str, String)> = rule("AuthorizeSecurityGroupEgress", &sg)
        .into_iter()
        .map(|(k, v)| if k == "GroupId" { ("GroupName", "app".to_string()) } else { (k, v) })
        .collect();
    is_error(send(&ka, &by_name).await, StatusCode::BAD_REQUEST, "MissingParameter");
    let (s, xml) = send(&ka, &rule("RevokeSecurityGroupEgress", &sg)).await;
    assert_eq!(s, StatusCode::OK, "{xml}");
    is_error(
        send(&ka, &rule("RevokeSecurityGroupEgress", &sg)).await,
        StatusCode::BAD_REQUEST,
        "InvalidPermission.NotFound",
    );
    let xml = ok(&t, &ka, &[("Action", "DescribeSecurityGroups"), ("GroupId.1", &sg)]).await;
    assert!(!xml.contains("10.0.0.0/8"), "{xml}");
    // The default group's allow-all egress rule is revocable too.
    let default =
        one(&ok(&t, &ka, &[("Action", "DescribeSecurityGroups"), ("GroupName.1", "default")]).await, "groupId");
    let all_out = vec![
        ("Action", "RevokeSecurityGroupEgress".to_string()),
        ("GroupId", default.clone()),
        ("IpPermissions.1.IpProtocol", "-1".into()),
        ("IpPermissions.1.IpRanges.1.CidrIp", "0.0.0.0/0".into()),
    ];
    let (s, xml) = send(&ka, &all_out).await;
    assert_eq!(s, StatusCode::OK, "{xml}");
    let xml = ok(&t, &ka, &[("Action", "DescribeSecurityGroups"), ("GroupId.1", &default)]).await;
    assert_eq!(xml.split("<ipPermissionsEgress>").nth(1).unwrap().split("</ipPermissionsEgress>").next(), Some(""));
}

#[tokio::test]
async fn a_launch_joins_the_default_network_only_where_a_host_can_bridge() {
    let t = T::new().await;
    let alice = t.user("alice", "proj-a", "member").await;
    // Only a user-mode host: no network, as before.
    t.add_host().await;
    let i = t.ok("POST", "/api/v1/instances", &alice, Some(launch_body(&[]))).await;
    assert!(i["addresses"].as_array().unwrap().is_empty(), "{i}");
    assert!(t.ok("GET", "/api/v1/networks", &alice, None).await.as_array().unwrap().is_empty());

    // A host that bridges: launches join the default network (made once,
    // however many launch at once) and land on that host.
    let bridging = add_bridging_host(&t, "h2", "192.168.77.2").await;
    let (a, b, c) = tokio::join!(
        t.call("POST", "/api/v1/instances", Some(&alice), Some(launch_body(&[]))),
        t.call("POST", "/api/v1/instances", Some(&alice), Some(launch_body(&[]))),
        t.call("POST", "/api/v1/instances", Some(&alice), Some(launch_body(&[]))),
    );
    let mut addresses = Vec::new();
    for (s, v) in [a, b, c] {
        assert_eq!(s, StatusCode::CREATED, "{v}");
        assert_eq!(v["host"], bridging.as_str(), "{v}");
        assert_eq!(v["addresses"][0]["network"], "default", "{v}");
        addresses.push(v["addresses"][0]["address"].as_str().unwrap().to_string());
    }
    addresses.sort();
    assert_eq!(addresses, ["172.31.0.2", "172.31.0.3", "172.31.0.4"]);
    let nets = t.ok("GET", "/api/v1/networks", &alice, None).await;
    let nets = nets.as_array().unwrap();
    assert_eq!(nets.len(), 1, "{nets:?}");
    assert_eq!(nets[0]["is_default"], true);
    assert_eq!(nets[0]["cidr"], "172.31.0.0/20");
    assert_eq!(nets[0]["ports"].as_array().unwrap().len(), 3);

    // `none` asks for user-mode networking; it combines with nothing and
    // is no network's name.
    let i = t.ok("POST", "/api/v1/instances", &alice, Some(launch_body(&["none"]))).await;
    assert!(i["addresses"].as_array().unwrap().is_empty(), "{i}");
    t.ok("POST", "/api/v1/networks", &alice, Some(json!({"name": "blue", "cidr": "10.7.0.0/24"}))).await;
    let (s, v) = t.call("POST", "/api/v1/instances", Some(&alice), Some(launch_body(&["none", "blue"]))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("user-mode"), "{v}");
    let (s, v) =
        t.call("POST", "/api/v1/networks", Some(&alice), Some(json!({"name": "none", "cidr": "10.8.0.0/24"}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("reserved"), "{v}");
    // A network named explicitly: that one only.
    let i = t.ok("POST", "/api/v1/instances", &alice, Some(launch_body(&["blue"]))).await;
    assert_eq!(i["addresses"].as_array().unwrap().len(), 1, "{i}");
    assert_eq!(i["addresses"][0]["network"], "blue");

    // Hosts show how they network.
    let admin = t.admin.clone();
    let hosts = t.ok("GET", "/api/v1/hosts", &admin, None).await;
    let modes: Vec<(String, String)> = hosts
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["networking"].as_str().unwrap().to_string(), h["underlay"].as_str().unwrap_or("").to_string()))
        .collect();
    assert!(modes.contains(&("user-mode".into(), String::new())), "{hosts}");
    assert!(modes.contains(&("bridged".into(), "192.168.77.2".into())), "{hosts}");
}
