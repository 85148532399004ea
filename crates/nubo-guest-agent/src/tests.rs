//! Dispatcher tests: JSON lines in, replies out, no VM needed.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};

use crate::commands::{Agent, QgaError};
use crate::protocol::{Session, SENTINEL};
use crate::sysinfo::{parse_mountinfo, parse_os_release, Mount};

fn no_shutdown(mode: &str) -> Result<(), QgaError> {
    if mode == "halt" {
        Err(QgaError::generic("halt is not allowed in tests"))
    } else {
        Ok(())
    }
}

fn session() -> Session {
    Session::new(Agent::new(no_shutdown))
}

/// Sends one request; returns the raw reply bytes.
fn raw(s: &mut Session, request: &str) -> Vec<u8> {
    s.feed(format!("{request}\n").as_bytes())
}

/// Sends one request and parses its single reply line.
fn call(s: &mut Session, request: Value) -> Value {
    let out = raw(s, &request.to_string());
    assert_eq!(out.last(), Some(&b'\n'), "{}", String::from_utf8_lossy(&out));
    let lines: Vec<&[u8]> = out.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 1, "{}", String::from_utf8_lossy(&out));
    serde_json::from_slice(lines[0]).expect("reply is JSON")
}

fn ret(s: &mut Session, command: &str, args: Value) -> Value {
    let reply = call(s, json!({"execute": command, "arguments": args}));
    match reply.get("return") {
        Some(v) => v.clone(),
        None => panic!("{command} failed: {reply}"),
    }
}

fn err(s: &mut Session, command: &str, args: Value) -> (String, String) {
    let reply = call(s, json!({"execute": command, "arguments": args}));
    let e = reply.get("error").unwrap_or_else(|| panic!("{command} should fail: {reply}"));
    (e["class"].as_str().unwrap_or_default().into(), e["desc"].as_str().unwrap_or_default().into())
}

#[test]
fn sync_ping_info_and_ids() {
    let mut s = session();
    assert_eq!(ret(&mut s, "guest-sync", json!({"id": 12345})), json!(12345));
    assert_eq!(ret(&mut s, "guest-ping", json!({})), json!({}));
    let reply = call(&mut s, json!({"execute": "guest-ping", "id": "abc"}));
    assert_eq!(reply, json!({"return": {}, "id": "abc"}));

    let info = ret(&mut s, "guest-info", json!({}));
    assert!(info["version"].as_str().is_some());
    let cmds = info["supported_commands"].as_array().expect("list");
    let find = |n: &str| cmds.iter().find(|c| c["name"] == n).cloned();
    assert_eq!(find("guest-exec"), Some(json!({"name": "guest-exec", "enabled": true, "success-response": true})));
    assert_eq!(find("guest-shutdown").map(|c| c["success-response"].clone()), Some(json!(false)));
}

#[test]
fn sync_delimited_sends_sentinel_and_resets_parser() {
    let mut s = session();
    // Garbage from a vanished client, then the sentinel, then the sync.
    let mut input = b"{\"execute\": \"guest-pi".to_vec();
    input.push(SENTINEL);
    input.extend_from_slice(b"{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":77}}\n");
    let out = s.feed(&input);
    assert_eq!(out[0], SENTINEL);
    let v: Value = serde_json::from_slice(&out[1..]).expect("JSON after sentinel");
    assert_eq!(v, json!({"return": 77}));
}

#[test]
fn partial_and_batched_requests() {
    let mut s = session();
    assert!(s.feed(b"{\"execute\":").is_empty());
    let out = s.feed(b"\"guest-ping\"}{\"execute\":\"guest-sync\",\"arguments\":{\"id\":1}}\n");
    let text = String::from_utf8(out).expect("utf8");
    assert_eq!(text, "{\"return\":{}}\n{\"return\":1}\n");
    // A host disconnect drops a partial request.
    assert!(s.feed(b"{\"execute\":\"guest-").is_empty());
    s.reset();
    assert_eq!(String::from_utf8(s.feed(b"{\"execute\":\"guest-ping\"}")).expect("utf8"), "{\"return\":{}}\n");
}

#[test]
fn errors_have_qga_shape() {
    let mut s = session();
    let (class, desc) = err(&mut s, "guest-frobnicate", json!({}));
    assert_eq!(class, "CommandNotFound");
    assert!(desc.contains("guest-frobnicate"), "{desc}");
    assert_eq!(err(&mut s, "guest-sync", json!({})), ("GenericError".into(), "Parameter 'id' missing".into()));
    assert_eq!(
        err(&mut s, "guest-ping", json!({"x": 1})),
        ("GenericError".into(), "Parameter 'x' is unexpected".into())
    );
    let (class, _) = err(&mut s, "guest-exec-status", json!({"pid": "one"}));
    assert_eq!(class, "GenericError");
    let reply: Value = serde_json::from_slice(&raw(&mut s, "{not json")).expect("JSON");
    assert_eq!(reply["error"]["class"], "GenericError");
    assert!(reply["error"]["desc"].as_str().unwrap_or_default().contains("JSON parse error"));
    // The parser recovers on the next line.
    assert_eq!(ret(&mut s, "guest-ping", json!({})), json!({}));
    let reply = call(&mut s, json!({"arguments": {}}));
    assert_eq!(reply["error"]["desc"], "QMP input lacks member 'execute'");
    let reply = call(&mut s, json!([1, 2]));
    assert_eq!(reply["error"]["class"], "GenericError");
}

/// Polls guest-exec-status until the process has exited.
fn wait_exec(s: &mut Session, pid: &Value) -> Value {
    for _ in 0..500 {
        let st = ret(s, "guest-exec-status", json!({"pid": pid}));
        if st["exited"] == true {
            return st;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("process {pid} did not exit");
}

fn b64(v: &Value) -> Vec<u8> {
    B64.decode(v.as_str().unwrap_or_default()).expect("base64")
}

#[test]
fn exec_captures_output_input_and_status() {
    let mut s = session();
    let pid = ret(
        &mut s,
        "guest-exec",
        json!({"path": "/bin/sh", "arg": ["-c", "cat; echo oops >&2; exit 3"],
               "input-data": B64.encode("hello\n"), "capture-output": true}),
    )["pid"]
        .clone();
    assert!(pid.as_i64().is_some_and(|p| p > 0));
    let st = wait_exec(&mut s, &pid);
    assert_eq!(st["exitcode"], 3);
    assert_eq!(b64(&st["out-data"]), b"hello\n");
    assert_eq!(b64(&st["err-data"]), b"oops\n");
    assert!(st.get("signal").is_none() && st.get("out-truncated").is_none());
    // The status is handed out once, then the pid is forgotten, as in qemu-ga.
    assert_eq!(err(&mut s, "guest-exec-status", json!({"pid": pid})).0, "GenericError");

    let pid = ret(&mut s, "guest-exec", json!({"path": "/bin/sh", "arg": ["-c", "kill -9 $$"]}))["pid"].clone();
    let st = wait_exec(&mut s, &pid);
    assert_eq!(st["signal"], 9);
    assert!(st.get("exitcode").is_none() && st.get("out-data").is_none());

    // env replaces the environment; merged capture mode.
    let pid = ret(
        &mut s,
        "guest-exec",
        json!({"path": "/bin/sh", "arg": ["-c", "echo $FOO; echo e >&2"], "env": ["FOO=bar"], "capture-output": "merged"}),
    )["pid"]
        .clone();
    let st = wait_exec(&mut s, &pid);
    assert_eq!(st["exitcode"], 0);
    assert_eq!(b64(&st["out-data"]), b"bar\ne\n");

    let (class, desc) = err(&mut s, "guest-exec", json!({"path": "/nonexistent/program"}));
    assert_eq!(class, "GenericError");
    assert!(desc.contains("/nonexistent/program"), "{desc}");
}

#[test]
fn file_open_write_seek_read_close() {
    let dir = tempfile_dir();
    let path = dir.join("f.txt");
    let path = path.to_str().expect("utf8 path");
    let mut s = session();
    let h = ret(&mut s, "guest-file-open", json!({"path": path, "mode": "w+"}));
    assert!(h.as_i64().is_some_and(|h| h >= 1000));
    let w = ret(&mut s, "guest-file-write", json!({"handle": h, "buf-b64": B64.encode("hello world")}));
    assert_eq!(w, json!({"count": 11, "eof": false}));
    assert_eq!(ret(&mut s, "guest-file-flush", json!({"handle": h})), json!({}));
    assert_eq!(ret(&mut s, "guest-file-seek", json!({"handle": h, "offset": 6, "whence": "set"}))["position"], 6);
    let r = ret(&mut s, "guest-file-read", json!({"handle": h, "count": 100}));
    assert_eq!(r["count"], 5);
    assert_eq!(r["eof"], true);
    assert_eq!(b64(&r["buf-b64"]), b"world");
    assert_eq!(ret(&mut s, "guest-file-seek", json!({"handle": h, "offset": 0, "whence": 0}))["position"], 0);
    let r = ret(&mut s, "guest-file-read", json!({"handle": h, "count": 5}));
    assert_eq!((r["count"].clone(), r["eof"].clone()), (json!(5), json!(false)));
    assert_eq!(ret(&mut s, "guest-file-close", json!({"handle": h})), json!({}));
    let (class, desc) = err(&mut s, "guest-file-read", json!({"handle": h}));
    assert_eq!(class, "GenericError");
    assert!(desc.contains("not been found"), "{desc}");
    assert_eq!(std::fs::read(path).expect("read back"), b"hello world");
    let (_, desc) = err(&mut s, "guest-file-open", json!({"path": dir.join("missing/x").to_str(), "mode": "r"}));
    assert!(desc.contains("failed to open file"), "{desc}");
    assert!(err(&mut s, "guest-file-open", json!({"path": path, "mode": "q"})).1.contains("mode"));
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("nubo-guest-agent-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn system_facts() {
    let mut s = session();
    let fs = ret(&mut s, "guest-get-fsinfo", json!({}));
    for f in fs.as_array().expect("list") {
        assert!(f["name"].is_string() && f["mountpoint"].is_string() && f["type"].is_string(), "{f}");
        assert_ne!(f["type"], "proc");
        assert_eq!(f["disk"], json!([]));
    }
    let os = ret(&mut s, "guest-get-osinfo", json!({}));
    assert!(os["kernel-release"].is_string() && os["machine"].is_string(), "{os}");
    let nics = ret(&mut s, "guest-network-get-interfaces", json!({}));
    let lo = nics.as_array().and_then(|l| l.iter().find(|n| n["name"] == "lo")).cloned().expect("lo");
    let ips = lo["ip-addresses"].as_array().expect("ips");
    assert!(ips.iter().any(|ip| ip == &json!({"ip-address-type": "ipv4", "ip-address": "127.0.0.1", "prefix": 8})));
}

#[test]
fn shutdown_replies_only_on_error() {
    let mut s = session();
    assert!(raw(&mut s, r#"{"execute":"guest-shutdown"}"#).is_empty());
    assert!(raw(&mut s, r#"{"execute":"guest-shutdown","arguments":{"mode":"reboot"}}"#).is_empty());
    assert_eq!(err(&mut s, "guest-shutdown", json!({"mode": "halt"})).0, "GenericError");
    assert!(err(&mut s, "guest-shutdown", json!({"mode": "explode"})).1.contains("explode"));
}

#[test]
fn parses_mountinfo_and_os_release() {
    let text = "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                23 22 0:21 / /proc rw - proc proc rw\n\
                30 22 254:16 / /run/my\\040seed ro - vfat /dev/vdb ro\n\
                garbage\n";
    let m = parse_mountinfo(text);
    assert_eq!(m.len(), 3);
    assert_eq!(
        m[2],
        Mount {
            major: 254,
            minor: 16,
            mountpoint: "/run/my seed".into(),
            fstype: "vfat".into(),
            source: "/dev/vdb".into()
        }
    );
    let os = parse_os_release("NAME=\"Nubo tiny\"\n# c\nID=nubo-tiny\nPRETTY_NAME='a \\\"b\\\"'\n");
    assert_eq!(os.get("NAME").map(String::as_str), Some("Nubo tiny"));
    assert_eq!(os.get("ID").map(String::as_str), Some("nubo-tiny"));
    assert_eq!(os.get("PRETTY_NAME").map(String::as_str), Some("a \"b\""));
}
