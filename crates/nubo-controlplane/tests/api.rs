//! The control plane's HTTP API driven in-process through `app()` (no
//! socket, no VM): validation, authentication, the scheduler's refusals,
//! atomic claims under concurrency, and the OpenAPI document.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use nubo_api::agent::RegisterHost;
use nubo_api::ids::HostId;
use nubo_controlplane::{app, Config, Ctx};
use serde_json::{json, Value};
use std::sync::Arc;
use tower::ServiceExt;

struct T {
    ctx: Arc<Ctx>,
    admin: String,
    /// Credential of the last host added.
    agent: String,
    _dir: tempfile::TempDir,
    /// With `NUBO_TEST_DATABASE`: this test's PostgreSQL database
    /// (dropped last, after the pool).
    _db: Option<nubo_controlplane::testdb::TestDatabase>,
}

async fn setup() -> T {
    let dir = tempfile::tempdir().unwrap();
    let db = nubo_controlplane::testdb::from_env().await.unwrap();
    let mut config = Config::new(dir.path().to_path_buf());
    config.database = db.as_ref().map(|d| d.url.clone());
    let ctx = Ctx::new(config).await.unwrap();
    let admin = ctx.bootstrap_admin_token().await.unwrap();
    T { ctx, admin, agent: String::new(), _dir: dir, _db: db }
}

impl T {
    async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Body::from(body.unwrap_or("").to_string())).unwrap();
        let resp = app(self.ctx.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let body = body.map(|b| b.to_string());
        self.call(method, path, Some(&self.admin.clone()), body.as_deref()).await
    }

    async fn add_host(&mut self, name: &str, vcpus: u32, memory_mib: u64) -> HostId {
        let id = HostId::generate();
        let (join, _) = self.ctx.store.create_join_token(60_000).await.unwrap();
        let body = json!({"join_token": join, "host_id": id}).to_string();
        let (s, v) = self.call("POST", "/api/v1/agent/join", None, Some(&body)).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        self.agent = v["credential"].as_str().unwrap().to_string();
        let r = RegisterHost {
            host_id: id.clone(),
            name: name.into(),
            accel: "tcg".into(),
            vcpus,
            memory_mib,
            disk_gib: 100,
            underlay: None,
            shared_storage: None,
            externals: Vec::new(),
        };
        let body = serde_json::to_string(&r).unwrap();
        let (s, _) = self.call("POST", "/api/v1/agent/register", Some(&self.agent.clone()), Some(&body)).await;
        assert_eq!(s, StatusCode::OK);
        id
    }

    async fn count(&self) -> usize {
        self.admin("GET", "/api/v1/instances", None).await.1.as_array().unwrap().len()
    }
}

fn req(vcpus: u32, memory: u64) -> Value {
    json!({"image": "tiny", "vcpus": vcpus, "memory_mib": memory, "disk_gib": 1})
}

#[tokio::test]
async fn bad_input_gets_a_4xx_that_says_what_is_wrong_and_changes_nothing() {
    let mut t = setup().await;
    t.add_host("h1", 4, 4096).await;
    let cases: Vec<(Value, StatusCode, &str)> = vec![
        (
            json!({"image": "nope", "vcpus": 1, "memory_mib": 128, "disk_gib": 1}),
            StatusCode::BAD_REQUEST,
            "image 'nope' does not exist",
        ),
        (req(0, 128), StatusCode::BAD_REQUEST, "vcpus must be between 1 and 64"),
        (req(1, 100_000), StatusCode::CONFLICT, "MemoryFilter"),
        (
            json!({"image": "tiny", "vcpus": 1, "memory_mib": 128, "disk_gib": 1, "colour": "red"}),
            StatusCode::BAD_REQUEST,
            "unknown field",
        ),
        (
            json!({"image": "tiny", "vcpus": 1, "memory_mib": 128, "disk_gib": 1, "name": "../x"}),
            StatusCode::BAD_REQUEST,
            "name '../x' is not valid",
        ),
    ];
    for (body, status, needle) in cases {
        let (s, v) = t.admin("POST", "/api/v1/instances", Some(body.clone())).await;
        assert_eq!(s, status, "{body} -> {v}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{body}: message '{msg}' lacks '{needle}'");
    }
    // Malformed JSON.
    let (s, v) = t.call("POST", "/api/v1/instances", Some(&t.admin), Some("{not json")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "invalid_request");
    // Unknown and malformed ids.
    let (s, v) = t.admin("GET", "/api/v1/instances/i-0123456789abcdef0", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(v["error"]["message"].as_str().unwrap().contains("does not exist"));
    let (s, _) = t.admin("POST", "/api/v1/instances/bogus/stop", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(t.count().await, 0, "no failed request may leave an instance behind");
    // Nothing was claimed on the host either.
    let (_, hosts) = t.admin("GET", "/api/v1/hosts", None).await;
    assert_eq!(hosts[0]["used_vcpus"], 0);
    assert_eq!(hosts[0]["used_memory_mib"], 0);
}

#[tokio::test]
async fn refusal_names_every_host_and_the_filter_that_rejected_it() {
    let mut t = setup().await;
    t.add_host("small", 1, 512).await;
    t.add_host("medium", 2, 1024).await;
    let (s, v) = t.admin("POST", "/api/v1/instances", Some(req(1, 2048))).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("host small rejected by MemoryFilter"), "{msg}");
    assert!(msg.contains("host medium rejected by MemoryFilter"), "{msg}");
    assert_eq!(v["error"]["code"], "no_valid_host");
}

#[tokio::test]
async fn no_credential_or_wrong_one_is_refused() {
    let mut t = setup().await;
    let (s, v) = t.call("GET", "/api/v1/instances", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(v["error"]["message"].as_str().unwrap().contains("NUBO_TOKEN"));
    let (s, _) = t.call("GET", "/api/v1/instances", Some("nubo_wrong"), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // A host credential cannot use the user API, nor an admin token the agent API.
    t.add_host("h", 1, 1024).await;
    let (s, _) = t.call("GET", "/api/v1/instances", Some(&t.agent), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let body =
        json!({"host_id": HostId::generate(), "name": "x", "accel": "tcg", "vcpus": 1, "memory_mib": 1, "disk_gib": 1});
    let (s, _) = t.call("POST", "/api/v1/agent/register", Some(&t.admin), Some(&body.to_string())).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

/// 20 requests at once for a host with room for 5: exactly 5 succeed and
/// the host's use never goes past its capacity.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_never_overcommit_a_host() {
    let mut t = setup().await;
    // 2 CPUs x overcommit 4 = 8 schedulable vCPUs; memory bounds it to 5.
    t.add_host("only", 2, 5 * 256).await;
    let t = Arc::new(t);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let t = t.clone();
        tasks.push(tokio::spawn(async move { t.admin("POST", "/api/v1/instances", Some(req(1, 256))).await.0 }));
    }
    let mut created = 0;
    for task in tasks {
        let s = task.await.unwrap();
        assert!(s == StatusCode::CREATED || s == StatusCode::CONFLICT, "unexpected {s}");
        if s == StatusCode::CREATED {
            created += 1;
        }
    }
    assert_eq!(created, 5);
    let (_, hosts) = t.admin("GET", "/api/v1/hosts", None).await;
    assert_eq!(hosts[0]["used_memory_mib"], 5 * 256);
    assert_eq!(hosts[0]["used_vcpus"], 5);
    assert_eq!(t.count().await, 5);
}

#[tokio::test]
async fn forwarded_ports_are_unique_per_host() {
    let mut t = setup().await;
    t.add_host("h", 8, 8192).await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..3 {
        let body = json!({"image": "tiny", "vcpus": 1, "memory_mib": 128, "disk_gib": 1, "ports": [80, 22]});
        let (s, v) = t.admin("POST", "/api/v1/instances", Some(body)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        for (_, addr) in v["ports"].as_object().unwrap() {
            assert!(addr.as_str().unwrap().starts_with("127.0.0.1:"));
            assert!(seen.insert(addr.as_str().unwrap().to_string()), "port handed out twice: {addr}");
        }
    }
    assert_eq!(seen.len(), 6);
}

#[tokio::test]
async fn a_host_reads_only_its_own_desired_state() {
    let mut t = setup().await;
    let a = t.add_host("a", 4, 4096).await;
    let cred_a = t.agent.clone();
    let (s, v) = t.admin("POST", "/api/v1/instances", Some(req(1, 128))).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(v["host"], a.to_string());
    let b = t.add_host("b", 1, 64).await; // too small for anything
    let (_, da) = t.call("GET", &format!("/api/v1/agent/hosts/{a}/desired"), Some(&cred_a), None).await;
    let (_, db) = t.call("GET", &format!("/api/v1/agent/hosts/{b}/desired"), Some(&t.agent), None).await;
    assert_eq!(da["instances"].as_array().unwrap().len(), 1);
    assert_eq!(db["instances"].as_array().unwrap().len(), 0);
    // b's credential cannot read a's desired state.
    let (s, _) = t.call("GET", &format!("/api/v1/agent/hosts/{a}/desired"), Some(&t.agent), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // A report from b about a's instance is ignored.
    let id = v["id"].as_str().unwrap();
    let report = json!({"instances": [{"id": id, "power": "running", "pid": 1, "error": null}]});
    let (s, _) =
        t.call("POST", &format!("/api/v1/agent/hosts/{b}/report"), Some(&t.agent), Some(&report.to_string())).await;
    assert_eq!(s, StatusCode::OK);
    let (_, i) = t.admin("GET", &format!("/api/v1/instances/{id}"), None).await;
    assert_eq!(i["state"], "pending");
}

/// The checked-in docs/openapi.json must match the code. Regenerate with
/// `NUBO_UPDATE_OPENAPI=1 cargo test -p nubo-controlplane --test api openapi`.
#[test]
fn openapi_document_is_checked_in_and_current() {
    let doc = checked_in_and_current(&nubo_controlplane::api::openapi(), "openapi.json");
    for p in ["/api/v1/instances", "/api/v1/instances/{id}", "/api/v1/hosts"] {
        assert!(doc["paths"].get(p).is_some(), "missing {p}");
    }
    // The agent protocol is a document of its own.
    let paths = doc["paths"].as_object().expect("paths");
    assert!(!paths.keys().any(|p| p.starts_with("/api/v1/agent/")), "agent routes in the user API's document");
}

/// The agent protocol's document (docs/openapi-agent.json) likewise.
#[test]
fn agent_openapi_document_is_checked_in_and_current() {
    let doc = checked_in_and_current(&nubo_controlplane::api::agent_openapi(), "openapi-agent.json");
    for p in ["/api/v1/agent/hosts/{id}/desired", "/api/v1/agent/join", "/api/v1/agent/images/{id}/file"] {
        assert!(doc["paths"].get(p).is_some(), "missing {p}");
    }
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.keys().all(|p| p.starts_with("/api/v1/agent/")), "a user route in the agent's document");
}

/// `doc` as JSON, after checking it equals docs/`file` (or writing it
/// there with NUBO_UPDATE_OPENAPI).
fn checked_in_and_current(doc: &utoipa::openapi::OpenApi, file: &str) -> Value {
    let generated = serde_json::to_string_pretty(doc).unwrap() + "\n";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs").join(file);
    if std::env::var_os("NUBO_UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "docs/{file} is out of date: run NUBO_UPDATE_OPENAPI=1 cargo test -p nubo-controlplane --test api openapi"
    );
    serde_json::from_str(&generated).unwrap()
}

#[tokio::test]
async fn openapi_is_served() {
    let t = setup().await;
    let (s, v) = t.call("GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["info"]["title"], "Nubo API");
    let (s, v) = t.call("GET", "/api/v1/agent/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["info"]["title"], "Nubo agent protocol");
}

/// Found by schemathesis: out-of-range numbers from an agent are refused
/// with a 400 instead of overflowing later sums.
#[tokio::test]
async fn out_of_range_agent_numbers_are_refused() {
    let mut t = setup().await;
    let host = t.add_host("h", 4, 4096).await;
    let huge = json!({"host_id": host, "name": "h", "accel": "tcg", "vcpus": 4, "memory_mib": 9223372036854775808u64, "disk_gib": 1});
    let (s, _) = t.call("POST", "/api/v1/agent/register", Some(&t.agent.clone()), Some(&huge.to_string())).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (_, v) = t.admin("POST", "/api/v1/instances", Some(req(1, 128))).await;
    let id = v["id"].as_str().unwrap().to_string();
    let chunk = json!({"host_id": host, "offset": u64::MAX, "raw_len": 1, "data": "x"});
    let (s, v) = t
        .call(
            "POST",
            &format!("/api/v1/agent/instances/{id}/console"),
            Some(&t.agent.clone()),
            Some(&chunk.to_string()),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = t.admin("GET", "/api/v1/audit?limit=-1", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "invalid_request");
}

/// Console chunks from the agent are appended as rows and trimmed to the
/// newest 1 MiB per instance: a guest that floods its console costs the
/// database a bounded amount, a retried chunk is stored once, and a gap
/// (the host trimmed output it could not ship) is taken as is.
#[tokio::test]
async fn console_chunks_are_appended_and_trimmed_to_the_newest() {
    let mut t = setup().await;
    let host = t.add_host("h", 4, 4096).await;
    let (_, v) = t.admin("POST", "/api/v1/instances", Some(req(1, 128))).await;
    let id = v["id"].as_str().unwrap().to_string();
    let path = format!("/api/v1/agent/instances/{id}/console");
    let chunk_len = 64 * 1024;
    let mut offset = 0u64;
    let send = |offset: u64, data: String| {
        let body = json!({"host_id": host, "offset": offset, "raw_len": data.len(), "data": data}).to_string();
        (path.clone(), body)
    };
    for i in 0..48u64 {
        let line = format!("chunk {i:03} ");
        let data = format!("{line}{}", "z".repeat(chunk_len - line.len()));
        offset = post_chunk(&t, send(offset, data)).await;
    }
    assert_eq!(offset, 48 * chunk_len as u64);
    // The same chunk again changes nothing.
    let again = post_chunk(&t, send(offset - chunk_len as u64, "x".repeat(chunk_len))).await;
    assert_eq!(again, offset);
    // Output the host trimmed away before shipping: a gap, then the newest.
    let next = post_chunk(&t, send(offset + 10 * chunk_len as u64, "the newest line\n".into())).await;
    assert_eq!(next, offset + 10 * chunk_len as u64 + 16);
    // A guest writes any byte (`cat /dev/urandom > /dev/ttyS0`), NUL too,
    // which PostgreSQL's TEXT cannot hold: stored as U+FFFD on both.
    let next = post_chunk(&t, send(next, "nul\0here\n".into())).await;
    post_chunk(&t, send(next, "the newest line\n".into())).await;

    let (rows, bytes) = t.ctx.store.console_usage(&id).await.unwrap();
    eprintln!("3.6 MiB of console output sent: {rows} chunk rows, {bytes} bytes kept in the database");
    assert!(bytes <= 1024 * 1024 + chunk_len, "{bytes} bytes of console in the database");
    assert!(rows <= 20, "{rows} chunk rows kept");
    let (s, v) = t.admin("GET", &format!("/api/v1/instances/{id}/console"), None).await;
    assert_eq!(s, StatusCode::OK);
    let out = v["output"].as_str().unwrap();
    assert!(out.len() <= 1024 * 1024);
    assert!(out.ends_with("the newest line\n"), "...{}", &out[out.len() - 40..]);
    assert!(out.contains("chunk 047") && !out.contains("chunk 020"));
    assert!(out.contains("nul\u{FFFD}here\n"), "the NUL chunk is not shown as U+FFFD");
    assert!(!out.contains('x'), "a retried chunk was stored twice");
}

/// A run's log is guest output too: NUL bytes in it (which PostgreSQL's
/// TEXT cannot hold) are stored as U+FFFD, and the run goes on.
#[tokio::test]
async fn a_run_log_with_nul_bytes_is_stored() {
    let mut t = setup().await;
    let host = t.add_host("h", 4, 4096).await;
    let (_, v) = t.admin("POST", "/api/v1/instances", Some(req(1, 128))).await;
    let id = v["id"].as_str().unwrap().to_string();
    let (s, v) = t
        .admin("POST", &format!("/api/v1/instances/{id}/exec"), Some(json!({"command": ["cat", "/dev/urandom"]})))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let run = v["id"].as_str().unwrap().to_string();
    let log = "bytes\0from\0the guest\n";
    let body = json!({"host_id": host, "state": "running", "log_offset": 0, "log_raw_len": log.len(), "log": log,
        "error": "exit\0"})
    .to_string();
    let (s, v) = t.call("POST", &format!("/api/v1/agent/runs/{run}"), Some(&t.agent.clone()), Some(&body)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["log_offset"], log.len());
    let (s, v) = t.admin("GET", &format!("/api/v1/instances/{id}/runs"), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let shown = v.to_string();
    assert!(shown.contains("bytes\u{FFFD}from\u{FFFD}the guest"), "{shown}");
}

/// Posts one console chunk as the host agent; the offset the server has.
async fn post_chunk(t: &T, (path, body): (String, String)) -> u64 {
    let (s, v) = t.call("POST", &path, Some(&t.agent.clone()), Some(&body)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["next_offset"].as_u64().unwrap()
}
