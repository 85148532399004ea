//! The agent's side of interactive consoles. For each console session in
//! the desired state it opens two outbound streams to the control plane
//! (nothing listens on the host): a streamed GET that brings the viewer's
//! input, and a streamed POST whose body carries the guest's output. It
//! bridges them to the VM's serial console (a viewer of the console pump,
//! see `nubo_hypervisor::console`) or to its VNC server's unix socket.
//! Either side ending ends the session; a session that leaves the desired
//! state is dropped.

use crate::host::Host;
use futures::StreamExt;
use nubo_api::agent::{DesiredConsoleSession, DesiredState};
use nubo_api::console::ConsoleKind;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::Instrument;

/// The VNC server's socket in a VM's directory (QEMU's `-vnc unix:...`).
const VNC_SOCKET: &str = "vnc.sock";

/// Bytes read from a VNC socket at a time.
const VNC_READ: usize = 64 * 1024;

/// Joins every console session of the desired state, until the desired
/// state's sender is gone.
pub(crate) async fn run(host: Arc<Host>, mut rx: tokio::sync::watch::Receiver<Option<DesiredState>>) {
    let mut joined: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        let sessions: Vec<DesiredConsoleSession> =
            rx.borrow_and_update().as_ref().map(|d| d.console_sessions.clone()).unwrap_or_default();
        // A session that ended here stays in the map (not joined again)
        // until it leaves the desired state.
        joined.retain(|id, task| {
            let wanted = sessions.iter().any(|s| &s.id == id);
            if !wanted {
                task.abort();
            }
            wanted
        });
        for s in sessions {
            if joined.contains_key(&s.id) {
                continue;
            }
            let span = tracing::info_span!("console", session = %s.id, instance = %s.instance_id);
            joined.insert(s.id.clone(), tokio::spawn(join(host.clone(), s).instrument(span)));
        }
        if rx.changed().await.is_err() {
            for task in joined.values() {
                task.abort();
            }
            return;
        }
    }
}

async fn join(host: Arc<Host>, s: DesiredConsoleSession) {
    tracing::info!(kind = ?s.kind, "joining a console session");
    let result = match s.kind {
        ConsoleKind::Serial => serial(&host, &s).await,
        ConsoleKind::Vnc => vnc(&host, &s).await,
    };
    match result {
        Ok(()) => tracing::info!("console session ended"),
        Err(e) => tracing::warn!(error = %e, "console session failed"),
    }
}

/// Ends the session at once: an empty output tells the viewer the console
/// closed (rather than leaving it waiting for a host that never joins).
async fn refuse(host: &Host, s: &DesiredConsoleSession, why: &str) -> anyhow::Result<()> {
    tracing::info!(why, "no console to join");
    host.client.console_output(&host.id, &s.id, reqwest::Body::from(Vec::<u8>::new())).await?;
    Ok(())
}

async fn serial(host: &Host, s: &DesiredConsoleSession) -> anyhow::Result<()> {
    let dir = host.dir(&s.instance_id);
    let hv = host.hypervisor.clone();
    let viewer = tokio::task::spawn_blocking(move || hv.attach_console(&dir)).await?;
    let Some(viewer) = viewer else {
        return refuse(host, s, "the VM runs no serial console here").await;
    };
    let output = futures::stream::unfold(viewer.output, |mut rx| async move {
        rx.recv().await.map(|chunk| (Ok::<Vec<u8>, std::io::Error>(chunk), rx))
    });
    let input = viewer.input;
    let up = host.client.console_output(&host.id, &s.id, reqwest::Body::wrap_stream(output));
    let down = async {
        let mut body = host.client.console_input(&host.id, &s.id).await?.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            let input = input.clone();
            tokio::task::spawn_blocking(move || input.send(&chunk)).await??;
        }
        anyhow::Ok(())
    };
    tokio::select! {
        r = up => r?,
        r = down => r?,
    }
    Ok(())
}

async fn vnc(host: &Host, s: &DesiredConsoleSession) -> anyhow::Result<()> {
    let path = host.dir(&s.instance_id).path().join(VNC_SOCKET);
    let stream = match tokio::net::UnixStream::connect(&path).await {
        Ok(stream) => stream,
        Err(e) => {
            let why = format!("cannot connect to {}: {e} (does the instance have a display?)", path.display());
            return refuse(host, s, &why).await;
        }
    };
    let (read, mut write) = stream.into_split();
    let output = futures::stream::unfold(read, |mut read| async move {
        let mut buf = vec![0u8; VNC_READ];
        match read.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<Vec<u8>, std::io::Error>(buf), read))
            }
            Err(e) => Some((Err(e), read)),
        }
    });
    let up = host.client.console_output(&host.id, &s.id, reqwest::Body::wrap_stream(output));
    let down = async {
        let mut body = host.client.console_input(&host.id, &s.id).await?.bytes_stream();
        while let Some(chunk) = body.next().await {
            write.write_all(&chunk?).await?;
        }
        anyhow::Ok(())
    };
    tokio::select! {
        r = up => r?,
        r = down => r?,
    }
    Ok(())
}
