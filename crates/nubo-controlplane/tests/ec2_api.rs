//! The EC2 Query API through the real router (no socket, no VM), each
//! request signed by AWS's own SigV4 signer (`aws-sigv4`), never by our
//! verifier's code: signatures (valid, wrong secret, unknown or revoked
//! key, expired or skewed clock, wrong region, none), the XML shapes and
//! error documents, error codes and statuses, filters, pagination,
//! ClientToken idempotency, DryRun, tenancy (another project's instance
//! does not exist), quotas, and the audit log.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use axum::body::Body;
use axum::http::StatusCode;
use common::ec2::*;
use common::T;
use serde_json::json;
use std::time::{Duration, SystemTime};

#[tokio::test]
async fn signatures_are_checked() {
    let t = T::new().await;
    let k = admin_key(&t).await;
    let body = ok(&t, &k, &[("Action", "DescribeRegions")]).await;
    assert!(
        body.contains("<DescribeRegionsResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>"),
        "{body}"
    );
    assert_eq!(one(&body, "regionName"), "nubo-1");

    let wrong = Key { id: k.id.clone(), secret: "not-the-secret-0123456789".into() };
    let e = is_error(ec2(&t, &wrong, &[("Action", "DescribeRegions")]).await, StatusCode::UNAUTHORIZED, "AuthFailure");
    assert!(e.contains("signature does not match"), "{e}");
    let unknown = Key { id: "AKIAUNKNOWNUNKNOWN00".into(), secret: k.secret.clone() };
    let e =
        is_error(ec2(&t, &unknown, &[("Action", "DescribeRegions")]).await, StatusCode::UNAUTHORIZED, "AuthFailure");
    assert!(e.contains("does not exist or was revoked"), "{e}");
    let late = SystemTime::now() - Duration::from_secs(10 * 60);
    let e = is_error(
        signed(&t, &k, "nubo-1", late, &[("Action", "DescribeRegions")]).await,
        StatusCode::BAD_REQUEST,
        "RequestExpired",
    );
    assert!(e.contains("more than 5 minutes"), "{e}");
    let early = SystemTime::now() + Duration::from_secs(6 * 60);
    is_error(
        signed(&t, &k, "nubo-1", early, &[("Action", "DescribeRegions")]).await,
        StatusCode::BAD_REQUEST,
        "RequestExpired",
    );
    // Within the allowed skew it passes.
    let near = SystemTime::now() - Duration::from_secs(4 * 60);
    let (s, _) = signed(&t, &k, "nubo-1", near, &[("Action", "DescribeRegions")]).await;
    assert_eq!(s, StatusCode::OK);
    let e = is_error(
        signed(&t, &k, "us-east-1", SystemTime::now(), &[("Action", "DescribeRegions")]).await,
        StatusCode::UNAUTHORIZED,
        "AuthFailure",
    );
    assert!(e.contains("AWS_DEFAULT_REGION=nubo-1"), "{e}");

    // A body changed after signing no longer matches.
    let req = http::Request::builder()
        .method("POST")
        .uri("/")
        .header("host", "127.0.0.1:8780")
        .body(Body::from("Action=DescribeRegions"))
        .unwrap();
    is_error(send(&t, req).await, StatusCode::UNAUTHORIZED, "AuthFailure");

    // A revoked key is refused at once.
    let admin = t.admin.clone();
    t.ok("DELETE", &format!("/api/v1/access-keys/{}", k.id), &admin, None).await;
    is_error(ec2(&t, &k, &[("Action", "DescribeRegions")]).await, StatusCode::UNAUTHORIZED, "AuthFailure");
}

#[tokio::test]
async fn instances_run_describe_filter_page_and_change_state() {
    let t = T::new().await;
    let (host, cred) = t.add_host_with_id().await;
    let k = admin_key(&t).await;
    let images =
        ok(&t, &k, &[("Action", "DescribeImages"), ("Filter.1.Name", "name"), ("Filter.1.Value.1", "tiny")]).await;
    let ami = one(&images, "imageId");
    assert!(ami.starts_with("ami-"), "{images}");
    let user_data = "IyEvYmluL3NoCmVjaG8gaGk="; // "#!/bin/sh\necho hi"
    let run = ok(
        &t,
        &k,
        &[
            ("Action", "RunInstances"),
            ("ImageId", &ami),
            ("InstanceType", "t3.micro"),
            ("MinCount", "2"),
            ("MaxCount", "2"),
            ("UserData", user_data),
            ("BlockDeviceMapping.1.DeviceName", "/dev/sda1"),
            ("BlockDeviceMapping.1.Ebs.VolumeSize", "3"),
            ("TagSpecification.1.ResourceType", "instance"),
            ("TagSpecification.1.Tag.1.Key", "team"),
            ("TagSpecification.1.Tag.1.Value", "blue"),
        ],
    )
    .await;
    assert!(run.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<RunInstancesResponse xmlns="), "{run}");
    let ids = all(&run, "instanceId");
    assert_eq!(ids.len(), 2, "{run}");
    assert!(one(&run, "reservationId").starts_with("r-"));
    assert!(run.contains("<instanceState><code>0</code><name>pending</name></instanceState>"), "{run}");
    assert!(run.contains("<instanceType>t3.micro</instanceType>"), "{run}");
    assert!(run.contains("<tagSet><item><key>team</key><value>blue</value></item></tagSet>"), "{run}");
    assert!(run.contains("<groupName>default</groupName>"), "{run}");
    assert_eq!(all(&run, "amiLaunchIndex"), ["0", "1"]);
    // The same instances through REST: type, size, user-data, tags.
    let admin = t.admin.clone();
    let rest = t.ok("GET", &format!("/api/v1/instances/{}", ids[0]), &admin, None).await;
    assert_eq!(
        (rest["vcpus"].as_u64(), rest["memory_mib"].as_u64(), rest["disk_gib"].as_u64()),
        (Some(2), Some(1024), Some(3))
    );
    assert_eq!(rest["instance_type"], "t3.micro");
    assert_eq!(rest["tags"], json!({"team": "blue"}));
    let desired = t.ok("GET", &format!("/api/v1/agent/hosts/{host}/desired"), &cred, None).await;
    let d = desired["instances"].as_array().unwrap().iter().find(|i| i["id"] == ids[0].as_str()).unwrap().clone();
    assert_eq!(d["user_data"], "#!/bin/sh\necho hi");
    assert_eq!(d["instance_type"], "t3.micro");

    // The agent reports the first running.
    let report = json!({"instances": [
        {"id": ids[0], "power": "running", "pid": 1, "error": null},
        {"id": ids[1], "power": "starting", "pid": null, "error": null}]});
    t.ok("POST", &format!("/api/v1/agent/hosts/{host}/report"), &cred, Some(report)).await;
    let running = ok(
        &t,
        &k,
        &[("Action", "DescribeInstances"), ("Filter.1.Name", "instance-state-name"), ("Filter.1.Value.1", "running")],
    )
    .await;
    assert_eq!(all(&running, "instanceId"), [ids[0].clone()]);
    assert!(running.contains("<instanceState><code>16</code><name>running</name></instanceState>"), "{running}");
    let by_tag = ok(
        &t,
        &k,
        &[
            ("Action", "DescribeInstances"),
            ("Filter.1.Name", "tag:team"),
            ("Filter.1.Value.1", "bl*"),
            ("Filter.2.Name", "instance-id"),
            ("Filter.2.Value.1", &ids[1]),
        ],
    )
    .await;
    assert_eq!(all(&by_tag, "instanceId"), [ids[1].clone()]);
    let none =
        ok(&t, &k, &[("Action", "DescribeInstances"), ("Filter.1.Name", "tag-key"), ("Filter.1.Value.1", "nope")])
            .await;
    assert!(none.contains("<reservationSet></reservationSet>"), "{none}");
    let e = is_error(
        ec2(&t, &k, &[("Action", "DescribeInstances"), ("Filter.1.Name", "bogus"), ("Filter.1.Value.1", "x")]).await,
        StatusCode::BAD_REQUEST,
        "InvalidParameterValue",
    );
    assert!(e.contains("The filter 'bogus' is invalid"), "{e}");

    // Pagination: 6 instances, pages of 5.
    ok(
        &t,
        &k,
        &[
            ("Action", "RunInstances"),
            ("ImageId", &ami),
            ("InstanceType", "t2.nano"),
            ("MinCount", "4"),
            ("MaxCount", "4"),
        ],
    )
    .await;
    let p1 = ok(&t, &k, &[("Action", "DescribeInstances"), ("MaxResults", "5")]).await;
    assert_eq!(all(&p1, "instanceId").len(), 5);
    let token = one(&p1, "nextToken");
    let p2 = ok(&t, &k, &[("Action", "DescribeInstances"), ("MaxResults", "5"), ("NextToken", &token)]).await;
    assert_eq!(all(&p2, "instanceId").len(), 1);
    assert!(!p2.contains("<nextToken>"), "{p2}");
    is_error(
        ec2(&t, &k, &[("Action", "DescribeInstances"), ("MaxResults", "2")]).await,
        StatusCode::BAD_REQUEST,
        "InvalidParameterValue",
    );
    is_error(
        ec2(&t, &k, &[("Action", "DescribeInstances"), ("NextToken", "garbage")]).await,
        StatusCode::BAD_REQUEST,
        "InvalidPaginationToken",
    );

    // State changes answer with current and previous states.
    let stop = ok(&t, &k, &[("Action", "StopInstances"), ("InstanceId.1", &ids[0])]).await;
    assert!(stop.contains("<currentState><code>64</code><name>stopping</name></currentState><previousState><code>16</code><name>running</name></previousState>"), "{stop}");
    let term = ok(&t, &k, &[("Action", "TerminateInstances"), ("InstanceId.1", &ids[1])]).await;
    assert!(term.contains("<currentState><code>32</code><name>shutting-down</name></currentState>"), "{term}");
    // Terminating again is no error; rebooting a stopping one is.
    ok(&t, &k, &[("Action", "TerminateInstances"), ("InstanceId.1", &ids[1])]).await;
    is_error(
        ec2(&t, &k, &[("Action", "RebootInstances"), ("InstanceId.1", &ids[0])]).await,
        StatusCode::BAD_REQUEST,
        "IncorrectInstanceState",
    );
    let console = ok(&t, &k, &[("Action", "GetConsoleOutput"), ("InstanceId", &ids[0])]).await;
    assert_eq!(one(&console, "instanceId"), ids[0]);

    // Ids: malformed, unknown (all named), missing parameters, unknown things.
    is_error(
        ec2(&t, &k, &[("Action", "DescribeInstances"), ("InstanceId.1", "i-nothex")]).await,
        StatusCode::BAD_REQUEST,
        "InvalidInstanceID.Malformed",
    );
    let e = is_error(
        ec2(
            &t,
            &k,
            &[
                ("Action", "StopInstances"),
                ("InstanceId.1", "i-0123456789abcdef0"),
                ("InstanceId.2", "i-0123456789abcdef1"),
            ],
        )
        .await,
        StatusCode::BAD_REQUEST,
        "InvalidInstanceID.NotFound",
    );
    assert!(e.contains("i-0123456789abcdef0, i-0123456789abcdef1"), "{e}");
    // EC2's older 8-digit ids are well-formed: unknown, not malformed.
    let e = is_error(
        ec2(&t, &k, &[("Action", "DescribeInstances"), ("InstanceId.1", "i-1234abcd")]).await,
        StatusCode::BAD_REQUEST,
        "InvalidInstanceID.NotFound",
    );
    assert!(e.contains("i-1234abcd"), "{e}");
    is_error(
        ec2(&t, &k, &[("Action", "DescribeInstances"), ("InstanceId.1", "i-1234ABCD")]).await,
        StatusCode::BAD_REQUEST,
        "InvalidInstanceID.Malformed",
    );
    is_error(ec2(&t, &k, &[("Action", "RunInstances")]).await, StatusCode::BAD_REQUEST, "MissingParameter");
    is_error(
        ec2(&t, &k, &[("Action", "RunInstances"), ("ImageId", "ami-0123456789abcdef0")]).await,
        StatusCode::BAD_REQUEST,
        "InvalidAMIID.NotFound",
    );
    is_error(
        ec2(&t, &k, &[("Action", "RunInstances"), ("ImageId", &ami), ("InstanceType", "x9.huge")]).await,
        StatusCode::BAD_REQUEST,
        "InvalidParameterValue",
    );
    is_error(
        ec2(&t, &k, &[("Action", "RunInstances"), ("ImageId", &ami), ("KeyName", "none")]).await,
        StatusCode::BAD_REQUEST,
        "InvalidKeyPair.NotFound",
    );
    is_error(ec2(&t, &k, &[("Action", "ReleaseHosts")]).await, StatusCode::BAD_REQUEST, "InvalidAction");
}

#[tokio::test]
async fn client_token_dry_run_tenancy_quota_and_audit() {
    let t = T::new().await;
    t.add_host().await;
    let alice_token = t.user("alice", "proj-a", "member").await;
    let bob_token = t.user("bob", "proj-b", "member").await;
    let rita_token = t.user("rita", "proj-a", "reader").await;
    let alice = key(&t, &alice_token).await;
    let bob = key(&t, &bob_token).await;
    let rita = key(&t, &rita_token).await;
    let ami = nubo_api::ids::ImageId::builtin("tiny").to_string();
    let launch =
        [("Action", "RunInstances"), ("ImageId", ami.as_str()), ("InstanceType", "t2.nano"), ("ClientToken", "tok-1")];

    // ClientToken: the same request twice is one launch.
    let first = ok(&t, &alice, &launch).await;
    let again = ok(&t, &alice, &launch).await;
    assert_eq!(all(&first, "instanceId"), all(&again, "instanceId"));
    assert_eq!(one(&first, "reservationId"), one(&again, "reservationId"));
    let id = one(&first, "instanceId");
    let listed = ok(&t, &alice, &[("Action", "DescribeInstances")]).await;
    assert_eq!(all(&listed, "instanceId"), std::slice::from_ref(&id));
    let mut other = launch.to_vec();
    other[2] = ("InstanceType", "t2.micro");
    is_error(ec2(&t, &alice, &other).await, StatusCode::BAD_REQUEST, "IdempotentParameterMismatch");
    // Tokens are per project: Bob's tok-1 is his own.
    let bobs = ok(&t, &bob, &launch).await;
    assert_ne!(one(&bobs, "instanceId"), id);

    // DryRun: would it be allowed?
    let mut dry = launch.to_vec();
    dry.push(("DryRun", "true"));
    is_error(ec2(&t, &alice, &dry).await, StatusCode::PRECONDITION_FAILED, "DryRunOperation");
    is_error(ec2(&t, &rita, &dry).await, StatusCode::FORBIDDEN, "UnauthorizedOperation");
    is_error(
        ec2(&t, &rita, &[("Action", "DescribeInstances"), ("DryRun", "true")]).await,
        StatusCode::PRECONDITION_FAILED,
        "DryRunOperation",
    );
    // A reader reads, and may not change.
    assert_eq!(all(&ok(&t, &rita, &[("Action", "DescribeInstances")]).await, "instanceId"), std::slice::from_ref(&id));
    is_error(
        ec2(&t, &rita, &[("Action", "StopInstances"), ("InstanceId.1", &id)]).await,
        StatusCode::FORBIDDEN,
        "UnauthorizedOperation",
    );

    // Tenancy: Alice's instance does not exist for Bob.
    for action in ["DescribeInstances", "StopInstances", "TerminateInstances"] {
        is_error(
            ec2(&t, &bob, &[("Action", action), ("InstanceId.1", &id)]).await,
            StatusCode::BAD_REQUEST,
            "InvalidInstanceID.NotFound",
        );
    }
    is_error(
        ec2(&t, &bob, &[("Action", "GetConsoleOutput"), ("InstanceId", &id)]).await,
        StatusCode::BAD_REQUEST,
        "InvalidInstanceID.NotFound",
    );
    is_error(
        ec2(&t, &bob, &[("Action", "CreateTags"), ("ResourceId.1", &id), ("Tag.1.Key", "x"), ("Tag.1.Value", "y")])
            .await,
        StatusCode::BAD_REQUEST,
        "InvalidInstanceID.NotFound",
    );
    let bob_list = ok(&t, &bob, &[("Action", "DescribeInstances")]).await;
    assert!(!bob_list.contains(&id), "{bob_list}");

    // Quotas: instances and volumes.
    let admin = t.admin.clone();
    t.ok("PUT", "/api/v1/projects/proj-a/quota", &admin, Some(json!({"instances": 2, "volume_gib": 5}))).await;
    let e = is_error(
        ec2(
            &t,
            &alice,
            &[("Action", "RunInstances"), ("ImageId", &ami), ("InstanceType", "t2.nano"), ("MinCount", "2")],
        )
        .await,
        StatusCode::BAD_REQUEST,
        "InstanceLimitExceeded",
    );
    assert!(e.contains("quota"), "{e}");
    // MaxCount above what is left launches what fits.
    let some = ok(
        &t,
        &alice,
        &[("Action", "RunInstances"), ("ImageId", &ami), ("InstanceType", "t2.nano"), ("MaxCount", "3")],
    )
    .await;
    assert_eq!(all(&some, "instanceId").len(), 1);
    is_error(
        ec2(&t, &alice, &[("Action", "CreateVolume"), ("Size", "6"), ("AvailabilityZone", "nubo-1a")]).await,
        StatusCode::BAD_REQUEST,
        "VolumeLimitExceeded",
    );
    is_error(
        ec2(&t, &alice, &[("Action", "CreateVolume"), ("Size", "1"), ("AvailabilityZone", "us-east-1a")]).await,
        StatusCode::BAD_REQUEST,
        "InvalidParameterValue",
    );

    // The audit log: who did what (EC2 actions named), reads left out.
    let audit = t.audit().await;
    let runs: Vec<_> = audit.iter().filter(|e| e["path"] == "/ (ec2:RunInstances)").collect();
    assert!(runs.iter().any(|e| e["actor"] == "alice" && e["status"] == 200), "{audit:?}");
    assert!(runs.iter().any(|e| e["actor"] == "alice" && e["status"] == 400), "{audit:?}");
    assert!(audit.iter().any(|e| e["actor"] == "rita" && e["outcome"] == "denied"), "{audit:?}");
    assert!(!audit.iter().any(|e| e["path"] == "/ (ec2:DescribeInstances)"), "{audit:?}");
}

#[tokio::test]
async fn volumes_keys_groups_and_tags() {
    let t = T::new().await;
    let (host, cred) = t.add_host_with_id().await;
    let k = admin_key(&t).await;
    let ami = nubo_api::ids::ImageId::builtin("tiny").to_string();
    let run = ok(&t, &k, &[("Action", "RunInstances"), ("ImageId", &ami), ("InstanceType", "t2.nano")]).await;
    let id = one(&run, "instanceId");

    // Volumes: create, attach (device echoed), detach, delete.
    let vol = ok(
        &t,
        &k,
        &[
            ("Action", "CreateVolume"),
            ("Size", "2"),
            ("AvailabilityZone", "nubo-1a"),
            ("TagSpecification.1.ResourceType", "volume"),
            ("TagSpecification.1.Tag.1.Key", "Name"),
            ("TagSpecification.1.Tag.1.Value", "data"),
        ],
    )
    .await;
    assert!(vol.contains("<CreateVolumeResponse"), "{vol}");
    let vid = one(&vol, "volumeId");
    assert_eq!(one(&vol, "status"), "creating");
    let report = json!({"instances": [{"id": id, "power": "running", "pid": 1, "error": null}],
        "volumes": [{"id": vid, "state": "available", "size_gib": 2, "error": null}]});
    t.ok("POST", &format!("/api/v1/agent/hosts/{host}/report"), &cred, Some(report)).await;
    let d = ok(&t, &k, &[("Action", "DescribeVolumes"), ("VolumeId.1", &vid)]).await;
    assert_eq!(one(&d, "status"), "available");
    assert!(d.contains("<tagSet><item><key>Name</key><value>data</value></item></tagSet>"), "{d}");
    let att =
        ok(&t, &k, &[("Action", "AttachVolume"), ("VolumeId", &vid), ("InstanceId", &id), ("Device", "/dev/sdf")])
            .await;
    assert!(att.contains("<device>/dev/sdf</device><status>attaching</status>"), "{att}");
    let d = ok(
        &t,
        &k,
        &[("Action", "DescribeVolumes"), ("Filter.1.Name", "attachment.instance-id"), ("Filter.1.Value.1", &id)],
    )
    .await;
    assert!(d.contains("<attachmentSet><item><volumeId>"), "{d}");
    assert_eq!(one(&d, "status"), "in-use");
    is_error(
        ec2(&t, &k, &[("Action", "DeleteVolume"), ("VolumeId", &vid)]).await,
        StatusCode::BAD_REQUEST,
        "VolumeInUse",
    );
    let det = ok(&t, &k, &[("Action", "DetachVolume"), ("VolumeId", &vid)]).await;
    assert!(det.contains("<status>detaching</status>"), "{det}");
    is_error(
        ec2(&t, &k, &[("Action", "DescribeVolumes"), ("VolumeId.1", "vol-0123456789abcdef0")]).await,
        StatusCode::BAD_REQUEST,
        "InvalidVolume.NotFound",
    );
    is_error(
        ec2(
            &t,
            &k,
            &[
                ("Action", "AttachVolume"),
                ("VolumeId", &vid),
                ("InstanceId", "i-0123456789abcdef0"),
                ("Device", "/dev/sdg"),
            ],
        )
        .await,
        StatusCode::BAD_REQUEST,
        "InvalidInstanceID.NotFound",
    );

    // Key pairs.
    let created = ok(&t, &k, &[("Action", "CreateKeyPair"), ("KeyName", "made")]).await;
    assert!(one(&created, "keyMaterial").contains("OPENSSH PRIVATE KEY"), "{created}");
    is_error(
        ec2(&t, &k, &[("Action", "CreateKeyPair"), ("KeyName", "made")]).await,
        StatusCode::BAD_REQUEST,
        "InvalidKeyPair.Duplicate",
    );
    let pubkey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test";
    use base64::Engine;
    let material = base64::engine::general_purpose::STANDARD.encode(pubkey);
    let imported =
        ok(&t, &k, &[("Action", "ImportKeyPair"), ("KeyName", "mine"), ("PublicKeyMaterial", &material)]).await;
    assert!(one(&imported, "keyFingerprint").starts_with("SHA256:"));
    let keys = ok(&t, &k, &[("Action", "DescribeKeyPairs")]).await;
    assert_eq!(all(&keys, "keyName"), ["made", "mine"]);
    is_error(
        ec2(&t, &k, &[("Action", "DescribeKeyPairs"), ("KeyName.1", "gone")]).await,
        StatusCode::BAD_REQUEST,
        "InvalidKeyPair.NotFound",
    );
    ok(&t, &k, &[("Action", "DeleteKeyPair"), ("KeyName", "made")]).await;
    ok(&t, &k, &[("Action", "DeleteKeyPair"), ("KeyName", "made")]).await;

    // Security groups: the default one, a new one with rules, deletes.
    let sg =
        ok(&t, &k, &[("Action", "CreateSecurityGroup"), ("GroupName", "web"), ("GroupDescription", "web servers")])
            .await;
    let gid = one(&sg, "groupId");
    is_error(
        ec2(&t, &k, &[("Action", "CreateSecurityGroup"), ("GroupName", "web"), ("GroupDescription", "x")]).await,
        StatusCode::BAD_REQUEST,
        "InvalidGroup.Duplicate",
    );
    let rule = [
        ("Action", "AuthorizeSecurityGroupIngress"),
        ("GroupId", gid.as_str()),
        ("IpPermissions.1.IpProtocol", "tcp"),
        ("IpPermissions.1.FromPort", "22"),
        ("IpPermissions.1.ToPort", "22"),
        ("IpPermissions.1.IpRanges.1.CidrIp", "0.0.0.0/0"),
    ];
    let auth = ok(&t, &k, &rule).await;
    assert!(one(&auth, "securityGroupRuleId").starts_with("sgr-"), "{auth}");
    is_error(ec2(&t, &k, &rule).await, StatusCode::BAD_REQUEST, "InvalidPermission.Duplicate");
    let mut bad = rule.to_vec();
    bad[5] = ("IpPermissions.1.IpRanges.1.CidrIp", "10.0.0.0/33");
    is_error(ec2(&t, &k, &bad).await, StatusCode::BAD_REQUEST, "InvalidParameterValue");
    let groups = ok(&t, &k, &[("Action", "DescribeSecurityGroups")]).await;
    let names = all(&groups, "groupName");
    assert!(names.contains(&"default".to_string()) && names.contains(&"web".to_string()), "{groups}");
    assert!(groups.contains("<ipProtocol>tcp</ipProtocol><fromPort>22</fromPort><toPort>22</toPort>"), "{groups}");
    assert!(groups.contains("<cidrIp>0.0.0.0/0</cidrIp>"), "{groups}");
    let with = ok(
        &t,
        &k,
        &[("Action", "RunInstances"), ("ImageId", &ami), ("InstanceType", "t2.nano"), ("SecurityGroupId.1", &gid)],
    )
    .await;
    assert!(with.contains(&format!("<groupId>{gid}</groupId><groupName>web</groupName>")), "{with}");
    is_error(
        ec2(&t, &k, &[("Action", "DeleteSecurityGroup"), ("GroupId", &gid)]).await,
        StatusCode::BAD_REQUEST,
        "DependencyViolation",
    );
    is_error(
        ec2(&t, &k, &[("Action", "DeleteSecurityGroup"), ("GroupName", "default")]).await,
        StatusCode::BAD_REQUEST,
        "CannotDelete",
    );
    is_error(
        ec2(&t, &k, &[("Action", "RunInstances"), ("ImageId", &ami), ("SecurityGroupId.1", "sg-0123456789abcdef0")])
            .await,
        StatusCode::BAD_REQUEST,
        "InvalidGroup.NotFound",
    );
    let spare =
        ok(&t, &k, &[("Action", "CreateSecurityGroup"), ("GroupName", "spare"), ("GroupDescription", "x")]).await;
    ok(&t, &k, &[("Action", "DeleteSecurityGroup"), ("GroupId", &one(&spare, "groupId"))]).await;

    // Tags: on an instance, a volume and a group; listed and deleted.
    ok(
        &t,
        &k,
        &[
            ("Action", "CreateTags"),
            ("ResourceId.1", &id),
            ("ResourceId.2", &vid),
            ("ResourceId.3", &gid),
            ("Tag.1.Key", "env"),
            ("Tag.1.Value", "prod"),
        ],
    )
    .await;
    let tags = ok(&t, &k, &[("Action", "DescribeTags"), ("Filter.1.Name", "key"), ("Filter.1.Value.1", "env")]).await;
    let mut types = all(&tags, "resourceType");
    types.sort();
    assert_eq!(types, ["instance", "security-group", "volume"], "{tags}");
    let admin = t.admin.clone();
    let rest = t.ok("GET", &format!("/api/v1/volumes/{vid}"), &admin, None).await;
    assert_eq!(rest["tags"]["env"], "prod");
    ok(&t, &k, &[("Action", "DeleteTags"), ("ResourceId.1", &id), ("Tag.1.Key", "env")]).await;
    let tags =
        ok(&t, &k, &[("Action", "DescribeTags"), ("Filter.1.Name", "resource-id"), ("Filter.1.Value.1", &id)]).await;
    assert!(!tags.contains("<key>env</key>"), "{tags}");
    is_error(
        ec2(&t, &k, &[("Action", "CreateTags"), ("ResourceId.1", &id), ("Tag.1.Key", "aws:x"), ("Tag.1.Value", "y")])
            .await,
        StatusCode::BAD_REQUEST,
        "InvalidParameterValue",
    );

    // The catalogue.
    let types = ok(&t, &k, &[("Action", "DescribeInstanceTypes"), ("InstanceType.1", "r5.large")]).await;
    assert!(types.contains("<vCpuInfo><defaultVCpus>2</defaultVCpus>"), "{types}");
    assert!(types.contains("<memoryInfo><sizeInMiB>16384</sizeInMiB></memoryInfo>"), "{types}");
    is_error(
        ec2(&t, &k, &[("Action", "DescribeInstanceTypes"), ("InstanceType.1", "z1.nope")]).await,
        StatusCode::BAD_REQUEST,
        "InvalidInstanceType",
    );
    let zones = ok(&t, &k, &[("Action", "DescribeAvailabilityZones")]).await;
    assert_eq!(one(&zones, "zoneName"), "nubo-1a");
    assert_eq!(one(&zones, "regionName"), "nubo-1");
}

/// A change sent as `GET /?Action=...` is in the audit log like one sent
/// as POST (the audit once logged only POST, PUT, PATCH and DELETE); reads
/// and a browser's visit to `/` are not.
#[tokio::test]
async fn ec2_changes_sent_as_get_are_audited() {
    let t = T::new().await;
    let k = admin_key(&t).await;
    let (s, body) = signed_get(&t, &k, &[("Action", "CreateKeyPair"), ("KeyName", "by-get")]).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, body) = signed_get(&t, &k, &[("Action", "DescribeKeyPairs")]).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert!(body.contains("by-get"), "{body}");
    let (s, _) = send(&t, http::Request::builder().uri("/").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::SEE_OTHER);

    let audit = t.audit().await;
    assert!(
        audit.iter().any(|e| e["method"] == "GET" && e["path"] == "/ (ec2:CreateKeyPair)" && e["status"] == 200),
        "{audit:?}"
    );
    assert!(!audit.iter().any(|e| e["path"] == "/ (ec2:DescribeKeyPairs)"), "{audit:?}");
    assert!(!audit.iter().any(|e| e["method"] == "GET" && e["path"] == "/ (to the portal)"), "{audit:?}");
}
