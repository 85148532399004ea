//! Attacks on the `ec2` boundary (see main.rs): what a tenant (or anyone
//! who saw one of a tenant's requests) can do with SigV4 and with the
//! CIDRs of security-group rules.
//!
//! - A request signed by botocore, with its body swapped for another
//!   action (an unsigned `x-amz-content-sha256` naming the old body's hash),
//!   and a signed DeleteKeyPair sent again.
//! - Rule CIDRs that are not plain IPv4 networks (`0.0.0.0/+0`, host bits,
//!   IPv6, ...) through the REST API, the CLI and EC2 as a tenant member.
//! - A host's desired state holding another project's unparseable rule:
//!   the ruleset the agent renders still loads in nftables, with everyone
//!   else's rules.

use crate::common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

/// boto3 makes key pairs `victim` and `temp` and a security group, then
/// botocore signs requests, each captured as it would go on the wire
/// (method, URL, headers, body): `sent`, a DeleteKeyPair of `temp` that
/// was sent and answered (then `temp` is made again); `held`, a
/// DescribeKeyPairs signed but never sent (as if intercepted); `retry`, a
/// CreateTags whose first connection failed, so botocore retried it; and
/// `lost`, a CreateTags whose first attempt reached the server but whose
/// answer was "lost" (the hook sends it itself, then raises a connection
/// error), so botocore retried it.
const CAPTURE: &str = r#"
import hashlib, http.client, json, os, urllib.parse
import boto3
from botocore.config import Config
from botocore.exceptions import ConnectionClosedError

endpoint = os.environ["NUBO_EC2_ENDPOINT"]
ec2 = boto3.client("ec2", endpoint_url=endpoint, config=Config(retries={"max_attempts": 3, "mode": "standard"}))
ec2.create_key_pair(KeyName="victim")
ec2.create_key_pair(KeyName="temp")
group = ec2.create_security_group(GroupName="tagged", Description="tag target")["GroupId"]

def text(v):
    return v.decode() if isinstance(v, bytes) else (v or "")

def capture(request):
    return {"method": request.method, "url": request.url,
            "headers": {k: text(v) for k, v in request.headers.items()}, "body": text(request.body)}

def send(c):
    u = urllib.parse.urlparse(c["url"])
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    conn.request(c["method"], u.path or "/", body=c["body"].encode(), headers=c["headers"])
    r = conn.getresponse()
    r.read()
    return r.status

out = {}
def record(request, **_):
    out["sent"] = capture(request)
ec2.meta.events.register("before-send.ec2.DeleteKeyPair", record)
ec2.delete_key_pair(KeyName="temp")
ec2.meta.events.unregister("before-send.ec2.DeleteKeyPair", record)
# Not the same parameters as the first: an identical CreateKeyPair within
# the same second would be the same signature, refused as a replay.
ec2.create_key_pair(KeyName="temp", DryRun=False)

class Held(Exception):
    pass
def hold(request, **_):
    out["held"] = capture(request)
    raise Held()
ec2.meta.events.register("before-send.ec2.DescribeKeyPairs", hold)
try:
    ec2.describe_key_pairs(KeyNames=["victim"])
    raise SystemExit("the held request was sent")
except Held:
    pass
ec2.meta.events.unregister("before-send.ec2.DescribeKeyPairs", hold)
out["held_body_sha256"] = hashlib.sha256(out["held"]["body"].encode()).hexdigest()

attempts = []
def fail_first_connection(request, **_):
    attempts.append(capture(request))
    if len(attempts) == 1:
        raise ConnectionClosedError(endpoint_url=endpoint)
ec2.meta.events.register("before-send.ec2.CreateTags", fail_first_connection)
answer = ec2.create_tags(Resources=[group], Tags=[{"Key": "try", "Value": "1"}])
ec2.meta.events.unregister("before-send.ec2.CreateTags", fail_first_connection)
out["retry"] = {"attempts": attempts, "retries": answer["ResponseMetadata"]["RetryAttempts"]}

# An answer lost after the server acted: botocore's retry, if signed in
# the same second, is the same signature, and is told it was received.
lost = []
def lose_first_answer(request, **_):
    c = capture(request)
    lost.append(c)
    if len(lost) == 1:
        c["status"] = send(c)
        raise ConnectionClosedError(endpoint_url=endpoint)
ec2.meta.events.register("before-send.ec2.CreateTags", lose_first_answer)
try:
    ec2.create_tags(Resources=[group], Tags=[{"Key": "try", "Value": "2"}])
    error = None
except Exception as e:
    error = str(e)
out["lost"] = {"attempts": lost, "error": error}
print(json.dumps(out))
"#;

/// One HTTP/1.1 request with exactly these headers (Host included, as
/// signed) and body; the status and the body of the answer.
fn send_raw(url: &str, method: &str, headers: &serde_json::Map<String, Value>, body: &str) -> (u16, String) {
    let addr = url.trim_start_matches("http://").split('/').next().expect("host:port").to_string();
    let mut s = std::net::TcpStream::connect(&addr).expect("connect to the server");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut req = format!("{method} / HTTP/1.1\r\n");
    // botocore signs `host` from the URL; urllib3 then sends it as Host.
    if !headers.keys().any(|k| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        if k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("connection") {
            continue;
        }
        req.push_str(&format!("{k}: {}\r\n", v.as_str().expect("header value")));
    }
    req.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).expect("send");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

fn code_of(xml: &str) -> String {
    xml.split("<Code>").nth(1).and_then(|r| r.split("</Code>").next()).unwrap_or("").to_string()
}

fn key_pairs(cloud: &Cloud) -> String {
    cloud.nubo_ok(&["keypair", "list"])
}

#[test]
fn ec2_signed_body_swap_and_replay_are_refused() {
    let cloud = Cloud::server_only();
    let aws = Aws::new(&cloud);
    let out = aws.command("python", &aws.secret).arg("-c").arg(CAPTURE).output().expect("python");
    assert!(
        out.status.success(),
        "the botocore capture failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let cap: Value = serde_json::from_slice(&out.stdout).expect("capture JSON");
    let headers = |c: &Value| c["headers"].as_object().expect("headers").clone();
    let url = cap["sent"]["url"].as_str().expect("url").to_string();
    assert!(key_pairs(&cloud).contains("victim"), "boto3 made the key pair");

    // 1. The body swap: the signed DescribeKeyPairs becomes a DeleteKeyPair,
    // with an unsigned x-amz-content-sha256 that names the signed body.
    let held = &cap["held"];
    let signed_body = held["body"].as_str().expect("body").to_string();
    assert!(signed_body.contains("Action=DescribeKeyPairs"), "{signed_body}");
    let evil = "Action=DeleteKeyPair&KeyName=victim&Version=2016-11-15";
    let mut with_hash = headers(held);
    with_hash.insert("x-amz-content-sha256".into(), cap["held_body_sha256"].clone());
    let (status, body) = send_raw(&url, "POST", &with_hash, evil);
    eprintln!("body swap with x-amz-content-sha256: {status} {body}");
    assert_eq!((status, code_of(&body).as_str()), (401, "AuthFailure"), "the swapped body was accepted: {body}");
    assert!(body.contains("x-amz-content-sha256"), "the refusal says why: {body}");
    assert!(key_pairs(&cloud).contains("victim"), "the key pair was deleted by a swapped body");
    // Without the header the signature (over the real body) does not match.
    let (status, body) = send_raw(&url, "POST", &headers(held), evil);
    assert_eq!((status, code_of(&body).as_str()), (401, "AuthFailure"), "{body}");
    assert!(key_pairs(&cloud).contains("victim"));

    // The held request itself is good (the refusals were about the body).
    // A read may come twice: botocore gives two identical calls within one
    // second the same signature (see ec2/replay.rs).
    for _ in 0..2 {
        let (status, body) = send_raw(&url, "POST", &headers(held), &signed_body);
        assert_eq!(status, 200, "the intact signed request is accepted: {body}");
        assert!(body.contains("victim"), "{body}");
    }

    // 2. The replay of a DeleteKeyPair that boto3 sent and got answered,
    // after `temp` was made again.
    assert!(key_pairs(&cloud).contains("temp"));
    let sent = &cap["sent"];
    let (status, body) = send_raw(&url, "POST", &headers(sent), sent["body"].as_str().expect("body"));
    eprintln!("replay of boto3's DeleteKeyPair: {status} {body}");
    assert_eq!((status, code_of(&body).as_str()), (400, "RequestExpired"), "a replay was accepted: {body}");
    assert!(body.contains("already received"), "the refusal says why: {body}");
    assert!(key_pairs(&cloud).contains("temp"), "the replay deleted the key pair again");

    // 3. botocore's retry after a connection that failed works.
    let retry = &cap["retry"];
    assert_eq!(retry["attempts"].as_array().map(Vec::len), Some(2), "{retry}");
    assert_eq!(retry["retries"], 1);
    // A retry after the server acted and the answer was lost: accepted
    // when botocore signed it in a later second, else told it was received.
    let lost = &cap["lost"];
    let attempts = lost["attempts"].as_array().expect("attempts");
    assert_eq!(attempts[0]["status"], 200, "the first attempt reached the server: {lost}");
    let auth = |a: &Value| a["headers"]["Authorization"].as_str().unwrap_or("").to_string();
    let same = attempts.get(1).is_some_and(|a| auth(a) == auth(&attempts[0]));
    eprintln!("retry after a lost answer: same signature: {same}, error: {}", lost["error"]);
    if same {
        assert!(lost["error"].as_str().unwrap_or("").contains("already received"), "{lost}");
    } else {
        assert!(lost["error"].is_null(), "a retry signed anew was refused: {lost}");
    }

    // 4. The stock CLI, twice in a row (the same command within one second).
    for _ in 0..2 {
        let out = aws.run(&["describe-key-pairs"]);
        assert!(out.status.success(), "aws ec2 describe-key-pairs: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("victim"));
    }
}

/// A member of a project of its own, signed in: (project, token).
fn tenant(cloud: &Cloud, project: &str, user: &str) -> String {
    cloud.nubo_ok(&["project", "create", project]);
    cloud.create_member(project, user, &format!("password-of-{user}"));
    let body = serde_json::json!({"username": user, "password": format!("password-of-{user}")}).to_string();
    let v = cloud.api_post("/api/v1/auth/login", &body);
    v["token"].as_str().unwrap_or_else(|| panic!("no token in {v}")).to_string()
}

/// POST a JSON body with `token`: the status and the answer.
fn post_as(cloud: &Cloud, token: &str, path: &str, body: &Value) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "-X", "POST", "-w", "\n%{http_code}", "-H", "Content-Type: application/json"])
        .arg("-H")
        .arg(format!("Authorization: Bearer {token}"))
        .arg("--data-binary")
        .arg(body.to_string())
        .arg(format!("{}{path}", cloud.url))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn rule_cidrs_are_parsed_at_the_edge() {
    let cloud = Cloud::server_only();
    let token = tenant(&cloud, "tenant-b", "mallory");
    let path = "/api/v1/security-groups/default/rules";
    let rule = |cidr: &str| serde_json::json!({"protocol": "tcp", "from_port": 22, "cidr": cidr});
    for bad in [
        "0.0.0.0/+0",
        "10.0.0.0/+8",
        "10.0.0.0/08",
        "10.0.0.0/-0",
        "10.0.0.5/8",
        "10.0.0.0/33",
        "010.0.0.0/8",
        "10.0.0.0/ 8",
        "10.0.0.0 /8",
        "::/0",
        "2001:db8::/32",
        "0.0.0.0/0 } accept; flush ruleset; add rule inet x y { ip saddr 1.2.3.4/32",
        "",
    ] {
        let (status, body) = post_as(&cloud, &token, path, &rule(bad));
        assert_eq!(status, 400, "the rule cidr {bad:?} was not refused: {body}");
        assert!(
            body.contains("10.20.0.0/24") || body.contains("write the network 10.0.0.0/8"),
            "{bad:?}: the error names the form: {body}"
        );
    }
    // Defined normalisations: surrounding blanks go, an address is its /32.
    let (status, body) = post_as(&cloud, &token, path, &rule(" 10.1.0.0/16\n"));
    assert_eq!(status, 201, "{body}");
    let (status, body) = post_as(&cloud, &token, path, &rule("192.0.2.7"));
    assert_eq!(status, 201, "{body}");
    let group: Value = serde_json::from_str(&body).expect("group JSON");
    let cidrs: Vec<&str> =
        group["rules"].as_array().expect("rules").iter().filter_map(|r| r["cidr"].as_str()).collect();
    assert!(cidrs.contains(&"10.1.0.0/16") && cidrs.contains(&"192.0.2.7/32"), "stored canonical: {cidrs:?}");
    assert!(!cidrs.iter().any(|c| c.contains('+') || c.contains(' ')), "{cidrs:?}");

    // The CLI refuses before sending, with the same words.
    let out = Command::new(nubo_bin())
        .args(["security-group", "allow", "default", "--port", "22", "--cidr", "0.0.0.0/+0"])
        .env("NUBO_URL", &cloud.url)
        .env("NUBO_TOKEN", &token)
        .output()
        .expect("nubo");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("10.20.0.0/24"), "the CLI took 0.0.0.0/+0: {err}");
}

/// A network namespace of this test's own, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("nubo-sec-{tag}-{}", std::process::id());
        let st = Command::new("ip").args(["netns", "add", &name]).status().expect("run ip netns add");
        assert!(st.success(), "`ip netns add {name}` failed: this test needs root and iproute2");
        Netns(name)
    }

    fn nft(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        let mut c = Command::new("ip")
            .args(["netns", "exec", &self.0, "nft"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run nft (install nftables)");
        let mut input = c.stdin.take().expect("stdin");
        input.write_all(stdin.unwrap_or("").as_bytes()).expect("write to nft");
        drop(input);
        c.wait_with_output().expect("nft")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn another_projects_bad_rule_does_not_stop_a_hosts_firewall() {
    use nubo_api::agent::{DesiredNetwork, DesiredPort, FirewallRule};
    let port = |instance: &str, mac: &str, address: &str, sources: &[&str], port: u16| DesiredPort {
        instance_id: instance.parse().expect("instance id"),
        mac: mac.into(),
        address: address.into(),
        ingress: vec![FirewallRule {
            protocol: "tcp".into(),
            from_port: port,
            to_port: port,
            sources: sources.iter().map(|s| s.to_string()).collect(),
        }],
        egress: None,
    };
    // Project A's network, and project B's with a rule stored before CIDRs
    // were parsed (or sent by an older control plane).
    let networks = vec![
        DesiredNetwork {
            id: "net-0000000000000000a".parse().expect("net id"),
            vni: 1000,
            cidr: "10.20.0.0/24".into(),
            gateway: "10.20.0.1".into(),
            peers: vec![],
            external: None,
            floating: vec![],
            ports: vec![port("i-0000000000000000a", "52:54:00:00:00:0a", "10.20.0.2", &["10.20.0.0/24"], 8080)],
            domain: String::new(),
            dns: vec![],
        },
        DesiredNetwork {
            id: "net-0000000000000000b".parse().expect("net id"),
            vni: 1001,
            cidr: "10.30.0.0/24".into(),
            gateway: "10.30.0.1".into(),
            peers: vec![],
            external: None,
            floating: vec![],
            ports: vec![
                port("i-0000000000000000b", "52:54:00:00:00:0b", "10.30.0.2", &["0.0.0.0/+0"], 22),
                port("i-0000000000000000c", "52:54:00:00:00:0c", "10.30.0.3", &["10.30.0.0/24", "10.30.0.0/25"], 80),
            ],
            domain: String::new(),
            dns: vec![],
        },
    ];
    let tap = |instance: &str, _vni: u32| Some(format!("nt{}", &instance[instance.len() - 1..]));
    let ruleset = nubo_agent::network::firewall::render(&networks, &tap);
    let ns = Netns::new("ec2");
    let out = ns.nft(&["-f", "-"], Some(&ruleset));
    assert!(
        out.status.success(),
        "nft refused the host's ruleset, so no rule of any project changes on this host: {}\n{ruleset}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = ns.nft(&["list", "table", "inet", "nubo"], None);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains("chain port_nta"), "{listed}");
    assert!(listed.contains("ip saddr 10.20.0.0/24 tcp dport 8080 accept"), "project A's rule is in force: {listed}");
    // Overlapping sources of one rule are merged, not refused by nft.
    assert!(listed.contains("ip saddr 10.30.0.0/24 tcp dport 80 accept"), "{listed}");
    // The bad rule allows nothing: B's port keeps its default drop.
    let b = listed.split("chain port_ntb").nth(1).expect("B's chain").split('}').next().unwrap_or("");
    assert!(!b.contains("dport 22"), "the unparseable rule let something in: {b}");
}
