//! Backups through the REST API and the agent protocol, with directory
//! repositories in temporary directories: operators register repositories
//! (their key sealed, never shown), projects make plans (validated) and
//! run backups; hosts claim their own backup jobs and report progress and
//! the end; the background round fires due plans, applies retention,
//! prunes (claims skip a repository being pruned) and fails the backups of
//! silent hosts. Another project sees none of it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use axum::http::StatusCode;
use common::T;
use nubo_controlplane::app::backups as app;
use serde_json::{json, Value};

fn msg(v: &Value) -> String {
    v["error"]["message"].as_str().unwrap_or_default().to_string()
}

async fn report(t: &T, host: &str, cred: &str, body: Value) {
    t.ok("POST", &format!("/api/v1/agent/hosts/{host}/report"), cred, Some(body)).await;
}

/// An instance of `token`'s project with `tags`, reported `power` by its host; its id.
async fn instance(t: &T, host: &str, cred: &str, token: &str, tags: Value, power: &str) -> String {
    let i = t
        .ok(
            "POST",
            "/api/v1/instances",
            token,
            Some(json!({"image": "tiny", "vcpus": 1, "memory_mib": 128, "disk_gib": 1, "tags": tags})),
        )
        .await;
    let id = i["id"].as_str().unwrap().to_string();
    report(t, host, cred, json!({"instances": [{"id": id, "power": "running", "pid": 1, "error": null}]})).await;
    if power == "stopped" {
        t.ok("POST", &format!("/api/v1/instances/{id}/stop"), token, None).await;
        report(t, host, cred, json!({"instances": [{"id": id, "power": "stopped", "pid": null, "error": null}]})).await;
    }
    let v = t.ok("GET", &format!("/api/v1/instances/{id}"), token, None).await;
    assert_eq!(v["state"], power, "{v}");
    id
}

/// Registers a directory repository named `name` in `dir`; its id.
async fn repo(t: &T, name: &str, dir: &std::path::Path) -> String {
    let body = json!({"name": name, "location": {"kind": "dir", "path": dir.to_str().unwrap()}});
    let (s, v) = t.call("POST", "/api/v1/backup-repositories", Some(&t.admin), Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v["id"].as_str().unwrap().to_string()
}

async fn claim(t: &T, host: &str, cred: &str) -> (StatusCode, Value) {
    t.call("POST", &format!("/api/v1/agent/hosts/{host}/backup-jobs"), Some(cred), Some(json!({}))).await
}

async fn job_report(t: &T, host: &str, cred: &str, backup: &str, body: Value) -> (StatusCode, Value) {
    t.call("POST", &format!("/api/v1/agent/hosts/{host}/backup-jobs/{backup}"), Some(cred), Some(body)).await
}

fn disk(name: &str, incremental: bool, sent: u64, stored: u64) -> Value {
    json!({"name": name, "size_bytes": 1u64 << 30, "incremental": incremental,
        "full_reason": if incremental { Value::Null } else { json!("first backup") },
        "bytes_read": 4u64 << 20, "bytes_sent": sent, "bytes_stored": stored, "chunks": 1024, "chunks_new": 3})
}

#[tokio::test]
async fn repositories_are_for_operators_and_never_show_their_key() {
    let t = T::new().await;
    let alice = t.user("alice", "a", "member").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("repo");
    let body = json!({"name": "nfs", "location": {"kind": "dir", "path": path.to_str().unwrap()}});
    let (s, v) = t.call("POST", "/api/v1/backup-repositories", Some(&alice), Some(body.clone())).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(!path.exists(), "a refused registration touches nothing");

    let id = repo(&t, "nfs", &path).await;
    assert!(path.join("config").exists(), "the repository was set up");
    let v = t.ok("GET", &format!("/api/v1/backup-repositories/{id}"), &alice, None).await;
    assert_eq!(v["location"], json!({"kind": "dir", "url": format!("file://{}", path.display())}));
    assert_eq!((v["name"].as_str(), v["pruning"].as_bool()), (Some("nfs"), Some(false)));
    assert_eq!(t.ok("GET", "/api/v1/backup-repositories/nfs", &alice, None).await["id"], id.as_str());
    // The key reaches hosts only; no view, and not the database, holds it.
    let access = app::repository_access(&t.ctx, &id).await.unwrap();
    assert_eq!(access.key_hex.len(), 64);
    let list = t.ok("GET", "/api/v1/backup-repositories", &t.admin, None).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert!(!list.to_string().contains(&access.key_hex) && !v.to_string().contains(&access.key_hex));
    let db = t.database_bytes().await;
    assert!(!db.windows(64).any(|w| w == access.key_hex.as_bytes()), "the key is stored sealed");

    // Same name: refused. Same directory under another name: it is another
    // key's repository, refused, and nothing stored.
    let (s, v) = t.call("POST", "/api/v1/backup-repositories", Some(&t.admin), Some(body)).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(msg(&v).contains("choose another name"), "{v}");
    let again = json!({"name": "nfs2", "location": {"kind": "dir", "path": path.to_str().unwrap()}});
    let (s, v) = t.call("POST", "/api/v1/backup-repositories", Some(&t.admin), Some(again)).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(msg(&v).contains("another key"), "{v}");

    // Unreachable (a directory under a file), a relative path, and a kind
    // this build cannot open: refused with the reason, nothing stored, and
    // no secret kept anywhere.
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let bad = json!({"name": "gone", "location": {"kind": "dir", "path": file.join("sub").to_str().unwrap()}});
    let (s, v) = t.call("POST", "/api/v1/backup-repositories", Some(&t.admin), Some(bad)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(msg(&v).contains("cannot register") && msg(&v).contains("create the directory"), "{v}");
    let rel = json!({"name": "rel", "location": {"kind": "dir", "path": "backups"}});
    let (s, v) = t.call("POST", "/api/v1/backup-repositories", Some(&t.admin), Some(rel)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(msg(&v).contains("not absolute"), "{v}");
    let s3 = json!({"name": "s3", "location": {"kind": "s3", "endpoint": "http://127.0.0.1:9", "bucket": "b",
        "access_key_id": "AKID", "secret_access_key": "S3-SECRET-never-stored"}});
    let (s, v) = t.call("POST", "/api/v1/backup-repositories", Some(&t.admin), Some(s3)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(t.ok("GET", "/api/v1/backup-repositories", &t.admin, None).await.as_array().unwrap().len(), 1);
    let db = t.database_bytes().await;
    assert!(!db.windows(22).any(|w| w == b"S3-SECRET-never-stored"));

    // In use by a plan: not deleted; members cannot delete; then it goes.
    let inst_host = t.add_host_with_id().await;
    let i = instance(&t, inst_host.0.as_str(), &inst_host.1, &alice, json!({}), "running").await;
    let plan = json!({"name": "nightly", "repository": "nfs", "selector": {"instances": [i]},
        "schedule": "0 3 * * *", "retention": {"last": 7}});
    t.ok("POST", "/api/v1/backup-plans", &alice, Some(plan)).await;
    let (s, v) = t.call("DELETE", &format!("/api/v1/backup-repositories/{id}"), Some(&t.admin), None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(msg(&v).contains("delete them first"), "{v}");
    let (s, _) = t.call("DELETE", &format!("/api/v1/backup-repositories/{id}"), Some(&alice), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    t.ok("DELETE", "/api/v1/backup-plans/nightly", &alice, None).await;
    let (s, _) = t.call("DELETE", &format!("/api/v1/backup-repositories/{id}"), Some(&t.admin), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(t.ok("GET", "/api/v1/backup-repositories", &t.admin, None).await.as_array().unwrap().is_empty());
}

#[tokio::test]
async fn plans_are_checked_and_say_what_to_do() {
    let t = T::new().await;
    let alice = t.user("alice", "a", "member").await;
    let reader = t.user("rita", "a", "reader").await;
    let bob = t.user("bob", "b", "member").await;
    let (h, cred) = t.add_host_with_id().await;
    let dir = tempfile::tempdir().unwrap();
    repo(&t, "nfs", dir.path()).await;
    let mine = instance(&t, h.as_str(), &cred, &alice, json!({}), "running").await;
    let bobs = instance(&t, h.as_str(), &cred, &bob, json!({}), "running").await;
    let plan = |f: &dyn Fn(&mut Value)| {
        let mut p = json!({"name": "nightly", "repository": "nfs", "selector": {"instances": [mine]},
            "schedule": "0 3 * * *", "retention": {"last": 7, "daily": 7}});
        f(&mut p);
        p
    };
    let cases: Vec<(Value, &str)> = vec![
        (plan(&|p| p["name"] = json!("bad name!")), "plan name"),
        (plan(&|p| p["repository"] = json!("nope")), "nubo backup repo list"),
        (plan(&|p| p["schedule"] = json!("0 3 * *")), "e.g. '0 3 * * *'"),
        (plan(&|p| p["schedule"] = json!("at three")), "five cron fields"),
        (plan(&|p| p["selector"] = json!({})), "selects no instance"),
        (plan(&|p| p["selector"] = json!({"instances": [bobs]})), "not in this project"),
        (plan(&|p| p["selector"] = json!({"groups": ["web"]})), "nubo group list"),
        (plan(&|p| p["retention"] = json!({})), "keep at least one"),
    ];
    for (body, want) in cases {
        let (s, v) = t.call("POST", "/api/v1/backup-plans", Some(&alice), Some(body.clone())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(msg(&v).contains(want), "{body}: {v}");
    }
    let (s, _) = t.call("POST", "/api/v1/backup-plans", Some(&reader), Some(plan(&|_| {}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v) = t.call("POST", "/api/v1/backup-plans", Some(&alice), Some(plan(&|_| {}))).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["retention"], json!({"last": 7, "daily": 7, "weekly": 0, "monthly": 0}));
    assert_eq!((v["verify"].as_str(), v["last_run_at"].as_null()), (Some("none"), Some(())));
    assert!(v["next_run_at"].as_str().unwrap().ends_with("T03:00:00.000Z"), "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let (s, v) = t.call("POST", "/api/v1/backup-plans", Some(&alice), Some(plan(&|_| {}))).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    // Readers list and show; the other project sees nothing and cannot delete.
    assert_eq!(t.ok("GET", "/api/v1/backup-plans", &reader, None).await.as_array().unwrap().len(), 1);
    assert_eq!(t.ok("GET", &format!("/api/v1/backup-plans/{id}"), &reader, None).await["name"], "nightly");
    assert!(t.ok("GET", "/api/v1/backup-plans", &bob, None).await.as_array().unwrap().is_empty());
    let (s, _) = t.call("GET", &format!("/api/v1/backup-plans/{id}"), Some(&bob), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = t.call("DELETE", &format!("/api/v1/backup-plans/{id}"), Some(&bob), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = t.call("DELETE", &format!("/api/v1/backup-plans/{id}"), Some(&reader), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    t.ok("DELETE", &format!("/api/v1/backup-plans/{id}"), &alice, None).await;
    assert!(t.ok("GET", "/api/v1/backup-plans", &alice, None).await.as_array().unwrap().is_empty());
}

#[tokio::test]
async fn a_host_takes_its_own_backups_and_reports_progress_and_figures() {
    let t = T::new().await;
    let alice = t.user("alice", "a", "member").await;
    let bob = t.user("bob", "b", "member").await;
    let (h1, c1) = t.add_host_with_id().await;
    let (mine, my_cred) = (h1.to_string(), c1);
    let dir = tempfile::tempdir().unwrap();
    let repo_id = repo(&t, "nfs", dir.path()).await;
    let i = instance(&t, &mine, &my_cred, &alice, json!({"env": "prod"}), "running").await;
    let vol = t.ok("POST", "/api/v1/volumes", &alice, Some(json!({"size_gib": 2, "name": "data"}))).await;
    let vol = vol["id"].as_str().unwrap().to_string();
    let ready = json!({"instances": [{"id": i, "power": "running", "pid": 1, "error": null}],
        "volumes": [{"id": vol, "state": "available", "size_gib": 2, "error": null}]});
    report(&t, &mine, &my_cred, ready).await;
    t.ok("POST", &format!("/api/v1/volumes/{vol}/attach"), &alice, Some(json!({"instance_id": i}))).await;
    // A second host joins after: the instance and its volume are on the first.
    let (h2, other_cred) = t.add_host_with_id().await;
    let other = h2.to_string();
    let (mine, my_cred, other, other_cred) = (&mine, &my_cred, &other, &other_cred);

    // Bob cannot back up, see or delete Alice's instance's backups.
    let (s, _) = t.call("POST", &format!("/api/v1/instances/{i}/backups"), Some(&bob), Some(json!({}))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = t.call("POST", &format!("/api/v1/instances/{i}/backups"), Some(&alice), Some(json!({}))).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!((v["state"].as_str(), v["parent_id"].as_null()), (Some("pending"), Some(())));
    assert_eq!(v["repository_id"], repo_id.as_str());
    let b1 = v["id"].as_str().unwrap().to_string();
    let (s, v) = t.call("POST", &format!("/api/v1/instances/{i}/backups"), Some(&alice), Some(json!({}))).await;
    assert_eq!(s, StatusCode::CONFLICT, "one at a time: {v}");
    assert!(msg(&v).contains("being backed up already"), "{v}");
    assert!(t.ok("GET", "/api/v1/backups", &bob, None).await.as_array().unwrap().is_empty());
    for (m, p) in [("GET", format!("/api/v1/backups/{b1}")), ("DELETE", format!("/api/v1/backups/{b1}"))] {
        assert_eq!(t.call(m, &p, Some(&bob), None).await.0, StatusCode::NOT_FOUND, "{m} {p}");
    }

    // The other host gets nothing, nor can it claim as this host.
    assert_eq!(claim(&t, other, other_cred).await.0, StatusCode::NO_CONTENT);
    assert_eq!(claim(&t, mine, other_cred).await.0, StatusCode::FORBIDDEN);
    let (s, job) = claim(&t, mine, my_cred).await;
    assert_eq!(s, StatusCode::OK, "{job}");
    assert_eq!(job["backup_id"], b1.as_str());
    assert_eq!(job["instance_id"], i.as_str());
    assert_eq!(job["disks"], json!([{"name": "root", "volume_id": null}, {"name": vol, "volume_id": vol}]));
    assert_eq!(job["repository"]["location"], json!({"kind": "dir", "path": dir.path().to_str().unwrap()}));
    assert_eq!(job["repository"]["key_hex"].as_str().unwrap().len(), 64);
    assert_eq!(job["meta"]["instance"]["tags"], json!({"env": "prod"}));
    assert_eq!(job["meta"]["instance"]["disk_gib"], 1);
    assert_eq!(job["meta"]["volumes"][0]["size_gib"], 2);
    assert!(job["parent"].is_null());
    assert_eq!(claim(&t, mine, my_cred).await.0, StatusCode::NO_CONTENT, "claimed once");
    let v = t.ok("GET", &format!("/api/v1/backups/{b1}"), &alice, None).await;
    assert_eq!(v["state"], "running");
    let (s, v) = t.call("DELETE", &format!("/api/v1/backups/{b1}"), Some(&alice), None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");

    // Progress, from this host only.
    let progress = json!({"bytes_done": 1u64 << 20, "bytes_total": 3u64 << 30});
    let (s, _) = job_report(&t, other, other_cred, &b1, progress.clone()).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "another host's backup");
    assert_eq!(job_report(&t, mine, my_cred, &b1, progress).await.0, StatusCode::NO_CONTENT);
    let v = t.ok("GET", &format!("/api/v1/backups/{b1}"), &alice, None).await;
    assert_eq!((v["bytes_done"].as_u64(), v["bytes_total"].as_u64()), (Some(1 << 20), Some(3 << 30)));

    // The end: the disks' figures, summed.
    let done = json!({"bytes_done": 3u64 << 30, "consistency": "filesystem",
        "completed": [disk("root", false, 1000, 900), disk(&vol, false, 500, 400)]});
    assert_eq!(job_report(&t, mine, my_cred, &b1, done.clone()).await.0, StatusCode::NO_CONTENT);
    let v = t.ok("GET", &format!("/api/v1/backups/{b1}"), &alice, None).await;
    assert_eq!(v["state"], "completed", "{v}");
    assert_eq!((v["bytes_sent"].as_u64(), v["bytes_stored"].as_u64()), (Some(1500), Some(1300)));
    assert_eq!(v["disks"][0]["full_reason"], "first backup");
    assert_eq!(v["disks"][1]["name"], vol.as_str());
    assert_eq!((v["consistency"].as_str(), v["verify"].as_str()), (Some("filesystem"), Some("none")));
    assert!(v["finished_at"].is_string());
    let (s, v) = job_report(&t, mine, my_cred, &b1, done).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(msg(&v).contains("completed"), "{v}");

    // The next backup counts from it; a failure is reported as such.
    let v = t.ok("POST", &format!("/api/v1/instances/{i}/backups"), &alice, Some(json!({"repository": "nfs"}))).await;
    assert_eq!(v["parent_id"], b1.as_str());
    let b2 = v["id"].as_str().unwrap().to_string();
    assert_eq!(claim(&t, mine, my_cred).await.1["parent"], b1.as_str());
    let (s, _) = job_report(&t, mine, my_cred, &b2, json!({"error": "blockdev-backup failed: no space"})).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let v = t.ok("GET", &format!("/api/v1/backups/{b2}"), &alice, None).await;
    assert_eq!((v["state"].as_str(), v["error"].as_str()), (Some("failed"), Some("blockdev-backup failed: no space")));

    // Lists: by instance, paged.
    let all = t.ok("GET", &format!("/api/v1/backups?instance={i}"), &alice, None).await;
    assert_eq!(all.as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap()).collect::<Vec<_>>(), [&b1, &b2]);
    let (s, page, next) = t.get_page("/api/v1/backups?limit=1", &alice).await;
    assert_eq!((s, page.as_array().unwrap().len()), (StatusCode::OK, 1));
    let (_, page2, last) = t.get_page(&format!("/api/v1/backups?limit=1&page_token={}", next.unwrap()), &alice).await;
    assert_eq!((page2[0]["id"].as_str(), last), (Some(b2.as_str()), None));

    // Deleting: gone from the list.
    t.ok("DELETE", &format!("/api/v1/backups/{b2}"), &alice, None).await;
    t.ok("DELETE", &format!("/api/v1/backups/{b1}"), &alice, None).await;
    assert!(t.ok("GET", "/api/v1/backups", &alice, None).await.as_array().unwrap().is_empty());
}

#[tokio::test]
async fn instances_that_cannot_be_backed_up_are_refused() {
    let t = T::new().await;
    let alice = t.user("alice", "a", "member").await;
    let (h, cred) = t.add_host_with_id().await;
    let i = instance(&t, h.as_str(), &cred, &alice, json!({}), "running").await;
    let (s, v) = t.call("POST", &format!("/api/v1/instances/{i}/backups"), Some(&alice), Some(json!({}))).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(msg(&v).contains("nubo backup repo add"), "{v}");
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    repo(&t, "one", d1.path()).await;
    repo(&t, "two", d2.path()).await;
    let (s, v) = t.call("POST", &format!("/api/v1/instances/{i}/backups"), Some(&alice), Some(json!({}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(msg(&v).contains("--repo"), "{v}");
    t.ok("DELETE", &format!("/api/v1/instances/{i}"), &alice, None).await;
    let (s, v) = t
        .call("POST", &format!("/api/v1/instances/{i}/backups"), Some(&alice), Some(json!({"repository": "one"})))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(msg(&v).contains("being deleted"), "{v}");
}

#[tokio::test]
async fn a_due_plan_queues_one_backup_per_matching_instance() {
    let t = T::new().await;
    let alice = t.user("alice", "a", "member").await;
    let bob = t.user("bob", "b", "member").await;
    let (h, cred) = t.add_host_with_id().await;
    let dir = tempfile::tempdir().unwrap();
    repo(&t, "nfs", dir.path()).await;
    let web = instance(&t, h.as_str(), &cred, &alice, json!({"env": "prod", "tier": "web"}), "running").await;
    let db = instance(&t, h.as_str(), &cred, &alice, json!({"env": "prod", "tier": "db"}), "stopped").await;
    let _dev = instance(&t, h.as_str(), &cred, &alice, json!({"env": "dev"}), "running").await;
    let _bobs = instance(&t, h.as_str(), &cred, &bob, json!({"env": "prod"}), "running").await;
    let plan = json!({"name": "prod", "repository": "nfs", "selector": {"tags": {"env": "prod"}},
        "schedule": "*/5 * * * *", "retention": {"last": 3}});
    let p = t.ok("POST", "/api/v1/backup-plans", &alice, Some(plan)).await;
    let plan_id = p["id"].as_str().unwrap().to_string();
    let next = t.ctx.store.backup_plan(&plan_id).await.unwrap().unwrap().next_run_ms.unwrap();

    // Not due yet: nothing.
    let r = nubo_controlplane::background::backups::round(&t.ctx, next - 1000).await.unwrap();
    assert!(r.is_empty());
    assert!(t.ok("GET", "/api/v1/backups", &alice, None).await.as_array().unwrap().is_empty());
    // Due: one backup of each prod instance of the plan's project.
    nubo_controlplane::background::backups::round(&t.ctx, next + 1000).await.unwrap();
    let list = t.ok("GET", &format!("/api/v1/backups?plan={plan_id}"), &alice, None).await;
    let mut got: Vec<&str> = list.as_array().unwrap().iter().map(|b| b["instance_id"].as_str().unwrap()).collect();
    got.sort();
    let mut want = vec![web.as_str(), db.as_str()];
    want.sort();
    assert_eq!(got, want);
    assert!(list.as_array().unwrap().iter().all(|b| b["state"] == "pending" && b["plan_id"] == plan_id.as_str()));
    assert!(t.ok("GET", "/api/v1/backups", &bob, None).await.as_array().unwrap().is_empty());
    let p = t.ok("GET", "/api/v1/backup-plans/prod", &alice, None).await;
    assert!(p["last_run_at"].is_string(), "{p}");
    let next2 = t.ctx.store.backup_plan(&plan_id).await.unwrap().unwrap().next_run_ms.unwrap();
    assert_eq!(next2, next + 5 * 60 * 1000);
    // The same instant again: already fired. Its next run: the instances
    // still have their backups pending, so none is queued twice.
    assert!(app::fire_due_plans(&t.ctx, next + 1000).await.unwrap().is_empty());
    assert!(app::fire_due_plans(&t.ctx, next2 + 1000).await.unwrap().is_empty());
    assert_eq!(t.ok("GET", "/api/v1/backups", &alice, None).await.as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn retention_deletes_what_the_plan_no_longer_keeps_and_pruning_locks_out_claims() {
    let t = T::new().await;
    let alice = t.user("alice", "a", "member").await;
    let (h, cred) = t.add_host_with_id().await;
    let host = h.to_string();
    let dir = tempfile::tempdir().unwrap();
    let repo_id = repo(&t, "nfs", dir.path()).await;
    let i = instance(&t, &host, &cred, &alice, json!({}), "running").await;
    let plan = json!({"name": "p", "repository": "nfs", "selector": {"instances": [i]},
        "schedule": "0 3 * * *", "retention": {"last": 2}});
    t.ok("POST", "/api/v1/backup-plans", &alice, Some(plan)).await;
    let access = app::repository_access(&t.ctx, &repo_id).await.unwrap();
    let store =
        nubo_backup::Repository::open(&access.location, &nubo_backup::RepoKey::from_hex(&access.key_hex).unwrap())
            .await
            .unwrap();

    // Three completed backups of the plan, each with a manifest in the repository.
    let mut ids = Vec::new();
    for n in 0..3 {
        let v = t.ok("POST", &format!("/api/v1/instances/{i}/backups"), &alice, Some(json!({"plan": "p"}))).await;
        let b = v["id"].as_str().unwrap().to_string();
        assert_eq!(claim(&t, &host, &cred).await.0, StatusCode::OK);
        let manifest = nubo_backup::Manifest {
            backup_id: b.clone(),
            instance_id: i.clone(),
            taken_at_ms: n,
            disks: vec![],
            meta: json!({}),
        };
        store.put_manifest(&manifest).await.unwrap();
        let done = json!({"completed": [disk("root", n > 0, 10, 10)], "consistency": "crash"});
        assert_eq!(job_report(&t, &host, &cred, &b, done).await.0, StatusCode::NO_CONTENT);
        ids.push(b);
        // Creation times apart, so the order is certain.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let touched = app::apply_retention(&t.ctx).await.unwrap();
    assert_eq!(touched, vec![repo_id.clone()]);
    let left: Vec<String> = t
        .ok("GET", "/api/v1/backups", &alice, None)
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, ids[1..].to_vec());
    let mut in_repo = store.backups().await.unwrap();
    in_repo.sort();
    let mut want = ids[1..].to_vec();
    want.sort();
    assert_eq!(in_repo, want, "the expired backup left the repository too");
    assert!(app::apply_retention(&t.ctx).await.unwrap().is_empty(), "nothing more to delete");

    // While the repository is marked for pruning, its backups wait.
    let v = t.ok("POST", &format!("/api/v1/instances/{i}/backups"), &alice, Some(json!({}))).await;
    let b = v["id"].as_str().unwrap().to_string();
    assert!(t.ctx.store.mark_pruning(&repo_id, nubo_controlplane::store::now_ms()).await.unwrap());
    assert_eq!(t.ok("GET", &format!("/api/v1/backup-repositories/{repo_id}"), &alice, None).await["pruning"], true);
    assert_eq!(claim(&t, &host, &cred).await.0, StatusCode::NO_CONTENT);
    assert!(app::prune(&t.ctx, &repo_id).await.unwrap().is_none(), "one prune at a time");
    t.ctx.store.unmark_pruning(&repo_id, None).await.unwrap();
    assert_eq!(claim(&t, &host, &cred).await.1["backup_id"], b.as_str());
    // And no prune starts while a backup into it runs.
    assert!(app::prune(&t.ctx, &repo_id).await.unwrap().is_none());
    assert!(!t.ctx.store.mark_pruning(&repo_id, nubo_controlplane::store::now_ms()).await.unwrap());
    job_report(&t, &host, &cred, &b, json!({"error": "guest agent timed out"})).await;
    let stats = app::prune(&t.ctx, &repo_id).await.unwrap().expect("pruned once nothing runs");
    let v = t.ok("GET", &format!("/api/v1/backup-repositories/{repo_id}"), &alice, None).await;
    assert_eq!(v["pruning"], false);
    assert_eq!(v["last_prune_bytes_freed"].as_u64(), Some(stats.bytes_freed));
    assert!(v["last_prune_at"].is_string(), "{v}");
    // A stale mark (a server that died pruning) is cleared.
    assert!(t.ctx.store.mark_pruning(&repo_id, 1).await.unwrap());
    app::expire(&t.ctx, nubo_controlplane::store::now_ms()).await.unwrap();
    assert_eq!(t.ok("GET", &format!("/api/v1/backup-repositories/{repo_id}"), &alice, None).await["pruning"], false);
}

#[tokio::test]
async fn a_backup_whose_host_goes_silent_fails() {
    let t = T::new().await;
    let alice = t.user("alice", "a", "member").await;
    let (h, cred) = t.add_host_with_id().await;
    let host = h.to_string();
    let dir = tempfile::tempdir().unwrap();
    repo(&t, "nfs", dir.path()).await;
    let i = instance(&t, &host, &cred, &alice, json!({}), "stopped").await;
    let v = t.ok("POST", &format!("/api/v1/instances/{i}/backups"), &alice, Some(json!({}))).await;
    let b = v["id"].as_str().unwrap().to_string();
    assert_eq!(claim(&t, &host, &cred).await.0, StatusCode::OK);
    let now = nubo_controlplane::store::now_ms();
    assert_eq!(app::expire(&t.ctx, now + 9 * 60 * 1000).await.unwrap(), 0, "not yet");
    assert_eq!(app::expire(&t.ctx, now + 11 * 60 * 1000).await.unwrap(), 1);
    let v = t.ok("GET", &format!("/api/v1/backups/{b}"), &alice, None).await;
    assert_eq!(v["state"], "failed");
    assert!(v["error"].as_str().unwrap().contains("stopped reporting"), "{v}");
    let (s, _) = job_report(&t, &host, &cred, &b, json!({"bytes_done": 5})).await;
    assert_eq!(s, StatusCode::CONFLICT, "a late report changes nothing");
}

/// A browser of the portal: its cookies, and one request at a time.
struct Browser<'a> {
    t: &'a T,
    cookies: std::collections::BTreeMap<String, String>,
}

impl Browser<'_> {
    async fn send(&mut self, method: &str, path: &str, form: &[(&str, &str)]) -> (StatusCode, String) {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let cookie = self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
        let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
        let req = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "127.0.0.1:8080")
            .header("origin", "http://127.0.0.1:8080")
            .header("content-type", "application/x-www-form-urlencoded")
            .header("cookie", cookie)
            .body(axum::body::Body::from(body))
            .unwrap();
        let resp = nubo_controlplane::app(self.t.ctx.clone()).oneshot(req).await.unwrap();
        for c in resp.headers().get_all("set-cookie") {
            let c = c.to_str().unwrap();
            let (k, v) = c.split_once(';').unwrap_or((c, "")).0.split_once('=').unwrap();
            self.cookies.insert(k.to_string(), v.to_string());
        }
        let status = resp.status();
        (status, String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap())
    }

    fn csrf(page: &str) -> String {
        let at = page.find("name=\"csrf\" value=\"").unwrap_or_else(|| panic!("no csrf field in {page}"));
        let rest = &page[at + 19..];
        rest[..rest.find('"').unwrap()].to_string()
    }
}

#[tokio::test]
async fn the_portal_lists_backups_with_their_progress_and_backs_up_now() {
    let t = T::new().await;
    t.user("alice", "a", "member").await;
    let alice = t
        .ok("POST", "/api/v1/auth/login", "", Some(json!({"username": "alice", "password": "s3cret-pass"})))
        .await["token"]
        .as_str()
        .unwrap()
        .to_string();
    let (h, cred) = t.add_host_with_id().await;
    let host = h.to_string();
    let dir = tempfile::tempdir().unwrap();
    repo(&t, "nfs", dir.path()).await;
    let i = instance(&t, &host, &cred, &alice, json!({}), "running").await;

    let mut b = Browser { t: &t, cookies: Default::default() };
    let (_, login) = b.send("GET", "/ui/login", &[]).await;
    let csrf = Browser::csrf(&login);
    let form = [("csrf", csrf.as_str()), ("username", "alice"), ("password", "s3cret-pass"), ("next", "/ui/backups")];
    let (s, _) = b.send("POST", "/ui/login", &form).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let (s, page) = b.send("GET", "/ui/backups", &[]).await;
    assert_eq!(s, StatusCode::OK, "{page}");
    assert!(page.contains("No backups yet.") && page.contains("Back up now"), "{page}");

    // "Back up now": a pending backup, shown; the page refreshes while it runs.
    let csrf = Browser::csrf(&page);
    let (s, _) = b.send("POST", "/ui/backups", &[("csrf", &csrf), ("instance", &i), ("repository", "nfs")]).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let list = t.ok("GET", "/api/v1/backups", &alice, None).await;
    let id = list[0]["id"].as_str().unwrap().to_string();
    assert_eq!(claim(&t, &host, &cred).await.0, StatusCode::OK);
    let progress = json!({"bytes_done": 1u64 << 29, "bytes_total": 1u64 << 30});
    job_report(&t, &host, &cred, &id, progress).await;
    let (_, page) = b.send("GET", "/ui/backups", &[]).await;
    assert!(page.contains(&id) && page.contains("50%") && page.contains("http-equiv=\"refresh\""), "{page}");
    let done = json!({"completed": [disk("root", false, 1 << 20, 1 << 20)], "consistency": "filesystem"});
    job_report(&t, &host, &cred, &id, done).await;
    let (_, page) = b.send("GET", "/ui/backups", &[]).await;
    assert!(page.contains("full (first backup)") && !page.contains("http-equiv=\"refresh\""), "{page}");

    // "Restore as a new instance": a new instance of the backup's size, its page next.
    let action = format!("/ui/backups/{id}/restore");
    assert!(page.contains(&action), "{page}");
    let csrf = Browser::csrf(&page);
    let (s, _) = b.send("POST", &action, &[("csrf", &csrf)]).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let all = t.ok("GET", "/api/v1/instances", &alice, None).await;
    let restored: Vec<_> = all.as_array().unwrap().iter().filter(|x| x["id"] != i.as_str()).collect();
    assert_eq!(restored.len(), 1, "{all}");
    assert!(restored[0]["name"].as_str().unwrap().ends_with("-restored"), "{all}");
}
