//! The stock `aws` CLI and boto3 (from the shared virtualenv,
//! [`aws_venv`]) pointed at one cloud with its admin access key, and
//! nothing from outside: a fresh AWS config, no metadata lookups, the
//! endpoint on 127.0.0.1.

use super::{aws_venv, Cloud};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Instant;

/// The stock CLI pointed at one cloud, with nothing from outside.
pub struct Aws {
    venv: PathBuf,
    home: tempfile::TempDir,
    pub endpoint: String,
    key: String,
    pub secret: String,
    region: String,
}

impl Aws {
    pub fn new(cloud: &Cloud) -> Self {
        let venv = aws_venv();
        let env = std::fs::read_to_string(cloud.data_dir().join("admin.env")).expect("admin.env");
        let get = |k: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("export {k}=")))
                .map(|v| v.trim_matches('\'').to_string())
                .unwrap_or_else(|| panic!("admin.env has no {k}:\n{env}"))
        };
        let home = tempfile::tempdir().expect("tempdir");
        std::fs::write(home.path().join("config"), "[default]\n").expect("config");
        std::fs::write(home.path().join("credentials"), "").expect("credentials");
        Aws {
            venv,
            home,
            endpoint: get("NUBO_URL"),
            key: get("AWS_ACCESS_KEY_ID"),
            secret: get("AWS_SECRET_ACCESS_KEY"),
            region: get("AWS_DEFAULT_REGION"),
        }
    }

    pub fn command(&self, program: &str, secret: &str) -> Command {
        self.command_at(&self.venv.join("bin").join(program), secret)
    }

    /// `program` (of any virtualenv) with this cloud's endpoint and key
    /// in its environment, and nothing of the machine's AWS setup.
    pub fn command_at(&self, program: &std::path::Path, secret: &str) -> Command {
        let mut c = Command::new(program);
        for (k, _) in std::env::vars() {
            if k.starts_with("AWS_") || k.starts_with("BOTO") {
                c.env_remove(k);
            }
        }
        c.env("AWS_ACCESS_KEY_ID", &self.key)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env("AWS_DEFAULT_REGION", &self.region)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", self.home.path().join("config"))
            .env("AWS_SHARED_CREDENTIALS_FILE", self.home.path().join("credentials"))
            .env("AWS_MAX_ATTEMPTS", "2")
            .env("HOME", self.home.path())
            .env("NUBO_EC2_ENDPOINT", &self.endpoint)
            .stdin(Stdio::null());
        c
    }

    /// A boto3 script (python) run against the cloud, after a prelude
    /// that every such script shares: `os`, `time`, `boto3` and
    /// `botocore` imported, `ec2` a client of the cloud's endpoint, and
    /// `code_of(call, **kw)`, the EC2 error code a call must fail with,
    /// and `wait_for(what, seconds, probe)`, polling until `probe()` is
    /// truthy.
    pub fn boto3(&self, script: &str) -> Command {
        const PRELUDE: &str = r#"
import os, time, boto3, botocore
ec2 = boto3.client("ec2", endpoint_url=os.environ["NUBO_EC2_ENDPOINT"])

def code_of(call, **kw):
    try:
        call(**kw)
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"]
    raise AssertionError("no error from %s" % call)

def wait_for(what, seconds, probe):
    end = time.time() + seconds
    while time.time() < end:
        got = probe()
        if got:
            return got
        time.sleep(2)
    raise AssertionError("timed out after %ss waiting for %s" % (seconds, what))
"#;
        let mut c = self.command("python", &self.secret);
        c.arg("-c").arg(format!("{PRELUDE}{script}"));
        c
    }

    /// `aws SERVICE ARGS` against the cloud's endpoint.
    fn run_service(&self, service: &str, secret: &str, args: &[&str]) -> Output {
        self.command("aws", secret)
            .args(["--endpoint-url", &self.endpoint, "--output", "json", service])
            .args(args)
            .output()
            .expect("run aws")
    }

    pub fn run_with(&self, secret: &str, args: &[&str]) -> Output {
        self.run_service("ec2", secret, args)
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with(&self.secret, args)
    }

    /// `aws ec2 ARGS` that must succeed; its JSON (Null for no output).
    pub fn ok(&self, args: &[&str]) -> Value {
        self.service_ok("ec2", args)
    }

    /// `aws SERVICE ARGS` (e.g. `sts get-caller-identity`) that must
    /// succeed; its JSON (Null for no output).
    pub fn service_ok(&self, service: &str, args: &[&str]) -> Value {
        let start = Instant::now();
        let out = self.run_service(service, &self.secret, args);
        assert!(
            out.status.success(),
            "aws {service} {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        eprintln!("aws {service} {} ({:.1} s)", args.first().unwrap_or(&""), start.elapsed().as_secs_f64());
        if out.stdout.iter().all(u8::is_ascii_whitespace) {
            return Value::Null;
        }
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// `aws ec2 ARGS` that must fail the CLI's usual way, with `code` in stderr.
    pub fn fails(&self, out: Output, code: &str) {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            matches!(out.status.code(), Some(254 | 255)),
            "expected the CLI's error exit (254/255), got {}: {stderr}",
            out.status
        );
        assert!(stderr.contains(code), "expected {code} in: {stderr}");
    }
}
