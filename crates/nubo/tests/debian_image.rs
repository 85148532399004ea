//! The `debian` image end to end (slow, so `#[ignore]`d: the runner
//! reports the tests as skipped unless asked for them; needs root and
//! mmdebstrap): `nubo image build debian --packages nginx`
//! into the test image cache, then a VM under `nubo up` whose `#cloud-config`
//! user-data (from the NoCloud seed) writes nginx's index page. The page
//! coming back through the forwarded port proves that cloud-init applied
//! the seed's user-data and network-config and that the baked-in nginx runs.
//! Prints the build time, the time to the boot marker and to the first page.
//!
//! ```sh
//! cargo test -p nubo --test debian_image -- --ignored --nocapture --test-threads 1
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

/// `nubo image build debian ARGS` into the test image cache (a cached
/// build is reused when it fits); its stdout and stderr.
fn build_debian(args: &[&str]) -> (String, String) {
    let out = Command::new(nubo_bin())
        .args(["image", "build", "debian"])
        .args(args)
        .arg("--cache")
        .arg(image_cache())
        .output()
        .expect("run nubo image build");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "image build failed:\n{stderr}");
    (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
}

fn value_after(console: &str, key: &str) -> u64 {
    console
        .lines()
        .find_map(|l| l.split(key).nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no '{key}' on the console:\n{console}"))
}

#[test]
#[ignore = "slow: builds and boots the debian image (minutes, needs root); run with --run-ignored"]
fn debian_image_with_nginx_serves_the_page_cloud_init_wrote() {
    // Build (or reuse a cached debian that already has nginx).
    let started = Instant::now();
    let (stdout, stderr) = build_debian(&["--packages", "nginx"]);
    let build_time = started.elapsed();
    assert!(stdout.contains("extra packages: nginx"), "{stdout}");
    let reused = !stderr.contains("mmdebstrap");
    eprintln!(
        "image build: {:.1} s{}: {}",
        build_time.as_secs_f64(),
        if reused { " (reused the cached image)" } else { "" },
        stdout.trim()
    );

    let cloud = Cloud::up();
    let token = format!("nubo-debian-{}", std::process::id());
    let user_data = format!(
        "#cloud-config\n\
         write_files:\n\
         \x20 - path: /var/www/html/index.html\n\
         \x20   content: |\n\
         \x20     {token}\n\
         runcmd:\n\
         \x20 - echo \"df-root-kb=$(df -k / | awk 'NR==2 {{print $2}}') hostname=$(hostname)\" > /dev/ttyS0\n"
    );
    let ud = cloud.data_dir().join("user-data.yaml");
    std::fs::write(&ud, user_data).expect("write user-data");
    let started = Instant::now();
    let out = cloud.nubo_ok(&[
        "instance",
        "run",
        "--image",
        "debian",
        "--vcpus",
        "2",
        "--memory",
        "1024",
        "--disk",
        "4",
        "--name",
        "deb-web",
        "--port",
        "80",
        "--port",
        "8080",
        "--user-data",
        ud.to_str().expect("utf-8 path"),
    ]);
    let id = out.trim().to_string();
    assert!(id.starts_with("i-"), "run prints the id, got {out}");

    let i = cloud.wait_state(&id, "running", Duration::from_secs(600));
    let addr = i["ports"]["80"].as_str().expect("port 80 forwarded").to_string();
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    let console = cloud.wait_console(&id, nubo_api::BOOT_COMPLETE_MARKER, 1, Duration::from_secs(600));
    let to_marker = started.elapsed();
    assert!(console.contains(&format!("{} instance-id={id}", nubo_api::BOOT_COMPLETE_MARKER)), "{console}");

    let page = wait_until("nginx to serve the page cloud-init wrote", Duration::from_secs(300), || {
        http(&addr, "GET", "/", "").filter(|p| p.contains(&token))
    });
    let to_http = started.elapsed();
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.to_ascii_lowercase().contains("server: nginx"), "{page}");

    // cloud-init grew the root file system to the 4 GiB disk and took the
    // hostname from the seed's meta-data.
    let console = cloud.wait_console(&id, "df-root-kb=", 1, Duration::from_secs(120));
    let df_kb = value_after(&console, "df-root-kb=");
    assert!(df_kb > 3_500_000, "root file system is only {df_kb} KiB");
    assert!(console.contains("hostname=deb-web"), "{console}");

    eprintln!(
        "debian VM: boot marker after {:.1} s, nginx answered after {:.1} s (from `instance run`), root fs {} MiB",
        to_marker.as_secs_f64(),
        to_http.as_secs_f64(),
        df_kb / 1024
    );

    // The stock qemu-guest-agent answers Nubo's agent like tiny's own:
    // exec, the guest's status, and the metadata service read from inside.
    let out = cloud.nubo_ok(&["instance", "exec", &id, "--", "cat", "/etc/os-release"]);
    assert!(out.contains("ID=debian"), "{out}");
    let imds = cloud.nubo_ok(&[
        "instance",
        "exec",
        &id,
        "--",
        "python3",
        "-c",
        "import urllib.request as u; print(u.urlopen('http://169.254.169.254/latest/meta-data/instance-id', timeout=10).read().decode())",
    ]);
    assert_eq!(imds.trim(), id, "IMDS from the debian guest");
    let guest = wait_until("the guest agent's report", Duration::from_secs(120), || {
        let i = cloud.instance(&id);
        let os = i["guest"]["os"].as_str()?.to_string();
        i["guest"]["filesystems"].as_array()?.iter().any(|f| f["mountpoint"] == "/").then_some(os)
    });
    assert!(guest.contains("Debian"), "{guest}");
    // A script recipe runs on the full image too (python3's web server here).
    let out = cloud.nubo_ok(&[
        "instance",
        "provision",
        &id,
        "--recipe",
        "web-server",
        "--param",
        "port=8080",
        "--param",
        "page=recipe-on-debian",
        "--param",
        "root=/var/www/recipe",
    ]);
    assert!(out.contains("serving /var/www/recipe on port 8080"), "{out}");
    let recipe_addr = i["ports"]["8080"].as_str().expect("port 8080 forwarded").to_string();
    let page = wait_until("the recipe's web server", Duration::from_secs(30), || http(&recipe_addr, "GET", "/", ""));
    assert!(page.contains("recipe-on-debian"), "{page}");

    cloud.nubo_ok(&["instance", "terminate", &id, "--wait"]);
    assert!(!cloud.agent_dir().join("instances").join(&id).exists(), "instance files left behind");
}

/// A cloud-config recipe at launch: rendered with its parameters, given to
/// cloud-init as the user-data, and reported by `cloud-init status --wait`
/// through the stock qemu-guest-agent.
#[test]
#[ignore = "slow: builds and boots the debian image (minutes, needs root); run with --run-ignored"]
fn debian_cloud_config_recipe_at_launch() {
    build_debian(&[]);

    let cloud = Cloud::up();
    let recipe = cloud.data_dir().join("greeting.toml");
    std::fs::write(
        &recipe,
        "name = \"greeting\"\nversion = \"1\"\nkind = \"cloud-config\"\nbody = '''\n#cloud-config\nwrite_files:\n  - path: /etc/nubo-greeting\n    content: \"{{greeting}}\"\n'''\n[[params]]\nname = \"greeting\"\n",
    )
    .expect("write recipe");
    cloud.nubo_ok(&["recipe", "create", "-f", recipe.to_str().expect("utf-8 path")]);
    let started = Instant::now();
    let out = cloud.nubo_ok(&[
        "instance",
        "run",
        "--image",
        "debian",
        "--vcpus",
        "2",
        "--memory",
        "1024",
        "--disk",
        "3",
        "--recipe",
        "greeting",
        "--param",
        "greeting=hello-from-cloud-config",
        "--wait",
    ]);
    assert!(out.contains("status: done"), "cloud-init status in the run log: {out}");
    let id = out.lines().last().unwrap_or_default().trim().to_string();
    assert!(id.starts_with("i-"), "{out}");
    let runs = cloud.nubo_json(&["instance", "runs", &id]);
    assert_eq!(runs[0]["state"], "succeeded", "{runs}");
    assert_eq!(runs[0]["what"], "greeting@1");
    let text = cloud.nubo_ok(&["instance", "exec", &id, "--", "cat", "/etc/nubo-greeting"]);
    assert_eq!(text.trim(), "hello-from-cloud-config");
    eprintln!("cloud-config recipe applied and reported after {:.1} s", started.elapsed().as_secs_f64());
    cloud.nubo_ok(&["instance", "terminate", &id, "--wait"]);
}
