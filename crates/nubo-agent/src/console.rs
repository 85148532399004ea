//! Serial console handling: ships each VM's console log to the control
//! plane in order (resuming at the offset the server has), and watches a
//! freshly started VM's log for the boot-complete line to time the boot.
//! The log itself is written and capped on disk by the hypervisor crate's
//! console pump (`nubo_hypervisor::console`): output older than the cap is
//! a hole in the file, which both readers here skip.

use nubo_api::agent::ConsoleChunk;
use nubo_api::ids::{HostId, InstanceId};
use nubo_client::Client;
use std::path::Path;
use std::time::{Duration, Instant};

/// Largest chunk sent in one request.
const MAX_CHUNK: u64 = 64 * 1024;

/// Up to `MAX_CHUNK` bytes of `path` from `offset`, or from the oldest byte
/// still kept when the pump trimmed that part away; returns where they start.
fn read_from(path: &Path, offset: u64) -> std::io::Result<(u64, Vec<u8>)> {
    nubo_hypervisor::console::read_console(path, offset, MAX_CHUNK)
}

/// Sends what is new in the log; returns the offset to continue from.
/// `offset` None means "ask the server where it is".
pub async fn ship(
    client: &Client,
    host: &HostId,
    id: &InstanceId,
    log: &Path,
    offset: Option<u64>,
) -> Result<u64, nubo_client::ClientError> {
    let mut offset = match offset {
        Some(o) => o,
        None => {
            let probe = ConsoleChunk { host_id: host.clone(), offset: 0, raw_len: 0, data: String::new() };
            client.console_chunk(id, &probe).await?.next_offset
        }
    };
    // A log shorter than what the server has means the file was replaced:
    // nothing sensible to resume, so keep the server's offset.
    for _ in 0..16 {
        // A flood trimmed the log past `offset`: what was there is gone on
        // this host too, so continue with the oldest output still kept.
        let (start, bytes) = match read_from(log, offset) {
            Ok((start, b)) if !b.is_empty() => (start, b),
            _ => break,
        };
        let chunk = ConsoleChunk {
            host_id: host.clone(),
            offset: start,
            raw_len: bytes.len() as u64,
            data: String::from_utf8_lossy(&bytes).into_owned(),
        };
        offset = client.console_chunk(id, &chunk).await?.next_offset;
    }
    Ok(offset)
}

/// Waits until `marker` appears in the log after byte `from`; returns when
/// it was seen, or None after `limit`.
pub async fn wait_for_marker(log: &Path, from: u64, marker: &str, limit: Duration) -> Option<Instant> {
    let started = Instant::now();
    let mut offset = from;
    let mut carry: Vec<u8> = Vec::new();
    while started.elapsed() < limit {
        if let Ok((start, bytes)) = read_from(log, offset) {
            if !bytes.is_empty() {
                offset = start + bytes.len() as u64;
                carry.extend_from_slice(&bytes);
                if carry.windows(marker.len()).any(|w| w == marker.as_bytes()) {
                    return Some(Instant::now());
                }
                // Keep just enough to match a marker split across reads.
                let keep = carry.len().saturating_sub(marker.len());
                carry.drain(..keep);
                continue;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn finds_a_marker_written_in_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        std::fs::write(&log, "old NUBO_BOOT_COMPLETE\n").unwrap();
        let from = std::fs::metadata(&log).unwrap().len();
        let log2 = log.clone();
        let writer = tokio::spawn(async move {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(&log2).unwrap();
            f.write_all(b"booting... NUBO_BOOT_").unwrap();
            f.flush().unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            f.write_all(b"COMPLETE instance-id=x\n").unwrap();
        });
        let seen = wait_for_marker(&log, from, "NUBO_BOOT_COMPLETE", Duration::from_secs(5)).await;
        writer.await.unwrap();
        assert!(seen.is_some());
        // The old marker before `from` does not count.
        let end = std::fs::metadata(&log).unwrap().len();
        assert!(wait_for_marker(&log, end, "NUBO_BOOT_COMPLETE", Duration::from_millis(200)).await.is_none());
    }
}
