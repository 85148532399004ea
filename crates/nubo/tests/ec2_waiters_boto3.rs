//! boto3's waiters and paginators against a real cloud (`nubo up`, one
//! host, real `tiny` guests), as automation tools use them: six instances
//! from one RunInstances (MinCount/MaxCount 6), `instance_running`, then
//! DescribeInstances through `get_paginator` in pages of 5 (two pages,
//! every instance once); a volume through `volume_available` and, attached,
//! `volume_in_use`; six snapshots of it through `snapshot_completed` and
//! the DescribeSnapshots paginator; CreateImage through `image_available`,
//! then DeregisterImage; ModifyVolume on the attached volume
//! until DescribeVolumesModifications says completed, after which the
//! guest itself sees the new size (its /sys/block); then
//! `instance_stopped` and `instance_terminated`. Every call goes to the
//! server on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::*;

const PRELUDE: &str = r##"
import os, time
# TCG guests on a shared machine boot slowly: poll every 3 s, for 10 minutes.
patient = {"Delay": 3, "MaxAttempts": 200}

def step(text):
    print("[%s] %s" % (time.strftime("%H:%M:%S"), text), flush=True)
"##;

const LAUNCH: &str = r##"
ami = ec2.describe_images(Filters=[{"Name": "name", "Values": ["tiny"]}])["Images"][0]["ImageId"]
run = ec2.run_instances(ImageId=ami, InstanceType="t2.nano", MinCount=6, MaxCount=6)
ids = sorted(i["InstanceId"] for i in run["Instances"])
assert len(ids) == 6, run
step("launched %s" % ids)
ec2.get_waiter("instance_running").wait(InstanceIds=ids, WaiterConfig=patient)
step("all running")

pages = list(ec2.get_paginator("describe_instances").paginate(PaginationConfig={"PageSize": 5}))
sizes = [sum(len(r["Instances"]) for r in p["Reservations"]) for p in pages]
assert sizes == [5, 1], sizes
assert "NextToken" in pages[0] and "NextToken" not in pages[-1], pages
union = sorted(i["InstanceId"] for p in pages for r in p["Reservations"] for i in r["Instances"])
assert union == ids, (union, ids)
step("DescribeInstances in pages of %s" % sizes)

vol = ec2.create_volume(Size=1, AvailabilityZone="nubo-1a")["VolumeId"]
ec2.get_waiter("volume_available").wait(VolumeIds=[vol], WaiterConfig=patient)
ec2.attach_volume(VolumeId=vol, InstanceId=ids[0], Device="/dev/sdf")
ec2.get_waiter("volume_in_use").wait(VolumeIds=[vol], WaiterConfig=patient)
wait_for("the guest to see the volume", 300, lambda: ec2.describe_volumes(VolumeIds=[vol])["Volumes"][0]["Attachments"][0]["State"] == "attached")
step("%s attached to %s" % (vol, ids[0]))

first = ec2.create_snapshot(VolumeId=vol, Description="before growing",
                            TagSpecifications=[{"ResourceType": "snapshot", "Tags": [{"Key": "Name", "Value": "waiters"}]}])
assert first["State"] == "pending" and first["VolumeSize"] == 1 and first["Description"] == "before growing", first
snaps = [first["SnapshotId"]]
ec2.get_waiter("snapshot_completed").wait(SnapshotIds=snaps, WaiterConfig=patient)
# Each its own description: two identical calls within one second would be
# one signed request sent twice, which the server refuses as a replay.
for n in range(5):
    snaps.append(ec2.create_snapshot(VolumeId=vol, Description="copy %d" % n)["SnapshotId"])
ec2.get_waiter("snapshot_completed").wait(SnapshotIds=snaps, WaiterConfig=patient)
pages = list(ec2.get_paginator("describe_snapshots").paginate(OwnerIds=["self"], PaginationConfig={"PageSize": 5}))
assert [len(p["Snapshots"]) for p in pages] == [5, 1], pages
assert sorted(s["SnapshotId"] for p in pages for s in p["Snapshots"]) == sorted(snaps), pages
named = ec2.describe_snapshots(Filters=[{"Name": "tag:Name", "Values": ["waiters"]}])["Snapshots"]
assert [s["SnapshotId"] for s in named] == [first["SnapshotId"]] and named[0]["State"] == "completed", named
step("6 snapshots completed, paged 5 + 1")

image = ec2.create_image(InstanceId=ids[1], Name="waiters-golden", Description="from boto3", NoReboot=True)["ImageId"]
assert ec2.describe_images(ImageIds=[image])["Images"][0]["State"] in ("pending", "available")
ec2.get_waiter("image_available").wait(ImageIds=[image], WaiterConfig=patient)
shown = ec2.describe_images(Owners=["self"])["Images"]
assert [(i["ImageId"], i["Name"], i["Description"]) for i in shown] == [(image, "waiters-golden", "from boto3")], shown
ec2.deregister_image(ImageId=image)
assert ec2.describe_images(Owners=["self"])["Images"] == []
step("image %s available, then deregistered" % image)

m = ec2.modify_volume(VolumeId=vol, Size=2)["VolumeModification"]
assert (m["ModificationState"], m["OriginalSize"], m["TargetSize"]) == ("modifying", 1, 2), m
def modified():
    got = ec2.describe_volumes_modifications(VolumeIds=[vol])["VolumesModifications"][0]
    assert got["ModificationState"] != "failed", got
    return got["ModificationState"] == "completed" and got
done = wait_for("the modification to complete", 300, modified)
assert done["TargetSize"] == 2 and "EndTime" in done, done
assert ec2.describe_volumes(VolumeIds=[vol])["Volumes"][0]["Size"] == 2
step("grown to 2 GiB online")
print("IDS=" + ",".join(ids))
print("VOL=" + vol)
print("SNAPS=" + ",".join(snaps))
print("boto3-launch-ok")
"##;

const FINISH: &str = r##"
ids = os.environ["IDS"].split(",")
vol = os.environ["VOL"]
ec2.detach_volume(VolumeId=vol)
ec2.get_waiter("volume_available").wait(VolumeIds=[vol], WaiterConfig=patient)
for s in os.environ["SNAPS"].split(","):
    ec2.delete_snapshot(SnapshotId=s)
ec2.delete_volume(VolumeId=vol)
step("volume detached, snapshots and volume deleted")
ec2.stop_instances(InstanceIds=ids[:2])
ec2.get_waiter("instance_stopped").wait(InstanceIds=ids[:2], WaiterConfig=patient)
step("two stopped")
ec2.terminate_instances(InstanceIds=ids)
ec2.get_waiter("instance_terminated").wait(InstanceIds=ids, WaiterConfig=patient)
step("all terminated")
print("boto3-finish-ok")
"##;

fn line_of(stdout: &str, key: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} line in the script's output:\n{stdout}"))
        .to_string()
}

#[test]
fn boto3_waiters_and_paginators_over_six_instances_a_volume_and_its_snapshots() {
    let cloud = Cloud::up();
    let aws = Aws::new(&cloud);
    let run = |script: &str, env: &[(&str, &str)], done: &str| {
        let mut cmd = aws.boto3(&format!("{PRELUDE}{script}"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("python");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        eprintln!("{stdout}");
        assert!(
            out.status.success() && stdout.contains(done),
            "boto3 script failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let out = run(LAUNCH, &[], "boto3-launch-ok");
    let (ids, vol, snaps) = (line_of(&out, "IDS="), line_of(&out, "VOL="), line_of(&out, "SNAPS="));
    let first = ids.split(',').next().unwrap().to_string();

    // The guest itself sees the grown disk: its serial is the volume id without the dash.
    let serial = vol.replacen('-', "", 1);
    let sizes = wait_until("the guest to see 2 GiB", std::time::Duration::from_secs(120), || {
        let (code, text) =
            guest(&cloud, &first, "for d in /sys/block/vd*; do echo \"$(cat $d/serial) $(cat $d/size)\"; done");
        let seen = text.lines().find(|l| l.starts_with(&serial)).map(str::to_string);
        (code == 0 && seen.as_deref().is_some_and(|l| l.ends_with(&format!(" {}", (2u64 << 30) / 512)))).then_some(text)
    });
    eprintln!("guest disks: {sizes}");
    let shown = cloud.nubo_json(&["volume", "show", &vol]);
    assert_eq!(shown["attachment"]["guest_size_bytes"], 2u64 << 30, "{shown}");

    run(FINISH, &[("IDS", &ids), ("VOL", &vol), ("SNAPS", &snaps)], "boto3-finish-ok");
}
