use super::*;

fn want(n: usize) -> DesiredInstance {
    serde_json::from_value(serde_json::json!({
        "id": format!("i-{n:017x}"), "name": "a", "image": "tiny", "vcpus": 1, "memory_mib": 256,
        "disk_gib": 1, "user_data": null, "ports": [], "power": "running", "start_seq": 1, "reboot_count": 0
    }))
    .unwrap()
}

#[test]
fn a_full_pass_comes_on_change_and_on_time() {
    let mut p = Pacing::default();
    let now = Instant::now();
    assert!(p.full_pass_due(false, now), "the first pass is full");
    p.full_pass_done(&HashSet::new(), now);
    assert!(!p.full_pass_due(false, now + FULL_PASS_EVERY / 2));
    assert!(p.full_pass_due(true, now + FULL_PASS_EVERY / 2), "a desired-state change");
    assert!(p.full_pass_due(false, now + FULL_PASS_EVERY));
}

fn picked(p: &Pacing, wants: &[DesiredInstance], active: &[&InstanceId], now: Instant) -> Vec<InstanceId> {
    let active: HashSet<InstanceId> = active.iter().map(|i| (*i).clone()).collect();
    p.quick_pass(wants, &active, now).into_iter().map(|w| w.id.clone()).collect()
}

#[test]
fn a_quiet_instance_drops_out_of_the_quick_passes() {
    let mut p = Pacing::default();
    let w = want(1);
    let wants = vec![w.clone()];
    let t0 = Instant::now();
    assert_eq!(picked(&p, &wants, &[], t0), vec![w.id.clone()], "never seen: visited");
    p.observed(&w.id, b"running", t0);
    assert_eq!(picked(&p, &wants, &[], t0 + HOT_FOR / 2).len(), 1, "changed recently");
    p.observed(&w.id, b"running", t0 + HOT_FOR / 2);
    assert!(picked(&p, &wants, &[], t0 + HOT_FOR).is_empty(), "the same for HOT_FOR: quiet");
    assert_eq!(picked(&p, &wants, &[&w.id], t0 + HOT_FOR).len(), 1, "an operation under way");
    p.observed(&w.id, b"stopping", t0 + HOT_FOR);
    assert_eq!(picked(&p, &wants, &[], t0 + HOT_FOR + Duration::from_secs(1)).len(), 1, "it changed: hot again");
}

#[test]
fn a_migrating_instance_is_always_visited() {
    let mut p = Pacing::default();
    let mut w = want(2);
    let t0 = Instant::now();
    p.observed(&w.id, b"running", t0);
    assert!(picked(&p, &[w.clone()], &[], t0 + HOT_FOR).is_empty());
    w.migration =
        serde_json::from_value(serde_json::json!({"id": "mig-0123456789abcdef0", "role": "source", "target": null}))
            .ok();
    assert!(w.migration.is_some(), "the test's migration parses");
    assert_eq!(picked(&p, &[w], &[], t0 + HOT_FOR).len(), 1);
}

#[test]
fn only_the_hot_ones_of_many_are_visited() {
    let mut p = Pacing::default();
    let wants: Vec<DesiredInstance> = (0..1000).map(want).collect();
    let t0 = Instant::now();
    for w in &wants {
        p.observed(&w.id, b"running", t0);
    }
    p.observed(&wants[7].id, b"stopping", t0 + HOT_FOR);
    assert_eq!(picked(&p, &wants, &[&wants[9].id], t0 + HOT_FOR), vec![wants[7].id.clone(), wants[9].id.clone()]);
}

#[test]
fn a_full_pass_forgets_instances_gone() {
    let mut p = Pacing::default();
    let (a, b) = (want(1), want(2));
    let now = Instant::now();
    p.observed(&a.id, b"x", now);
    p.observed(&b.id, b"x", now);
    p.full_pass_done(&HashSet::from([&a.id]), now);
    assert_eq!(p.changed.len(), 1);
}
