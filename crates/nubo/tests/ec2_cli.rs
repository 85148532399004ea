//! The EC2 API end to end with the stock tools: the `aws` CLI (awscli v1)
//! and boto3 from PyPI, in a virtualenv (`<repo>/.cache/venv-aws`, made on
//! first use and reused), against a real `nubo up` booting a `tiny` VM:
//! import a key pair, run an instance with user-data and tags (and the
//! same ClientToken again), the `instance-running` waiter, describe with
//! filters, the user-data's output in get-console-output, the instance
//! type in the guest's metadata service, a volume created, attached (seen
//! attached by the guest) and detached, stop, start and terminate with
//! their waiters, a wrong secret refused with
//! AuthFailure and an unknown id with InvalidInstanceID.NotFound (the
//! CLI's normal error exit), and a boto3 script reading instances and
//! volumes. Nothing outside is read: a fresh AWS config, no metadata
//! lookups, the endpoint on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::*;
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(180);

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}")).to_string()
}

#[test]
fn stock_aws_cli_and_boto3_drive_nubo() {
    let t0 = Instant::now();
    aws_venv();
    eprintln!("venv ready after {:.1} s", t0.elapsed().as_secs_f64());
    let cloud = Cloud::up();
    let aws = Aws::new(&cloud);
    let work = tempfile::tempdir().expect("tempdir");

    // Who am I: STS on the same endpoint, as tools ask before anything else.
    let me = aws.service_ok("sts", &["get-caller-identity"]);
    let account = me["Account"].as_str().expect("an account").to_string();
    assert!(account.starts_with("p-"), "the account is the project: {me}");
    assert_eq!(me["Arn"], format!("arn:aws:iam::{account}:user/admin"), "{me}");

    // Regions, zones, types and images, as the metadata service reports them.
    let regions = aws.ok(&["describe-regions"]);
    assert_eq!(regions["Regions"][0]["RegionName"], "nubo-1");
    let zones = aws.ok(&["describe-availability-zones"]);
    assert_eq!(zones["AvailabilityZones"][0]["ZoneName"], "nubo-1a");
    let types = aws.ok(&["describe-instance-types", "--instance-types", "t2.nano", "m5.large"]);
    let mut got: Vec<(String, u64, u64)> = types["InstanceTypes"]
        .as_array()
        .expect("types")
        .iter()
        .map(|t| {
            (
                s(&t["InstanceType"]),
                t["VCpuInfo"]["DefaultVCpus"].as_u64().unwrap_or(0),
                t["MemoryInfo"]["SizeInMiB"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    got.sort();
    assert_eq!(got, [("m5.large".to_string(), 2, 8192), ("t2.nano".to_string(), 1, 512)]);
    let images = aws.ok(&["describe-images", "--filters", "Name=name,Values=tiny"]);
    let ami = s(&images["Images"][0]["ImageId"]);
    assert!(ami.starts_with("ami-"), "{images}");

    // A key pair, imported from a key made here.
    let key = work.path().join("id");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "ec2-test", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen");
    assert!(st.success());
    let imported = aws.ok(&[
        "import-key-pair",
        "--key-name",
        "k1",
        "--public-key-material",
        &format!("fileb://{}.pub", key.display()),
    ]);
    assert_eq!(imported["KeyName"], "k1");
    assert!(s(&imported["KeyFingerprint"]).starts_with("SHA256:"), "{imported}");

    // Launch with user-data and tags; the same ClientToken gives the same instance.
    let user_data = work.path().join("user-data.sh");
    std::fs::write(&user_data, "#!/bin/sh\necho \"ec2-user-data-says-$((40 + 2))\"\n").expect("user-data");
    let run_args = [
        "run-instances",
        "--image-id",
        &ami,
        "--instance-type",
        "t2.nano",
        "--count",
        "1",
        "--key-name",
        "k1",
        "--user-data",
        &format!("file://{}", user_data.display()),
        "--client-token",
        "ec2-cli-test-1",
        "--tag-specifications",
        "ResourceType=instance,Tags=[{Key=Name,Value=web-1},{Key=team,Value=blue}]",
    ];
    let run = aws.ok(&run_args);
    let inst = &run["Instances"][0];
    let id = s(&inst["InstanceId"]);
    assert!(id.starts_with("i-"), "{run}");
    assert_eq!(inst["InstanceType"], "t2.nano");
    assert_eq!(inst["State"]["Name"], "pending");
    assert_eq!(inst["KeyName"], "k1");
    let again = aws.ok(&run_args);
    assert_eq!(s(&again["Instances"][0]["InstanceId"]), id, "same ClientToken, same instance");
    assert_eq!(again["ReservationId"], run["ReservationId"]);
    // The same resource through the REST API.
    let rest = cloud.instance(&id);
    assert_eq!(rest["instance_type"], "t2.nano");
    assert_eq!(rest["tags"]["team"], "blue");
    assert_eq!((rest["vcpus"].as_u64(), rest["memory_mib"].as_u64()), (Some(1), Some(512)));

    // A volume while it boots.
    let vol = aws.ok(&["create-volume", "--size", "1", "--availability-zone", "nubo-1a"]);
    let vol_id = s(&vol["VolumeId"]);
    assert!(vol_id.starts_with("vol-"), "{vol}");

    let t_boot = Instant::now();
    aws.ok(&["wait", "instance-running", "--instance-ids", &id]);
    eprintln!("instance-running after {:.1} s", t_boot.elapsed().as_secs_f64());
    // Both status checks pass once the host reports and the guest agent
    // answers (watched here, so a failure shows the last status; then the
    // CLI's own waiter, which polls every 15 s, passes at its first poll).
    let status = wait_until("both status checks ok", Duration::from_secs(90), || {
        let v = aws.ok(&["describe-instance-status", "--instance-ids", &id]);
        eprintln!("status: {v}");
        (v["InstanceStatuses"][0]["InstanceStatus"]["Status"] == "ok").then_some(v)
    });
    aws.ok(&["wait", "instance-status-ok", "--instance-ids", &id]);
    eprintln!("instance-status-ok after {:.1} s", t_boot.elapsed().as_secs_f64());
    let st = &status["InstanceStatuses"][0];
    assert_eq!(st["InstanceState"]["Name"], "running", "{status}");
    assert_eq!(st["SystemStatus"]["Status"], "ok", "{status}");
    assert_eq!(st["InstanceStatus"]["Details"][0]["Status"], "passed", "{status}");
    let found = aws.ok(&[
        "describe-instances",
        "--filters",
        "Name=instance-state-name,Values=running",
        "Name=tag:team,Values=blue",
    ]);
    let ids: Vec<String> = found["Reservations"]
        .as_array()
        .expect("reservations")
        .iter()
        .flat_map(|r| r["Instances"].as_array().cloned().unwrap_or_default())
        .map(|i| s(&i["InstanceId"]))
        .collect();
    assert_eq!(ids, std::slice::from_ref(&id));
    // The CLI's own pagination: --page-size sends MaxResults and follows
    // every NextToken; the pages together are the unpaged answer.
    let unpaged = aws.ok(&["describe-instances", "--query", "Reservations[].Instances[].InstanceId"]);
    let paged = aws.ok(&["describe-instances", "--page-size", "5", "--query", "Reservations[].Instances[].InstanceId"]);
    assert_eq!(paged, unpaged);
    assert!(paged.as_array().is_some_and(|a| a.iter().any(|i| i.as_str() == Some(id.as_str()))), "{paged}");
    let none = aws.ok(&["describe-instances", "--filters", "Name=tag:team,Values=red"]);
    assert_eq!(none["Reservations"].as_array().map(Vec::len), Some(0), "{none}");

    // The user-data ran at boot and printed to the console.
    let console = wait_until("the user-data's marker in get-console-output", BOOT, || {
        let out = aws.ok(&["get-console-output", "--instance-id", &id]);
        let text = out["Output"].as_str().unwrap_or("").to_string();
        text.contains("ec2-user-data-says-42").then_some(text)
    });
    assert!(console.contains("NUBO_BOOT_COMPLETE"));
    // The metadata service inside reports the type it was launched by.
    let imds = wait_until("the metadata service's instance-type", BOOT, || {
        let out = cloud.nubo(&[
            "instance",
            "exec",
            &id,
            "--timeout",
            "30",
            "--",
            "wget",
            "-qO-",
            "http://169.254.169.254/latest/meta-data/instance-type",
        ]);
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    assert_eq!(imds.trim(), "t2.nano");

    // Attach, seen attached by the guest; detach.
    aws.ok(&["wait", "volume-available", "--volume-ids", &vol_id]);
    let att = aws.ok(&["attach-volume", "--volume-id", &vol_id, "--instance-id", &id, "--device", "/dev/sdf"]);
    assert_eq!(att["Device"], "/dev/sdf");
    assert_eq!(att["State"], "attaching");
    wait_until("the volume attached", BOOT, || {
        let v = aws.ok(&["describe-volumes", "--volume-ids", &vol_id]);
        let a = &v["Volumes"][0]["Attachments"][0];
        (a["State"] == "attached").then(|| {
            assert_eq!(a["InstanceId"], id.as_str());
            assert_eq!(a["Device"], "/dev/sdf");
            assert_eq!(v["Volumes"][0]["State"], "in-use");
        })
    });
    let det = aws.ok(&["detach-volume", "--volume-id", &vol_id]);
    assert_eq!(det["State"], "detaching");
    aws.ok(&["wait", "volume-available", "--volume-ids", &vol_id]);

    // boto3, from a script.
    let script = r#"
import os, sys, boto3
ec2 = boto3.client("ec2", endpoint_url=os.environ["NUBO_EC2_ENDPOINT"])
inst = [i for r in ec2.describe_instances(InstanceIds=[sys.argv[1]])["Reservations"] for i in r["Instances"]]
assert len(inst) == 1 and inst[0]["State"]["Name"] == "running", inst
tags = {t["Key"]: t["Value"] for t in inst[0]["Tags"]}
assert tags == {"Name": "web-1", "team": "blue"}, tags
vols = ec2.describe_volumes(Filters=[{"Name": "volume-id", "Values": [sys.argv[2]]}])["Volumes"]
assert len(vols) == 1 and vols[0]["Size"] == 1 and vols[0]["State"] == "available", vols
print("boto3-ok", inst[0]["LaunchTime"].year)
"#;
    let out = aws.command("python", &aws.secret).arg("-c").arg(script).arg(&id).arg(&vol_id).output().expect("python");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("boto3-ok"),
        "boto3 script failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Errors, as the CLI's normal error exit.
    aws.fails(aws.run_with("wrong-secret-0123456789", &["describe-instances"]), "AuthFailure");
    aws.fails(aws.run(&["describe-instances", "--instance-ids", "i-0123456789abcdef0"]), "InvalidInstanceID.NotFound");

    // Stop, start, terminate, with their waiters.
    let stop = aws.ok(&["stop-instances", "--instance-ids", &id]);
    assert_eq!(stop["StoppingInstances"][0]["CurrentState"]["Name"], "stopping");
    assert_eq!(stop["StoppingInstances"][0]["PreviousState"]["Name"], "running");
    aws.ok(&["wait", "instance-stopped", "--instance-ids", &id]);
    aws.ok(&["start-instances", "--instance-ids", &id]);
    aws.ok(&["wait", "instance-running", "--instance-ids", &id]);
    let term = aws.ok(&["terminate-instances", "--instance-ids", &id]);
    assert_eq!(term["TerminatingInstances"][0]["CurrentState"]["Name"], "shutting-down");
    aws.ok(&["wait", "instance-terminated", "--instance-ids", &id]);
    aws.ok(&["delete-volume", "--volume-id", &vol_id]);
    eprintln!("EC2 end to end took {:.1} s", t0.elapsed().as_secs_f64());
}
