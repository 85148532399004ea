//! Launch templates through the real router on the simulated cloud (no
//! socket, no VM): REST (create, versions from a source with overrides,
//! default version, launching with overrides, pages, delete), the EC2 API
//! (CreateLaunchTemplate ... DeleteLaunchTemplateVersions with EC2's error
//! codes, and RunInstances from a template under the request's own
//! parameters), an instance group launching from a template and following
//! its default version, and tenancy: another project's template is not
//! found, and a reader only reads.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use axum::http::StatusCode;
use base64::Engine;
use common::ec2::*;
use common::T;
use serde_json::{json, Value};

const LT: &str = "/api/v1/launch-templates";

async fn image_id(t: &T, token: &str, name: &str) -> String {
    let images = t.ok("GET", "/api/v1/images", token, None).await;
    images.as_array().unwrap().iter().find(|i| i["name"] == name).unwrap()["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn rest_templates_keep_versions_and_launch_with_overrides() {
    let t = T::new().await;
    t.add_host().await;
    let alice = t.user("alice", "proj-a", "member").await;
    t.ok("POST", "/api/v1/keypairs", &alice, Some(json!({"name": "k1"}))).await;
    let small = t.ctx.config.instance_types.get("t3.small").unwrap().clone();

    let created = t
        .ok(
            "POST",
            LT,
            &alice,
            Some(json!({"name": "web", "description": "first",
                "data": {"image": "tiny", "instance_type": "t3.small", "key_name": "k1", "tags": {"role": "web"}}})),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("lt-") && id.len() == 20, "{created}");
    assert_eq!((created["default_version"].as_u64(), created["latest_version"].as_u64()), (Some(1), Some(1)));
    assert_eq!(created["versions"][0]["description"], "first");
    assert_eq!(created["versions"][0]["default"], true);
    assert_eq!(created["versions"][0]["created_by"], "alice");

    // Refusals say what is wrong.
    for (body, status, says) in [
        (json!({"name": "web", "data": {"image": "tiny"}}), StatusCode::CONFLICT, "already has a launch template"),
        (json!({"name": "a b", "data": {}}), StatusCode::BAD_REQUEST, "is not valid"),
        (json!({"name": "nope", "data": {"image": "no-such"}}), StatusCode::BAD_REQUEST, "image 'no-such'"),
        (
            json!({"name": "both", "data": {"image": "tiny", "instance_type": "t3.small", "vcpus": 2}}),
            StatusCode::BAD_REQUEST,
            "not both",
        ),
        (json!({"name": "typo", "data": {"instance_type": "t9.huge"}}), StatusCode::BAD_REQUEST, "t9.huge"),
        (json!({"name": "nokey", "data": {"key_name": "zz"}}), StatusCode::BAD_REQUEST, "key pair 'zz'"),
    ] {
        let (s, v) = t.call("POST", LT, Some(&alice), Some(body.clone())).await;
        assert_eq!(s, status, "{body}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(says), "{body}: {v}");
    }

    // Version 2 from version 1 with the disk set; version 3 from nothing.
    let v2 = t
        .ok(
            "POST",
            &format!("{LT}/web/versions"),
            &alice,
            Some(json!({"source_version": "1", "data": {"disk_gib": 3}})),
        )
        .await;
    assert_eq!(v2["version"], 2);
    assert_eq!(v2["default"], false);
    assert_eq!(v2["data"]["image"], "tiny");
    assert_eq!(v2["data"]["instance_type"], "t3.small");
    assert_eq!(v2["data"]["disk_gib"], 3);
    let v3 = t
        .ok(
            "POST",
            &format!("{LT}/{id}/versions"),
            &alice,
            Some(json!({"description": "small", "data": {"image": "tiny", "vcpus": 2, "memory_mib": 128}})),
        )
        .await;
    assert_eq!(v3["version"], 3);
    assert!(v3["data"].get("key_name").is_none(), "{v3}");
    let (s, _) = t
        .call("POST", &format!("{LT}/web/versions"), Some(&alice), Some(json!({"source_version": "9", "data": {}})))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let shown = t.ok("GET", &format!("{LT}/web"), &alice, None).await;
    assert_eq!((shown["default_version"].as_u64(), shown["latest_version"].as_u64()), (Some(1), Some(3)));
    let numbers: Vec<u64> =
        shown["versions"].as_array().unwrap().iter().map(|v| v["version"].as_u64().unwrap()).collect();
    assert_eq!(numbers, [3, 2, 1]);

    // Launching from the default version: its type, key and tags.
    let i = t.ok("POST", &format!("{LT}/web/instances"), &alice, Some(json!({}))).await;
    assert_eq!(i["instance_type"], "t3.small");
    assert_eq!(i["vcpus"].as_u64(), Some(u64::from(small.vcpus)));
    assert_eq!(i["memory_mib"].as_u64(), Some(small.memory_mib));
    assert_eq!(i["key_name"], "k1");
    assert_eq!(i["tags"]["role"], "web");
    // From version 2, with its size, name and a tag overridden.
    let i = t
        .ok(
            "POST",
            &format!("{LT}/web:2/instances"),
            &alice,
            Some(json!({"name": "w2", "overrides": {"vcpus": 1, "memory_mib": 64, "tags": {"env": "test", "role": "db"}}})),
        )
        .await;
    assert_eq!((i["vcpus"].as_u64(), i["memory_mib"].as_u64(), i["disk_gib"].as_u64()), (Some(1), Some(64), Some(3)));
    assert_eq!(i["name"], "w2");
    assert_eq!(i["key_name"], "k1");
    assert_eq!((i["tags"]["env"].as_str(), i["tags"]["role"].as_str()), (Some("test"), Some("db")));
    assert_eq!(i["instance_type"], "custom-1-64");
    // `version` in the body names it too.
    let i = t.ok("POST", &format!("{LT}/web/instances"), &alice, Some(json!({"version": "$Latest"}))).await;
    assert_eq!((i["vcpus"].as_u64(), i["memory_mib"].as_u64()), (Some(2), Some(128)));

    // The default version moves; an unknown one is not found.
    let d = t.ok("POST", &format!("{LT}/web/default"), &alice, Some(json!({"version": "3"}))).await;
    assert_eq!(d["default_version"], 3);
    let i = t.ok("POST", &format!("{LT}/web/instances"), &alice, Some(json!({}))).await;
    assert_eq!(i["memory_mib"], 128);
    let (s, _) = t.call("POST", &format!("{LT}/web/default"), Some(&alice), Some(json!({"version": "7"}))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = t.call("POST", &format!("{LT}/web/default"), Some(&alice), Some(json!({"version": "x"}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let d = t.ok("POST", &format!("{LT}/web/default"), &alice, Some(json!({"version": "$Latest"}))).await;
    assert_eq!(d["default_version"], 3);

    // Lists page by creation order.
    for n in ["a-1", "a-2", "a-3"] {
        t.ok("POST", LT, &alice, Some(json!({"name": n, "data": {"image": "tiny"}}))).await;
    }
    let (s, first, next) = t.get_page(&format!("{LT}?limit=3"), &alice).await;
    assert_eq!(s, StatusCode::OK);
    let names: Vec<&str> = first.as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["web", "a-1", "a-2"]);
    let (_, rest, last) = t.get_page(&format!("{LT}?limit=3&page_token={}", next.unwrap()), &alice).await;
    assert_eq!(rest.as_array().unwrap().len(), 1);
    assert!(last.is_none());
    assert!(first[0]["versions"].as_array().unwrap().is_empty(), "lists leave versions out");

    // Deleted: gone, and launching from it says so.
    let (s, _) = t.call("DELETE", &format!("{LT}/web"), Some(&alice), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = t.call("GET", &format!("{LT}/{id}"), Some(&alice), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = t.call("POST", &format!("{LT}/web/instances"), Some(&alice), Some(json!({}))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // A template without an image needs one at launch.
    let (s, v) = t.call("POST", LT, Some(&alice), Some(json!({"name": "bare", "data": {"vcpus": 1}}))).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = t.call("POST", &format!("{LT}/bare/instances"), Some(&alice), Some(json!({}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"]["message"].as_str().unwrap().contains("names no image"), "{v}");
    let i = t.ok("POST", &format!("{LT}/bare/instances"), &alice, Some(json!({"overrides": {"image": "tiny"}}))).await;
    assert_eq!(i["image"], "tiny");
}

#[tokio::test]
async fn ec2_launch_templates_answer_as_ec2_and_run_instances_from_them() {
    let t = T::new().await;
    t.add_host().await;
    let alice = t.user("alice", "proj-a", "member").await;
    let k = key(&t, &alice).await;
    t.ok("POST", "/api/v1/keypairs", &alice, Some(json!({"name": "k1"}))).await;
    let sg = t.ok("POST", "/api/v1/security-groups", &alice, Some(json!({"name": "web"}))).await;
    let sg = sg["id"].as_str().unwrap().to_string();
    let ami = image_id(&t, &alice, "tiny").await;
    let script = base64::engine::general_purpose::STANDARD.encode("#!/bin/sh\necho hi\n");

    let xml = ok(
        &t,
        &k,
        &[
            ("Action", "CreateLaunchTemplate"),
            ("LaunchTemplateName", "web"),
            ("VersionDescription", "first"),
            ("LaunchTemplateData.ImageId", &ami),
            ("LaunchTemplateData.InstanceType", "t3.micro"),
            ("LaunchTemplateData.KeyName", "k1"),
            ("LaunchTemplateData.SecurityGroupId.1", &sg),
            ("LaunchTemplateData.UserData", &script),
            ("LaunchTemplateData.TagSpecification.1.ResourceType", "instance"),
            ("LaunchTemplateData.TagSpecification.1.Tag.1.Key", "Name"),
            ("LaunchTemplateData.TagSpecification.1.Tag.1.Value", "web"),
            ("LaunchTemplateData.BlockDeviceMapping.1.DeviceName", "/dev/xvda"),
            ("LaunchTemplateData.BlockDeviceMapping.1.Ebs.VolumeSize", "4"),
            ("LaunchTemplateData.MetadataOptions.HttpTokens", "required"),
            ("TagSpecification.1.ResourceType", "launch-template"),
            ("TagSpecification.1.Tag.1.Key", "env"),
            ("TagSpecification.1.Tag.1.Value", "prod"),
        ],
    )
    .await;
    assert!(xml.contains("<launchTemplate><launchTemplateId>lt-"), "{xml}");
    let id = one(&xml, "launchTemplateId");
    assert_eq!(one(&xml, "defaultVersionNumber"), "1");
    assert_eq!(one(&xml, "latestVersionNumber"), "1");
    assert!(one(&xml, "createdBy").ends_with(":user/alice"), "{xml}");
    assert!(xml.contains("<tagSet><item><key>env</key><value>prod</value></item></tagSet>"), "{xml}");

    // EC2's error codes.
    let create_web = [("Action", "CreateLaunchTemplate"), ("LaunchTemplateName", "web")];
    is_error(
        ec2(&t, &k, &create_web).await,
        StatusCode::BAD_REQUEST,
        "InvalidLaunchTemplateName.AlreadyExistsException",
    );
    is_error(
        ec2(&t, &k, &[("Action", "CreateLaunchTemplate"), ("LaunchTemplateName", "a b")]).await,
        StatusCode::BAD_REQUEST,
        "InvalidLaunchTemplateName.MalformedException",
    );
    is_error(ec2(&t, &k, &[("Action", "CreateLaunchTemplate")]).await, StatusCode::BAD_REQUEST, "MissingParameter");
    is_error(
        ec2(&t, &k, &[("Action", "DescribeLaunchTemplates"), ("LaunchTemplateName.1", "nope")]).await,
        StatusCode::BAD_REQUEST,
        "InvalidLaunchTemplateName.NotFoundException",
    );
    is_error(
        ec2(&t, &k, &[("Action", "DescribeLaunchTemplates"), ("LaunchTemplateId.1", "lt-zzz")]).await,
        StatusCode::BAD_REQUEST,
        "InvalidLaunchTemplateId.Malformed",
    );
    is_error(
        ec2(&t, &k, &[("Action", "DeleteLaunchTemplate"), ("LaunchTemplateId", "lt-00000000000000000")]).await,
        StatusCode::BAD_REQUEST,
        "InvalidLaunchTemplateId.NotFound",
    );
    is_error(ec2(&t, &k, &[("Action", "DeleteLaunchTemplate")]).await, StatusCode::BAD_REQUEST, "MissingParameter");
    is_error(
        ec2(&t, &k, &[("Action", "DeleteLaunchTemplate"), ("LaunchTemplateId", &id), ("LaunchTemplateName", "web")])
            .await,
        StatusCode::BAD_REQUEST,
        "InvalidParameterCombination",
    );

    // Describe: by name, by id, by filters.
    let xml = ok(&t, &k, &[("Action", "DescribeLaunchTemplates"), ("LaunchTemplateName.1", "web")]).await;
    assert_eq!(all(&xml, "launchTemplateId"), [id.as_str()]);
    assert!(xml.contains("<launchTemplates><item>"), "{xml}");
    for (name, value, hits) in [
        ("tag:env", "prod", 1),
        ("tag:env", "dev", 0),
        ("launch-template-name", "w*", 1),
        ("launch-template-name", "x*", 0),
    ] {
        let xml =
            ok(&t, &k, &[("Action", "DescribeLaunchTemplates"), ("Filter.1.Name", name), ("Filter.1.Value.1", value)])
                .await;
        assert_eq!(all(&xml, "launchTemplateId").len(), hits, "{name}={value}: {xml}");
    }

    // A version from version 1 with another type; a source that is not there.
    let xml = ok(
        &t,
        &k,
        &[
            ("Action", "CreateLaunchTemplateVersion"),
            ("LaunchTemplateName", "web"),
            ("SourceVersion", "1"),
            ("VersionDescription", "bigger"),
            ("LaunchTemplateData.InstanceType", "t3.small"),
        ],
    )
    .await;
    assert!(xml.contains("<launchTemplateVersion><launchTemplateId>"), "{xml}");
    assert_eq!(one(&xml, "versionNumber"), "2");
    assert_eq!(one(&xml, "defaultVersion"), "false");
    assert_eq!(one(&xml, "instanceType"), "t3.small");
    assert_eq!(one(&xml, "imageId"), ami);
    assert_eq!(one(&xml, "keyName"), "k1");
    assert_eq!(one(&xml, "volumeSize"), "4");
    assert_eq!(one(&xml, "httpTokens"), "required");
    assert_eq!(one(&xml, "userData"), script);
    assert!(xml.contains(&format!("<securityGroupIdSet><item>{sg}</item></securityGroupIdSet>")), "{xml}");
    assert!(xml.contains("<tagSpecificationSet><item><resourceType>instance</resourceType><tagSet>"), "{xml}");
    is_error(
        ec2(&t, &k, &[("Action", "CreateLaunchTemplateVersion"), ("LaunchTemplateId", &id), ("SourceVersion", "9")])
            .await,
        StatusCode::BAD_REQUEST,
        "InvalidLaunchTemplateId.VersionNotFound",
    );

    // DescribeLaunchTemplateVersions: $Latest, $Default, bounds, pages.
    let versions = |extra: Vec<(&'static str, &'static str)>| {
        let mut p = vec![("Action", "DescribeLaunchTemplateVersions"), ("LaunchTemplateName", "web")];
        p.extend(extra);
        p
    };
    let xml = ok(&t, &k, &versions(vec![("LaunchTemplateVersion.1", "$Latest")])).await;
    assert_eq!(all(&xml, "versionNumber"), ["2"]);
    assert!(xml.contains("<launchTemplateVersionSet><item>"), "{xml}");
    let xml = ok(&t, &k, &versions(vec![("LaunchTemplateVersion.1", "$Default")])).await;
    assert_eq!(all(&xml, "versionNumber"), ["1"]);
    let xml = ok(&t, &k, &versions(vec![("MinVersion", "2")])).await;
    assert_eq!(all(&xml, "versionNumber"), ["2"]);
    let xml = ok(&t, &k, &versions(vec![("Filter.1.Name", "is-default-version"), ("Filter.1.Value.1", "true")])).await;
    assert_eq!(all(&xml, "versionNumber"), ["1"]);
    let xml = ok(&t, &k, &versions(vec![("MaxResults", "1")])).await;
    assert_eq!(all(&xml, "versionNumber"), ["1"]);
    let next = one(&xml, "nextToken");
    let mut p = versions(vec![("MaxResults", "1")]);
    p.push(("NextToken", &next));
    let xml = ok(&t, &k, &p).await;
    assert_eq!(all(&xml, "versionNumber"), ["2"]);
    assert!(all(&xml, "nextToken").is_empty());
    is_error(
        ec2(&t, &k, &versions(vec![("LaunchTemplateVersion.1", "5")])).await,
        StatusCode::BAD_REQUEST,
        "InvalidLaunchTemplateId.VersionNotFound",
    );

    // RunInstances from the default version (1): everything from the template.
    let xml = ok(&t, &k, &[("Action", "RunInstances"), ("LaunchTemplate.LaunchTemplateName", "web")]).await;
    assert_eq!(one(&xml, "instanceType"), "t3.micro");
    assert_eq!(one(&xml, "keyName"), "k1");
    assert_eq!(one(&xml, "imageId"), ami);
    let i = one(&xml, "instanceId");
    let view = t.ok("GET", &format!("/api/v1/instances/{i}"), &alice, None).await;
    assert_eq!(view["disk_gib"], 4);
    assert_eq!(view["metadata_http_tokens"], "required");
    assert_eq!(view["tags"]["Name"], "web");
    assert_eq!(all(&xml, "groupId"), [sg.as_str()], "{xml}");

    // The default moves to 2; the request's own parameters win over the template's.
    let xml =
        ok(&t, &k, &[("Action", "ModifyLaunchTemplate"), ("LaunchTemplateId", &id), ("SetDefaultVersion", "2")]).await;
    assert_eq!(one(&xml, "defaultVersionNumber"), "2");
    is_error(
        ec2(&t, &k, &[("Action", "ModifyLaunchTemplate"), ("LaunchTemplateName", "web"), ("SetDefaultVersion", "7")])
            .await,
        StatusCode::BAD_REQUEST,
        "InvalidLaunchTemplateId.VersionNotFound",
    );
    let xml = ok(&t, &k, &[("Action", "RunInstances"), ("LaunchTemplate.LaunchTemplateId", &id)]).await;
    assert_eq!(one(&xml, "instanceType"), "t3.small");
    let xml = ok(
        &t,
        &k,
        &[
            ("Action", "RunInstances"),
            ("LaunchTemplate.LaunchTemplateId", &id),
            ("LaunchTemplate.Version", "1"),
            ("InstanceType", "t3.medium"),
            ("TagSpecification.1.ResourceType", "instance"),
            ("TagSpecification.1.Tag.1.Key", "Name"),
            ("TagSpecification.1.Tag.1.Value", "other"),
            ("TagSpecification.1.Tag.2.Key", "extra"),
            ("TagSpecification.1.Tag.2.Value", "yes"),
        ],
    )
    .await;
    assert_eq!(one(&xml, "instanceType"), "t3.medium");
    let view = t.ok("GET", &format!("/api/v1/instances/{}", one(&xml, "instanceId")), &alice, None).await;
    assert_eq!((view["tags"]["Name"].as_str(), view["tags"]["extra"].as_str()), (Some("other"), Some("yes")));
    is_error(
        ec2(&t, &k, &[("Action", "RunInstances"), ("LaunchTemplate.LaunchTemplateName", "nope")]).await,
        StatusCode::BAD_REQUEST,
        "InvalidLaunchTemplateName.NotFoundException",
    );
    is_error(
        ec2(
            &t,
            &k,
            &[
                ("Action", "RunInstances"),
                ("LaunchTemplate.LaunchTemplateName", "web"),
                ("LaunchTemplate.Version", "8"),
            ],
        )
        .await,
        StatusCode::BAD_REQUEST,
        "InvalidLaunchTemplateId.VersionNotFound",
    );

    // DeleteLaunchTemplateVersions: each version's outcome; never the default.
    let xml = ok(
        &t,
        &k,
        &[
            ("Action", "DeleteLaunchTemplateVersions"),
            ("LaunchTemplateName", "web"),
            ("LaunchTemplateVersion.1", "1"),
            ("LaunchTemplateVersion.2", "2"),
            ("LaunchTemplateVersion.3", "5"),
        ],
    )
    .await;
    let (done, failed) = xml.split_once("<unsuccessfullyDeletedLaunchTemplateVersionSet>").unwrap();
    assert_eq!(all(done, "versionNumber"), ["1"]);
    assert_eq!(all(failed, "versionNumber"), ["2", "5"]);
    assert_eq!(all(failed, "code"), ["unexpectedError", "launchTemplateVersionDoesNotExist"]);

    // DeleteLaunchTemplate answers the template; then it is not found.
    let xml = ok(&t, &k, &[("Action", "DeleteLaunchTemplate"), ("LaunchTemplateName", "web")]).await;
    assert!(xml.contains("<launchTemplate><launchTemplateId>"), "{xml}");
    assert_eq!(one(&xml, "launchTemplateId"), id);
    is_error(
        ec2(&t, &k, &[("Action", "DescribeLaunchTemplates"), ("LaunchTemplateId.1", &id)]).await,
        StatusCode::BAD_REQUEST,
        "InvalidLaunchTemplateId.NotFound",
    );
    let xml = ok(&t, &k, &[("Action", "DescribeLaunchTemplates")]).await;
    assert!(all(&xml, "launchTemplateId").is_empty(), "{xml}");
}

#[tokio::test]
async fn another_projects_template_is_not_found_and_a_reader_only_reads() {
    let t = T::new().await;
    t.add_host().await;
    let alice = t.user("alice", "proj-a", "member").await;
    let bob = t.user("bob", "proj-b", "member").await;
    let rita = t.user("rita", "proj-a", "reader").await;
    let created = t.ok("POST", LT, &alice, Some(json!({"name": "web", "data": {"image": "tiny"}}))).await;
    let id = created["id"].as_str().unwrap().to_string();

    // Bob (another project): by name or by id, the template is not there.
    for name in ["web", id.as_str()] {
        for (method, path, body) in [
            ("GET", format!("{LT}/{name}"), None),
            ("DELETE", format!("{LT}/{name}"), None),
            ("POST", format!("{LT}/{name}/versions"), Some(json!({"data": {}}))),
            ("POST", format!("{LT}/{name}/default"), Some(json!({"version": "1"}))),
            ("POST", format!("{LT}/{name}/instances"), Some(json!({}))),
        ] {
            let (s, v) = t.call(method, &path, Some(&bob), body).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{method} {path}: {v}");
        }
    }
    assert_eq!(t.ok("GET", LT, &bob, None).await, json!([]));
    // Nor can his group launch from it.
    let (s, v) = t
        .call(
            "POST",
            "/api/v1/groups",
            Some(&bob),
            Some(json!({"name": "g", "min": 0, "max": 1, "launch_template": id})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let kb = key(&t, &bob).await;
    for params in [
        vec![("Action", "DescribeLaunchTemplates"), ("LaunchTemplateId.1", id.as_str())],
        vec![("Action", "DeleteLaunchTemplate"), ("LaunchTemplateId", id.as_str())],
        vec![("Action", "DescribeLaunchTemplateVersions"), ("LaunchTemplateId", id.as_str())],
        vec![("Action", "ModifyLaunchTemplate"), ("LaunchTemplateId", id.as_str()), ("SetDefaultVersion", "1")],
        vec![("Action", "RunInstances"), ("LaunchTemplate.LaunchTemplateId", id.as_str())],
    ] {
        is_error(ec2(&t, &kb, &params).await, StatusCode::BAD_REQUEST, "InvalidLaunchTemplateId.NotFound");
    }
    is_error(
        ec2(&t, &kb, &[("Action", "DescribeLaunchTemplates"), ("LaunchTemplateName.1", "web")]).await,
        StatusCode::BAD_REQUEST,
        "InvalidLaunchTemplateName.NotFoundException",
    );
    let xml = ok(&t, &kb, &[("Action", "DescribeLaunchTemplates")]).await;
    assert!(all(&xml, "launchTemplateId").is_empty(), "{xml}");

    // Rita (a reader of the project): she sees it, and changes nothing.
    assert_eq!(t.ok("GET", &format!("{LT}/web"), &rita, None).await["id"], id.as_str());
    assert_eq!(t.ok("GET", LT, &rita, None).await.as_array().unwrap().len(), 1);
    for (method, path, body) in [
        ("POST", LT.to_string(), Some(json!({"name": "mine", "data": {}}))),
        ("DELETE", format!("{LT}/web"), None),
        ("POST", format!("{LT}/web/versions"), Some(json!({"data": {}}))),
        ("POST", format!("{LT}/web/default"), Some(json!({"version": "1"}))),
        ("POST", format!("{LT}/web/instances"), Some(json!({}))),
    ] {
        let (s, v) = t.call(method, &path, Some(&rita), body).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{method} {path}: {v}");
    }
    let kr = key(&t, &rita).await;
    let xml = ok(&t, &kr, &[("Action", "DescribeLaunchTemplateVersions"), ("LaunchTemplateName", "web")]).await;
    assert_eq!(all(&xml, "versionNumber"), ["1"]);
    for params in [
        vec![("Action", "CreateLaunchTemplate"), ("LaunchTemplateName", "mine")],
        vec![("Action", "CreateLaunchTemplateVersion"), ("LaunchTemplateName", "web")],
        vec![("Action", "ModifyLaunchTemplate"), ("LaunchTemplateName", "web"), ("SetDefaultVersion", "1")],
        vec![
            ("Action", "DeleteLaunchTemplateVersions"),
            ("LaunchTemplateName", "web"),
            ("LaunchTemplateVersion.1", "1"),
        ],
        vec![("Action", "DeleteLaunchTemplate"), ("LaunchTemplateName", "web")],
        vec![("Action", "RunInstances"), ("LaunchTemplate.LaunchTemplateName", "web")],
    ] {
        is_error(ec2(&t, &kr, &params).await, StatusCode::FORBIDDEN, "UnauthorizedOperation");
    }
    // Still there, unchanged.
    let shown = t.ok("GET", &format!("{LT}/web"), &alice, None).await;
    assert_eq!(shown["versions"].as_array().unwrap().len(), 1);
    assert_eq!(t.ok("GET", "/api/v1/instances", &alice, None).await, json!([]));
}

fn member_ids(g: &Value) -> Vec<String> {
    g["members"].as_array().unwrap().iter().map(|m| m["instance_id"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn a_group_launches_from_a_template_and_follows_its_default_version() {
    let t = T::new().await;
    t.add_host().await;
    let alice = t.user("alice", "proj-a", "member").await;
    t.ok(
        "POST",
        LT,
        &alice,
        Some(json!({"name": "app", "data": {"image": "tiny", "vcpus": 1, "memory_mib": 64, "tags": {"tier": "app"}}})),
    )
    .await;

    // Not both launch parameters and a template; a template that is not there.
    let (s, v) = t
        .call(
            "POST",
            "/api/v1/groups",
            Some(&alice),
            Some(json!({"name": "g", "min": 1, "max": 3, "launch_template": "app",
                "template": {"image": "tiny", "vcpus": 1, "memory_mib": 64, "disk_gib": 1}})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("not both"), "{v}");
    let (s, _) = t
        .call(
            "POST",
            "/api/v1/groups",
            Some(&alice),
            Some(json!({"name": "g", "min": 1, "max": 3, "launch_template": "nope"})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let g = t
        .ok("POST", "/api/v1/groups", &alice, Some(json!({"name": "g", "min": 1, "max": 3, "launch_template": "app"})))
        .await;
    assert_eq!(g["launch_template"], "app");
    assert_eq!(g["template"]["memory_mib"], 64);
    let first = member_ids(&g);
    assert_eq!(first.len(), 1, "{g}");
    let i = t.ok("GET", &format!("/api/v1/instances/{}", first[0]), &alice, None).await;
    assert_eq!((i["memory_mib"].as_u64(), i["name"].as_str()), (Some(64), Some("g-1")));
    assert_eq!((i["tags"]["tier"].as_str(), i["tags"]["nubo:group"].as_str()), (Some("app"), Some("g")));

    // A new default version: the next member is launched from it.
    t.ok(
        "POST",
        &format!("{LT}/app/versions"),
        &alice,
        Some(json!({"source_version": "1", "data": {"memory_mib": 128}})),
    )
    .await;
    t.ok("POST", &format!("{LT}/app/default"), &alice, Some(json!({"version": "2"}))).await;
    let g = t.ok("POST", "/api/v1/groups/g/desired", &alice, Some(json!({"desired": 2}))).await;
    let now = member_ids(&g);
    assert_eq!(now.len(), 2, "{g}");
    let newest = now.iter().find(|m| !first.contains(m)).unwrap();
    let i = t.ok("GET", &format!("/api/v1/instances/{newest}"), &alice, None).await;
    assert_eq!(i["memory_mib"], 128);

    // The template deleted: the group cannot launch, and says why.
    t.ok("DELETE", &format!("{LT}/app"), &alice, None).await;
    let g = t.ok("POST", "/api/v1/groups/g/desired", &alice, Some(json!({"desired": 3}))).await;
    assert_eq!(member_ids(&g).len(), 2, "{g}");
    assert!(
        g["activities"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["kind"] == "launch_failed" && a["detail"].as_str().unwrap().contains("launch template app")),
        "{g}"
    );
    // The old way still works beside it.
    let old = t
        .ok(
            "POST",
            "/api/v1/groups",
            &alice,
            Some(json!({"name": "plain", "min": 1, "max": 1,
                "template": {"image": "tiny", "vcpus": 1, "memory_mib": 64, "disk_gib": 1}})),
        )
        .await;
    assert_eq!(member_ids(&old).len(), 1);
    assert!(old["launch_template"].is_null(), "{old}");
}
