//! Launch templates through the CLI against a real `nubo server` with no
//! host and no VM (nothing here launches): a template made from flags, a
//! version from it with a flag overridden, the default moved, list and
//! show, a group document pointed at the template by `--template`, a
//! launch from a template that is not there, and delete.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::*;

#[test]
fn templates_are_made_versioned_and_used_from_the_cli() {
    let cloud = Cloud::server_only();
    let t = cloud.nubo_json(&[
        "template",
        "create",
        "web",
        "--image",
        "tiny",
        "--type",
        "t3.small",
        "--disk",
        "2",
        "--tag",
        "role=web",
        "--description",
        "first",
    ]);
    let id = t["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("lt-"), "{t}");
    assert_eq!(t["versions"][0]["data"]["tags"]["role"], "web");
    assert_eq!(t["versions"][0]["description"], "first");

    let v = cloud.nubo_json(&["template", "version", "create", "web", "--from", "1", "--type", "t3.medium"]);
    assert_eq!(v["version"], 2);
    assert_eq!(v["data"]["instance_type"], "t3.medium");
    assert_eq!(v["data"]["disk_gib"], 2);
    assert_eq!(v["data"]["image"], "tiny");

    let t = cloud.nubo_json(&["template", "default", "web", "2"]);
    assert_eq!(t["default_version"], 2);
    let t = cloud.nubo_json(&["template", "show", &id]);
    assert_eq!(t["versions"].as_array().unwrap().len(), 2);
    let listed = cloud.nubo_ok(&["template", "list"]);
    assert!(listed.contains("web") && listed.contains(&id), "{listed}");
    let shown = cloud.nubo_ok(&["template", "show", "web"]);
    assert!(shown.contains("2* image tiny, type t3.medium"), "{shown}");

    // A group whose members come from the template's latest version.
    let doc = cloud.data_dir().join("group.yaml");
    std::fs::write(&doc, "name: g\nmin: 0\nmax: 2\ntemplate: {image: tiny, vcpus: 1, memory_mib: 64, disk_gib: 1}\n")
        .unwrap();
    let g = cloud.nubo_json(&["group", "create", "-f", doc.to_str().unwrap(), "--template", "web:$Latest"]);
    assert_eq!(g["launch_template"], "web:$Latest");
    assert_eq!(g["template"]["disk_gib"], 2, "{g}");

    // Launching from a template that is not there says which.
    let out = cloud.nubo(&["instance", "run", "--template", "nope", "--vcpus", "1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope"), "{err}");

    cloud.nubo_ok(&["template", "delete", "web"]);
    assert!(!cloud.nubo(&["template", "show", "web"]).status.success());
}
