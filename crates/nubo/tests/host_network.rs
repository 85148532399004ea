//! `nubo up` as root on one machine: its host network, as libvirt's
//! default network is. The machine is a namespace the test makes (`h1`,
//! whose eth0 is on a switch where 192.168.77.100 plays the outside
//! world); `nubo up --netns h1` makes bridge nubo0 there with
//! 192.168.123.1/24 and the external network `host`, which gives each
//! instance on its default network an address of it. The machine reaches
//! the instance directly at that address (once a security-group rule lets
//! it), the instance reaches the outside through the machine's
//! masquerade, and the address goes back to the pool with the instance.
//! Without root, `nubo up` says it falls back to user-mode networking.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::*;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(180);

#[test]
fn nubo_up_as_root_gives_instances_addresses_the_machine_reaches() {
    let fabric = Fabric::new("u", 1);
    let machine = fabric.ns("h1");
    let cloud = Cloud::up_with(&["--netns", &machine]);
    assert!(
        sh_ok(&format!("ip -n {machine} -4 addr show dev nubo0")).contains("inet 192.168.123.1/24"),
        "the machine's side of the host network"
    );
    let nets = cloud.nubo_json(&["network", "list"]);
    let host = nets.as_array().unwrap().iter().find(|n| n["name"] == "host").expect("external network host");
    assert_eq!(host["cidr"], "192.168.123.0/24", "{nets}");
    assert_eq!(host["external"]["auto_assign"], true, "{nets}");
    let hosts = cloud.nubo_ok(&["host", "list"]);
    assert!(hosts.contains("bridged (192.168.123.1)"), "{hosts}");

    // No network flags: the default network, and an address of the host network.
    let id = cloud.nubo_ok(&["instance", "run", "--image", "tiny", "--memory", "128", "--name", "web-1"]);
    let id = id.trim().to_string();
    let v = cloud.wait_state(&id, "running", BOOT);
    let private = v["addresses"][0]["address"].as_str().expect("a private address").to_string();
    let public = v["addresses"][0]["floating_ip"].as_str().unwrap_or_else(|| panic!("no address assigned: {v}"));
    let public = public.to_string();
    assert!(public.starts_with("192.168.123."), "{v}");
    let shown = cloud.nubo_ok(&["instance", "show", &id]);
    assert!(shown.contains(&format!("{private} (floating {public})")), "{shown}");
    wait_until("web-1's DHCP lease", BOOT, || {
        guest(&cloud, &id, "ip -4 addr show dev eth0").1.contains(&format!("inet {private}/")).then_some(())
    });
    let (code, text) = guest(
        &cloud,
        &id,
        "mkdir -p /www && echo page-of-web-1 > /www/index.html && httpd -p 8080 -h /www && echo started",
    );
    assert!(code == 0 && text.contains("started"), "{text}");

    // The machine reaches it at that address, once the default group allows it.
    let url = format!("http://{public}:8080/");
    assert!(fetch_in(&machine, &url).starts_with("failed"), "port 8080 was open before a rule");
    cloud.nubo_ok(&[
        "security-group",
        "allow",
        "default",
        "--protocol",
        "tcp",
        "--port",
        "8080",
        "--cidr",
        "0.0.0.0/0",
    ]);
    wait_until("the machine fetching web-1's page", Duration::from_secs(60), || {
        (fetch_in(&machine, &url) == "page-of-web-1").then_some(())
    });

    // The instance reaches the outside; the outside sees the machine.
    let mut outside = OfficeServer::start(&fabric.ns("sw"), "192.168.77.100");
    let (code, text) = guest(&cloud, &id, "echo hi | nc -w 3 192.168.77.100 9000");
    assert!(code == 0 && text.contains("hello-from-office 192.168.77.1"), "no way out through the machine: {text}");
    assert_eq!(outside.next_line(), "from 192.168.77.1");

    // Terminated, the instance gives its address back, and nothing answers there.
    cloud.nubo_ok(&["instance", "terminate", &id]);
    wait_until("the address back in the pool", Duration::from_secs(60), || {
        (cloud.nubo_json(&["floating-ip", "list"]) == serde_json::json!([])).then_some(())
    });
    wait_until("nothing answering at the address", Duration::from_secs(60), || {
        fetch_in(&machine, &url).starts_with("failed").then_some(())
    });
}

#[test]
fn without_root_nubo_up_says_it_uses_user_mode_networking() {
    // Everything the unprivileged run needs is in a directory of its own:
    // the checkout's directories may be closed to other users.
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("nubo");
    std::fs::copy(nubo_bin(), &bin).unwrap();
    sh_ok(&format!("chown -R 65534:65534 {0} && chmod 0755 {0} {1}", dir.path().display(), bin.display()));
    let mut child = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(&bin)
        .arg("up")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("setpriv nubo up");
    let first = std::io::BufReader::new(child.stdout.take().unwrap()).lines().next();
    let _ = child.kill();
    let _ = child.wait();
    let first = first.expect("a line from nubo up").unwrap();
    assert!(
        first.starts_with("Not running as root: instances get user-mode networking") && first.contains("sudo nubo up"),
        "{first}"
    );
}
