//! EC2 snapshots, images and volume modifications on the in-process
//! harness, the host's side played by agent reports: CreateSnapshot,
//! DescribeSnapshots (filters, owners, pages) and DeleteSnapshot over
//! Nubo's volume snapshots; CreateImage and DeregisterImage over instance
//! snapshots; ModifyVolume and DescribeVolumesModifications; EC2's error
//! codes for each; and another project, or a reader, kept out.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use axum::http::StatusCode;
use common::ec2::*;
use common::T;
use serde_json::{json, Value};

const BAD: StatusCode = StatusCode::BAD_REQUEST;

async fn report(t: &T, host: &str, cred: &str, body: Value) {
    t.ok("POST", &format!("/api/v1/agent/hosts/{host}/report"), cred, Some(body)).await;
}

/// A volume of `size` GiB made over EC2 and reported available; its id.
async fn volume(t: &T, k: &Key, host: &str, cred: &str, size: u64) -> String {
    let size_text = size.to_string();
    let v = ok(t, k, &[("Action", "CreateVolume"), ("Size", &size_text)]).await;
    let id = one(&v, "volumeId");
    report(
        t,
        host,
        cred,
        json!({"instances": [], "volumes": [{"id": id, "state": "available", "size_gib": size, "error": null}]}),
    )
    .await;
    id
}

fn snapshot_report(id: &str, state: &str) -> Value {
    json!({"instances": [], "snapshots": [{"id": id, "state": state, "consistency": "crash", "error": null}]})
}

#[tokio::test]
async fn snapshots_are_nubos_volume_snapshots_with_ec2s_states_filters_and_pages() {
    let t = T::new().await;
    let (host, cred) = t.add_host_with_id().await;
    let host = host.to_string();
    let alice = t.user("alice", "proj-a", "member").await;
    let k = key(&t, &alice).await;
    let vid = volume(&t, &k, &host, &cred, 2).await;

    let made = ok(
        &t,
        &k,
        &[
            ("Action", "CreateSnapshot"),
            ("VolumeId", &vid),
            ("Description", "nightly copy"),
            ("TagSpecification.1.ResourceType", "snapshot"),
            ("TagSpecification.1.Tag.1.Key", "Name"),
            ("TagSpecification.1.Tag.1.Value", "first"),
        ],
    )
    .await;
    assert!(made.contains("<CreateSnapshotResponse"), "{made}");
    let sid = one(&made, "snapshotId");
    assert!(sid.starts_with("snap-"), "{made}");
    assert_eq!(one(&made, "status"), "pending");
    assert_eq!(one(&made, "volumeId"), vid);
    assert_eq!(one(&made, "volumeSize"), "2");
    assert_eq!(one(&made, "description"), "nightly copy");
    assert!(made.contains("<tagSet><item><key>Name</key><value>first</value></item></tagSet>"), "{made}");

    // The same snapshot through REST, named by its Name tag.
    let rest = t.ok("GET", &format!("/api/v1/snapshots/{sid}"), &alice, None).await;
    assert_eq!((rest["name"].as_str(), rest["state"].as_str()), (Some("first"), Some("pending")), "{rest}");

    // pending until the host has it, then completed (what the snapshot_completed waiter waits for).
    let d = ok(&t, &k, &[("Action", "DescribeSnapshots"), ("SnapshotId.1", &sid)]).await;
    assert_eq!((one(&d, "status"), one(&d, "progress")), ("pending".to_string(), "0%".to_string()), "{d}");
    report(&t, &host, &cred, snapshot_report(&sid, "completed")).await;
    let d = ok(&t, &k, &[("Action", "DescribeSnapshots"), ("SnapshotId.1", &sid)]).await;
    assert_eq!((one(&d, "status"), one(&d, "progress")), ("completed".to_string(), "100%".to_string()), "{d}");
    assert_eq!(one(&d, "description"), "nightly copy");

    // Five more, for filters and pages.
    let mut ids = vec![sid.clone()];
    for _ in 0..5 {
        let s = ok(&t, &k, &[("Action", "CreateSnapshot"), ("VolumeId", &vid)]).await;
        ids.push(one(&s, "snapshotId"));
    }
    for (name, value, want) in [
        ("status", "completed", vec![sid.clone()]),
        ("description", "nightly*", vec![sid.clone()]),
        ("tag:Name", "first", vec![sid.clone()]),
        ("snapshot-id", &ids[2], vec![ids[2].clone()]),
        ("volume-id", &vid, ids.clone()),
        ("volume-size", "2", ids.clone()),
        ("status", "pending", ids[1..].to_vec()),
    ] {
        let d =
            ok(&t, &k, &[("Action", "DescribeSnapshots"), ("Filter.1.Name", name), ("Filter.1.Value.1", value)]).await;
        assert_eq!(all(&d, "snapshotId"), want, "{name}={value}: {d}");
    }
    let mine = ok(&t, &k, &[("Action", "DescribeSnapshots"), ("Owner.1", "self")]).await;
    assert_eq!(all(&mine, "snapshotId"), ids);
    let others = ok(&t, &k, &[("Action", "DescribeSnapshots"), ("Owner.1", "amazon")]).await;
    assert!(all(&others, "snapshotId").is_empty(), "{others}");
    is_error(
        ec2(&t, &k, &[("Action", "DescribeSnapshots"), ("Filter.1.Name", "bogus"), ("Filter.1.Value.1", "x")]).await,
        BAD,
        "InvalidParameterValue",
    );

    // Pages of 5 as EC2 cuts them; MaxResults does not mix with ids.
    let first = ok(&t, &k, &[("Action", "DescribeSnapshots"), ("MaxResults", "5")]).await;
    let token = one(&first, "nextToken");
    let second = ok(&t, &k, &[("Action", "DescribeSnapshots"), ("MaxResults", "5"), ("NextToken", &token)]).await;
    assert!(all(&second, "nextToken").is_empty(), "{second}");
    let mut union = all(&first, "snapshotId");
    assert_eq!(union.len(), 5);
    union.extend(all(&second, "snapshotId"));
    assert_eq!(union, ids);
    is_error(
        ec2(&t, &k, &[("Action", "DescribeSnapshots"), ("SnapshotId.1", &sid), ("MaxResults", "5")]).await,
        BAD,
        "InvalidParameterCombination",
    );
    is_error(ec2(&t, &k, &[("Action", "DescribeSnapshots"), ("MaxResults", "4")]).await, BAD, "InvalidParameterValue");
    is_error(
        ec2(&t, &k, &[("Action", "DescribeSnapshots"), ("NextToken", "garbage")]).await,
        BAD,
        "InvalidPaginationToken",
    );

    // Tags on snapshots through the tag actions too.
    ok(&t, &k, &[("Action", "CreateTags"), ("ResourceId.1", &ids[1]), ("Tag.1.Key", "tier"), ("Tag.1.Value", "b")])
        .await;
    let tags =
        ok(&t, &k, &[("Action", "DescribeTags"), ("Filter.1.Name", "resource-type"), ("Filter.1.Value.1", "snapshot")])
            .await;
    let mut tagged = all(&tags, "resourceId");
    tagged.sort();
    let mut want = vec![sid.clone(), ids[1].clone()];
    want.sort();
    assert_eq!(tagged, want, "{tags}");
    let tiered =
        ok(&t, &k, &[("Action", "DescribeSnapshots"), ("Filter.1.Name", "tag-key"), ("Filter.1.Value.1", "tier")])
            .await;
    assert_eq!(all(&tiered, "snapshotId"), [ids[1].clone()]);

    // Errors as EC2 names them.
    for (params, code) in [
        (vec![("Action", "DescribeSnapshots"), ("SnapshotId.1", "snap-nope")], "InvalidSnapshotID.Malformed"),
        (vec![("Action", "DescribeSnapshots"), ("SnapshotId.1", "snap-0123456789abcdef0")], "InvalidSnapshot.NotFound"),
        (vec![("Action", "DeleteSnapshot"), ("SnapshotId", "snap-0123456789abcdef0")], "InvalidSnapshot.NotFound"),
        (vec![("Action", "DeleteSnapshot"), ("SnapshotId", "snap-x")], "InvalidSnapshotID.Malformed"),
        (vec![("Action", "DeleteSnapshot")], "MissingParameter"),
        (vec![("Action", "CreateSnapshot")], "MissingParameter"),
        (vec![("Action", "CreateSnapshot"), ("VolumeId", "vol-0123456789abcdef0")], "InvalidVolume.NotFound"),
        (vec![("Action", "CreateSnapshot"), ("VolumeId", "vol-x")], "InvalidVolumeID.Malformed"),
        (
            vec![
                ("Action", "CreateSnapshot"),
                ("VolumeId", vid.as_str()),
                ("TagSpecification.1.ResourceType", "volume"),
                ("TagSpecification.1.Tag.1.Key", "a"),
            ],
            "InvalidParameterValue",
        ),
    ] {
        is_error(ec2(&t, &k, &params).await, BAD, code);
    }
    // A pending snapshot cannot be deleted yet.
    is_error(ec2(&t, &k, &[("Action", "DeleteSnapshot"), ("SnapshotId", &ids[1])]).await, BAD, "IncorrectState");

    // Deleted: gone from EC2 at once, and its tags with it.
    let del = ok(&t, &k, &[("Action", "DeleteSnapshot"), ("SnapshotId", &sid)]).await;
    assert_eq!(one(&del, "return"), "true");
    is_error(
        ec2(&t, &k, &[("Action", "DescribeSnapshots"), ("SnapshotId.1", &sid)]).await,
        BAD,
        "InvalidSnapshot.NotFound",
    );
    is_error(ec2(&t, &k, &[("Action", "DeleteSnapshot"), ("SnapshotId", &sid)]).await, BAD, "InvalidSnapshot.NotFound");
    let d = ok(&t, &k, &[("Action", "DescribeSnapshots")]).await;
    assert_eq!(all(&d, "snapshotId"), ids[1..].to_vec());
    let tags =
        ok(&t, &k, &[("Action", "DescribeTags"), ("Filter.1.Name", "resource-id"), ("Filter.1.Value.1", &sid)]).await;
    assert!(all(&tags, "resourceId").is_empty(), "{tags}");
}

#[tokio::test]
async fn modify_volume_grows_only_and_keeps_each_modification() {
    let t = T::new().await;
    let (host, cred) = t.add_host_with_id().await;
    let host = host.to_string();
    let alice = t.user("alice", "proj-a", "member").await;
    let k = key(&t, &alice).await;
    let vid = volume(&t, &k, &host, &cred, 1).await;
    let untouched = volume(&t, &k, &host, &cred, 1).await;

    for (params, code) in [
        (vec![("Action", "ModifyVolume"), ("VolumeId", vid.as_str())], "MissingParameter"),
        (vec![("Action", "ModifyVolume"), ("Size", "2")], "MissingParameter"),
        (vec![("Action", "ModifyVolume"), ("VolumeId", vid.as_str()), ("Size", "1")], "InvalidParameterValue"),
        (vec![("Action", "ModifyVolume"), ("VolumeId", vid.as_str()), ("Size", "0")], "InvalidParameterValue"),
        (
            vec![("Action", "ModifyVolume"), ("VolumeId", vid.as_str()), ("Size", "2"), ("VolumeType", "io2")],
            "InvalidParameterValue",
        ),
        (
            vec![("Action", "ModifyVolume"), ("VolumeId", vid.as_str()), ("Size", "2"), ("Iops", "6000")],
            "InvalidParameterValue",
        ),
        (
            vec![("Action", "ModifyVolume"), ("VolumeId", "vol-0123456789abcdef0"), ("Size", "2")],
            "InvalidVolume.NotFound",
        ),
        (vec![("Action", "ModifyVolume"), ("VolumeId", "vol-x"), ("Size", "2")], "InvalidVolumeID.Malformed"),
        (
            vec![("Action", "DescribeVolumesModifications"), ("VolumeId.1", untouched.as_str())],
            "InvalidVolumeModification.NotFound",
        ),
        (
            vec![("Action", "DescribeVolumesModifications"), ("VolumeId.1", "vol-0123456789abcdef0")],
            "InvalidVolume.NotFound",
        ),
    ] {
        is_error(ec2(&t, &k, &params).await, BAD, code);
    }

    // Grown: modifying until the host has the larger file, then completed.
    let m = ok(&t, &k, &[("Action", "ModifyVolume"), ("VolumeId", &vid), ("Size", "3"), ("VolumeType", "gp3")]).await;
    assert!(m.contains("<ModifyVolumeResponse"), "{m}");
    assert!(m.contains("<volumeModification><volumeId>"), "{m}");
    assert_eq!(one(&m, "modificationState"), "modifying");
    assert_eq!((one(&m, "originalSize"), one(&m, "targetSize")), ("1".to_string(), "3".to_string()));
    let d = ok(&t, &k, &[("Action", "DescribeVolumes"), ("VolumeId.1", &vid)]).await;
    assert_eq!(one(&d, "size"), "3");
    is_error(
        ec2(&t, &k, &[("Action", "ModifyVolume"), ("VolumeId", &vid), ("Size", "4")]).await,
        BAD,
        "IncorrectModificationState",
    );
    let d = ok(&t, &k, &[("Action", "DescribeVolumesModifications"), ("VolumeId.1", &vid)]).await;
    assert_eq!(one(&d, "modificationState"), "modifying");
    assert!(all(&d, "endTime").is_empty(), "{d}");
    report(
        &t,
        &host,
        &cred,
        json!({"instances": [], "volumes": [{"id": vid, "state": "available", "size_gib": 3, "error": null}]}),
    )
    .await;
    let d = ok(&t, &k, &[("Action", "DescribeVolumesModifications"), ("VolumeId.1", &vid)]).await;
    assert_eq!((one(&d, "modificationState"), one(&d, "progress")), ("completed".into(), "100".into()), "{d}");
    assert_eq!(all(&d, "endTime").len(), 1, "{d}");

    // Never smaller; a second modification becomes the one shown.
    let shrink = is_error(
        ec2(&t, &k, &[("Action", "ModifyVolume"), ("VolumeId", &vid), ("Size", "2")]).await,
        BAD,
        "InvalidParameterValue",
    );
    assert!(shrink.contains("cannot be smaller"), "{shrink}");
    ok(&t, &k, &[("Action", "ModifyVolume"), ("VolumeId", &vid), ("Size", "5")]).await;
    let d = ok(&t, &k, &[("Action", "DescribeVolumesModifications")]).await;
    assert_eq!(all(&d, "volumeId"), vec![vid.clone()], "{d}");
    assert_eq!((one(&d, "originalSize"), one(&d, "targetSize")), ("3".to_string(), "5".to_string()));
    // The host fails it: failed, with its message.
    report(
        &t,
        &host,
        &cred,
        json!({"instances": [], "volumes": [{"id": vid, "state": "error", "size_gib": 3, "error": "pool full"}]}),
    )
    .await;
    let d = ok(&t, &k, &[("Action", "DescribeVolumesModifications"), ("VolumeId.1", &vid)]).await;
    assert_eq!((one(&d, "modificationState"), one(&d, "statusMessage")), ("failed".into(), "pool full".into()), "{d}");

    // Filters and pages.
    ok(&t, &k, &[("Action", "ModifyVolume"), ("VolumeId", &untouched), ("Size", "2")]).await;
    let modifying = ok(
        &t,
        &k,
        &[
            ("Action", "DescribeVolumesModifications"),
            ("Filter.1.Name", "modification-state"),
            ("Filter.1.Value.1", "modifying"),
        ],
    )
    .await;
    assert_eq!(all(&modifying, "volumeId"), vec![untouched.clone()], "{modifying}");
    let first = ok(&t, &k, &[("Action", "DescribeVolumesModifications"), ("MaxResults", "1")]).await;
    assert_eq!(all(&first, "volumeId"), vec![vid.clone()], "{first}");
    let token = one(&first, "nextToken");
    let second =
        ok(&t, &k, &[("Action", "DescribeVolumesModifications"), ("MaxResults", "1"), ("NextToken", &token)]).await;
    assert_eq!(all(&second, "volumeId"), vec![untouched.clone()], "{second}");
    assert!(all(&second, "nextToken").is_empty(), "{second}");
}

#[tokio::test]
async fn an_attached_volume_is_optimizing_until_its_guest_sees_the_new_size() {
    let t = T::new().await;
    let (host, cred) = t.add_host_with_id().await;
    let host = host.to_string();
    let k = admin_key(&t).await;
    let ami = nubo_api::ids::ImageId::builtin("tiny").to_string();
    let run = ok(&t, &k, &[("Action", "RunInstances"), ("ImageId", &ami), ("InstanceType", "t2.nano")]).await;
    let iid = one(&run, "instanceId");
    let vid = volume(&t, &k, &host, &cred, 1).await;
    ok(&t, &k, &[("Action", "AttachVolume"), ("VolumeId", &vid), ("InstanceId", &iid), ("Device", "/dev/sdf")]).await;
    let seen = |bytes: u64, gib: u64| {
        json!({"instances": [{"id": iid, "power": "running", "pid": 1, "error": null,
            "volumes": [{"volume_id": vid, "state": "attached", "guest_device": "/dev/vdb", "guest_size_bytes": bytes, "error": null}]}],
            "volumes": [{"id": vid, "state": "available", "size_gib": gib, "error": null}]})
    };
    report(&t, &host, &cred, seen(1 << 30, 1)).await;
    let d = ok(&t, &k, &[("Action", "DescribeVolumes"), ("VolumeId.1", &vid)]).await;
    assert_eq!(one(&d, "status"), "in-use", "{d}");

    ok(&t, &k, &[("Action", "ModifyVolume"), ("VolumeId", &vid), ("Size", "2")]).await;
    // The file is grown, the guest still sees 1 GiB: optimizing.
    report(&t, &host, &cred, seen(1 << 30, 2)).await;
    let d = ok(&t, &k, &[("Action", "DescribeVolumesModifications"), ("VolumeId.1", &vid)]).await;
    assert_eq!(one(&d, "modificationState"), "optimizing", "{d}");
    report(&t, &host, &cred, seen(2 << 30, 2)).await;
    let d = ok(&t, &k, &[("Action", "DescribeVolumesModifications"), ("VolumeId.1", &vid)]).await;
    assert_eq!(one(&d, "modificationState"), "completed", "{d}");
}

#[tokio::test]
async fn create_image_makes_a_pending_image_that_becomes_available_and_deregisters() {
    let t = T::new().await;
    let (host, cred) = t.add_host_with_id().await;
    let alice = t.user("alice", "proj-a", "member").await;
    let k = key(&t, &alice).await;
    let ami = nubo_api::ids::ImageId::builtin("tiny").to_string();
    let run = ok(&t, &k, &[("Action", "RunInstances"), ("ImageId", &ami), ("InstanceType", "t2.nano")]).await;
    let iid = one(&run, "instanceId");

    // Not running yet: refused as EC2 refuses it.
    is_error(
        ec2(&t, &k, &[("Action", "CreateImage"), ("InstanceId", &iid), ("Name", "golden")]).await,
        BAD,
        "IncorrectInstanceState",
    );
    report(&t, host.as_str(), &cred, json!({"instances": [{"id": iid, "power": "running", "pid": 1, "error": null}]}))
        .await;
    let made = ok(
        &t,
        &k,
        &[
            ("Action", "CreateImage"),
            ("InstanceId", &iid),
            ("Name", "golden"),
            ("Description", "web tier"),
            ("NoReboot", "true"),
            ("TagSpecification.1.ResourceType", "image"),
            ("TagSpecification.1.Tag.1.Key", "role"),
            ("TagSpecification.1.Tag.1.Value", "web"),
        ],
    )
    .await;
    assert!(made.contains("<CreateImageResponse"), "{made}");
    let image = one(&made, "imageId");
    let d = ok(&t, &k, &[("Action", "DescribeImages"), ("ImageId.1", &image)]).await;
    assert_eq!(one(&d, "imageState"), "pending", "{d}");
    assert_eq!((one(&d, "name"), one(&d, "description")), ("golden".to_string(), "web tier".to_string()));
    assert_eq!(one(&d, "sourceInstanceId"), iid);
    assert!(d.contains("<key>role</key><value>web</value>"), "{d}");
    let owned = ok(&t, &k, &[("Action", "DescribeImages"), ("Owner.1", "self")]).await;
    assert_eq!(all(&owned, "imageId"), vec![image.clone()], "{owned}");

    for (params, code) in [
        (vec![("Action", "CreateImage"), ("InstanceId", iid.as_str()), ("Name", "golden")], "InvalidAMIName.Duplicate"),
        (vec![("Action", "CreateImage"), ("InstanceId", iid.as_str()), ("Name", "a b/c")], "InvalidAMIName.Malformed"),
        (vec![("Action", "CreateImage"), ("InstanceId", iid.as_str())], "MissingParameter"),
        (
            vec![("Action", "CreateImage"), ("InstanceId", "i-0123456789abcdef0"), ("Name", "x")],
            "InvalidInstanceID.NotFound",
        ),
        (vec![("Action", "DeregisterImage"), ("ImageId", "ami-0123456789abcdef0")], "InvalidAMIID.NotFound"),
        (vec![("Action", "DeregisterImage"), ("ImageId", "ami-zz")], "InvalidAMIID.Malformed"),
        (vec![("Action", "DeregisterImage")], "MissingParameter"),
    ] {
        is_error(ec2(&t, &k, &params).await, BAD, code);
    }
    // Being saved: not yet deregistered.
    is_error(ec2(&t, &k, &[("Action", "DeregisterImage"), ("ImageId", &image)]).await, BAD, "IncorrectState");
    // A builtin image is no project's to deregister.
    is_error(
        ec2(&t, &k, &[("Action", "DeregisterImage"), ("ImageId", &ami)]).await,
        StatusCode::FORBIDDEN,
        "UnauthorizedOperation",
    );

    // The host uploads the copy (a qcow2): available.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("disk.qcow2");
    let made = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&file)
        .arg("64M")
        .status()
        .expect("qemu-img runs");
    assert!(made.success());
    let bytes = std::fs::read(&file).unwrap();
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&bytes))
    };
    let path = format!("/api/v1/agent/images/{image}/file?size_bytes={}&sha256={sha}", bytes.len());
    let (s, v) = t.raw("PUT", &path, Some(&cred), "application/octet-stream", bytes).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let d = ok(&t, &k, &[("Action", "DescribeImages"), ("ImageId.1", &image)]).await;
    assert_eq!(one(&d, "imageState"), "available", "{d}");

    let gone = ok(&t, &k, &[("Action", "DeregisterImage"), ("ImageId", &image)]).await;
    assert_eq!(one(&gone, "return"), "true");
    is_error(ec2(&t, &k, &[("Action", "DescribeImages"), ("ImageId.1", &image)]).await, BAD, "InvalidAMIID.NotFound");
    let tags =
        ok(&t, &k, &[("Action", "DescribeTags"), ("Filter.1.Name", "resource-id"), ("Filter.1.Value.1", &image)]).await;
    assert!(all(&tags, "resourceId").is_empty(), "{tags}");
}

#[tokio::test]
async fn another_project_sees_nothing_and_a_reader_changes_nothing() {
    let t = T::new().await;
    let (host, cred) = t.add_host_with_id().await;
    let host = host.to_string();
    let alice = t.user("alice", "proj-a", "member").await;
    let bob = t.user("bob", "proj-b", "member").await;
    let rita = t.user("rita", "proj-a", "reader").await;
    let (ka, kb, kr) = (key(&t, &alice).await, key(&t, &bob).await, key(&t, &rita).await);
    let vid = volume(&t, &ka, &host, &cred, 1).await;
    let sid = one(&ok(&t, &ka, &[("Action", "CreateSnapshot"), ("VolumeId", &vid)]).await, "snapshotId");
    report(&t, &host, &cred, snapshot_report(&sid, "completed")).await;
    ok(&t, &ka, &[("Action", "ModifyVolume"), ("VolumeId", &vid), ("Size", "2")]).await;
    let ami = nubo_api::ids::ImageId::builtin("tiny").to_string();
    let iid = one(
        &ok(&t, &ka, &[("Action", "RunInstances"), ("ImageId", &ami), ("InstanceType", "t2.nano")]).await,
        "instanceId",
    );
    report(&t, &host, &cred, json!({"instances": [{"id": iid, "power": "running", "pid": 1, "error": null}]})).await;
    let image =
        one(&ok(&t, &ka, &[("Action", "CreateImage"), ("InstanceId", &iid), ("Name", "mine")]).await, "imageId");

    // Bob: alice's resources do not exist for him.
    for (params, code) in [
        (vec![("Action", "DescribeSnapshots"), ("SnapshotId.1", sid.as_str())], "InvalidSnapshot.NotFound"),
        (vec![("Action", "DeleteSnapshot"), ("SnapshotId", sid.as_str())], "InvalidSnapshot.NotFound"),
        (
            vec![("Action", "CreateTags"), ("ResourceId.1", sid.as_str()), ("Tag.1.Key", "x")],
            "InvalidSnapshot.NotFound",
        ),
        (vec![("Action", "CreateSnapshot"), ("VolumeId", vid.as_str())], "InvalidVolume.NotFound"),
        (vec![("Action", "ModifyVolume"), ("VolumeId", vid.as_str()), ("Size", "3")], "InvalidVolume.NotFound"),
        (vec![("Action", "DescribeVolumesModifications"), ("VolumeId.1", vid.as_str())], "InvalidVolume.NotFound"),
        (
            vec![("Action", "CreateImage"), ("InstanceId", iid.as_str()), ("Name", "theirs")],
            "InvalidInstanceID.NotFound",
        ),
        (vec![("Action", "DeregisterImage"), ("ImageId", image.as_str())], "InvalidAMIID.NotFound"),
    ] {
        is_error(ec2(&t, &kb, &params).await, BAD, code);
    }
    for action in ["DescribeSnapshots", "DescribeVolumesModifications"] {
        let d = ok(&t, &kb, &[("Action", action)]).await;
        assert!(all(&d, "volumeId").is_empty(), "{action}: {d}");
    }

    // Rita reads alice's project, and changes nothing in it.
    let d = ok(&t, &kr, &[("Action", "DescribeSnapshots")]).await;
    assert_eq!(all(&d, "snapshotId"), vec![sid.clone()]);
    let d = ok(&t, &kr, &[("Action", "DescribeVolumesModifications")]).await;
    assert_eq!(all(&d, "volumeId"), vec![vid.clone()]);
    for params in [
        vec![("Action", "CreateSnapshot"), ("VolumeId", vid.as_str())],
        vec![("Action", "DeleteSnapshot"), ("SnapshotId", sid.as_str())],
        vec![("Action", "ModifyVolume"), ("VolumeId", vid.as_str()), ("Size", "3")],
        vec![("Action", "CreateImage"), ("InstanceId", iid.as_str()), ("Name", "ritas")],
        vec![("Action", "DeregisterImage"), ("ImageId", image.as_str())],
    ] {
        is_error(ec2(&t, &kr, &params).await, StatusCode::FORBIDDEN, "UnauthorizedOperation");
    }
    // Nothing changed.
    let d = ok(&t, &ka, &[("Action", "DescribeSnapshots")]).await;
    assert_eq!(all(&d, "snapshotId"), vec![sid.clone()]);
    let d = ok(&t, &ka, &[("Action", "DescribeVolumes"), ("VolumeId.1", &vid)]).await;
    assert_eq!(one(&d, "size"), "2");
    let d = ok(&t, &ka, &[("Action", "DescribeImages"), ("Owner.1", "self")]).await;
    assert_eq!(all(&d, "imageId"), [image]);
}
