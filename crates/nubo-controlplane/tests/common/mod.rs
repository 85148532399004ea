//! Test harness for the control plane's router, driven in-process
//! through `app()` (no socket, no VM): a fresh data directory, the
//! bootstrap admin, users with roles, hosts that join and register.
//! With `NUBO_TEST_DATABASE=postgres://...` each test's state is in a
//! PostgreSQL database of its own (see `nubo_controlplane::testdb`).
#![allow(dead_code)]

pub mod ec2;
pub mod statements;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use nubo_api::ids::HostId;
use nubo_controlplane::store::Backend;
use nubo_controlplane::testdb::TestDatabase;
use nubo_controlplane::{app, Config, Ctx};
use serde_json::{json, Value};
use std::sync::Arc;
use tower::ServiceExt;

pub struct T {
    pub ctx: Arc<Ctx>,
    pub admin: String,
    pub _dir: tempfile::TempDir,
    /// The test's PostgreSQL database, dropped after the test (declared
    /// last: fields drop in order, so the pool goes first).
    pub db: Option<TestDatabase>,
}

/// A new test database when `NUBO_TEST_DATABASE` is set (a test fails,
/// saying why, when it is set to anything but a PostgreSQL URL).
pub async fn test_db() -> Option<TestDatabase> {
    nubo_controlplane::testdb::from_env().await.unwrap_or_else(|e| panic!("{e}"))
}

/// The settings of a server with its data in `dir` (and, with `db`, its
/// state in that PostgreSQL database).
pub fn config(dir: &std::path::Path, db: &Option<TestDatabase>) -> Config {
    let mut config = Config::new(dir.to_path_buf());
    config.database = db.as_ref().map(|d| d.url.clone());
    config
}

impl T {
    pub async fn new() -> T {
        Self::with(|_| {}).await
    }

    /// A server whose settings `tweak` changes first.
    pub async fn with(tweak: impl FnOnce(&mut Config)) -> T {
        let dir = tempfile::tempdir().unwrap();
        let db = test_db().await;
        let mut config = config(dir.path(), &db);
        tweak(&mut config);
        let ctx = Ctx::new(config).await.unwrap();
        let want = if db.is_some() { Backend::Postgres } else { Backend::Sqlite };
        assert_eq!(ctx.store.backend(), want);
        let admin = ctx.bootstrap_admin_token().await.unwrap();
        T { ctx, admin, _dir: dir, db }
    }

    /// Everything the database holds, as bytes to search for secrets that
    /// must not be stored: the SQLite file, or with PostgreSQL every row of
    /// every table as text.
    pub async fn database_bytes(&self) -> Vec<u8> {
        use sqlx::Connection;
        let Some(db) = &self.db else {
            return std::fs::read(self.ctx.config.data_dir.join("nubo.db")).unwrap();
        };
        let mut conn = sqlx::AnyConnection::connect(&db.url).await.unwrap();
        let tables: Vec<String> =
            sqlx::query_scalar("SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'")
                .fetch_all(&mut conn)
                .await
                .unwrap();
        let mut out = Vec::new();
        for table in tables {
            let rows: Vec<String> =
                sqlx::query_scalar(&format!("SELECT t::text FROM \"{table}\" t")).fetch_all(&mut conn).await.unwrap();
            for row in rows {
                out.extend_from_slice(row.as_bytes());
                out.push(b'\n');
            }
        }
        out
    }

    /// The settings this test's server was started with (for a restart).
    pub fn config(&self) -> Config {
        config(self._dir.path(), &self.db)
    }

    pub fn data_dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// One request with a raw body and content type; the status and JSON answer.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path).header("content-type", content_type);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = app(self.ctx.clone()).oneshot(req.body(Body::from(body)).unwrap()).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        self.raw(method, path, token, "application/json", body.into_bytes()).await
    }

    /// A GET of one page of a list: the status, the JSON answer and the
    /// next page's token (the `Next-Page-Token` header).
    pub async fn get_page(&self, path: &str, token: &str) -> (StatusCode, Value, Option<String>) {
        let req = axum::http::Request::builder().uri(path).header("authorization", format!("Bearer {token}"));
        let resp = app(self.ctx.clone()).oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        let status = resp.status();
        let next = resp.headers().get("next-page-token").map(|v| v.to_str().unwrap().to_string());
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null), next)
    }

    pub async fn ok(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> Value {
        let (s, v) = self.call(method, path, Some(token), body).await;
        assert!(s.is_success(), "{method} {path}: {s} {v}");
        v
    }

    /// A user with `role` in `project` (created as needed); returns its session token.
    pub async fn user(&self, name: &str, project: &str, role: &str) -> String {
        let (s, _) = self.call("POST", "/api/v1/projects", Some(&self.admin), Some(json!({"name": project}))).await;
        assert!(s == StatusCode::CREATED || s == StatusCode::CONFLICT);
        let admin = self.admin.clone();
        self.ok("POST", "/api/v1/users", &admin, Some(json!({"name": name, "password": "s3cret-pass"}))).await;
        self.ok("PUT", &format!("/api/v1/projects/{project}/members/{name}"), &admin, Some(json!({"role": role})))
            .await;
        let v =
            self.ok("POST", "/api/v1/auth/login", "", Some(json!({"username": name, "password": "s3cret-pass"}))).await;
        assert_eq!(v["role"], role);
        v["token"].as_str().unwrap().to_string()
    }

    /// A host that joined and registered with a 1000 GiB storage pool; its credential.
    pub async fn add_host(&self) -> String {
        self.add_host_with_id().await.1
    }

    pub async fn add_host_with_id(&self) -> (HostId, String) {
        let (join, _) = self.ctx.store.create_join_token(60_000).await.unwrap();
        let id = HostId::generate();
        let v = self.ok("POST", "/api/v1/agent/join", "", Some(json!({"join_token": join, "host_id": id}))).await;
        let cred = v["credential"].as_str().unwrap().to_string();
        let reg =
            json!({"host_id": id, "name": "h1", "accel": "tcg", "vcpus": 64, "memory_mib": 262144, "disk_gib": 1000});
        self.ok("POST", "/api/v1/agent/register", &cred, Some(reg)).await;
        (id, cred)
    }

    /// A host that runs private networks (underlay 192.0.2.1) and maps the
    /// external networks' interface names `externals`.
    pub async fn add_bridging_host(&self, externals: &[&str]) -> HostId {
        let (join, _) = self.ctx.store.create_join_token(60_000).await.unwrap();
        let id = HostId::generate();
        let v = self.ok("POST", "/api/v1/agent/join", "", Some(json!({"join_token": join, "host_id": id}))).await;
        let cred = v["credential"].as_str().unwrap().to_string();
        let reg = json!({"host_id": id, "name": "h1", "accel": "tcg", "vcpus": 64, "memory_mib": 262144,
            "disk_gib": 1000, "underlay": "192.0.2.1", "externals": externals});
        self.ok("POST", "/api/v1/agent/register", &cred, Some(reg)).await;
        id
    }

    pub async fn audit(&self) -> Vec<Value> {
        let admin = self.admin.clone();
        self.ok("GET", "/api/v1/audit?limit=1000", &admin, None).await.as_array().unwrap().clone()
    }
}

/// A host's report entry for instance `id` in `power`, with nothing else
/// to say (tests set the fields they need).
pub fn actual(id: &str, power: nubo_api::agent::ActualPower) -> nubo_api::agent::ActualInstance {
    nubo_api::agent::ActualInstance {
        id: id.parse().unwrap(),
        power,
        pid: None,
        error: None,
        exited_unexpectedly: false,
        events: vec![],
        guest: None,
        volumes: vec![],
        captures: vec![],
    }
}
