//! The control plane's sagas under crashes and failures, on the in-process
//! test cloud (a host played by agent API calls): launching a group member,
//! scaling a group in, and a policy's attach-volume and scale actions are
//! each crashed after every step (and in the middle of every step), the
//! server restarted from its database, and must end as an uninterrupted
//! run does; and each step is made to fail in turn, and the saga must
//! unwind leaving nothing behind.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::T;
use nubo_controlplane::policies::{Plan, PolicyRow};
use nubo_controlplane::saga::testing::{check_crash_after_every_step, check_unwind_at_every_step, Harness};
use nubo_controlplane::saga::SagaId;
use nubo_controlplane::sagas::group_scale::{self, MemberLaunch, ScaleIn};
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
            if v.desired == "deleted" {
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
