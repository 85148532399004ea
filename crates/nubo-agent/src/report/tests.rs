use super::*;
use nubo_api::agent::ActualPower;
use nubo_api::views::InstanceEvent;

fn id(n: usize) -> InstanceId {
    format!("i-{n:017x}").parse().unwrap()
}

fn actual(n: usize, power: ActualPower) -> ActualInstance {
    ActualInstance {
        id: id(n),
        power,
        pid: Some(100),
        error: None,
        exited_unexpectedly: false,
        events: Vec::new(),
        guest: None,
        volumes: Vec::new(),
        captures: Vec::new(),
    }
}

fn entries(n: usize) -> Vec<Entry> {
    (0..n).map(|i| Entry::new(actual(i, ActualPower::Running))).collect()
}

fn ids(chunks: &[Chunk]) -> Vec<InstanceId> {
    chunks.iter().flat_map(|c| c.report.instances.iter().map(|a| a.id.clone())).collect()
}

fn take_all(ledger: &mut ReportLedger, chunks: Vec<Chunk>, now: Instant) {
    for c in chunks {
        ledger.took(c, 0, now);
    }
}

#[test]
fn the_first_report_is_full_and_an_unchanged_one_sends_nothing() {
    let mut ledger = ReportLedger::default();
    let now = Instant::now();
    assert!(ledger.full_due(0, now));
    let chunks = ledger.plan(entries(3), vec![], vec![], vec![], true);
    assert_eq!(ids(&chunks).len(), 3);
    take_all(&mut ledger, chunks, now);
    assert!(!ledger.full_due(0, now));
    let chunks = ledger.plan(entries(3), vec![], vec![], vec![], false);
    assert!(chunks.is_empty(), "nothing changed, nothing is sent");
}

#[test]
fn only_the_entries_that_changed_are_sent() {
    let mut ledger = ReportLedger::default();
    let now = Instant::now();
    let chunks = ledger.plan(entries(5), vec![], vec![], vec![], true);
    take_all(&mut ledger, chunks, now);
    let mut next = entries(5);
    next[2] = Entry::new(actual(2, ActualPower::Stopping));
    let chunks = ledger.plan(next, vec![], vec![], vec![], false);
    assert_eq!(ids(&chunks), vec![id(2)]);
    take_all(&mut ledger, chunks, now);
    let mut again = entries(5);
    again[2] = Entry::new(actual(2, ActualPower::Stopping));
    assert!(ledger.plan(again, vec![], vec![], vec![], false).is_empty());
}

#[test]
fn events_are_sent_even_when_the_entry_looks_the_same() {
    let mut ledger = ReportLedger::default();
    let now = Instant::now();
    let mut with_event = actual(0, ActualPower::Running);
    with_event.events.push(InstanceEvent { at_ms: 1, stage: "x".into(), detail: String::new() });
    let chunks = ledger.plan(vec![Entry::new(with_event.clone())], vec![], vec![], vec![], true);
    take_all(&mut ledger, chunks, now);
    let chunks = ledger.plan(vec![Entry::new(with_event)], vec![], vec![], vec![], false);
    assert_eq!(ids(&chunks), vec![id(0)]);
}

#[test]
fn a_failed_report_makes_the_next_one_full() {
    let mut ledger = ReportLedger::default();
    let now = Instant::now();
    let chunks = ledger.plan(entries(2), vec![], vec![], vec![], true);
    take_all(&mut ledger, chunks, now);
    assert!(!ledger.full_due(0, now));
    ledger.failed();
    assert!(ledger.full_due(0, now));
    let chunks = ledger.plan(entries(2), vec![], vec![], vec![], true);
    take_all(&mut ledger, chunks, now);
    assert!(!ledger.full_due(0, now));
}

#[test]
fn heartbeat_failures_and_time_make_a_full_report_due() {
    let mut ledger = ReportLedger::default();
    let now = Instant::now();
    let chunks = ledger.plan(entries(2), vec![], vec![], vec![], true);
    take_all(&mut ledger, chunks, now);
    assert!(ledger.full_due(1, now), "heartbeats failed since: the control plane may have marked instances lost");
    assert!(ledger.full_due(0, now + FULL_REPORT_EVERY));
    assert!(!ledger.full_due(0, now + FULL_REPORT_EVERY / 2));
}

#[test]
fn a_large_host_is_reported_in_chunks_under_the_limit() {
    let ledger = ReportLedger::default();
    let n = 5_000;
    let chunks = ledger.plan(entries(n), vec![], vec![], vec![], true);
    assert!(chunks.len() > 1, "{} chunks", chunks.len());
    assert_eq!(ids(&chunks).len(), n, "every entry once");
    for c in &chunks {
        let body = serde_json::to_vec(&c.report).unwrap();
        assert!(body.len() <= CHUNK_BYTES + 1024, "a chunk of {} bytes", body.len());
    }
}

#[test]
fn host_lists_go_once_and_again_when_they_change() {
    let mut ledger = ReportLedger::default();
    let now = Instant::now();
    let volume = |size_gib: u64| ActualVolume {
        id: "vol-0123456789abcdef0".parse().unwrap(),
        state: nubo_api::agent::ActualVolumeState::Available,
        size_gib,
        error: None,
        reverted_seq: 0,
    };
    let chunks = ledger.plan(entries(1), vec![volume(1)], vec![], vec![], true);
    assert_eq!(chunks[0].report.volumes.len(), 1);
    take_all(&mut ledger, chunks, now);
    assert!(ledger.plan(entries(1), vec![volume(1)], vec![], vec![], false).is_empty());
    let chunks = ledger.plan(entries(1), vec![volume(2)], vec![], vec![], false);
    assert_eq!(chunks.len(), 1);
    assert!(chunks[0].report.instances.is_empty());
    assert_eq!(chunks[0].report.volumes.len(), 1);
}

#[test]
fn instances_gone_are_forgotten() {
    let mut ledger = ReportLedger::default();
    let now = Instant::now();
    let chunks = ledger.plan(entries(3), vec![], vec![], vec![], true);
    take_all(&mut ledger, chunks, now);
    let keep = id(0);
    ledger.retain(&HashSet::from([&keep]));
    assert_eq!(ledger.taken.len(), 1);
}
