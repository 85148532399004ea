//! Restores from backups through the real router (no socket, no VM; the
//! backups are rows as a host would have left them): a new instance from
//! a backup and what its host is told to write, who may restore what, a
//! backup not completed, in place only while stopped, and the evacuation
//! of a dead host from backups (refused while it is up).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use axum::http::StatusCode;
use common::T;
use nubo_api::ids::{BackupId, BackupRepositoryId, VolumeId};
use serde_json::{json, Value};
use sqlx::Connection;

const KEY_HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Runs one statement on the test's database (SQLite file or PostgreSQL),
/// as a host's backup job would have left its rows.
async fn exec(t: &T, sql: &str, args: &[Value]) {
    let url = match &t.db {
        Some(db) => db.url.clone(),
        None => format!("sqlite://{}", t.data_dir().join("nubo.db").display()),
    };
    let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
    let mut q = sqlx::query(sql);
    for a in args {
        q = match a {
            Value::Number(n) => q.bind(n.as_i64().unwrap()),
            Value::Null => q.bind(None::<String>),
            other => q.bind(other.as_str().unwrap().to_string()),
        };
    }
    q.execute(&mut conn).await.unwrap();
}

async fn scalar(t: &T, sql: &str, arg: &str) -> String {
    let url = match &t.db {
        Some(db) => db.url.clone(),
        None => format!("sqlite://{}", t.data_dir().join("nubo.db").display()),
    };
    let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
    sqlx::query_scalar(sql).bind(arg.to_string()).fetch_one(&mut conn).await.unwrap()
}

/// A `dir` repository; its id.
async fn repository(t: &T) -> String {
    let id = BackupRepositoryId::generate().to_string();
    let location = json!({"kind": "dir", "path": "/srv/backups"}).to_string();
    let sealed = t.ctx.sealer.seal(KEY_HEX);
    exec(
        t,
        "INSERT INTO backup_repositories (id, name, kind, location_json, sealed_secret, sealed_key, created_at_ms)
         VALUES ($1, $2, 'dir', $3, NULL, $4, 1000)",
        &[json!(id), json!(format!("r-{id}")), json!(location), json!(sealed)],
    )
    .await;
    id
}

/// A backup of `instance` (its view as recorded) in `state`, holding the
/// root disk and `volumes`; its id.
async fn backup(t: &T, repo: &str, instance: &Value, state: &str, volumes: &[&str], at_ms: i64) -> String {
    let id = BackupId::generate().to_string();
    let iid = instance["id"].as_str().unwrap();
    let project = scalar(t, "SELECT project_id FROM instances WHERE id = $1", iid).await;
    let mut disks = vec![json!({"name": "root", "size_bytes": 1u64 << 30, "incremental": false,
        "bytes_read": 0, "bytes_sent": 0, "bytes_stored": 0, "chunks": 0, "chunks_new": 0})];
    for v in volumes {
        disks.push(json!({"name": v, "volume_id": v, "size_bytes": 2u64 << 30, "incremental": false,
            "bytes_read": 0, "bytes_sent": 0, "bytes_stored": 0, "chunks": 0, "chunks_new": 0}));
    }
    exec(
        t,
        "INSERT INTO backups (id, project_id, instance_id, instance_name, repository_id, host_id, state,
           instance_json, disks_json, created_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        &[
            json!(id),
            json!(project),
            json!(iid),
            instance["name"].clone(),
            json!(repo),
            instance["host"].clone(),
            json!(state),
            json!(instance.to_string()),
            json!(Value::Array(disks).to_string()),
            json!(at_ms),
        ],
    )
    .await;
    id
}

async fn launch(t: &T, token: &str, name: &str) -> Value {
    t.ok(
        "POST",
        "/api/v1/instances",
        token,
        Some(json!({"image": "tiny", "vcpus": 2, "memory_mib": 256, "disk_gib": 3, "name": name,
            "tags": {"team": "db"}})),
    )
    .await
}

async fn desired(t: &T, host: &str, cred: &str) -> Value {
    t.ok("GET", &format!("/api/v1/agent/hosts/{host}/desired"), cred, None).await
}

fn msg(v: &Value) -> String {
    v["error"]["message"].as_str().unwrap_or_default().to_string()
}

fn desired_instance<'a>(d: &'a Value, id: &str) -> &'a Value {
    d["instances"].as_array().unwrap().iter().find(|i| i["id"] == id).unwrap_or_else(|| panic!("{id} not in {d}"))
}

#[tokio::test]
async fn a_backup_restores_as_a_new_instance_its_host_writes_from_the_repository() {
    let t = T::new().await;
    let (host, cred) = t.add_host_with_id().await;
    let alice = t.user("alice", "proj-a", "member").await;
    let bob = t.user("bob", "proj-b", "member").await;
    let rita = t.user("rita", "proj-a", "reader").await;
    let repo = repository(&t).await;
    let original = launch(&t, &alice, "web").await;
    let vol = VolumeId::generate().to_string();
    let now = nubo_controlplane::store::now_ms();
    let done = backup(&t, &repo, &original, "completed", &[&vol], now - 3_600_000).await;
    let running = backup(&t, &repo, &original, "running", &[], now).await;

    // Another project does not see the backup; a reader may not create.
    let (s, v) = t.call("POST", &format!("/api/v1/backups/{done}/restore"), Some(&bob), Some(json!({}))).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, v) = t
        .call("POST", &format!("/api/v1/backups/{done}/restore-volume"), Some(&bob), Some(json!({"disk": "root"})))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, v) = t.call("POST", &format!("/api/v1/backups/{done}/restore"), Some(&rita), Some(json!({}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    // A backup still being taken cannot be restored, and says so.
    let (s, v) = t.call("POST", &format!("/api/v1/backups/{running}/restore"), Some(&alice), Some(json!({}))).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(msg(&v).contains("is running") && msg(&v).contains("completed"), "{v}");
    // Pinning to a host is for operators.
    let (s, v) = t
        .call("POST", &format!("/api/v1/backups/{done}/restore"), Some(&alice), Some(json!({"host": host.to_string()})))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");

    let (s, restored) = t.call("POST", &format!("/api/v1/backups/{done}/restore"), Some(&alice), Some(json!({}))).await;
    assert_eq!(s, StatusCode::CREATED, "{restored}");
    let rid = restored["id"].as_str().unwrap().to_string();
    assert_ne!(rid, original["id"].as_str().unwrap());
    assert_eq!(restored["name"], "web-restored");
    assert_eq!(
        (restored["vcpus"].as_u64(), restored["memory_mib"].as_u64(), restored["disk_gib"].as_u64()),
        (Some(2), Some(256), Some(3))
    );
    assert_eq!(restored["image"], "tiny");
    let events = restored["events"].to_string();
    assert!(events.contains(&format!("restored from {done}, data as of ")), "{events}");
    // Without `with_networks` it is on no private network of the original.
    assert!(restored["addresses"].as_array().is_none_or(|a| a.is_empty()), "{restored}");

    // The host is told to write the root disk and the volume from the
    // backup, with the repository's location and key.
    let d = desired(&t, host.as_str(), &cred).await;
    let want = desired_instance(&d, &rid);
    assert_eq!(want["restore"]["seq"], 1);
    assert_eq!(want["restore"]["backup_id"], done.as_str());
    assert_eq!(want["restore"]["disk"], "root");
    assert_eq!(want["restore"]["repository"]["id"], repo.as_str());
    assert_eq!(want["restore"]["repository"]["location"], json!({"kind": "dir", "path": "/srv/backups"}));
    assert_eq!(want["restore"]["repository"]["key_hex"], KEY_HEX);
    assert!(desired_instance(&d, original["id"].as_str().unwrap())["restore"].is_null());
    let attached = want["volumes"].as_array().unwrap();
    assert_eq!(attached.len(), 1, "{want}");
    let new_vol = attached[0]["volume_id"].as_str().unwrap();
    assert_ne!(new_vol, vol);
    let dv = d["volumes"].as_array().unwrap().iter().find(|v| v["id"] == new_vol).unwrap();
    assert_eq!(dv["from_backup"]["disk"], vol.as_str());
    assert_eq!(dv["from_backup"]["backup_id"], done.as_str());
    assert_eq!(dv["size_gib"], 2);
    // The key is never in a user's view.
    assert!(!restored.to_string().contains(KEY_HEX));

    // One disk as a volume of its own.
    let (s, v) = t
        .call("POST", &format!("/api/v1/backups/{done}/restore-volume"), Some(&alice), Some(json!({"disk": "nope"})))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(msg(&v).contains("root") && msg(&v).contains(&vol), "{v}");
    let (s, v) = t
        .call(
            "POST",
            &format!("/api/v1/backups/{done}/restore-volume"),
            Some(&alice),
            Some(json!({"disk": "root", "name": "old-root"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["name"], "old-root");
    assert_eq!(v["size_gib"], 1);
    let d = desired(&t, host.as_str(), &cred).await;
    let dv = d["volumes"].as_array().unwrap().iter().find(|x| x["id"] == v["id"]).unwrap();
    assert_eq!(dv["from_backup"]["disk"], "root");
    assert_eq!(dv["from_backup"]["seq"], 1);
}

#[tokio::test]
async fn in_place_only_while_stopped_and_only_its_own_backups() {
    let t = T::new().await;
    let (host, cred) = t.add_host_with_id().await;
    let alice = t.user("alice", "proj-a", "member").await;
    let repo = repository(&t).await;
    let a = launch(&t, &alice, "a").await;
    let b = launch(&t, &alice, "b").await;
    let aid = a["id"].as_str().unwrap();
    let now = nubo_controlplane::store::now_ms();
    let of_a = backup(&t, &repo, &a, "completed", &[], now - 60_000).await;
    let of_b = backup(&t, &repo, &b, "completed", &[], now - 60_000).await;

    let path = format!("/api/v1/instances/{aid}/restore");
    let (s, v) = t.call("POST", &path, Some(&alice), Some(json!({"backup": of_a}))).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(msg(&v).contains(&format!("nubo instance stop {aid}")), "{v}");
    assert!(desired_instance(&desired(&t, host.as_str(), &cred).await, aid)["restore"].is_null());

    // Stopped (as its host would report it).
    exec(&t, "UPDATE instances SET desired = 'stopped', state = 'stopped' WHERE id = $1", &[json!(aid)]).await;
    let (s, v) = t.call("POST", &path, Some(&alice), Some(json!({"backup": of_b}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(msg(&v).contains("nubo backup restore"), "{v}");
    let v = t.ok("POST", &path, &alice, Some(json!({"backup": of_a}))).await;
    assert_eq!(v["state"], "stopped");
    assert!(v["events"].to_string().contains(&format!("restored from {of_a}")), "{v}");
    let want = desired_instance(&desired(&t, host.as_str(), &cred).await, aid).clone();
    assert_eq!(want["restore"]["seq"], 1);
    assert_eq!(want["power"], "stopped");
    // Asked again: a new seq, so the host writes it again.
    t.ok("POST", &path, &alice, Some(json!({"backup": of_a}))).await;
    let want = desired_instance(&desired(&t, host.as_str(), &cred).await, aid).clone();
    assert_eq!(want["restore"]["seq"], 2);
}

#[tokio::test]
async fn a_dead_host_is_evacuated_from_backups_and_instances_without_one_are_left_behind() {
    let t = T::new().await;
    let (h1, _) = t.add_host_with_id().await;
    let alice = t.user("alice", "proj-a", "member").await;
    let repo = repository(&t).await;
    let a = launch(&t, &alice, "with-backup").await;
    let b = launch(&t, &alice, "without").await;
    assert_eq!(a["host"], h1.as_str());
    assert_eq!(b["host"], h1.as_str());
    let (h2, cred2) = t.add_host_with_id().await;
    let now = nubo_controlplane::store::now_ms();
    let older = backup(&t, &repo, &a, "completed", &[], now - 7_200_000).await;
    let newest = backup(&t, &repo, &a, "completed", &[], now - 3_600_000).await;
    let _failed = backup(&t, &repo, &a, "failed", &[], now - 60_000).await;
    let _ = older;

    let path = format!("/api/v1/hosts/{h1}/evacuate-from-backups");
    let (s, v) = t.call("POST", &path, Some(&alice), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, v) = t.call("POST", &path, Some(&t.admin), None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(msg(&v).contains("renewed its lease") && msg(&v).contains("nubo host evacuate"), "{v}");

    // Its lease ran out long ago.
    exec(&t, "UPDATE hosts SET last_heartbeat_ms = 0 WHERE id = $1", &[json!(h1.as_str())]).await;
    let (s, report) = t.call("POST", &path, Some(&t.admin), None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{report}");
    let report = report.as_array().unwrap();
    assert_eq!(report.len(), 2, "{report:?}");
    let ra = report.iter().find(|r| r["instance_id"] == a["id"]).unwrap();
    assert_eq!(ra["host"], h2.as_str());
    assert_eq!(ra["backup_id"], newest.as_str());
    assert!(ra["data_age"].as_str().unwrap().starts_with("1 h"), "{ra}");
    assert!(ra["left_behind"].is_null());
    let rb = report.iter().find(|r| r["instance_id"] == b["id"]).unwrap();
    assert!(rb["host"].is_null());
    assert!(rb["left_behind"].as_str().unwrap().contains("no completed backup"), "{rb}");

    // The same instance, now on h2, with its root disk to be restored.
    let d = desired(&t, h2.as_str(), &cred2).await;
    let want = desired_instance(&d, a["id"].as_str().unwrap());
    assert_eq!(want["restore"]["backup_id"], newest.as_str());
    assert_eq!(want["restore"]["disk"], "root");
    assert_eq!(want["restore"]["repository"]["key_hex"], KEY_HEX);
    let shown = t.ok("GET", &format!("/api/v1/instances/{}", a["id"].as_str().unwrap()), &alice, None).await;
    assert_eq!(shown["host"], h2.as_str());
    let events = shown["events"].to_string();
    assert!(events.contains("restored on") && events.contains(&newest) && events.contains("old)"), "{events}");
    let left = t.ok("GET", &format!("/api/v1/instances/{}", b["id"].as_str().unwrap()), &alice, None).await;
    assert_eq!(left["host"], h1.as_str());
}
