//! DescribeInstanceStatus on the in-process harness: the system check
//! follows the host's heartbeat, the instance check the guest agent and
//! the instance's monitoring checks; instances that are not running show
//! only with IncludeAllInstances; filters and pages work as on EC2.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use axum::http::StatusCode;
use common::ec2::*;
use common::T;
use nubo_api::agent::{ActualInstance, ActualPower};

fn report(id: &str, power: ActualPower, guest: bool) -> ActualInstance {
    let mut a = common::actual(id, power);
    a.guest = guest.then(|| serde_json::from_value(serde_json::json!({"updated_at_ms": i64::MAX / 2})).unwrap());
    a
}

#[tokio::test]
async fn status_checks_come_from_the_host_the_guest_agent_and_monitoring() {
    let t = T::new().await;
    let (host, cred) = t.add_host_with_id().await;
    let k = admin_key(&t).await;
    let images =
        ok(&t, &k, &[("Action", "DescribeImages"), ("Filter.1.Name", "name"), ("Filter.1.Value.1", "tiny")]).await;
    let ami = one(&images, "imageId");
    let run = ok(
        &t,
        &k,
        &[
            ("Action", "RunInstances"),
            ("ImageId", &ami),
            ("InstanceType", "t3.micro"),
            ("MinCount", "3"),
            ("MaxCount", "3"),
        ],
    )
    .await;
    let ids = all(&run, "instanceId");

    // Nothing runs yet: an empty answer, unless all are asked for.
    let none = ok(&t, &k, &[("Action", "DescribeInstanceStatus")]).await;
    assert!(
        none.contains("<instanceStatusSet/>") || none.contains("<instanceStatusSet></instanceStatusSet>"),
        "{none}"
    );
    let pending = ok(&t, &k, &[("Action", "DescribeInstanceStatus"), ("IncludeAllInstances", "true")]).await;
    assert_eq!(all(&pending, "instanceId").len(), 3, "{pending}");
    assert!(pending.contains("<systemStatus><status>not-applicable</status>"), "{pending}");

    // One runs with its guest agent answering, one runs silent.
    assert!(t.ctx.store.apply_actual(host.as_str(), &report(&ids[0], ActualPower::Running, true)).await.unwrap());
    assert!(t.ctx.store.apply_actual(host.as_str(), &report(&ids[1], ActualPower::Running, false)).await.unwrap());
    let running = ok(&t, &k, &[("Action", "DescribeInstanceStatus")]).await;
    assert_eq!(all(&running, "instanceId"), [ids[0].clone(), ids[1].clone()], "{running}");
    let first = running.split("<item><instanceId>").nth(1).unwrap();
    assert!(first.starts_with(&ids[0]), "{running}");
    assert!(
        first.contains(
            "<systemStatus><status>ok</status><details><item><name>reachability</name><status>passed</status>"
        ),
        "{first}"
    );
    assert!(first.contains("<instanceStatus><status>ok</status>"), "{first}");
    let second = running.split("<item><instanceId>").nth(2).unwrap();
    assert!(second.contains("<instanceStatus><status>initializing</status>"), "{second}");

    // Filters: by the instance check's status; a documented event filter matches nothing.
    let ok_only = ok(
        &t,
        &k,
        &[
            ("Action", "DescribeInstanceStatus"),
            ("Filter.1.Name", "instance-status.status"),
            ("Filter.1.Value.1", "ok"),
        ],
    )
    .await;
    assert_eq!(all(&ok_only, "instanceId"), [ids[0].clone()], "{ok_only}");
    let events =
        ok(&t, &k, &[("Action", "DescribeInstanceStatus"), ("Filter.1.Name", "event.code"), ("Filter.1.Value.1", "*")])
            .await;
    assert!(all(&events, "instanceId").is_empty(), "{events}");
    is_error(
        ec2(&t, &k, &[("Action", "DescribeInstanceStatus"), ("Filter.1.Name", "bogus"), ("Filter.1.Value.1", "x")])
            .await,
        StatusCode::BAD_REQUEST,
        "InvalidParameterValue",
    );

    // A critical check of the instance (hard: one attempt) impairs it.
    let admin = t.admin.clone();
    let check = serde_json::json!({"name": "alive", "target": ids[0], "kind": "liveness", "max_attempts": 1});
    let c = t.ok("POST", "/api/v1/checks", &admin, Some(check)).await;
    let result = serde_json::json!({"results": [{"check_id": c["id"], "status": 2, "output": "down", "perfdata": "",
        "at_ms": nubo_controlplane::store::now_ms()}]});
    t.ok("POST", &format!("/api/v1/agent/hosts/{host}/checks"), &cred, Some(result)).await;
    let shown = t.ok("GET", &format!("/api/v1/checks/{}", c["id"].as_str().unwrap()), &admin, None).await;
    assert_eq!((shown["state"].as_str(), shown["state_type"].as_str()), (Some("CRITICAL"), Some("HARD")), "{shown}");
    let impaired = ok(&t, &k, &[("Action", "DescribeInstanceStatus"), ("InstanceId.1", &ids[0])]).await;
    assert!(
        impaired.contains(
            "<instanceStatus><status>impaired</status><details><item><name>reachability</name><status>failed</status>"
        ),
        "{impaired}"
    );

    // Pages of at least 5, as EC2 has them; ids and MaxResults do not mix.
    is_error(
        ec2(&t, &k, &[("Action", "DescribeInstanceStatus"), ("InstanceId.1", &ids[0]), ("MaxResults", "5")]).await,
        StatusCode::BAD_REQUEST,
        "InvalidParameterCombination",
    );
    let page =
        ok(&t, &k, &[("Action", "DescribeInstanceStatus"), ("IncludeAllInstances", "true"), ("MaxResults", "5")]).await;
    assert_eq!(all(&page, "instanceId").len(), 3, "{page}");
}

#[tokio::test]
async fn another_project_sees_no_status_of_ours() {
    let t = T::new().await;
    t.add_host_with_id().await;
    let alice = t.user("alice", "proj-a", "member").await;
    let bob = t.user("bob", "proj-b", "member").await;
    let (ka, kb) = (key(&t, &alice).await, key(&t, &bob).await);
    let images =
        ok(&t, &ka, &[("Action", "DescribeImages"), ("Filter.1.Name", "name"), ("Filter.1.Value.1", "tiny")]).await;
    let ami = one(&images, "imageId");
    let run = ok(&t, &ka, &[("Action", "RunInstances"), ("ImageId", &ami), ("InstanceType", "t3.nano")]).await;
    let id = one(&run, "instanceId");
    let mine =
        ok(&t, &ka, &[("Action", "DescribeInstanceStatus"), ("InstanceId.1", &id), ("IncludeAllInstances", "true")])
            .await;
    assert_eq!(all(&mine, "instanceId"), vec![id.clone()]);
    // Bob's listing leaves it out; naming it is NotFound, as for an id
    // that does not exist.
    let theirs = ok(&t, &kb, &[("Action", "DescribeInstanceStatus"), ("IncludeAllInstances", "true")]).await;
    assert!(all(&theirs, "instanceId").is_empty(), "{theirs}");
    let named =
        ec2(&t, &kb, &[("Action", "DescribeInstanceStatus"), ("InstanceId.1", &id), ("IncludeAllInstances", "true")])
            .await;
    is_error(named, StatusCode::BAD_REQUEST, "InvalidInstanceID.NotFound");
}
