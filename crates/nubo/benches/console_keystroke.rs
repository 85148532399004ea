//! Console benchmark: the keystroke round trip of the interactive serial
//! console over its websocket, as a user typing feels it.
//!
//! Run: `cargo bench -p nubo --bench console_keystroke`
//!
//! - The `nubo` binary: the one cargo builds for the bench (CARGO_BIN_EXE_nubo),
//!   or $NUBO_BIN. Keystrokes: NUBO_BENCH_RUNS (default 200). Image: the shared
//!   cache `<repo>/.cache/images` (or $NUBO_IMAGE_CACHE). QEMU under `--accel tcg`.
//!
//! It starts `nubo up`, launches one `tiny` instance (whose serial console
//! runs a shell), opens the console websocket as the CLI's `--attach`
//! does, and per keystroke sends one byte (`x`) and times until the
//! shell's echo of it comes back: websocket -> control plane -> the
//! agent's input stream -> the console pump -> QEMU -> the guest's tty,
//! and back through the agent's output stream. Each `x` is then erased
//! (not timed), so the line never grows.
//!
//! Everything it started is killed at the end, also on a panic or Ctrl-C.
//! Without `--bench` (e.g. under `cargo test --benches`) it does nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod support;
use futures::{SinkExt, StreamExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<reqwest::Upgraded>;

/// Reads from `ws` until a binary message contains `byte`.
async fn until(ws: &mut Ws, byte: u8) {
    let read = async {
        while let Some(msg) = ws.next().await {
            if let Message::Binary(b) = msg.expect("the console websocket") {
                if b.contains(&byte) {
                    return;
                }
            }
        }
        panic!("the console closed");
    };
    tokio::time::timeout(Duration::from_secs(30), read).await.expect("an echo within 30 s");
}

fn main() {
    let Some(runs) = bench_runs("console_keystroke") else { return };
    let runs = if std::env::var_os("NUBO_BENCH_RUNS").is_some() { runs } else { 200 };
    let load_before = loadavg();
    ensure_image();
    let cloud = Cloud::up();
    let out = Command::new(nubo_bin())
        .args(["instance", "run", "--name", "bench", "--memory", "192", "--wait"])
        .env("NUBO_URL", &cloud.url)
        .env("NUBO_TOKEN", &cloud.token)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "nubo instance run: {}", String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    wait_until("the boot marker on the console", Duration::from_secs(180), || {
        let c = cloud.get(&format!("/api/v1/instances/{id}/console"));
        c["output"].as_str()?.contains(nubo_api::BOOT_COMPLETE_MARKER).then_some(())
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let times: Vec<f64> = rt.block_on(async {
        let client = nubo_client::Client::new(&cloud.url, &cloud.token).unwrap();
        let upgraded = client.websocket(&format!("/api/v1/instances/{id}/console/ws")).await.unwrap();
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(upgraded, Role::Client, None).await;
        // A fresh prompt first (the shell's echo of Enter is its newline).
        ws.send(Message::Binary(b"\r".to_vec().into())).await.unwrap();
        until(&mut ws, b'#').await;
        // Let the rest of the prompt arrive.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            let t = Instant::now();
            ws.send(Message::Binary(b"x".to_vec().into())).await.unwrap();
            until(&mut ws, b'x').await;
            times.push(t.elapsed().as_secs_f64() * 1e3);
            // Erase it: the shell answers with a backspace.
            ws.send(Message::Binary(vec![0x7f].into())).await.unwrap();
            until(&mut ws, 0x08).await;
        }
        times
    });
    let command = cloud.command.clone();
    drop(cloud);

    let mut sorted = times.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| sorted[((sorted.len() as f64 - 1.0) * p).round() as usize];
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!();
    println!("console keystroke round trip over the websocket, {runs} keystrokes to a tiny guest's shell");
    println!("machine: {threads} CPUs, {}, {}", cpu_model(), qemu_version());
    println!("load:    {load_before} before, {} after (1/5/15-min load average)", loadavg());
    println!("bench:   cargo bench -p nubo --bench console_keystroke   (NUBO_BENCH_RUNS={runs})");
    println!("cloud:   {command}");
    println!();
    println!("{:<28} {:>8} {:>8} {:>8} {:>8}", "round trip (ms)", "min", "p50", "p99", "max");
    println!(
        "{:<28} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
        "keystroke -> echo",
        sorted[0],
        pct(0.50),
        pct(0.99),
        sorted[sorted.len() - 1]
    );
}
