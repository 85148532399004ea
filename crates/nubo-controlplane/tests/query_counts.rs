//! What a list costs in SQL: the statements the store runs for a list of
//! instances (REST, a page of it, EC2 DescribeInstances) and for a host's
//! desired state are counted (statement logging on, every `sqlx::query`
//! event counted by a tracing layer) with 3 instances and again with 30
//! (with ports and tags each). The counts must be the same: the work is a
//! fixed number of queries, not some per instance. One test in this
//! binary, since the counter is the process's.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::ec2::{all, key, ok};
use common::statements::{count_statements, statements_of};
use common::T;
use serde_json::json;

#[tokio::test]
async fn lists_and_desired_state_run_the_same_statements_for_3_and_30_instances() {
    count_statements();
    let t = T::with(|c| c.log_statements = true).await;
    let (host, cred) = t.add_host_with_id().await;
    let alice = t.user("alice", "proj-a", "member").await;
    let quota = json!({"instances": 40, "vcpus": 40, "memory_mib": 40 * 64});
    t.ok("PUT", "/api/v1/projects/proj-a/quota", &t.admin.clone(), Some(quota)).await;
    let k = key(&t, &alice).await;
    let launch = |n: usize| {
        let (t, alice) = (&t, &alice);
        async move {
            for i in 0..n {
                let body = json!({"image": "tiny", "vcpus": 1, "memory_mib": 64, "disk_gib": 1, "ports": [22, 80],
                                  "tags": {"n": i.to_string(), "role": "web"}});
                t.ok("POST", "/api/v1/instances", alice, Some(body)).await;
            }
        }
    };
    let desired = format!("/api/v1/agent/hosts/{host}/desired");
    let measure = || async {
        let list = statements_of(async {
            t.ok("GET", "/api/v1/instances", &alice, None).await;
        })
        .await;
        let page = statements_of(async {
            t.ok("GET", "/api/v1/instances?limit=2", &alice, None).await;
        })
        .await;
        let describe = statements_of(async {
            let xml = ok(&t, &k, &[("Action", "DescribeInstances")]).await;
            assert!(!all(&xml, "instanceId").is_empty());
        })
        .await;
        let host_state = statements_of(async {
            t.ok("GET", &desired, &cred, None).await;
        })
        .await;
        [list.0, page.0, describe.0, host_state.0]
    };

    // The server reads a host's row once to know it is registered, then
    // remembers it (`known_hosts`): that first read is not the list's.
    t.ok("GET", &desired, &cred, None).await;
    launch(3).await;
    let few = measure().await;
    launch(27).await;
    let many = measure().await;
    for (what, (few, many)) in
        ["list", "page of 2", "DescribeInstances", "desired state"].iter().zip(few.iter().zip(&many))
    {
        assert!(!few.is_empty(), "{what}: no statement was counted; is statement logging on?");
        assert_eq!(few.len(), many.len(), "{what}: 3 instances: {few:#?}\n30 instances: {many:#?}");
        // Fewer statements than the 3 instances' related rows alone
        // would need one by one (ports, tags, addresses, volumes, host).
        assert!(few.len() < 3 * 5, "{what}: {few:#?}");
        println!("{what}: {} statements for 3 and for 30 instances", few.len());
    }
}
