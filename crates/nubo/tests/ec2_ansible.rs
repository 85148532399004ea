//! Ansible's amazon.aws collection, unchanged, against Nubo's EC2 API:
//! the playbook `tests/ansible/cloud.yml` makes a key pair, a VPC and its
//! subnet, a security group with rules, a `tiny` instance it waits for, a
//! volume attached to it, a snapshot of that volume and an Elastic IP,
//! reads each back with the `*_info` modules, and (with `state=absent`)
//! deletes them all. Each direction runs twice, and the second run must
//! report `changed=0`: Ansible's own test of a cloud that answers
//! truthfully. The cloud is `nubo up` in a namespace of the test's (its
//! host network gives the Elastic IP's pool); the playbook talks only to
//! the endpoint on 127.0.0.1. The recaps are printed, for the record.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::*;
use std::time::{Duration, Instant};

/// The numbers of a run's PLAY RECAP line for localhost.
#[derive(Debug)]
struct Recap {
    line: String,
    changed: u32,
    failed: u32,
}

fn recap_of(output: &str) -> Option<Recap> {
    let line = output.lines().skip_while(|l| !l.starts_with("PLAY RECAP")).find(|l| l.starts_with("localhost"))?;
    let field = |name: &str| -> Option<u32> {
        line.split_whitespace().find_map(|w| w.strip_prefix(&format!("{name}=")))?.parse().ok()
    };
    Some(Recap {
        line: line.split_whitespace().collect::<Vec<_>>().join(" "),
        changed: field("changed")?,
        failed: field("failed")?,
    })
}

fn play(aws: &Aws, venv: &std::path::Path, state: &str, run: u32) -> Recap {
    let playbook = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ansible/cloud.yml");
    let start = Instant::now();
    let out = aws
        .command_at(&venv.join("bin/ansible-playbook"), &aws.secret)
        .args(["-i", "localhost,"])
        .arg(&playbook)
        .args(["-e", &format!("state={state}")])
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_LOCALHOST_WARNING", "false")
        .env("ANSIBLE_INVENTORY_UNPARSED_WARNING", "false")
        .env("ANSIBLE_RETRY_FILES_ENABLED", "false")
        .env("PYTHONWARNINGS", "ignore")
        .output()
        .expect("run ansible-playbook");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let recap = recap_of(&stdout).unwrap_or_else(|| {
        panic!(
            "no PLAY RECAP from ansible-playbook ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    eprintln!("state={state}, run {run} ({:.0} s): {}", start.elapsed().as_secs_f64(), recap.line);
    assert!(out.status.success() && recap.failed == 0, "state={state}, run {run} failed:\n{stdout}");
    recap
}

#[test]
fn ansible_amazon_aws_playbook_runs_and_its_second_run_changes_nothing() {
    let fabric = Fabric::new("a", 1);
    let machine = fabric.ns("h1");
    let cloud = Cloud::up_with(&["--netns", &machine]);
    let aws = Aws::new(&cloud);
    let venv = ansible_venv();

    let first = play(&aws, &venv, "present", 1);
    assert!(first.changed >= 8, "the first run makes eight things: {}", first.line);
    // The instance runs for real, with the volume in it.
    let found = aws.ok(&[
        "describe-instances",
        "--filters",
        "Name=tag:Name,Values=ansible-demo-vm",
        "Name=instance-state-name,Values=running",
    ]);
    let id =
        found["Reservations"][0]["Instances"][0]["InstanceId"].as_str().expect("the playbook's instance").to_string();
    wait_until("the volume in the guest", Duration::from_secs(120), || {
        let (code, text) = guest(&cloud, &id, "cat /proc/partitions");
        (code == 0 && text.contains("vdb")).then_some(())
    });
    let second = play(&aws, &venv, "present", 2);
    assert_eq!(second.changed, 0, "the second run changed something: {}", second.line);

    let gone = play(&aws, &venv, "absent", 1);
    assert!(gone.changed >= 7, "the teardown deletes everything: {}", gone.line);
    let again = play(&aws, &venv, "absent", 2);
    assert_eq!(again.changed, 0, "the second teardown changed something: {}", again.line);

    // Nothing is left of it.
    let vpcs = aws.ok(&["describe-vpcs", "--filters", "Name=tag:Name,Values=ansible-demo-vpc"]);
    assert_eq!(vpcs["Vpcs"].as_array().unwrap().len(), 0, "{vpcs}");
    let volumes = aws.ok(&["describe-volumes", "--filters", "Name=tag:Name,Values=ansible-demo-data"]);
    assert!(
        volumes["Volumes"].as_array().unwrap().iter().all(|v| v["State"] == "deleting" || v["State"] == "deleted"),
        "{volumes}"
    );
    let snapshots = aws.ok(&["describe-snapshots", "--owner-ids", "self"]);
    assert_eq!(snapshots["Snapshots"].as_array().unwrap().len(), 0, "{snapshots}");
    let addresses = aws.ok(&["describe-addresses"]);
    assert_eq!(addresses["Addresses"].as_array().unwrap().len(), 0, "{addresses}");
    let keys = aws.ok(&["describe-key-pairs"]);
    assert!(keys["KeyPairs"].as_array().unwrap().iter().all(|k| k["KeyName"] != "ansible-demo-key"), "{keys}");
    let state = aws.ok(&["describe-instances", "--instance-ids", &id]);
    assert_eq!(state["Reservations"][0]["Instances"][0]["State"]["Name"], "terminated", "{state}");
}
