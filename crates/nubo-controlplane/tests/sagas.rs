//! The control plane's sagas under crashes and failures, on the in-process
//! test cloud (hosts played by agent API calls): launching a group member,
//! scaling a group in, a policy's attach-volume and scale actions, a live
//! migration, failing an instance over off a down host, and a launch with
//! a recipe are each crashed after every step (and in the middle of every step), the
//! server restarted from its database, and must end as an uninterrupted
//! run does; and each step is made to fail in turn, and the saga must
//! unwind leaving nothing behind.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::T;
use nubo_controlplane::policies::{Plan, PolicyRow};
use nubo_controlplane::saga::testing::{check_crash_after_every_step, check_unwind_at_every_step, Harness};
use nubo_controlplane::saga::SagaId;
use nubo_controlplane::sagas::failover::{self as failover_saga, Failover, FailoverParams};
use nubo_controlplane::sagas::group_scale::{self, MemberLaunch, ScaleIn};
use nubo_controlplane::sagas::launch::{self as launch_saga, CallerParams, LaunchParams, RecipeLaunch};
use nubo_controlplane::sagas::migration::{self, Migration, MigrationParams};
use nubo_controlplane::sagas::policy_action::{self, PolicyActionSaga};
use nubo_controlplane::store::{now_ms, Store};
use nubo_controlplane::Ctx;
use serde_json::{json, Value};
use std::sync::Arc;

/// A test cloud with one host; restarts keep its database.
struct Cloud {
    t: T,
    host: String,
    cred: String,
}

impl Cloud {
    async fn new() -> Self {
        let t = T::new().await;
        let (host, cred) = t.add_host_with_id().await;
        Cloud { t, host: host.to_string(), cred }
    }

    async fn restart(&mut self) {
        let restarted = Ctx::new(self.t.config()).await.unwrap();
        drop(std::mem::replace(&mut self.t.ctx, restarted));
    }

    async fn project(&self) -> String {
        self.t.ctx.store.project_by_name("default").await.unwrap().unwrap().id
    }

    /// A group "web" (no members yet unless `desired` > 0), with a health check.
    async fn group(&self, desired: u32) -> nubo_controlplane::groups::GroupRow {
        let admin = self.t.admin.clone();
        let g = json!({"name": "web", "min": 0, "max": 3, "desired": desired,
            "template": {"image": "tiny", "vcpus": 1, "memory_mib": 128, "disk_gib": 1, "ports": [80]},
            "health_check": {"kind": "tcp", "port": 80}});
        self.t.ok("POST", "/api/v1/groups", &admin, Some(g)).await;
        self.t.ctx.store.group_by_name(&self.project().await, "web").await.unwrap().unwrap()
    }

    /// `text` with every instance id in it replaced by the instance's name
    /// (ids are random: two runs differ in them, not in names).
    async fn named(&self, text: &str) -> String {
        let mut out = Vec::new();
        for word in text.split(' ') {
            let w = match self.t.ctx.store.instance(word).await.unwrap() {
                Some(i) => i.name,
                None => word.to_string(),
            };
            out.push(w);
        }
        out.join(" ")
    }

    /// The group's live members (name, desired, health checks), its desired
    /// count and its activity history.
    async fn group_state(&self) -> String {
        let store = &self.t.ctx.store;
        let Some(g) = store.group_by_name(&self.project().await, "web").await.unwrap() else {
            return "no group".into();
        };
        let checks = store.checks(None).await.unwrap();
        let mut lines = vec![format!("desired {}", g.desired)];
        for m in store.group_members(&g.id).await.unwrap() {
            let n = checks.iter().filter(|c| c.target == m.id && c.name == "group-health").count();
            lines.push(format!("member {} {} checks {n}", m.name, m.desired));
        }
        let orphans = checks.iter().filter(|c| c.name == "group-health").count();
        lines.push(format!("health checks {orphans}"));
        let mut acts = store.group_activities(&g.id, 100).await.unwrap();
        acts.reverse();
        for a in acts {
            lines.push(format!("{}: {}", a.kind, self.named(&a.detail).await));
        }
        lines.join("\n")
    }

    /// Plays the host: running instances, volumes made, attachments seen.
    async fn host_round(&self) {
        let d = self.t.ok("GET", &format!("/api/v1/agent/hosts/{}/desired", self.host), &self.cred, None).await;
        let volumes: Vec<Value> = d["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| json!({"id": v["id"], "state": "available", "size_gib": v["size_gib"], "error": null}))
            .collect();
        let instances: Vec<Value> = d["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                let attached: Vec<Value> = i["volumes"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|a| {
                        json!({"volume_id": a["volume_id"], "state": "attached", "guest_device": "/dev/vdc",
                        "guest_size_bytes": a["size_gib"].as_u64().unwrap() << 30, "error": null})
                    })
                    .collect();
                json!({"id": i["id"], "power": "running", "pid": 1, "error": null, "volumes": attached})
            })
            .collect();
        let body = json!({"instances": instances, "volumes": volumes});
        self.t.ok("POST", &format!("/api/v1/agent/hosts/{}/report", self.host), &self.cred, Some(body)).await;
    }
}

// ---- launching a group member ----

struct LaunchWorld(Cloud);

impl Harness for LaunchWorld {
    type Saga = MemberLaunch;

    async fn start(&mut self) -> SagaId {
        self.0 = Cloud::new().await;
        let g = self.0.group(0).await;
        group_scale::new_launch(&self.0.t.ctx, &g, 1, 1, 1).await.unwrap()
    }
    fn store(&self) -> &Store {
        &self.0.t.ctx.store
    }
    fn env(&self) -> &Arc<Ctx> {
        &self.0.t.ctx
    }
    async fn restart(&mut self) {
        self.0.restart().await;
    }
    async fn end_state(&self) -> String {
        self.0.group_state().await
    }
}

#[tokio::test]
async fn launching_a_member_survives_a_crash_after_any_step() {
    let mut w = LaunchWorld(Cloud::new().await);
    assert_eq!(check_crash_after_every_step(&mut w).await, 6);
    let state = w.end_state().await;
    assert!(
        state.contains("member web-1 running checks 1") && state.contains("launch: launched web-1 (1 of 1)"),
        "{state}"
    );
}

#[tokio::test]
async fn a_failed_member_launch_leaves_no_instance_and_no_check() {
    let mut w = LaunchWorld(Cloud::new().await);
    assert_eq!(check_unwind_at_every_step(&mut w).await, 2 + 3 + 4);
}

// ---- scaling a group in ----

struct ScaleInWorld(Cloud);

impl Harness for ScaleInWorld {
    type Saga = ScaleIn;

    async fn start(&mut self) -> SagaId {
        self.0 = Cloud::new().await;
        let g = self.0.group(2).await;
        let members = self.0.t.ctx.store.group_members(&g.id).await.unwrap();
        let newest = members.last().unwrap().id.clone();
        group_scale::new_scale_in(&self.0.t.ctx, &g.id, 1, vec![newest]).await.unwrap()
    }
    fn store(&self) -> &Store {
        &self.0.t.ctx.store
    }
    fn env(&self) -> &Arc<Ctx> {
        &self.0.t.ctx
    }
    async fn restart(&mut self) {
        self.0.restart().await;
    }
    async fn end_state(&self) -> String {
        self.0.group_state().await
    }
}

#[tokio::test]
async fn scaling_in_survives_a_crash_after_any_step() {
    let mut w = ScaleInWorld(Cloud::new().await);
    assert_eq!(check_crash_after_every_step(&mut w).await, 4);
    let state = w.end_state().await;
    assert!(state.contains("member web-1 running") && !state.contains("member web-2"), "{state}");
    assert!(state.contains("terminate: terminating web-2 (scale in to 1)"), "{state}");
}

#[tokio::test]
async fn a_failed_scale_in_leaves_its_members_and_history_as_they_were() {
    let mut w = ScaleInWorld(Cloud::new().await);
    assert_eq!(check_unwind_at_every_step(&mut w).await, 2 + 3);
}

// ---- a policy's actions ----

/// A running instance and a policy `name` with `actions` that has fired
/// (its firing recorded, its actions not yet run): the saga of action 0.
async fn fired(c: &Cloud, doc: Value) -> SagaId {
    let admin = c.t.admin.clone();
    let v =
        c.t.ok(
            "POST",
            "/api/v1/instances",
            &admin,
            Some(json!({"image": "tiny", "vcpus": 1, "memory_mib": 128, "disk_gib": 1})),
        )
        .await;
    let id = v["id"].as_str().unwrap().to_string();
    c.host_round().await;
    let mut doc = doc;
    doc["scope"] = json!({"instance": id});
    doc["condition"] = json!({"metric": "cpu", "op": ">", "threshold": 50});
    c.t.ok("POST", "/api/v1/policies", &admin, Some(doc.clone())).await;
    let b = json!({"samples": [{"resource": id, "metric": "cpu_percent", "at_ms": now_ms(), "value": 99.0}]});
    c.t.ok("POST", &format!("/api/v1/agent/hosts/{}/metrics", c.host), &c.cred, Some(b)).await;
    let store = &c.t.ctx.store;
    let p: PolicyRow = store.policy_by_name(&c.project().await, doc["name"].as_str().unwrap()).await.unwrap().unwrap();
    assert_eq!(store.evaluate_policy(&p).await.unwrap().len(), 1);
    let f = store.firings(&p.id, 1).await.unwrap().remove(0);
    let spec = p.doc().unwrap().actions[0].clone();
    policy_action::new_action(&c.t.ctx, &f, &p.name, 0, &spec, &Plan::default()).await.unwrap()
}

struct AttachWorld(Cloud);

impl Harness for AttachWorld {
    type Saga = PolicyActionSaga;

    async fn start(&mut self) -> SagaId {
        self.0 = Cloud::new().await;
        fired(&self.0, json!({"name": "grow", "actions": [{"attach_volume": {"size_gib": 20}}]})).await
    }
    fn store(&self) -> &Store {
        &self.0.t.ctx.store
    }
    fn env(&self) -> &Ctx {
        &self.0.t.ctx
    }
    async fn restart(&mut self) {
        self.0.restart().await;
    }
    async fn tick(&mut self) {
        self.0.host_round().await;
    }
    /// The volumes not deleted, with their attachments.
    async fn end_state(&self) -> String {
        let mut lines = Vec::new();
        for v in self.0.t.ctx.store.volumes(None).await.unwrap() {
            if v.desired.as_str() == "deleted" {
                continue;
            }
            let to = match &v.instance_id {
                Some(i) => self.0.t.ctx.store.instance(i).await.unwrap().map(|i| i.image).unwrap_or_default(),
                None => "-".into(),
            };
            lines.push(format!(
                "{} GiB {} {:?} {:?} on {to}",
                v.size_gib,
                v.state,
                v.attach_state.map(|a| a.as_str()),
                v.guest_device
            ));
        }
        lines.join("\n")
    }
}

#[tokio::test]
async fn attaching_a_volume_survives_a_crash_after_any_step_and_makes_one_volume() {
    let mut w = AttachWorld(Cloud::new().await);
    assert_eq!(check_crash_after_every_step(&mut w).await, 8);
    let state = w.end_state().await;
    assert_eq!(state, r#"20 GiB in-use Some("attached") Some("/dev/vdc") on tiny"#);
}

#[tokio::test]
async fn a_failed_attachment_detaches_and_deletes_its_volume() {
    let mut w = AttachWorld(Cloud::new().await);
    assert_eq!(check_unwind_at_every_step(&mut w).await, 2 + 3 + 4 + 5);
}

struct ScaleWorld(Cloud);

impl Harness for ScaleWorld {
    type Saga = PolicyActionSaga;

    async fn start(&mut self) -> SagaId {
        self.0 = Cloud::new().await;
        self.0.group(0).await;
        fired(&self.0, json!({"name": "out", "actions": [{"scale": {"by": 2, "group": "web"}}]})).await
    }
    fn store(&self) -> &Store {
        &self.0.t.ctx.store
    }
    fn env(&self) -> &Ctx {
        &self.0.t.ctx
    }
    async fn restart(&mut self) {
        self.0.restart().await;
    }
    async fn end_state(&self) -> String {
        self.0.group_state().await
    }
}

#[tokio::test]
async fn a_scale_action_survives_a_crash_after_any_step_and_unwinds_cleanly() {
    let mut w = ScaleWorld(Cloud::new().await);
    assert_eq!(check_crash_after_every_step(&mut w).await, 4);
    let state = w.end_state().await;
    assert!(state.starts_with("desired 2\n"), "{state}");
    assert_eq!(state.matches("desired count set to 2 (policy out: +2)").count(), 1, "{state}");
    assert_eq!(check_unwind_at_every_step(&mut w).await, 2 + 3);
}

// ---- a live migration ----

/// Joins a host to `c`'s cloud (sharing storage `shared`, if named); its
/// id and credential.
async fn join_host(c: &Cloud, name: &str, shared: Option<&str>) -> (String, String) {
    let t = &c.t;
    let (join, _) = t.ctx.store.create_join_token(60_000).await.unwrap();
    let id = nubo_api::ids::HostId::generate();
    let v = t.ok("POST", "/api/v1/agent/join", "", Some(json!({"join_token": join, "host_id": id}))).await;
    let cred = v["credential"].as_str().unwrap().to_string();
    let reg = json!({"host_id": id, "name": name, "accel": "tcg", "vcpus": 64, "memory_mib": 262144,
        "disk_gib": 1000, "shared_storage": shared});
    t.ok("POST", "/api/v1/agent/register", &cred, Some(reg)).await;
    (id.to_string(), cred)
}

/// A running instance (2 vCPUs) on the cloud's first host; its id.
async fn running_instance(c: &Cloud) -> String {
    let admin = c.t.admin.clone();
    let body = json!({"image": "tiny", "vcpus": 2, "memory_mib": 512, "disk_gib": 1});
    let v = c.t.ok("POST", "/api/v1/instances", &admin, Some(body)).await;
    let id = v["id"].as_str().unwrap().to_string();
    c.host_round().await;
    id
}

/// Two hosts: the instance's (the source) and an empty one.
struct MigrationWorld {
    c: Cloud,
    instance: String,
    other: (String, String),
}

impl MigrationWorld {
    async fn new() -> Self {
        let c = Cloud::new().await;
        let instance = running_instance(&c).await;
        let other = join_host(&c, "h2", None).await;
        MigrationWorld { c, instance, other }
    }

    /// Plays one host's side of the protocol: a target prepares and says
    /// it is ready; a source that has the target's addresses sends and
    /// says it is done. True when it did something.
    async fn play(&self, host: &str, cred: &str) -> bool {
        let mut acted = false;
        let t = &self.c.t;
        let d = t.ok("GET", &format!("/api/v1/agent/hosts/{host}/desired"), cred, None).await;
        for i in d["instances"].as_array().unwrap() {
            let m = &i["migration"];
            let Some(mid) = m["id"].as_str() else { continue };
            if m["role"] == "target" && m["target"].is_null() {
                let ready = json!({"nbd_host": "127.0.0.1", "nbd_port": 10809, "migrate_uri": "tcp:127.0.0.1:4444"});
                t.ok("POST", &format!("/api/v1/agent/migrations/{mid}/ready"), cred, Some(ready)).await;
                acted = true;
            } else if m["role"] == "source" && !m["target"].is_null() {
                let done = json!({"ok": true, "downtime_ms": 12, "total_ms": 900});
                t.ok("POST", &format!("/api/v1/agent/migrations/{mid}/done"), cred, Some(done)).await;
                acted = true;
            }
        }
        acted
    }
}

impl Harness for MigrationWorld {
    type Saga = Migration;

    async fn start(&mut self) -> SagaId {
        *self = MigrationWorld::new().await;
        let row = self.c.t.ctx.store.instance(&self.instance).await.unwrap().unwrap();
        let p = MigrationParams {
            migration_id: nubo_api::ids::MigrationId::generate().to_string(),
            instance_id: row.id.clone(),
            source: row.host_id.clone().unwrap(),
            pin: None,
            underlay: false,
            externals: Vec::new(),
            weigher: None,
            vcpus: 2,
            memory_mib: 512,
            disk_gib: 1,
        };
        migration::new_migration(&self.c.t.ctx, &p).await.unwrap()
    }
    fn store(&self) -> &Store {
        &self.c.t.ctx.store
    }
    fn env(&self) -> &Ctx {
        &self.c.t.ctx
    }
    async fn restart(&mut self) {
        self.c.restart().await;
    }
    /// One host acts per round (the target, else the source), as agents
    /// polling their desired state do: the saga runs between the target's
    /// ready and the source's send.
    async fn tick(&mut self) {
        let (host, cred) = (self.c.host.clone(), self.c.cred.clone());
        if !self.play(&self.other.0, &self.other.1).await {
            self.play(&host, &cred).await;
        }
    }
    /// Where the instance runs, what each host has claimed, and the
    /// migrations under way and completed.
    async fn end_state(&self) -> String {
        let store = &self.c.t.ctx.store;
        let i = store.instance(&self.instance).await.unwrap().unwrap();
        let on = if i.host_id.as_deref() == Some(self.c.host.as_str()) { "source" } else { "other" };
        let used = |h: &str| {
            let h = h.to_string();
            async move { store.host(&h).await.unwrap().unwrap().used_vcpus }
        };
        let ms = store.migrations(Some(&self.instance)).await.unwrap();
        let active = ms.iter().filter(|m| m.active()).count();
        let completed = ms.iter().filter(|m| m.state.as_str() == "completed").count();
        format!(
            "{} on {on}; vcpus source {} other {}; migrations active {active} completed {completed}",
            i.state,
            used(&self.c.host).await,
            used(&self.other.0).await
        )
    }
}

#[tokio::test]
async fn a_live_migration_survives_a_crash_after_any_step() {
    let mut w = MigrationWorld::new().await;
    assert_eq!(check_crash_after_every_step(&mut w).await, 12);
    assert_eq!(w.end_state().await, "running on other; vcpus source 0 other 2; migrations active 0 completed 1");
}

#[tokio::test]
async fn a_failed_live_migration_frees_the_target_and_leaves_the_instance_on_its_source() {
    let mut w = MigrationWorld::new().await;
    assert_eq!(check_unwind_at_every_step(&mut w).await, 2 + 3 + 4 + 5 + 6 + 7);
    let state = w.end_state().await;
    assert_eq!(state, "running on source; vcpus source 2 other 0; migrations active 0 completed 0");
    // The migration the last run gave up is recorded failed, and its
    // target is told to remove its copy.
    let ms = w.c.t.ctx.store.migrations(Some(&w.instance)).await.unwrap();
    assert_eq!(ms.iter().map(|m| m.state.as_str()).collect::<Vec<_>>(), ["failed"]);
    let d = w.c.t.ok("GET", &format!("/api/v1/agent/hosts/{}/desired", w.other.0), &w.other.1, None).await;
    let copy = d["instances"].as_array().unwrap().iter().find(|i| i["id"] == w.instance.as_str()).cloned();
    assert_eq!(copy.unwrap()["power"], "deleted");
}

// ---- failing an instance over off a down host ----

/// An instance on a host that went down, and a host that shares its
/// storage (or none: then the instance is lost).
struct FailoverWorld {
    c: Cloud,
    dead: String,
    other: String,
    shared: bool,
    instance: String,
}

impl FailoverWorld {
    async fn new(shared: bool) -> Self {
        let c = Cloud::new().await;
        let storage = shared.then_some("nfs-1");
        let (dead, _) = join_host(&c, "dead", storage).await;
        // Only the dead host takes the instance: the first one is full.
        c.t.ok("POST", &format!("/api/v1/hosts/{}/drain", c.host), &c.t.admin.clone(), None).await;
        let admin = c.t.admin.clone();
        let body = json!({"image": "tiny", "vcpus": 2, "memory_mib": 512, "disk_gib": 1});
        let v = c.t.ok("POST", "/api/v1/instances", &admin, Some(body)).await;
        let instance = v["id"].as_str().unwrap().to_string();
        let (other, _) = join_host(&c, "other", storage).await;
        FailoverWorld { c, dead, other, shared, instance }
    }
}

impl Harness for FailoverWorld {
    type Saga = Failover;

    async fn start(&mut self) -> SagaId {
        *self = FailoverWorld::new(self.shared).await;
        let store = &self.c.t.ctx.store;
        let dead = store.host(&self.dead).await.unwrap().unwrap();
        let p = FailoverParams {
            instance_id: self.instance.clone(),
            dead_host: dead.id.clone(),
            dead_name: dead.name.clone(),
            heartbeat_ms: dead.last_heartbeat_ms,
            shared_storage: dead.shared_storage.clone(),
            vcpus: 2,
            memory_mib: 512,
            disk_gib: 1,
        };
        failover_saga::new_failover(&self.c.t.ctx, &p).await.unwrap()
    }
    fn store(&self) -> &Store {
        &self.c.t.ctx.store
    }
    fn env(&self) -> &Ctx {
        &self.c.t.ctx
    }
    async fn restart(&mut self) {
        self.c.restart().await;
    }
    /// Where the instance is and in what state, and each host's claims.
    async fn end_state(&self) -> String {
        let store = &self.c.t.ctx.store;
        let i = store.instance(&self.instance).await.unwrap().unwrap();
        let on = if i.host_id.as_deref() == Some(self.dead.as_str()) { "dead" } else { "other" };
        let dead = store.host(&self.dead).await.unwrap().unwrap().used_vcpus;
        let other = store.host(&self.other).await.unwrap().unwrap().used_vcpus;
        format!("{} on {on} (start {}); vcpus dead {dead} other {other}", i.state, i.start_seq)
    }
}

#[tokio::test]
async fn failing_over_survives_a_crash_after_any_step_and_restarts_once() {
    let mut w = FailoverWorld::new(true).await;
    let before = w.end_state().await;
    assert!(before.starts_with("pending on dead"), "{before}");
    assert_eq!(check_crash_after_every_step(&mut w).await, 4);
    let state = w.end_state().await;
    assert!(state.starts_with("pending on other") && state.ends_with("vcpus dead 0 other 2"), "{state}");
    assert_eq!(check_unwind_at_every_step(&mut w).await, 2 + 3);
}

#[tokio::test]
async fn an_instance_with_local_disks_is_marked_lost_once() {
    let mut w = FailoverWorld::new(false).await;
    assert_eq!(check_crash_after_every_step(&mut w).await, 4);
    let state = w.end_state().await;
    assert!(state.starts_with("lost on dead") && state.ends_with("vcpus dead 2 other 0"), "{state}");
    let events = w.c.t.ok("GET", &format!("/api/v1/instances/{}", w.instance), &w.c.t.admin.clone(), None).await;
    assert_eq!(events["events"].to_string().matches("stopped reporting").count(), 1, "{events}");
    assert_eq!(check_unwind_at_every_step(&mut w).await, 2 + 3);
}

// ---- a launch with a recipe ----

/// The cloud, and the launch saga's environment on its server (made
/// again with it on a restart).
struct RecipeLaunchWorld {
    c: Cloud,
    env: launch_saga::LaunchEnv,
}

impl RecipeLaunchWorld {
    async fn new() -> Self {
        let c = Cloud::new().await;
        let env = launch_saga::LaunchEnv::new(c.t.ctx.clone());
        RecipeLaunchWorld { c, env }
    }
}

impl Harness for RecipeLaunchWorld {
    type Saga = RecipeLaunch;

    async fn start(&mut self) -> SagaId {
        *self = RecipeLaunchWorld::new().await;
        let ctx = &self.c.t.ctx;
        let project = self.c.project().await;
        let image = ctx.store.resolve_image(Some(&project), "tiny").await.unwrap().unwrap();
        let group = ctx.store.ensure_default_security_group(&project).await.unwrap();
        let p = LaunchParams {
            id: nubo_api::ids::InstanceId::generate().to_string(),
            project_id: project.clone(),
            name: "web".into(),
            image: image.name,
            image_id: image.id,
            vcpus: 1,
            memory_mib: 128,
            disk_gib: 1,
            user_data: None,
            guest_ports: vec![],
            key: None,
            imds_tokens: "optional".into(),
            instance_type: None,
            reservation_id: None,
            launch_index: 0,
            client_token: None,
            security_groups: vec![group.id],
            tags: vec![],
            group_id: None,
            networks: vec![],
            hardware: None,
            caller: CallerParams {
                user_id: "admin".into(),
                user_name: "admin".into(),
                admin: true,
                project_id: Some(project),
                project_name: Some("default".into()),
                role: "admin".into(),
            },
            recipe: serde_json::from_value(json!({"recipe": "web-server", "params": {"page": "hello"}})).unwrap(),
        };
        launch_saga::new_launch(ctx, &p).await.unwrap()
    }
    fn store(&self) -> &Store {
        &self.c.t.ctx.store
    }
    fn env(&self) -> &launch_saga::LaunchEnv {
        &self.env
    }
    async fn restart(&mut self) {
        self.c.restart().await;
        self.env = launch_saga::LaunchEnv::new(self.c.t.ctx.clone());
    }
    /// The instances not terminated, with their runs.
    async fn end_state(&self) -> String {
        let store = &self.c.t.ctx.store;
        let mut lines = Vec::new();
        for i in store.instances(None).await.unwrap() {
            if i.desired.as_str() == "deleted" {
                continue;
            }
            let runs: Vec<String> = store.runs(&i.id, 10).await.unwrap().into_iter().map(|r| r.what).collect();
            lines.push(format!("{} {} runs {runs:?}", i.name, i.desired));
        }
        lines.join("\n")
    }
}

#[tokio::test]
async fn a_launch_with_a_recipe_survives_a_crash_after_any_step_and_starts_one_run() {
    let mut w = RecipeLaunchWorld::new().await;
    assert_eq!(check_crash_after_every_step(&mut w).await, 4);
    assert_eq!(w.end_state().await, r#"web running runs ["web-server@1.0.0"]"#);
}

#[tokio::test]
async fn a_launch_whose_run_cannot_start_terminates_its_instance() {
    let mut w = RecipeLaunchWorld::new().await;
    assert_eq!(check_unwind_at_every_step(&mut w).await, 2 + 3);
    assert_eq!(w.end_state().await, "");
}
