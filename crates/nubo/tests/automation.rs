//! Automation end to end on real `tiny` VMs under `nubo up` (metrics every
//! 2 s): the README's service policy "disk used at or above 80% for 30 s:
//! attach a 100 GiB volume", scoped to the tag `role=db` that `nubo
//! instance run --tag` gave the instance, gives a guest that fills its disk a new disk it sees,
//! exactly once, while the same policy in dry-run only records what it
//! would have done; an instance group scales out while its members are
//! busy and back in after; a member whose QEMU process is killed is
//! replaced.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::*;
use serde_json::Value;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(180);

fn guest(cloud: &Cloud, id: &str, script: &str) -> String {
    let out = cloud.nubo(&["instance", "exec", id, "--timeout", "60", "--", "/bin/sh", "-c", script]);
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn apply(cloud: &Cloud, name: &str, yaml: &str) {
    let file = cloud.data_dir().join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    cloud.nubo_ok(&["policy", "apply", "-f", file.to_str().unwrap()]);
}

/// The README's YAML block whose first line is `first`.
fn readme_policy(first: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let start = readme.find(&format!("```yaml\n{first}")).expect("the README's policy example") + "```yaml\n".len();
    let len = readme[start..].find("```").expect("the end of the README's policy example");
    let yaml = readme[start..start + len].to_string();
    assert!(yaml.contains("scope: {tag: {key: role, value: db}}"), "the README's example changed: {yaml}");
    yaml
}

fn firings(cloud: &Cloud, policy: &str) -> Vec<Value> {
    cloud.nubo_json(&["policy", "show", policy])["firings"].as_array().cloned().unwrap_or_default()
}

#[test]
fn a_full_disk_gets_one_new_volume_and_a_dry_run_does_nothing() {
    let cloud = Cloud::up();
    // The user-data fills the root disk (1 GiB) to about 85% once booted.
    let ud = cloud.data_dir().join("fill.sh");
    std::fs::write(
        &ud,
        "#!/bin/sh\n(sleep 3; dd if=/dev/zero of=/root/fill bs=1M count=820 2>/dev/null; sync; echo disk-filled) &\n",
    )
    .unwrap();
    // The README's example, as written there: an instance tagged role=db,
    // and its grow-disk.yaml, scoped to that tag.
    let id = cloud
        .nubo_ok(&[
            "instance",
            "run",
            "--name",
            "full",
            "--tag",
            "role=db",
            "--user-data",
            ud.to_str().unwrap(),
            "--wait",
        ])
        .trim()
        .to_string();
    apply(&cloud, "grow-disk", &readme_policy("# grow-disk.yaml"));
    apply(
        &cloud,
        "grow-disk-dry",
        &format!(
            "name: grow-disk-dry\nscope: {{instance: {id}}}\ncondition: {{metric: fs_used_percent, op: '>=', threshold: 80, for: 30s}}\nactions: [{{attach_volume: {{size_gib: 10}}}}, reboot]\ndry_run: true\n"
        ),
    );
    cloud.wait_console(&id, "disk-filled", 1, BOOT);
    let full = wait_until("fs_used_percent >= 80", Duration::from_secs(60), || {
        let list = cloud.nubo_json(&["metrics", "list", &id]);
        list.as_array()?.iter().find(|m| m["metric"] == "fs_used_percent")?["value"].as_f64().filter(|v| *v >= 80.0)
    });
    println!("fs_used_percent {full:.1}");

    // It fires after 30 s of breach, and its action ends with the guest seeing the disk.
    let firing = wait_until("the policy's action to succeed", Duration::from_secs(150), || {
        let f = firings(&cloud, "grow-disk").into_iter().next()?;
        assert_ne!(f["state"], "failed", "{f}");
        (f["state"] == "succeeded").then_some(f)
    });
    println!("firing: {firing}");
    assert!(
        firing["values"][&id].as_f64().is_some_and(|v| v >= 80.0),
        "the value that caused it is recorded: {firing}"
    );
    let result = firing["actions"][0]["result"].as_str().unwrap().to_string();
    let vol = result.split_whitespace().next().unwrap().to_string();
    let seen = guest(
        &cloud,
        &id,
        &format!(
            "for d in /sys/block/vd*; do [ \"$(cat $d/serial)\" = {} ] && cat $d/size; done",
            vol.replacen('-', "", 1)
        ),
    );
    assert_eq!(seen.trim().parse::<u64>().unwrap(), 100 * 1024 * 1024 * 2, "the guest sees 100 GiB");

    // Still full for longer than the policy's 30 s hold after it fired (and
    // three 2 s rounds more): a policy that fired per hold rather than per
    // breach would have fired again by then. Wait on the guest's samples
    // rather than the clock, so a slow round cannot cut the wait short.
    let fired_at = firing["at_ms"].as_i64().expect("the firing's time");
    wait_until("30 s of samples of the ongoing breach after the firing", Duration::from_secs(120), || {
        let list = cloud.nubo_json(&["metrics", "list", &id]);
        let sample = list.as_array()?.iter().find(|m| m["metric"] == "fs_used_percent")?.clone();
        let (at, value) = (sample["at_ms"].as_i64()?, sample["value"].as_f64()?);
        assert!(value >= 80.0, "the disk is no longer full ({value}%): the breach ended, nothing left to check");
        (at >= fired_at + 36_000).then_some(())
    });
    let policy = cloud.nubo_json(&["policy", "show", "grow-disk"]);
    assert!(
        policy["breaching"].as_array().is_some_and(|b| b.iter().any(|t| t == id.as_str())),
        "the breach is still on: {policy}"
    );
    assert_eq!(firings(&cloud, "grow-disk").len(), 1, "once per breach");
    let volumes = cloud.nubo_json(&["volume", "list"]);
    assert_eq!(volumes.as_array().unwrap().len(), 1, "{volumes}");
    assert_eq!(cloud.instance(&id)["volumes"].as_array().unwrap().len(), 1);

    // The dry run recorded what it would have done, and did nothing.
    let dry = firings(&cloud, "grow-disk-dry");
    assert_eq!(dry.len(), 1, "{dry:?}");
    assert_eq!(dry[0]["dry_run"], true);
    let actions = dry[0]["actions"].as_array().unwrap();
    assert!(actions.iter().all(|a| a["state"] == "skipped"), "{actions:?}");
    assert!(actions[0]["action"].as_str().unwrap().starts_with("would attach a new 10 GiB volume"), "{actions:?}");
    assert_eq!(cloud.console(&id).matches(nubo_api::BOOT_COMPLETE_MARKER).count(), 1, "no reboot happened");
    let events = cloud.nubo_ok(&["event", "list"]);
    assert!(events.contains("would fire (dry run)"), "{events}");
}

#[test]
fn a_group_scales_out_and_in_with_load_and_replaces_a_dead_member() {
    let cloud = Cloud::up();
    let ud = "#!/bin/sh\nend=$(( $(date +%s) + 30 )); while [ $(date +%s) -lt $end ]; do :; done; echo load-done\n";
    let group = format!(
        "name: web\nmin: 1\nmax: 3\ndesired: 1\ntemplate:\n  image: tiny\n  vcpus: 1\n  memory_mib: 160\n  disk_gib: 1\n  user_data: {ud:?}\n"
    );
    let file = cloud.data_dir().join("group.yaml");
    std::fs::write(&file, group).unwrap();
    cloud.nubo_ok(&["group", "create", "-f", file.to_str().unwrap()]);
    apply(
        &cloud,
        "web-out",
        "name: web-out\nscope: {group: web}\ncondition: {metric: cpu_percent, aggregate: avg, op: '>', threshold: 60, for: 6s}\nactions: [{scale: {by: 1}}]\ncooldown: 20s\n",
    );
    apply(
        &cloud,
        "web-in",
        "name: web-in\nscope: {group: web}\ncondition: {metric: cpu_percent, aggregate: avg, op: '<', threshold: 20, for: 10s}\nactions: [{scale: {by: -1}}]\ncooldown: 15s\nrepeat: true\n",
    );
    let show = |c: &Cloud| c.nubo_json(&["group", "show", "web"]);
    // Busy members: it scales out.
    let out = wait_until("a scale out", Duration::from_secs(180), || {
        let g = show(&cloud);
        (g["desired"].as_u64()? >= 2).then_some(g)
    });
    println!("scaled out: desired {}", out["desired"]);
    wait_until("two members running", Duration::from_secs(120), || {
        let g = show(&cloud);
        let running = g["members"].as_array()?.iter().filter(|m| m["state"] == "running").count();
        (running >= 2).then_some(())
    });
    // The load ends: it scales back in to one.
    let back = wait_until("a scale in to 1", Duration::from_secs(240), || {
        let g = show(&cloud);
        (g["desired"] == 1 && g["members"].as_array()?.len() == 1).then_some(g)
    });
    let activities = back["activities"].as_array().unwrap();
    assert!(activities.iter().any(|a| a["detail"].as_str().unwrap().contains("policy web-out: +1")), "{activities:?}");
    assert!(activities.iter().any(|a| a["detail"].as_str().unwrap().contains("policy web-in: -1")), "{activities:?}");
    assert!(activities.iter().any(|a| a["kind"] == "terminate"), "{activities:?}");

    // A member's QEMU is killed: the group replaces it.
    let member = back["members"][0]["instance_id"].as_str().unwrap().to_string();
    cloud.wait_state(&member, "running", BOOT);
    let pid = cloud.qemu_pid(&member).expect("pidfile");
    // SAFETY: kill takes plain integers; a stale pid is an error, not UB.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let replaced = wait_until("a replacement", Duration::from_secs(180), || {
        let g = show(&cloud);
        let m = g["members"].as_array()?.first()?.clone();
        (m["instance_id"] != member.as_str() && m["state"] == "running").then_some(g)
    });
    let activities = replaced["activities"].as_array().unwrap();
    assert!(
        activities.iter().any(|a| a["kind"] == "replace" && a["detail"].as_str().unwrap().contains(&member)),
        "{activities:?}"
    );
    assert_eq!(replaced["members"].as_array().unwrap().len(), 1);
    cloud.nubo_ok(&["group", "delete", "web"]);
}
