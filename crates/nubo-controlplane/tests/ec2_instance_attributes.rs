//! Instance attributes on the in-process harness: EC2's
//! DescribeInstanceAttribute and ModifyInstanceAttribute for every
//! attribute in both query forms, with EC2's error codes; termination and
//! stop protection through EC2, REST and a group's scale-in; a guest's
//! poweroff under each shutdown behaviour; other tenants and viewers; and
//! DescribeInstances' filters, each documented one mapped or matching
//! nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use axum::http::StatusCode;
use base64::Engine;
use common::ec2::*;
use common::T;
use nubo_api::agent::{ActualInstance, ActualPower};
use nubo_api::ids::HostId;
use serde_json::json;

fn report(id: &str, power: ActualPower, exited_unexpectedly: bool) -> ActualInstance {
    let mut a = common::actual(id, power);
    a.exited_unexpectedly = exited_unexpectedly;
    a
}

/// A host of `vcpus` and `memory_mib` (and 1000 GiB of disk); its id.
async fn host(t: &T, vcpus: u32, memory_mib: u64) -> HostId {
    let (join, _) = t.ctx.store.create_join_token(60_000).await.unwrap();
    let id = HostId::generate();
    let v = t.ok("POST", "/api/v1/agent/join", "", Some(json!({"join_token": join, "host_id": id}))).await;
    let cred = v["credential"].as_str().unwrap().to_string();
    let reg = json!({"host_id": id, "name": "h1", "accel": "tcg", "vcpus": vcpus, "memory_mib": memory_mib,
        "disk_gib": 1000});
    t.ok("POST", "/api/v1/agent/register", &cred, Some(reg)).await;
    id
}

/// Launches one instance through EC2 with `extra` parameters; its id.
async fn run(t: &T, k: &Key, extra: &[(&str, &str)]) -> String {
    let mut params = vec![("Action", "RunInstances"), ("ImageId", "tiny"), ("MinCount", "1")];
    params.extend_from_slice(extra);
    one(&ok(t, k, &params).await, "instanceId")
}

async fn attribute(t: &T, k: &Key, id: &str, name: &str) -> String {
    ok(t, k, &[("Action", "DescribeInstanceAttribute"), ("InstanceId", id), ("Attribute", name)]).await
}

async fn modify(t: &T, k: &Key, id: &str, params: &[(&str, &str)]) -> (StatusCode, String) {
    let mut all = vec![("Action", "ModifyInstanceAttribute"), ("InstanceId", id)];
    all.extend_from_slice(params);
    ec2(t, k, &all).await
}

/// Stops the instance and has its host report it stopped.
async fn stop(t: &T, k: &Key, host: &HostId, id: &str) {
    ok(t, k, &[("Action", "StopInstances"), ("InstanceId.1", id)]).await;
    assert!(t.ctx.store.apply_actual(host.as_str(), &report(id, ActualPower::Stopped, false)).await.unwrap());
}

/// The ids DescribeInstances answers with for `filters` (name, value) pairs.
async fn filtered(t: &T, k: &Key, filters: &[(&str, &str)]) -> Vec<String> {
    let names: Vec<(String, String)> = filters
        .iter()
        .enumerate()
        .flat_map(|(i, (n, v))| {
            [(format!("Filter.{}.Name", i + 1), n.to_string()), (format!("Filter.{}.Value.1", i + 1), v.to_string())]
        })
        .collect();
    let mut params = vec![("Action", "DescribeInstances")];
    params.extend(names.iter().map(|(a, b)| (a.as_str(), b.as_str())));
    all(&ok(t, k, &params).await, "instanceId")
}

#[tokio::test]
async fn every_attribute_reads_and_changes_in_both_query_forms() {
    let t = T::new().await;
    let host = host(&t, 64, 262_144).await;
    let k = admin_key(&t).await;
    let script = "#!/bin/sh\necho hello\n";
    let b64 = base64::engine::general_purpose::STANDARD.encode(script);
    let id = run(&t, &k, &[("InstanceType", "t3.micro"), ("UserData", &b64)]).await;
    assert!(t.ctx.store.apply_actual(host.as_str(), &report(&id, ActualPower::Running, false)).await.unwrap());

    // Each attribute as EC2 answers it: the instance id and one element.
    let a = attribute(&t, &k, &id, "instanceType").await;
    assert_eq!(one(&a, "instanceId"), id);
    assert!(a.contains("<instanceType><value>t3.micro</value></instanceType>"), "{a}");
    let a = attribute(&t, &k, &id, "userData").await;
    assert!(a.contains(&format!("<userData><value>{b64}</value></userData>")), "{a}");
    for (name, want) in [
        ("disableApiTermination", "<disableApiTermination><value>false</value></disableApiTermination>"),
        ("disableApiStop", "<disableApiStop><value>false</value></disableApiStop>"),
        (
            "instanceInitiatedShutdownBehavior",
            "<instanceInitiatedShutdownBehavior><value>stop</value></instanceInitiatedShutdownBehavior>",
        ),
        ("sourceDestCheck", "<sourceDestCheck><value>true</value></sourceDestCheck>"),
        ("rootDeviceName", "<rootDeviceName><value>/dev/sda1</value></rootDeviceName>"),
        ("ebsOptimized", "<ebsOptimized><value>false</value></ebsOptimized>"),
        ("enaSupport", "<enaSupport><value>false</value></enaSupport>"),
        ("enclaveOptions", "<enclaveOptions><enabled>false</enabled></enclaveOptions>"),
        ("groupSet", "<groupName>default</groupName>"),
        ("blockDeviceMapping", "<blockDeviceMapping><item><deviceName>/dev/sda1</deviceName>"),
    ] {
        let a = attribute(&t, &k, &id, name).await;
        assert!(a.contains(want), "{name}: {a}");
    }
    for empty in ["kernel", "ramdisk", "productCodes", "sriovNetSupport"] {
        let a = attribute(&t, &k, &id, empty).await;
        assert!(a.contains(&format!("<{empty}/>")) || a.contains(&format!("<{empty}></{empty}>")), "{empty}: {a}");
    }

    // Describe's errors.
    let d = |attr: &'static str| [("Action", "DescribeInstanceAttribute"), ("InstanceId", ""), ("Attribute", attr)];
    let mut p = d("colour");
    p[1].1 = &id;
    is_error(ec2(&t, &k, &p).await, StatusCode::BAD_REQUEST, "InvalidParameterValue");
    is_error(
        ec2(&t, &k, &[("Action", "DescribeInstanceAttribute"), ("InstanceId", &id)]).await,
        StatusCode::BAD_REQUEST,
        "MissingParameter",
    );
    let mut p = d("instanceType");
    p[1].1 = "i-nothex";
    is_error(ec2(&t, &k, &p).await, StatusCode::BAD_REQUEST, "InvalidInstanceID.Malformed");
    p[1].1 = "i-0123456789abcdef0";
    is_error(ec2(&t, &k, &p).await, StatusCode::BAD_REQUEST, "InvalidInstanceID.NotFound");

    // While running: the type and the user-data cannot change.
    let refused = modify(&t, &k, &id, &[("InstanceType.Value", "t3.small")]).await;
    is_error(refused, StatusCode::BAD_REQUEST, "IncorrectInstanceState");
    let refused = modify(&t, &k, &id, &[("UserData.Value", &b64)]).await;
    is_error(refused, StatusCode::BAD_REQUEST, "IncorrectInstanceState");

    // Protection, both forms.
    let done = modify(&t, &k, &id, &[("DisableApiTermination.Value", "true")]).await;
    assert!(done.1.contains("<return>true</return>"), "{done:?}");
    let a = attribute(&t, &k, &id, "disableApiTermination").await;
    assert!(a.contains("<value>true</value>"), "{a}");
    modify(&t, &k, &id, &[("Attribute", "disableApiStop"), ("Value", "true")]).await;
    assert!(attribute(&t, &k, &id, "disableApiStop").await.contains("<value>true</value>"));
    let v = t.ok("GET", &format!("/api/v1/instances/{id}"), &t.admin, None).await;
    assert_eq!((v["termination_protection"].as_bool(), v["stop_protection"].as_bool()), (Some(true), Some(true)));

    // Stop and terminate are refused, in EC2's words, and nothing changes.
    let e = is_error(
        ec2(&t, &k, &[("Action", "StopInstances"), ("InstanceId.1", &id)]).await,
        StatusCode::BAD_REQUEST,
        "OperationNotPermitted",
    );
    assert!(e.contains("disableApiStop"), "{e}");
    let e = is_error(
        ec2(&t, &k, &[("Action", "TerminateInstances"), ("InstanceId.1", &id)]).await,
        StatusCode::BAD_REQUEST,
        "OperationNotPermitted",
    );
    assert!(e.contains(&format!("The instance '{id}' may not be terminated")), "{e}");
    let d = ok(&t, &k, &[("Action", "DescribeInstances"), ("InstanceId.1", &id)]).await;
    assert_eq!(one(&d, "name"), "running", "{d}");

    // Shutdown behaviour, source/destination check.
    modify(&t, &k, &id, &[("InstanceInitiatedShutdownBehavior.Value", "terminate")]).await;
    assert!(attribute(&t, &k, &id, "instanceInitiatedShutdownBehavior").await.contains("<value>terminate</value>"));
    let bad = modify(&t, &k, &id, &[("InstanceInitiatedShutdownBehavior.Value", "hibernate")]).await;
    is_error(bad, StatusCode::BAD_REQUEST, "InvalidParameterValue");
    modify(&t, &k, &id, &[("Attribute", "instanceInitiatedShutdownBehavior"), ("Value", "stop")]).await;
    assert!(attribute(&t, &k, &id, "instanceInitiatedShutdownBehavior").await.contains("<value>stop</value>"));
    modify(&t, &k, &id, &[("SourceDestCheck.Value", "false")]).await;
    assert!(attribute(&t, &k, &id, "sourceDestCheck").await.contains("<value>false</value>"));
    let d = ok(&t, &k, &[("Action", "DescribeInstances"), ("InstanceId.1", &id)]).await;
    assert!(d.contains("<sourceDestCheck>false</sourceDestCheck>"), "{d}");

    // Security groups, replaced whole (GroupId.N).
    let sg = one(
        &ok(&t, &k, &[("Action", "CreateSecurityGroup"), ("GroupName", "web"), ("GroupDescription", "web")]).await,
        "groupId",
    );
    modify(&t, &k, &id, &[("GroupId.1", &sg)]).await;
    let a = attribute(&t, &k, &id, "groupSet").await;
    assert_eq!(all(&a, "groupId"), std::slice::from_ref(&sg), "{a}");
    assert_eq!(filtered(&t, &k, &[("instance.group-id", &sg)]).await, std::slice::from_ref(&id));
    let missing = modify(&t, &k, &id, &[("GroupId.1", "sg-0123456789abcdef0")]).await;
    is_error(missing, StatusCode::BAD_REQUEST, "InvalidGroup.NotFound");
    modify(&t, &k, &id, &[("Attribute", "groupSet"), ("Value", "default")]).await;
    assert!(attribute(&t, &k, &id, "groupSet").await.contains("<groupName>default</groupName>"));

    // Modify's own errors.
    let two = modify(&t, &k, &id, &[("DisableApiStop.Value", "false"), ("SourceDestCheck.Value", "true")]).await;
    is_error(two, StatusCode::BAD_REQUEST, "InvalidParameterCombination");
    is_error(modify(&t, &k, &id, &[]).await, StatusCode::BAD_REQUEST, "MissingParameter");
    is_error(modify(&t, &k, &id, &[("Kernel.Value", "aki-1")]).await, StatusCode::BAD_REQUEST, "UnsupportedOperation");
    is_error(
        modify(&t, &k, &id, &[("Attribute", "colour"), ("Value", "red")]).await,
        StatusCode::BAD_REQUEST,
        "InvalidParameterValue",
    );

    // Stopped (its stop protection lifted first): type and user-data change.
    modify(&t, &k, &id, &[("DisableApiStop.Value", "false")]).await;
    stop(&t, &k, &host, &id).await;
    let project = t.ctx.store.instance(&id).await.unwrap().unwrap().project_id.unwrap();
    let before = t.ctx.store.project(&project).await.unwrap().unwrap().used_memory_mib;
    modify(&t, &k, &id, &[("InstanceType.Value", "t3.large")]).await;
    assert!(attribute(&t, &k, &id, "instanceType").await.contains("<value>t3.large</value>"));
    let v = t.ok("GET", &format!("/api/v1/instances/{id}"), &t.admin, None).await;
    assert_eq!(
        (v["vcpus"].as_u64(), v["memory_mib"].as_u64(), v["instance_type"].as_str()),
        (Some(2), Some(8192), Some("t3.large"))
    );
    let after = t.ctx.store.project(&project).await.unwrap().unwrap().used_memory_mib;
    assert_eq!(after, before + 8192 - 1024, "the quota holds the new size");
    modify(&t, &k, &id, &[("Attribute", "instanceType"), ("Value", "t3.nano")]).await;
    assert!(attribute(&t, &k, &id, "instanceType").await.contains("<value>t3.nano</value>"));
    is_error(
        modify(&t, &k, &id, &[("InstanceType.Value", "z9.huge")]).await,
        StatusCode::BAD_REQUEST,
        "InvalidParameterValue",
    );
    let other = base64::engine::general_purpose::STANDARD.encode("#cloud-config\n");
    modify(&t, &k, &id, &[("UserData.Value", &other)]).await;
    assert!(attribute(&t, &k, &id, "userData").await.contains(&format!("<value>{other}</value>")));
    modify(&t, &k, &id, &[("Attribute", "userData"), ("Value", &b64)]).await;
    assert!(attribute(&t, &k, &id, "userData").await.contains(&format!("<value>{b64}</value>")));

    // Termination protection still holds for a stopped instance, through REST too.
    let (s, v) = t.call("DELETE", &format!("/api/v1/instances/{id}"), Some(&t.admin), None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let msg = v.to_string();
    assert!(msg.contains("termination protection") && msg.contains("--no-termination"), "{msg}");
    let v = t
        .ok(
            "PUT",
            &format!("/api/v1/instances/{id}/protection"),
            &t.admin,
            Some(json!({"termination_protection": false})),
        )
        .await;
    assert_eq!(v["termination_protection"], false);
    let done = ok(&t, &k, &[("Action", "TerminateInstances"), ("InstanceId.1", &id)]).await;
    assert_eq!(all(&done, "name")[0], "shutting-down", "{done}");
    let late = modify(&t, &k, &id, &[("DisableApiTermination.Value", "true")]).await;
    is_error(late, StatusCode::BAD_REQUEST, "IncorrectInstanceState");
}

#[tokio::test]
async fn a_new_size_is_refused_by_the_quota_and_by_the_host_with_their_reasons() {
    let t = T::new().await;
    // A host with room for 4 GiB of memory.
    let host = host(&t, 8, 4096).await;
    let alice = t.user("alice", "team-a", "member").await;
    let k = key(&t, &alice).await;
    let id = run(&t, &k, &[("InstanceType", "t3.micro")]).await;
    stop(&t, &k, &host, &id).await;
    let admin = t.admin.clone();
    t.ok("PUT", "/api/v1/projects/team-a/quota", &admin, Some(json!({"memory_mib": 2048}))).await;
    let e = is_error(
        modify(&t, &k, &id, &[("InstanceType.Value", "t3.medium")]).await,
        StatusCode::BAD_REQUEST,
        "InstanceLimitExceeded",
    );
    assert!(e.contains("quota"), "{e}");
    t.ok("PUT", "/api/v1/projects/team-a/quota", &admin, Some(json!({"memory_mib": 1_000_000}))).await;
    let e = is_error(
        modify(&t, &k, &id, &[("InstanceType.Value", "t3.large")]).await,
        StatusCode::BAD_REQUEST,
        "InsufficientInstanceCapacity",
    );
    assert!(e.contains("memory") || e.contains("MiB"), "{e}");
    // Neither refusal changed anything; a size that fits does.
    assert!(attribute(&t, &k, &id, "instanceType").await.contains("<value>t3.micro</value>"));
    modify(&t, &k, &id, &[("InstanceType.Value", "t3.medium")]).await;
    assert!(attribute(&t, &k, &id, "instanceType").await.contains("<value>t3.medium</value>"));
    let h = t.ctx.store.host(host.as_str()).await.unwrap().unwrap();
    assert_eq!(h.used_memory_mib, 4096, "the host holds the new size");
}

#[tokio::test]
async fn a_guest_poweroff_stops_or_terminates_as_its_shutdown_behaviour_says() {
    let t = T::new().await;
    let host = host(&t, 64, 262_144).await;
    let k = admin_key(&t).await;
    let stays = run(&t, &k, &[]).await;
    let goes = run(&t, &k, &[]).await;
    // Termination protection does not keep the guest from ending itself (as on EC2).
    let body = json!({"shutdown_behavior": "terminate", "termination_protection": true});
    let v = t.ok("PUT", &format!("/api/v1/instances/{goes}/protection"), &t.admin, Some(body)).await;
    assert_eq!(v["shutdown_behavior"], "terminate");
    let (s, v) = t
        .call(
            "PUT",
            &format!("/api/v1/instances/{goes}/protection"),
            Some(&t.admin),
            Some(json!({"shutdown_behavior": "halt"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    for id in [&stays, &goes] {
        assert!(t.ctx.store.apply_actual(host.as_str(), &report(id, ActualPower::Running, false)).await.unwrap());
        assert!(t.ctx.store.apply_actual(host.as_str(), &report(id, ActualPower::Stopped, true)).await.unwrap());
    }
    let d = ok(&t, &k, &[("Action", "DescribeInstances"), ("InstanceId.1", &stays), ("InstanceId.2", &goes)]).await;
    let states: Vec<String> = all(&d, "instanceState").iter().map(|s| one(s, "name")).collect();
    assert_eq!(states, ["stopped", "shutting-down"], "{d}");
    let v = t.ok("GET", &format!("/api/v1/instances/{goes}"), &t.admin, None).await;
    assert_eq!(v["desired_state"], "terminated", "{v}");
}

#[tokio::test]
async fn protection_holds_through_rest_and_a_group_scale_in_passes_over_protected_members() {
    let t = T::new().await;
    t.add_host().await;
    let admin = t.admin.clone();
    let g = json!({"name": "web", "min": 0, "max": 3, "desired": 3,
        "template": {"image": "tiny", "vcpus": 1, "memory_mib": 128, "disk_gib": 1}});
    let created = t.ok("POST", "/api/v1/groups", &admin, Some(g)).await;
    let members: Vec<String> =
        created["members"].as_array().unwrap().iter().map(|m| m["instance_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(members.len(), 3, "{created}");
    // The newest member is protected: scaling in by one passes over it
    // and takes the next newest.
    let newest = members[2].clone();
    t.ok(
        "PUT",
        &format!("/api/v1/instances/{newest}/protection"),
        &admin,
        Some(json!({"termination_protection": true})),
    )
    .await;
    t.ok("POST", "/api/v1/groups/web/desired", &admin, Some(json!({"desired": 2}))).await;
    let g = t.ok("GET", "/api/v1/groups/web", &admin, None).await;
    let left: Vec<&str> = g["members"].as_array().unwrap().iter().map(|m| m["instance_id"].as_str().unwrap()).collect();
    assert_eq!(left, vec![members[0].as_str(), newest.as_str()], "the protected newest stays: {g}");
    // Scaling in to 0 takes the unprotected one and leaves the protected one
    // (the group stays above its count while it is protected).
    t.ok("POST", "/api/v1/groups/web/desired", &admin, Some(json!({"desired": 0}))).await;
    let g = t.ok("GET", "/api/v1/groups/web", &admin, None).await;
    let left: Vec<&str> = g["members"].as_array().unwrap().iter().map(|m| m["instance_id"].as_str().unwrap()).collect();
    assert_eq!(left, vec![newest.as_str()], "{g}");
    // A scale-in that chose it before it was protected (a saga resumed
    // after a crash, say) passes over it too, and does not note it.
    let project = t.ctx.store.instance(&newest).await.unwrap().unwrap().project_id.unwrap();
    let row = t.ctx.store.group_by_name(&project, "web").await.unwrap().unwrap();
    nubo_controlplane::sagas::group_scale::scale_in(&t.ctx, &row, 0, vec![newest.clone()]).await.unwrap();
    let g = t.ok("GET", "/api/v1/groups/web", &admin, None).await;
    assert_eq!(g["members"][0]["instance_id"], newest.as_str(), "{g}");
    let noted = g["activities"].as_array().unwrap().iter().filter(|a| a["kind"] == "terminate");
    assert!(noted.clone().all(|a| !a["detail"].as_str().unwrap().contains(&newest)), "{g}");
    // Deleting the group would terminate it: refused, saying why.
    let (s, v) = t.call("DELETE", "/api/v1/groups/web", Some(&admin), None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(v.to_string().contains(&newest), "{v}");

    // REST stop and terminate refuse a protected instance; lifted, they act.
    t.ok("PUT", &format!("/api/v1/instances/{newest}/protection"), &admin, Some(json!({"stop_protection": true})))
        .await;
    let (s, v) = t.call("POST", &format!("/api/v1/instances/{newest}/stop"), Some(&admin), None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(v.to_string().contains("--no-stop"), "{v}");
    let (s, _) = t.call("DELETE", &format!("/api/v1/instances/{newest}"), Some(&admin), None).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, v) = t
        .call("PUT", &format!("/api/v1/instances/{newest}/protection"), Some(&admin), Some(json!({"colour": "red"})))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "unknown fields are refused: {v}");
    let v = t
        .ok(
            "PUT",
            &format!("/api/v1/instances/{newest}/protection"),
            &admin,
            Some(json!({"termination_protection": false, "stop_protection": false})),
        )
        .await;
    assert_eq!((v["termination_protection"].as_bool(), v["stop_protection"].as_bool()), (Some(false), Some(false)));
    t.ok("POST", &format!("/api/v1/instances/{newest}/stop"), &admin, None).await;
    t.ok("DELETE", "/api/v1/groups/web", &admin, None).await;
}

#[tokio::test]
async fn another_tenant_finds_nothing_and_a_reader_changes_nothing() {
    let t = T::new().await;
    t.add_host().await;
    let alice = t.user("alice", "team-a", "member").await;
    let bob = t.user("bob", "team-b", "member").await;
    let vera = t.user("vera", "team-a", "reader").await;
    let (ka, kb, kv) = (key(&t, &alice).await, key(&t, &bob).await, key(&t, &vera).await);
    let id = run(&t, &ka, &[]).await;

    // Bob, of another project: the instance does not exist for him.
    let p = [("Action", "DescribeInstanceAttribute"), ("InstanceId", id.as_str()), ("Attribute", "instanceType")];
    is_error(ec2(&t, &kb, &p).await, StatusCode::BAD_REQUEST, "InvalidInstanceID.NotFound");
    for change in [
        ("DisableApiTermination.Value", "true"),
        ("DisableApiStop.Value", "true"),
        ("SourceDestCheck.Value", "false"),
        ("InstanceInitiatedShutdownBehavior.Value", "terminate"),
        ("GroupId.1", "default"),
    ] {
        let e = modify(&t, &kb, &id, &[change]).await;
        is_error(e, StatusCode::BAD_REQUEST, "InvalidInstanceID.NotFound");
    }
    let (s, _) = t
        .call(
            "PUT",
            &format!("/api/v1/instances/{id}/protection"),
            Some(&bob),
            Some(json!({"termination_protection": true})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(filtered(&t, &kb, &[("instance-id", &id)]).await.is_empty());

    // Vera, a reader of the project: she reads, she cannot change.
    assert!(attribute(&t, &kv, &id, "disableApiTermination").await.contains("<value>false</value>"));
    let e = modify(&t, &kv, &id, &[("DisableApiTermination.Value", "true")]).await;
    is_error(e, StatusCode::FORBIDDEN, "UnauthorizedOperation");
    let (s, _) = t
        .call("PUT", &format!("/api/v1/instances/{id}/protection"), Some(&vera), Some(json!({"stop_protection": true})))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Nothing changed.
    assert!(attribute(&t, &ka, &id, "disableApiTermination").await.contains("<value>false</value>"));
    assert!(attribute(&t, &ka, &id, "disableApiStop").await.contains("<value>false</value>"));
}

#[tokio::test]
async fn describe_instances_maps_each_documented_filter_or_matches_nothing() {
    let t = T::new().await;
    // A bridging host: instances join the project's default network (a NIC).
    t.add_bridging_host(&[]).await;
    let k = admin_key(&t).await;
    let a = run(&t, &k, &[("InstanceType", "t3.micro")]).await;
    let b = run(&t, &k, &[("InstanceType", "t3.small"), ("MetadataOptions.HttpTokens", "required")]).await;
    modify(&t, &k, &b, &[("SourceDestCheck.Value", "false")]).await;
    let both = vec![a.clone(), b.clone()];
    let d = ok(&t, &k, &[("Action", "DescribeInstances"), ("InstanceId.1", &a)]).await;
    let (owner, eni, mac, ip, dns, subnet, vpc, attach, sg, launch) = (
        one(&d, "ownerId"),
        one(&d, "networkInterfaceId"),
        one(&d, "macAddress"),
        one(&d, "privateIpAddress"),
        one(&d, "privateDnsName"),
        one(&d, "subnetId"),
        one(&d, "vpcId"),
        one(&d, "attachmentId"),
        one(&d, "groupId"),
        one(&d, "launchTime"),
    );
    // The elements tools read are there.
    for element in [
        "<architecture>x86_64</architecture>",
        "<rootDeviceType>ebs</rootDeviceType>",
        "<hypervisor>xen</hypervisor>",
        "<virtualizationType>hvm</virtualizationType>",
        "<sourceDestCheck>true</sourceDestCheck>",
        "<networkInterfaceSet><item>",
        "<platformDetails>Linux/UNIX</platformDetails>",
        "<ebsOptimized>false</ebsOptimized>",
    ] {
        assert!(d.contains(element), "{element}: {d}");
    }

    // Each newly mapped filter: what it matches, and a value it does not.
    let year = &launch[..4];
    let cases: Vec<(&str, String, Vec<String>)> = vec![
        ("architecture", "x86_64".into(), both.clone()),
        ("architecture", "arm64".into(), vec![]),
        ("owner-id", owner.clone(), both.clone()),
        ("private-dns-name", dns.clone(), vec![a.clone()]),
        ("private-dns-name", "ip-*.compute.internal".into(), both.clone()),
        ("source-dest-check", "false".into(), vec![b.clone()]),
        ("source-dest-check", "true".into(), vec![a.clone()]),
        ("network-interface.source-dest-check", "false".into(), vec![b.clone()]),
        ("network-interface.network-interface-id", eni.clone(), vec![a.clone()]),
        ("network-interface.subnet-id", subnet.clone(), both.clone()),
        ("network-interface.vpc-id", vpc.clone(), both.clone()),
        ("network-interface.private-ip-address", ip.clone(), vec![a.clone()]),
        ("network-interface.addresses.private-ip-address", ip.clone(), vec![a.clone()]),
        ("network-interface.addresses.primary", "true".into(), both.clone()),
        ("network-interface.private-dns-name", dns.clone(), vec![a.clone()]),
        ("network-interface.mac-address", mac.clone(), vec![a.clone()]),
        ("network-interface.group-id", sg.clone(), both.clone()),
        ("network-interface.group-name", "default".into(), both.clone()),
        ("network-interface.status", "in-use".into(), both.clone()),
        ("network-interface.owner-id", owner.clone(), both.clone()),
        ("network-interface.attachment.attachment-id", attach.clone(), vec![a.clone()]),
        ("network-interface.attachment.device-index", "0".into(), both.clone()),
        ("network-interface.attachment.status", "attached".into(), both.clone()),
        ("network-interface.attachment.instance-id", a.clone(), vec![a.clone()]),
        ("network-interface.attachment.delete-on-termination", "true".into(), both.clone()),
        ("network-interface.availability-zone", "nubo-1a".into(), both.clone()),
        ("network-interface.association.public-ip", "*".into(), vec![]),
        ("network-interface.ipv6-address", "*".into(), vec![]),
        ("availability-zone-id", "nubo1-az1".into(), both.clone()),
        ("hypervisor", "xen".into(), both.clone()),
        ("virtualization-type", "hvm".into(), both.clone()),
        ("root-device-type", "ebs".into(), both.clone()),
        ("root-device-name", "/dev/sda1".into(), both.clone()),
        ("block-device-mapping.device-name", "/dev/sda1".into(), both.clone()),
        ("block-device-mapping.status", "attached".into(), both.clone()),
        ("block-device-mapping.delete-on-termination", "true".into(), both.clone()),
        ("block-device-mapping.volume-id", "vol-*".into(), vec![]),
        ("launch-time", format!("{year}-*"), both.clone()),
        ("usage-operation", "RunInstances".into(), both.clone()),
        ("platform-details", "Linux/UNIX".into(), both.clone()),
        ("monitoring-state", "disabled".into(), both.clone()),
        ("tenancy", "default".into(), both.clone()),
        ("metadata-options.http-tokens", "required".into(), vec![b.clone()]),
        ("metadata-options.http-endpoint", "enabled".into(), both.clone()),
        ("metadata-options.state", "applied".into(), both.clone()),
        ("ebs-optimized", "false".into(), both.clone()),
        ("private-dns-name-options.hostname-type", "ip-name".into(), both.clone()),
        ("state-reason-code", "*".into(), vec![]),
        ("instance-state-name", "pending".into(), both.clone()),
        // Documented filters of what Nubo has none of: no instance matches.
        ("dns-name", "*".into(), vec![]),
        ("placement-group-name", "*".into(), vec![]),
        ("iam-instance-profile.arn", "*".into(), vec![]),
        ("instance-lifecycle", "*".into(), vec![]),
        ("product-code", "*".into(), vec![]),
        ("spot-instance-request-id", "*".into(), vec![]),
        ("capacity-reservation-id", "*".into(), vec![]),
        ("affinity", "*".into(), vec![]),
        ("kernel-id", "*".into(), vec![]),
    ];
    for (name, value, want) in cases {
        assert_eq!(filtered(&t, &k, &[(name, &value)]).await, want, "{name}={value}");
    }
    // Two filters: both must hold.
    assert_eq!(
        filtered(&t, &k, &[("architecture", "x86_64"), ("source-dest-check", "false")]).await,
        std::slice::from_ref(&b)
    );

    // A stopped instance has its state reason.
    let stopped = filtered(&t, &k, &[("state-reason-code", "Client.UserInitiatedShutdown")]).await;
    assert!(stopped.is_empty());
    ok(&t, &k, &[("Action", "StopInstances"), ("InstanceId.1", &a)]).await;
    let stopped = filtered(&t, &k, &[("state-reason-code", "Client.UserInitiatedShutdown")]).await;
    assert_eq!(stopped, std::slice::from_ref(&a));

    // An undocumented name is refused as EC2 refuses it.
    let e = is_error(
        ec2(&t, &k, &[("Action", "DescribeInstances"), ("Filter.1.Name", "colour"), ("Filter.1.Value.1", "red")]).await,
        StatusCode::BAD_REQUEST,
        "InvalidParameterValue",
    );
    assert!(e.contains("The filter 'colour' is invalid"), "{e}");
}
