//! The constraints and the refusals' words, over fixed snapshots; and the
//! rule that hosts are chosen here only.

use super::*;

fn host(name: &str, vcpus: u32, memory_mib: u64) -> HostSnapshot {
    HostSnapshot {
        id: format!("id-{name}"),
        name: name.into(),
        up: true,
        vcpus,
        memory_mib,
        disk_gib: 100,
        used_vcpus: 0,
        used_memory_mib: 0,
        used_disk_gib: 0,
        underlay: false,
        shared_storage: None,
        externals: Vec::new(),
    }
}

const SMALL: Demand = Demand { vcpus: 1, memory_mib: 1024, disk_gib: 10 };

fn refusal(hosts: &[HostSnapshot], need: impl Into<Need>, c: &Constraints) -> String {
    match choose_among(hosts, need.into(), &Policy::default(), c) {
        Ok(choice) => panic!("expected a refusal, got {choice:?}"),
        Err(r) => r.to_string(),
    }
}

#[test]
fn the_choice_is_ranked_and_carries_each_hosts_limits() {
    let mut full = host("full", 4, 4096);
    full.used_vcpus = 6;
    let hosts = vec![full, host("a", 2, 2048), host("b", 4, 8192)];
    let p = Policy { cpu_overcommit: 2.0, ..Policy::default() };
    let choice = choose_among(&hosts, SMALL.into(), &p, &Constraints::default()).unwrap();
    let order: Vec<&str> = choice.hosts().map(|h| h.name.as_str()).collect();
    assert_eq!(order, ["b", "a", "full"], "spread: the emptiest first");
    assert_eq!(choice.best.id, "id-b");
    assert_eq!(choice.best.limits, Size { vcpus: 8, memory_mib: 8192, disk_gib: 100 });
    assert_eq!(choice.best.limits, Size::limits(&p, &hosts[2]), "the claim's limits are the filters'");
}

#[test]
fn a_launch_refusal_names_every_host_and_its_filter() {
    let mut down = host("down", 8, 8192);
    down.up = false;
    let text = refusal(&[down, host("small", 1, 512)], SMALL, &Constraints::default());
    assert!(text.starts_with("no host can take this instance: "), "{text}");
    assert!(text.contains("host down rejected by HostStateFilter: host is down or disabled"), "{text}");
    assert!(text.contains("host small rejected by MemoryFilter"), "{text}");
    assert!(refusal(&[], SMALL, &Constraints::default()).contains("no compute host is registered"));
}

#[test]
fn private_networks_need_an_underlay_host() {
    let net = Constraints { underlay: true, ..Constraints::default() };
    let hosts = [host("a", 8, 8192), host("b", 8, 8192)];
    for fleet in [&hosts[..], &[]] {
        let text = refusal(fleet, SMALL, &net);
        assert_eq!(
            text,
            "no host runs private networks: start an agent with --underlay ADDRESS (see docs/networks.md)"
        );
    }
    // One host runs them but is full: the refusal says so, host by host.
    let mut bridged = host("bridged", 1, 512);
    bridged.underlay = true;
    let text = refusal(&[host("a", 8, 8192), bridged.clone()], SMALL, &net);
    assert!(text.contains("host a rejected by UnderlayFilter: runs no private networks"), "{text}");
    assert!(text.contains("host bridged rejected by MemoryFilter"), "{text}");
    bridged.memory_mib = 8192;
    let choice = choose_among(&[host("a", 8, 8192), bridged], SMALL.into(), &Policy::default(), &net).unwrap();
    assert_eq!(choice.best.name, "bridged");
    assert!(choice.rest.is_empty());
}

#[test]
fn a_move_never_chooses_the_instances_own_host() {
    let c = Constraints { exclude: Some("id-a"), ..Constraints::default() };
    let hosts = vec![host("a", 64, 65536), host("b", 2, 2048)];
    let choice = choose_among(&hosts, SMALL.into(), &Policy::default(), &c).unwrap();
    assert_eq!(choice.hosts().map(|h| h.name.as_str()).collect::<Vec<_>>(), ["b"]);
    let text = refusal(&hosts[..1], SMALL, &c);
    assert!(text.contains("host a rejected by ExcludeFilter: the instance is already on it"), "{text}");
}

#[test]
fn failover_goes_only_where_the_disks_are() {
    let mut a = host("a", 8, 8192);
    a.shared_storage = Some("nfs-1".into());
    let mut b = host("b", 64, 65536);
    b.shared_storage = Some("nfs-2".into());
    let c = Constraints { shared_storage: Some("nfs-1"), ..Constraints::default() };
    let hosts = vec![a, b, host("c", 64, 65536)];
    let choice = choose_among(&hosts, SMALL.into(), &Policy::default(), &c).unwrap();
    assert_eq!(choice.best.name, "a");
    assert!(choice.rest.is_empty());
    let text = refusal(&hosts[1..], SMALL, &c);
    assert!(text.contains("host b rejected by SharedStorageFilter: does not share storage nfs-1"), "{text}");
}

#[test]
fn a_pinned_host_is_explained_alone() {
    let hosts = vec![host("a", 8, 8192), host("small", 1, 512)];
    let pin = |id| Constraints { pin: Some(id), ..Constraints::default() };
    let text = refusal(&hosts, SMALL, &pin("id-small"));
    assert!(text.starts_with("host small: needs 1024 MiB of memory"), "{text}");
    assert!(!text.contains("host a"), "{text}");
    assert_eq!(refusal(&hosts, SMALL, &pin("id-gone")), "host id-gone is not registered: see `nubo host list`");
    let choice = choose_among(&hosts, SMALL.into(), &Policy::default(), &pin("id-a")).unwrap();
    assert_eq!(choice.best.name, "a");
}

#[test]
fn the_configured_weigher_applies_unless_the_caller_names_one() {
    let mut busy = host("busy", 8, 8192);
    busy.used_vcpus = 16;
    busy.used_memory_mib = 4096;
    let hosts = vec![busy, host("idle", 8, 8192)];
    let pack = Policy { weigher: Weigher::Pack, ..Policy::default() };
    let best = |c: &Constraints| choose_among(&hosts, SMALL.into(), &pack, c).unwrap().best.name;
    assert_eq!(best(&Constraints::default()), "busy");
    assert_eq!(best(&Constraints { weigher: Some(Weigher::Spread), ..Constraints::default() }), "idle");
}

#[test]
fn a_storage_refusal_gives_each_pools_free_space() {
    let mut down = host("down", 8, 8192);
    down.up = false;
    let mut used = host("used", 8, 8192);
    used.used_disk_gib = 80;
    let text = refusal(&[used.clone(), down.clone()], Need::Pool { gib: 30 }, &Constraints::default());
    assert_eq!(
        text,
        "no storage pool can take 30 GiB: host used's storage pool has 20 GiB free (80 of 100 GiB in use); \
         host down is down; choose a smaller size or free space"
    );
    assert!(refusal(&[], Need::Pool { gib: 1 }, &Constraints::default()).contains("no compute host is registered"));
    // The pool with the most room wins; a pinned one counts even when its
    // host is down, for the volume lives there.
    let hosts = vec![used, host("empty", 1, 128), down];
    let choice = choose_among(&hosts, Need::Pool { gib: 10 }, &Policy::default(), &Constraints::default()).unwrap();
    assert_eq!(choice.best.name, "empty");
    assert_eq!(choice.best.limits.disk_gib, 100);
    let pinned = Constraints { pin: Some("id-down"), require_up: false, ..Constraints::default() };
    let choice = choose_among(&hosts, Need::Pool { gib: 10 }, &Policy::default(), &pinned).unwrap();
    assert_eq!(choice.best.name, "down");
}

#[test]
fn refusals_become_no_valid_host() {
    let err: AppError =
        choose_among(&[], SMALL.into(), &Policy::default(), &Constraints::default()).unwrap_err().into();
    assert!(matches!(err, AppError::NoValidHost(ref m) if m.contains("nubo agent")), "{err:?}");
}

/// Hosts are chosen in `placement` only: no other module of the control
/// plane calls the scheduler's choosing functions.
#[test]
fn nothing_outside_placement_chooses_hosts() {
    const CHOOSING: &[&str] = &["choose", "rank", "pick", "check", "check_host"];
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    assert!(files.len() > 20, "the scan found too few sources in {}", src.display());
    let calls = |text: &str| -> Vec<String> {
        let mut found = Vec::new();
        for (n, line) in text.lines().enumerate() {
            for name in CHOOSING {
                let call = format!("nubo_scheduler::{name}(");
                // `use nubo_scheduler::{rank, ...}` and `use nubo_scheduler::rank;` too.
                let imported = line.trim_start().starts_with("use nubo_scheduler")
                    && line.split(|c: char| !c.is_alphanumeric() && c != '_').any(|w| w == *name);
                if line.contains(&call) || imported {
                    found.push(format!("{}: {}", n + 1, line.trim()));
                }
            }
        }
        found
    };
    let placement = src.join("placement");
    let mut offenders = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        if f.starts_with(&placement) {
            continue;
        }
        offenders.extend(calls(&text).into_iter().map(|c| format!("{}:{c}", f.display())));
    }
    assert!(
        offenders.is_empty(),
        "hosts are chosen by placement::choose only; these call the scheduler directly:\n{}",
        offenders.join("\n")
    );
    // The scan does see a call where there is one.
    let ours = std::fs::read_to_string(placement.join("mod.rs")).unwrap();
    assert_eq!(calls(&ours).len(), 1, "placement's own call to the scheduler was not recognised");
}

/// The claim's conditional writes (instances' capacity, storage pools)
/// take exactly what the filters let through, at and around each limit:
/// the SQL re-check and the scheduler agree on what fits.
#[tokio::test]
async fn the_claims_sql_agrees_with_the_filters() {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::store::Store::open(&dir.path().join("nubo.db")).await.unwrap();
    let host_id = nubo_api::ids::HostId::generate();
    let register = nubo_api::agent::RegisterHost {
        host_id: host_id.clone(),
        name: "h".into(),
        accel: "tcg".into(),
        vcpus: 3,
        memory_mib: 3000,
        disk_gib: 30,
        underlay: None,
        shared_storage: None,
        externals: Vec::new(),
    };
    store.register_host(&register).await.unwrap();
    let p = Policy { cpu_overcommit: 1.5, memory_overcommit: 1.25, disk_overcommit: 0.9, ..Policy::default() };
    let used = (2i64, 1000i64, 10i64); // limits 4 vCPUs, 3750 MiB, 27 GiB
    sqlx::query("UPDATE hosts SET used_vcpus = $1, used_memory_mib = $2, used_disk_gib = $3")
        .bind(used.0)
        .bind(used.1)
        .bind(used.2)
        .execute(&store.pool)
        .await
        .unwrap();
    let row = store.hosts().await.unwrap().remove(0);
    let snap = HostSnapshot {
        id: row.id.clone(),
        name: row.name.clone(),
        up: true,
        vcpus: row.vcpus as u32,
        memory_mib: row.memory_mib as u64,
        disk_gib: row.disk_gib as u64,
        used_vcpus: row.used_vcpus as u32,
        used_memory_mib: row.used_memory_mib as u64,
        used_disk_gib: row.used_disk_gib as u64,
        underlay: false,
        shared_storage: None,
        externals: Vec::new(),
    };
    let limits = Size::limits(&p, &snap);
    let mut needs: Vec<Need> = Vec::new();
    for vcpus in 1..=3 {
        for memory_mib in [2749, 2750, 2751] {
            for disk_gib in [16, 17, 18] {
                needs.push(Demand { vcpus, memory_mib, disk_gib }.into());
            }
        }
    }
    needs.extend([16, 17, 18].map(|gib| Need::Pool { gib }));
    let mut fits_seen = (0, 0);
    for need in needs {
        let filters = choose_among(std::slice::from_ref(&snap), need, &p, &Constraints::default()).is_ok();
        let mut tx = store.begin().await.unwrap();
        let sql = match need {
            Need::Instance(d) => {
                let size =
                    Size { vcpus: i64::from(d.vcpus), memory_mib: d.memory_mib as i64, disk_gib: d.disk_gib as i64 };
                crate::store::claim_capacity(&mut tx, &row.id, size, limits).await.unwrap()
            }
            Need::Pool { gib } => {
                crate::volumes::claim_pool(&mut tx, &row.id, gib as i64, limits.disk_gib).await.is_ok()
            }
        };
        tx.rollback().await.unwrap();
        assert_eq!(filters, sql, "{need:?}: the filters say {filters}, the claim {sql}");
        if filters {
            fits_seen.0 += 1;
        } else {
            fits_seen.1 += 1;
        }
    }
    assert!(fits_seen.0 > 0 && fits_seen.1 > 0, "both sides of the limits were tried: {fits_seen:?}");
}
