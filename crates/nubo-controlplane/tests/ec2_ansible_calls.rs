//! The EC2 calls Ansible's amazon.aws modules make beyond the basics, on
//! the in-process harness: DescribeVpcAttribute and ModifyVpcAttribute
//! (ec2_vpc_net), a security group's VPC and the `vpc-id` filter
//! (ec2_security_group looks groups up by it), permissions grouped by
//! protocol and ports as EC2 answers them (so a second run sees the
//! rules it made), DescribeSnapshotAttribute (ec2_snapshot_info), the
//! `cidr-block` filter of DescribeVpcs, and ModifyInstanceAttribute's
//! DeleteOnTermination refusals; each with its error codes, and another
//! project kept out.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use axum::http::StatusCode;
use common::ec2::*;
use common::T;

const BAD: StatusCode = StatusCode::BAD_REQUEST;

#[tokio::test]
async fn vpc_attributes_answer_dns_on_and_refuse_turning_it_off() {
    let t = T::new().await;
    let alice = t.user("alice", "proj-a", "member").await;
    let bob = t.user("bob", "proj-b", "member").await;
    let (ka, kb) = (key(&t, &alice).await, key(&t, &bob).await);
    let vpc = one(&ok(&t, &ka, &[("Action", "CreateVpc"), ("CidrBlock", "10.70.0.0/24")]).await, "vpcId");

    for attribute in ["enableDnsSupport", "enableDnsHostnames"] {
        let xml = ok(&t, &ka, &[("Action", "DescribeVpcAttribute"), ("VpcId", &vpc), ("Attribute", attribute)]).await;
        assert_eq!(one(&xml, "vpcId"), vpc);
        assert!(xml.contains(&format!("<{attribute}><value>true</value></{attribute}>")), "{xml}");
    }
    let bad = ec2(&t, &ka, &[("Action", "DescribeVpcAttribute"), ("VpcId", &vpc), ("Attribute", "colour")]).await;
    is_error(bad, BAD, "InvalidParameterValue");
    let missing = ec2(&t, &ka, &[("Action", "DescribeVpcAttribute"), ("VpcId", &vpc)]).await;
    is_error(missing, BAD, "MissingParameter");

    ok(&t, &ka, &[("Action", "ModifyVpcAttribute"), ("VpcId", &vpc), ("EnableDnsSupport.Value", "true")]).await;
    let off =
        ec2(&t, &ka, &[("Action", "ModifyVpcAttribute"), ("VpcId", &vpc), ("EnableDnsHostnames.Value", "false")]).await;
    is_error(off, BAD, "UnsupportedOperation");
    let two = ec2(
        &t,
        &ka,
        &[
            ("Action", "ModifyVpcAttribute"),
            ("VpcId", &vpc),
            ("EnableDnsSupport.Value", "true"),
            ("EnableDnsHostnames.Value", "true"),
        ],
    )
    .await;
    is_error(two, BAD, "InvalidParameterCombination");

    // Another project's VPC is not there, for reading or changing.
    let theirs =
        ec2(&t, &kb, &[("Action", "DescribeVpcAttribute"), ("VpcId", &vpc), ("Attribute", "enableDnsSupport")]).await;
    is_error(theirs, BAD, "InvalidVpcID.NotFound");
    let theirs =
        ec2(&t, &kb, &[("Action", "ModifyVpcAttribute"), ("VpcId", &vpc), ("EnableDnsSupport.Value", "true")]).await;
    is_error(theirs, BAD, "InvalidVpcID.NotFound");

    // The filter Ansible looks VPCs up by.
    let found = ok(
        &t,
        &ka,
        &[("Action", "DescribeVpcs"), ("Filter.1.Name", "cidr-block"), ("Filter.1.Value.1", "10.70.0.0/24")],
    )
    .await;
    assert_eq!(all(&found, "vpcId"), vec![vpc.clone()]);
}

/// DescribeSecurityGroups filtered by `vpc-id`.
async fn groups_in(t: &T, k: &Key, vpc: &str) -> String {
    ok(t, k, &[("Action", "DescribeSecurityGroups"), ("Filter.1.Name", "vpc-id"), ("Filter.1.Value.1", vpc)]).await
}

#[tokio::test]
async fn a_group_made_in_a_vpc_is_found_by_it_and_its_rules_are_grouped_by_ports() {
    let t = T::new().await;
    let alice = t.user("alice", "proj-a", "member").await;
    let bob = t.user("bob", "proj-b", "member").await;
    let (ka, kb) = (key(&t, &alice).await, key(&t, &bob).await);
    let vpc = one(&ok(&t, &ka, &[("Action", "CreateVpc"), ("CidrBlock", "10.71.0.0/24")]).await, "vpcId");
    let other = one(&ok(&t, &ka, &[("Action", "CreateVpc"), ("CidrBlock", "10.72.0.0/24")]).await, "vpcId");

    let made = ok(
        &t,
        &ka,
        &[("Action", "CreateSecurityGroup"), ("GroupName", "web"), ("GroupDescription", "web"), ("VpcId", &vpc)],
    )
    .await;
    let sg = one(&made, "groupId");
    ok(&t, &ka, &[("Action", "CreateSecurityGroup"), ("GroupName", "plain"), ("GroupDescription", "no vpc")]).await;
    // Bob cannot make a group in Alice's VPC.
    let theirs = ec2(
        &t,
        &kb,
        &[("Action", "CreateSecurityGroup"), ("GroupName", "web"), ("GroupDescription", "x"), ("VpcId", &vpc)],
    )
    .await;
    is_error(theirs, BAD, "InvalidVpcID.NotFound");

    let found = groups_in(&t, &ka, &vpc).await;
    assert_eq!(all(&found, "groupId"), vec![sg.clone()], "{found}");
    assert_eq!(one(&found, "vpcId"), vpc);
    assert!(all(&groups_in(&t, &ka, &other).await, "groupId").is_empty());

    // Port 80 from two ranges, and 443: two permissions, the first with
    // both ranges, as EC2 answers.
    for (port, cidr) in [("80", "10.0.0.0/8"), ("80", "192.168.0.0/16"), ("443", "0.0.0.0/0")] {
        ok(
            &t,
            &ka,
            &[
                ("Action", "AuthorizeSecurityGroupIngress"),
                ("GroupId", &sg),
                ("IpPermissions.1.IpProtocol", "tcp"),
                ("IpPermissions.1.FromPort", port),
                ("IpPermissions.1.ToPort", port),
                ("IpPermissions.1.IpRanges.1.CidrIp", cidr),
            ],
        )
        .await;
    }
    let xml = ok(&t, &ka, &[("Action", "DescribeSecurityGroups"), ("GroupId.1", &sg)]).await;
    let ingress = &xml[xml.find("<ipPermissions>").unwrap()..xml.find("</ipPermissions>").unwrap()];
    assert_eq!(all(ingress, "fromPort"), vec!["80", "443"], "{ingress}");
    assert_eq!(all(ingress, "cidrIp"), vec!["10.0.0.0/8", "192.168.0.0/16", "0.0.0.0/0"], "{ingress}");

    // A VPC deleted leaves its groups, VPC-less.
    ok(&t, &ka, &[("Action", "DeleteSecurityGroup"), ("GroupId", &sg)]).await;
    let plain = one(
        &ok(
            &t,
            &ka,
            &[
                ("Action", "CreateSecurityGroup"),
                ("GroupName", "in-other"),
                ("GroupDescription", "x"),
                ("VpcId", &other),
            ],
        )
        .await,
        "groupId",
    );
    ok(&t, &ka, &[("Action", "DeleteVpc"), ("VpcId", &other)]).await;
    let xml = ok(&t, &ka, &[("Action", "DescribeSecurityGroups"), ("GroupId.1", &plain)]).await;
    assert!(all(&xml, "vpcId").is_empty(), "{xml}");
}

#[tokio::test]
async fn snapshot_attributes_and_delete_on_termination_refusals() {
    let t = T::new().await;
    let (host, cred) = t.add_host_with_id().await;
    let alice = t.user("alice", "proj-a", "member").await;
    let bob = t.user("bob", "proj-b", "member").await;
    let (ka, kb) = (key(&t, &alice).await, key(&t, &bob).await);
    let vol = one(&ok(&t, &ka, &[("Action", "CreateVolume"), ("Size", "1")]).await, "volumeId");
    let report = serde_json::json!({"instances": [], "volumes": [{"id": vol, "state": "available", "size_gib": 1, "error": null}]});
    t.ok("POST", &format!("/api/v1/agent/hosts/{host}/report"), &cred, Some(report)).await;
    let snap = one(&ok(&t, &ka, &[("Action", "CreateSnapshot"), ("VolumeId", &vol)]).await, "snapshotId");

    let xml = ok(
        &t,
        &ka,
        &[("Action", "DescribeSnapshotAttribute"), ("SnapshotId", &snap), ("Attribute", "createVolumePermission")],
    )
    .await;
    assert_eq!(one(&xml, "snapshotId"), snap);
    assert!(
        xml.contains("<createVolumePermission/>") || xml.contains("<createVolumePermission></createVolumePermission>"),
        "{xml}"
    );
    let bad =
        ec2(&t, &ka, &[("Action", "DescribeSnapshotAttribute"), ("SnapshotId", &snap), ("Attribute", "owner")]).await;
    is_error(bad, BAD, "InvalidParameterValue");
    let theirs = ec2(
        &t,
        &kb,
        &[("Action", "DescribeSnapshotAttribute"), ("SnapshotId", &snap), ("Attribute", "createVolumePermission")],
    )
    .await;
    is_error(theirs, BAD, "InvalidSnapshot.NotFound");
    let malformed = ec2(
        &t,
        &ka,
        &[("Action", "DescribeSnapshotAttribute"), ("SnapshotId", "snap-zz"), ("Attribute", "productCodes")],
    )
    .await;
    is_error(malformed, BAD, "InvalidSnapshotID.Malformed");

    // DeleteOnTermination: the root disk always goes; a device the
    // instance does not have is named as such; another project's
    // instance is not there.
    let image = one(
        &ok(&t, &ka, &[("Action", "DescribeImages"), ("Filter.1.Name", "name"), ("Filter.1.Value.1", "tiny")]).await,
        "imageId",
    );
    let run = ok(
        &t,
        &ka,
        &[
            ("Action", "RunInstances"),
            ("ImageId", &image),
            ("InstanceType", "t3.nano"),
            ("MinCount", "1"),
            ("MaxCount", "1"),
        ],
    )
    .await;
    let id = one(&run, "instanceId");
    let dot = |device: &'static str, value: &'static str| {
        vec![
            ("Action", "ModifyInstanceAttribute"),
            ("InstanceId", id.as_str()),
            ("BlockDeviceMapping.1.DeviceName", device),
            ("BlockDeviceMapping.1.Ebs.DeleteOnTermination", value),
        ]
    };
    is_error(ec2(&t, &ka, &dot("/dev/sda1", "false")).await, BAD, "UnsupportedOperation");
    ok(&t, &ka, &dot("/dev/sda1", "true")).await;
    is_error(ec2(&t, &ka, &dot("/dev/sdz", "true")).await, BAD, "InvalidParameterValue");
    is_error(ec2(&t, &kb, &dot("/dev/sda1", "true")).await, BAD, "InvalidInstanceID.NotFound");
}
