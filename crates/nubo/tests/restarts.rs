//! Crash safety: killing the agent leaves VMs running and a new agent
//! re-adopts them; killing the control plane (`nubo up`) loses nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::*;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(120);

#[test]
fn agent_restart_readopts_running_vm() {
    let mut cloud = Cloud::split();
    let id = cloud.nubo_ok(&["instance", "run", "--memory", "128", "--wait"]).trim().to_string();
    cloud.wait_console(&id, nubo_api::BOOT_COMPLETE_MARKER, 1, BOOT);
    let pid = cloud.qemu_pid(&id).expect("pidfile");

    cloud.kill_agent();
    assert!(alive(pid), "killing the agent must not kill its VMs");
    assert_eq!(cloud.instance(&id)["state"], "running");

    cloud.start_agent();
    // The new agent reports the same VM as running, without restarting it.
    wait_until("a report from the new agent", Duration::from_secs(30), || {
        let hosts = cloud.nubo_json(&["host", "list"]);
        let beat = hosts[0]["last_heartbeat_ms"].as_i64()?;
        (beat > now_ms() - 2_000).then_some(())
    });
    // Part of what is tested: for 2 s more nothing happens to the VM (an
    // agent that restarted it would have done so by then).
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(cloud.qemu_pid(&id), Some(pid));
    assert!(alive(pid));
    assert_eq!(cloud.instance(&id)["state"], "running");
    assert_eq!(cloud.console(&id).matches(nubo_api::BOOT_COMPLETE_MARKER).count(), 1, "VM was rebooted");

    // And it obeys the new agent.
    cloud.nubo_ok(&["instance", "stop", &id, "--wait"]);
    wait_until("QEMU to exit", Duration::from_secs(30), || (!alive(pid)).then_some(()));
    cloud.nubo_ok(&["instance", "terminate", &id, "--wait"]);
}

#[test]
fn server_restart_loses_no_instance() {
    let mut cloud = Cloud::up();
    let a = cloud.nubo_ok(&["instance", "run", "--memory", "128", "--name", "a", "--wait"]).trim().to_string();
    let b = cloud.nubo_ok(&["instance", "run", "--memory", "128", "--name", "b", "--wait"]).trim().to_string();
    cloud.nubo_ok(&["instance", "stop", &b, "--wait"]);
    cloud.wait_console(&a, nubo_api::BOOT_COMPLETE_MARKER, 1, BOOT);
    let pid = cloud.qemu_pid(&a).expect("pidfile");

    cloud.kill_server();
    assert!(alive(pid), "killing nubo up must not kill its VMs");
    cloud.start_server();

    let list = cloud.nubo_json(&["instance", "list"]);
    let states: Vec<(String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["name"].as_str().unwrap().to_string(), i["state"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(states, vec![("a".to_string(), "running".to_string()), ("b".to_string(), "stopped".to_string())]);
    // Part of what is tested: for 2 s more nothing happens to the VM.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(cloud.qemu_pid(&a), Some(pid), "the VM was re-adopted, not restarted");
    assert!(alive(pid));
    assert_eq!(cloud.instance(&a)["state"], "running");

    // The restarted cloud still controls both.
    cloud.nubo_ok(&["instance", "start", &b, "--wait"]);
    cloud.nubo_ok(&["instance", "terminate", &a, "--wait"]);
    cloud.nubo_ok(&["instance", "terminate", &b, "--wait"]);
    let hosts = cloud.nubo_json(&["host", "list"]);
    assert_eq!(hosts[0]["used_memory_mib"], 0);
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}
