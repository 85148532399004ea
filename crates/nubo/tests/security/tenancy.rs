//! Attacks on the `tenancy` boundary (see main.rs): a user whose role in a
//! project is taken away keeps its token (scoped to that project) and its
//! EC2 access key, and tries every list and describe of the REST and EC2
//! APIs against a real `nubo server` and `nubo agent`. Only an operator
//! may take the role away.

use crate::common::*;
use crate::identity::{call, token_of, user};
use serde_json::{json, Value};
use std::process::Command;

/// Signs one EC2 Query request (SigV4, with Python's standard library
/// only, so the test needs no AWS tools) and returns (status, body).
fn ec2(url: &str, key: &str, secret: &str, action: &str) -> (u16, String) {
    const SCRIPT: &str = r#"
import datetime, hashlib, hmac, sys, urllib.error, urllib.request
url, key, secret, action = sys.argv[1:5]
host = url.split("://", 1)[1].rstrip("/")
body = ("Action=%s&Version=2016-11-15" % action).encode()
now = datetime.datetime.now(datetime.timezone.utc)
amz, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
payload = hashlib.sha256(body).hexdigest()
ctype = "application/x-www-form-urlencoded; charset=utf-8"
names = "content-type;host;x-amz-content-sha256;x-amz-date"
canonical = "POST\n/\n\ncontent-type:%s\nhost:%s\nx-amz-content-sha256:%s\nx-amz-date:%s\n\n%s\n%s" % (
    ctype, host, payload, amz, names, payload)
scope = "%s/nubo-1/ec2/aws4_request" % day
to_sign = "AWS4-HMAC-SHA256\n%s\n%s\n%s" % (amz, scope, hashlib.sha256(canonical.encode()).hexdigest())
k = ("AWS4" + secret).encode()
for part in (day, "nubo-1", "ec2", "aws4_request"):
    k = hmac.new(k, part.encode(), hashlib.sha256).digest()
sig = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
req = urllib.request.Request(url + "/", data=body, method="POST", headers={
    "Content-Type": ctype, "X-Amz-Date": amz, "X-Amz-Content-Sha256": payload,
    "Authorization": "AWS4-HMAC-SHA256 Credential=%s/%s, SignedHeaders=%s, Signature=%s" % (key, scope, names, sig)})
try:
    r = urllib.request.urlopen(req, timeout=30)
    print(r.status); print(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code); print(e.read().decode())
"#;
    let out = Command::new("python3")
        .args(["-c", SCRIPT, url, key, secret, action])
        .output()
        .expect("python3 (Debian's python3) signs the EC2 requests");
    assert!(out.status.success(), "the signing script failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, body) = text.split_once('\n').unwrap_or((&text, ""));
    (status.trim().parse().unwrap_or(0), body.to_string())
}

/// The REST listings a project member reads, with a name each.
const LISTS: &[&str] = &[
    "/api/v1/instances",
    "/api/v1/checks",
    "/api/v1/alert-rules",
    "/api/v1/alerts?all=true",
    "/api/v1/events",
    "/api/v1/policies",
    "/api/v1/groups",
    "/api/v1/load-balancers",
    "/api/v1/keypairs",
    "/api/v1/recipes",
    "/api/v1/images",
    "/api/v1/security-groups",
    "/api/v1/volumes",
    "/api/v1/networks",
];

/// The EC2 reads.
const DESCRIBES: &[&str] = &[
    "DescribeInstances",
    "DescribeKeyPairs",
    "DescribeImages",
    "DescribeSecurityGroups",
    "DescribeVolumes",
    "DescribeTags",
];

#[test]
fn tenancy_a_removed_member_reads_nothing_of_the_project() {
    let cloud = Cloud::split();
    let url = cloud.url.clone();
    let r = call(&url, "POST", "/api/v1/projects", Some(&cloud.token), Some(&json!({"name": "pa"})));
    assert_eq!(r.status, 201, "{}", r.body);
    user(&cloud, "leaver", "leaver-password", "pa", "member");
    user(&cloud, "stayer", "stayer-password", "pa", "reader");
    let leaver = token_of(&url, "leaver", "leaver-password");
    let stayer = token_of(&url, "stayer", "stayer-password");

    // The leaver, still a member, makes one of each resource.
    let make = |path: &str, body: Value| -> Value {
        let r = call(&url, "POST", path, Some(&leaver), Some(&body));
        assert!((200..300).contains(&r.status), "POST {path} {body}: {} {}", r.status, r.body);
        r.json()
    };
    let out = Command::new(nubo_bin())
        .args(["instance", "run", "--memory", "128", "--name", "secret-vm", "--port", "80"])
        .env("NUBO_URL", &url)
        .env("NUBO_TOKEN", &leaver)
        .output()
        .expect("nubo instance run");
    assert!(out.status.success(), "instance run: {}", String::from_utf8_lossy(&out.stderr));
    let instance = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let check = make("/api/v1/checks", json!({"name": "secret-check", "target": instance, "kind": "liveness"}));
    make(
        "/api/v1/alert-rules",
        json!({"name": "secret-rule", "kind": "metric", "target": instance, "metric": "cpu_percent", "op": ">",
               "threshold": 99.0}),
    );
    make(
        "/api/v1/alert-rules",
        json!({"name": "secret-check-rule", "kind": "check", "target": instance, "check_id": check["id"]}),
    );
    make(
        "/api/v1/policies",
        json!({"name": "secret-policy", "scope": {"instance": instance},
               "condition": {"metric": "cpu_percent", "op": ">", "threshold": 99}, "actions": ["reboot"]}),
    );
    make(
        "/api/v1/groups",
        json!({"name": "secret-group", "min": 0, "max": 1, "desired": 0,
               "template": {"image": "tiny", "vcpus": 1, "memory_mib": 128, "disk_gib": 1}}),
    );
    make("/api/v1/load-balancers", json!({"name": "secret-lb", "port": 80, "protocol": "tcp", "targets": [instance]}));
    make("/api/v1/keypairs", json!({"name": "secret-key"}));
    make("/api/v1/recipes", json!({"name": "secret-recipe", "version": "1", "body": "echo secret"}));
    make("/api/v1/images", json!({"name": "secret-image", "disk_format": "raw", "size_bytes": 512}));
    make("/api/v1/security-groups", json!({"name": "secret-sg"}));
    let key = make("/api/v1/access-keys", json!({}));
    let (key_id, secret) = (
        key["access_key_id"].as_str().expect("key id").to_string(),
        key["secret_access_key"].as_str().expect("secret").to_string(),
    );
    let mentions_secret = |body: &str| body.contains("secret-") || body.contains(&instance);
    // Before: both see the project's resources.
    for path in LISTS {
        let r = call(&url, "GET", path, Some(&stayer), None);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
    }
    let seen: Vec<&str> =
        LISTS.iter().copied().filter(|p| mentions_secret(&call(&url, "GET", p, Some(&leaver), None).body)).collect();
    assert!(seen.len() >= 10, "the member should see its resources first; saw them in {seen:?}");
    let (status, body) = ec2(&url, &key_id, &secret, "DescribeInstances");
    assert!(status == 200 && body.contains(&instance), "EC2 before: {status} {body}");

    // Only an operator takes a role away: not a member of the project,
    // not a reader, not an anonymous caller; each refusal leaves it as is.
    for (who, token, target, want) in [
        ("the member", Some(leaver.as_str()), "stayer", 403),
        ("the reader", Some(stayer.as_str()), "leaver", 403),
        ("an anonymous caller", None, "leaver", 401),
    ] {
        let r = call(&url, "DELETE", &format!("/api/v1/projects/pa/members/{target}"), token, None);
        assert_eq!(r.status, want, "{who} removing {target}: {}", r.body);
    }
    let r = call(&url, "GET", "/api/v1/instances", Some(&stayer), None);
    assert!(r.status == 200 && mentions_secret(&r.body), "a refused removal changed the reader's role: {}", r.body);

    // The role goes.
    let r = call(&url, "DELETE", "/api/v1/projects/pa/members/leaver", Some(&cloud.token), None);
    assert_eq!(r.status, 200, "remove the member: {}", r.body);

    // After: every REST list shows nothing of the project (or refuses).
    let mut leaks = Vec::new();
    for path in LISTS {
        let r = call(&url, "GET", path, Some(&leaver), None);
        if r.status == 200 && mentions_secret(&r.body) {
            leaks.push(format!("GET {path}: {}", r.body.chars().take(200).collect::<String>()));
        }
    }
    // Reads of one resource, by id or name.
    for path in [
        format!("/api/v1/instances/{instance}"),
        format!("/api/v1/checks/{}", check["id"].as_str().unwrap_or("")),
        "/api/v1/policies/secret-policy".into(),
        "/api/v1/groups/secret-group".into(),
        "/api/v1/load-balancers/secret-lb".into(),
        "/api/v1/recipes/secret-recipe".into(),
        "/api/v1/images/secret-image".into(),
        "/api/v1/security-groups".into(),
    ] {
        let r = call(&url, "GET", &path, Some(&leaver), None);
        if r.status == 200 && mentions_secret(&r.body) {
            leaks.push(format!("GET {path}: {}", r.body.chars().take(200).collect::<String>()));
        }
    }
    for action in DESCRIBES {
        let (status, body) = ec2(&url, &key_id, &secret, action);
        if status == 200 && mentions_secret(&body) {
            leaks.push(format!("EC2 {action}: {}", body.chars().take(200).collect::<String>()));
        }
    }
    assert!(leaks.is_empty(), "a removed member still reads the project:\n{}", leaks.join("\n"));

    // A current member still sees everything.
    let still: Vec<&str> =
        LISTS.iter().copied().filter(|p| mentions_secret(&call(&url, "GET", p, Some(&stayer), None).body)).collect();
    assert_eq!(still, seen, "the remaining member lost sight of some resources");
}
