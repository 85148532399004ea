//! The control plane and simulated compute agents together, driven
//! through the typed client: an instance's life from launch to
//! terminate as the agent carries it out, with the host capacity it
//! claims and frees; tenancy (a project's instances are invisible to
//! another project, readers cannot launch); pagination of an instance
//! list spread over two hosts; and live migration between two simulated
//! hosts, which the simulated driver refuses, so the migration fails and
//! the instance stays where it ran; and a host whose agent stops, which
//! goes down and loses its instance.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use nubo_api::views::{DesiredInstanceState, HostState, InstanceState, MigrationState};
use nubo_client::InstanceAction;
use nubo_test_cloud::{wait_for, HostCapacity, TestCloud};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Long enough for a simulated boot on a loaded 2-core machine.
const TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launched_instance_is_brought_to_running_by_the_simulated_agent() {
    let cloud = TestCloud::start(1).await;
    let admin = cloud.admin();
    let host = &cloud.hosts()[0];
    assert_eq!(cloud.host(&host.id).await.accel, "simulated", "the host says it runs the simulated driver");

    let launched = admin.create_instance(&TestCloud::instance_params(2, 512)).await.unwrap();
    assert_eq!(launched.image, TestCloud::IMAGE);
    let running = cloud.wait_for_instance_state(admin, launched.id.as_str(), InstanceState::Running, TIMEOUT).await;
    assert_eq!(running.host.as_ref(), Some(&host.id), "placed on the only host");
    assert_eq!(running.host_name.as_deref(), Some("sim-1"));
    assert_eq!(running.desired_state, DesiredInstanceState::Running);
    let stages: Vec<&str> = running.events.iter().map(|e| e.stage.as_str()).collect();
    for stage in ["agent_seen", "image_ready", "disk_ready", "qemu_started"] {
        assert!(stages.contains(&stage), "no {stage} event from the agent: {stages:?}");
    }
    // The simulated guest prints the boot marker; the agent sees it and
    // ships the console.
    let id = launched.id.to_string();
    let console = wait_for("the boot marker in the console", TIMEOUT, || async {
        let c = admin.console(&id).await.ok()?;
        c.output.contains(nubo_api::BOOT_COMPLETE_MARKER).then_some(c)
    })
    .await;
    assert!(console.output.contains(&format!("instance-id={id}")), "{}", console.output);
    let booted = wait_for("a boot_complete event", TIMEOUT, || async {
        let i = admin.instance(&id).await.ok()?;
        i.events.iter().any(|e| e.stage == "boot_complete").then_some(i)
    })
    .await;
    assert_eq!(booted.state, InstanceState::Running);
    let h = cloud.host(&host.id).await;
    assert_eq!((h.used_vcpus, h.used_memory_mib, h.instances), (2, 512, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_start_reboot_and_terminate_are_carried_out_and_terminate_frees_the_capacity() {
    let cloud = TestCloud::start(1).await;
    let admin = cloud.admin();
    let host = cloud.hosts()[0].id.clone();
    let id = admin.create_instance(&TestCloud::instance_params(4, 1024)).await.unwrap().id.to_string();
    cloud.wait_for_instance_state(admin, &id, InstanceState::Running, TIMEOUT).await;
    cloud.wait_for_host_usage(&host, 4, 1024, TIMEOUT).await;

    let stopping = admin.instance_action(&id, InstanceAction::Stop).await.unwrap();
    assert_eq!(stopping.desired_state, DesiredInstanceState::Stopped);
    let stopped = cloud.wait_for_instance_state(admin, &id, InstanceState::Stopped, TIMEOUT).await;
    assert!(stopped.events.iter().any(|e| e.stage == "stopped"), "the agent reported no stop: {:?}", stopped.events);
    // A stopped instance keeps its place on the host, so it can start again there.
    let h = cloud.host(&host).await;
    assert_eq!((h.used_vcpus, h.used_memory_mib), (4, 1024), "a stopped instance keeps its claim");

    admin.instance_action(&id, InstanceAction::Start).await.unwrap();
    let started = cloud.wait_for_instance_state(admin, &id, InstanceState::Running, TIMEOUT).await;
    assert_eq!(started.host.as_ref(), Some(&host));

    admin.instance_action(&id, InstanceAction::Reboot).await.unwrap();
    let rebooted = wait_for("the agent to report the reboot", TIMEOUT, || async {
        let i = admin.instance(&id).await.ok()?;
        i.events.iter().any(|e| e.stage == "rebooted").then_some(i)
    })
    .await;
    assert_eq!(rebooted.state, InstanceState::Running, "a rebooted instance runs");

    let terminating = admin.instance_action(&id, InstanceAction::Terminate).await.unwrap();
    assert_eq!(terminating.desired_state, DesiredInstanceState::Terminated);
    cloud.wait_for_instance_state(admin, &id, InstanceState::Terminated, TIMEOUT).await;
    let freed = cloud.wait_for_host_usage(&host, 0, 0, TIMEOUT).await;
    assert_eq!(freed.used_disk_gib, 0, "the root disk's claim was not freed");
    assert_eq!(freed.instances, 0);
    // Once freed, the whole host is free for the next launch.
    let big = HostCapacity::default();
    let again = admin.create_instance(&TestCloud::instance_params(4, big.memory_mib)).await.unwrap();
    cloud.wait_for_instance_state(admin, again.id.as_str(), InstanceState::Running, TIMEOUT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projects_do_not_see_each_others_instances_and_readers_cannot_launch() {
    let cloud = TestCloud::start(1).await;
    let alice = cloud.user("alice", "team-a", "member").await;
    let bob = cloud.user("bob", "team-b", "member").await;
    let reader = cloud.user("rita", "team-a", "reader").await;

    let id = alice.create_instance(&TestCloud::instance_params(1, 256)).await.unwrap().id.to_string();
    cloud.wait_for_instance_state(&alice, &id, InstanceState::Running, TIMEOUT).await;

    // Another project's instance does not exist for bob: not even a 403.
    let e = bob.instance(&id).await.unwrap_err();
    assert_eq!(e.status(), Some(404), "{e}");
    let e = bob.instance_action(&id, InstanceAction::Terminate).await.unwrap_err();
    assert_eq!(e.status(), Some(404), "{e}");
    assert!(bob.instances().await.unwrap().is_empty(), "bob sees team-a's instances");

    // A reader of team-a sees it, and may not launch or act on it.
    let seen = reader.instances().await.unwrap();
    assert_eq!(seen.iter().map(|i| i.id.to_string()).collect::<Vec<_>>(), vec![id.clone()]);
    let e = reader.create_instance(&TestCloud::instance_params(1, 256)).await.unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
    let e = reader.instance_action(&id, InstanceAction::Stop).await.unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
    // Neither refusal changed anything.
    let still = alice.instance(&id).await.unwrap();
    assert_eq!((still.state, still.desired_state.as_str()), (InstanceState::Running, "running"));
    assert_eq!(alice.instances().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_instance_list_pages_through_instances_on_two_hosts() {
    // Each host holds four 512 MiB instances, so six must use both.
    let capacity = HostCapacity { vcpus: 8, memory_mib: 2048, disk_gib: 50 };
    let cloud = TestCloud::builder().hosts(2).capacity(capacity).start().await;
    let admin = cloud.admin();
    let mut launched = BTreeSet::new();
    for _ in 0..6 {
        launched.insert(admin.create_instance(&TestCloud::instance_params(1, 512)).await.unwrap().id.to_string());
    }
    for id in &launched {
        cloud.wait_for_instance_state(admin, id, InstanceState::Running, TIMEOUT).await;
    }

    let mut pages = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let (page, next) = admin.instances_page(4, token.as_deref()).await.unwrap();
        assert!(page.len() <= 4, "a page holds more than its limit: {}", page.len());
        pages.push(page);
        match next {
            Some(t) => token = Some(t),
            None => break,
        }
        assert!(pages.len() <= 3, "the pages never end");
    }
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), vec![4, 2]);
    let listed: Vec<String> = pages.iter().flatten().map(|i| i.id.to_string()).collect();
    let unique: BTreeSet<String> = listed.iter().cloned().collect();
    assert_eq!(unique.len(), listed.len(), "an instance is on two pages: {listed:?}");
    assert_eq!(unique, launched);
    // The pages agree with the whole list, and span both hosts.
    let all: BTreeSet<String> = admin.instances().await.unwrap().iter().map(|i| i.id.to_string()).collect();
    assert_eq!(all, launched);
    let mut per_host: BTreeMap<String, usize> = BTreeMap::new();
    for i in pages.iter().flatten() {
        *per_host.entry(i.host_name.clone().expect("a placed instance")).or_default() += 1;
    }
    assert_eq!(per_host.keys().map(String::as_str).collect::<Vec<_>>(), vec!["sim-1", "sim-2"], "{per_host:?}");
    assert!(per_host.values().all(|&n| n <= 4), "a host holds more than its memory allows: {per_host:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_migration_between_simulated_hosts_fails_cleanly_and_the_instance_stays() {
    // The simulated driver cannot live-migrate (it has no guest memory or
    // disk to copy): the target says so, the migration fails, and the
    // instance keeps running on its source with the target's claim freed.
    let cloud = TestCloud::start(2).await;
    let admin = cloud.admin();
    let id = admin.create_instance(&TestCloud::instance_params(2, 512)).await.unwrap().id.to_string();
    let running = cloud.wait_for_instance_state(admin, &id, InstanceState::Running, TIMEOUT).await;
    let source = running.host.clone().expect("a placed instance");
    let target = cloud.hosts().iter().map(|h| h.id.clone()).find(|h| *h != source).expect("a second host");

    let m =
        admin.migrate_instance(&id, &nubo_api::params::InstanceMigrate { to: Some(target.to_string()) }).await.unwrap();
    assert_eq!(m.target_host, target.to_string());
    let mid = m.id.to_string();
    let ended = wait_for("the migration to end", TIMEOUT, || async {
        let m = admin.migration(&mid).await.ok()?;
        (m.state != MigrationState::Preparing && m.state != MigrationState::Migrating).then_some(m)
    })
    .await;
    assert_eq!(ended.state, MigrationState::Failed, "{ended:?}");
    let error = ended.error.clone().unwrap_or_default();
    assert!(error.contains("simulated") && error.contains("live-migrate"), "the error does not say why: {error}");

    let after = cloud.wait_for_instance_state(admin, &id, InstanceState::Running, TIMEOUT).await;
    assert_eq!(after.host.as_ref(), Some(&source), "the instance moved although the migration failed");
    cloud.wait_for_host_usage(&target, 0, 0, TIMEOUT).await;
    let src = cloud.host(&source).await;
    assert_eq!((src.used_vcpus, src.used_memory_mib), (2, 512));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_agent_stops_goes_down_and_its_instance_is_lost() {
    // A short lease, so that a silent host is noticed within the test.
    let cloud = TestCloud::builder().hosts(2).config(|c| c.heartbeat_timeout = Duration::from_secs(4)).start().await;
    let admin = cloud.admin();
    let id = admin.create_instance(&TestCloud::instance_params(1, 256)).await.unwrap().id.to_string();
    let running = cloud.wait_for_instance_state(admin, &id, InstanceState::Running, TIMEOUT).await;
    let gone = cloud.hosts().iter().find(|h| Some(&h.id) == running.host.as_ref()).expect("the instance's host");
    let other = cloud.hosts().iter().find(|h| h.id != gone.id).expect("the other host");

    gone.stop();
    let down = wait_for("the silent host to be down", TIMEOUT, || async {
        let h = cloud.host(&gone.id).await;
        (h.state == HostState::Down).then_some(h)
    })
    .await;
    assert_eq!(down.name, gone.name);
    assert_eq!(cloud.host(&other.id).await.state, HostState::Up, "the host that kept its agent went down too");
    // Its disks were on that host alone, so nothing can restart it elsewhere.
    let lost = cloud.wait_for_instance_state(admin, &id, InstanceState::Lost, TIMEOUT).await;
    assert!(lost.error.as_deref().is_some_and(|e| !e.is_empty()), "a lost instance says why: {lost:?}");
}
