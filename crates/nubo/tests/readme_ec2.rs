//! The README's EC2 walk-through, run as it stands: its `sh` block (the
//! one that begins by sourcing `admin.env` and defines `ec2()`) is taken
//! out of README.md and run by bash with the stock aws CLI on the PATH,
//! in a home of the test's own, where `~/.local/share/nubo/admin.env` is
//! this cloud's and `~/.ssh/id_ed25519.pub` a key made for it. The
//! script must run to its end (it stops at the first failing command),
//! and what it printed and left behind must be what the README says:
//! the instance running with its type, the user-data's greeting on the
//! console, the volume made at launch gone with the instance, and the
//! snapshot deleted.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::*;
use std::process::Command;

/// The README's walk-through script.
fn walkthrough() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let first = "```sh\n. ~/.local/share/nubo/admin.env\nexport AWS_EC2_METADATA_DISABLED=true\nec2() {";
    let start = readme.find(first).expect("the README's EC2 walk-through") + "```sh\n".len();
    let len = readme[start..].find("```").expect("the end of the walk-through");
    readme[start..start + len].to_string()
}

#[test]
fn the_readme_ec2_walkthrough_runs_as_written() {
    let script = walkthrough();
    let cloud = Cloud::up();
    let aws = Aws::new(&cloud);
    let venv = aws_venv();

    // A home as a user's: the cloud's admin.env where `nubo up` writes it,
    // and an SSH key.
    let home = tempfile::tempdir().unwrap();
    let nubo_dir = home.path().join(".local/share/nubo");
    std::fs::create_dir_all(&nubo_dir).unwrap();
    std::fs::copy(cloud.data_dir().join("admin.env"), nubo_dir.join("admin.env")).unwrap();
    std::fs::create_dir_all(home.path().join(".ssh")).unwrap();
    let keygen = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(home.path().join(".ssh/id_ed25519"))
        .status()
        .expect("run ssh-keygen (openssh-client)");
    assert!(keygen.success());

    let path = format!("{}:{}", venv.join("bin").display(), std::env::var("PATH").unwrap_or_default());
    let out = aws
        .command_at(std::path::Path::new("/bin/bash"), &aws.secret)
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(home.path())
        .env("HOME", home.path())
        .env("PATH", path)
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("--- the walk-through printed:\n{stdout}");
    assert!(out.status.success(), "the README's walk-through stopped ({}):\n{stdout}\n{stderr}", out.status);

    assert!(stdout.contains(":user/admin"), "get-caller-identity's Arn: {stdout}");
    let id = stdout
        .split_whitespace()
        .find(|w| w.starts_with("i-"))
        .unwrap_or_else(|| panic!("no instance id printed: {stdout}"))
        .to_string();
    assert!(stdout.lines().any(|l| l.starts_with(&id) && l.contains("running") && l.contains("t3.micro")), "{stdout}");
    assert!(stdout.contains("hello from user-data"), "the user-data's output on the console: {stdout}");
    assert!(stdout.lines().any(|l| l.trim() == "shutting-down"), "{stdout}");

    // What it left behind: the launch's volume went with the instance,
    // the snapshot is deleted.
    let volumes = aws.ok(&["describe-volumes", "--filters", "Name=tag:team,Values=blue"]);
    assert!(
        volumes["Volumes"].as_array().unwrap().iter().all(|v| v["State"] == "deleting" || v["State"] == "deleted"),
        "the launch's volume should go with its instance: {volumes}"
    );
    let snapshots = aws.ok(&["describe-snapshots", "--owner-ids", "self"]);
    assert_eq!(snapshots["Snapshots"].as_array().unwrap().len(), 0, "{snapshots}");
}
