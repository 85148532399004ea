//! Restoring one disk: a new sparse raw file of the disk's size, with
//! only its non-zero chunks written (zero chunks stay holes), several
//! chunks fetched and opened at once.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use futures::stream::{self, StreamExt};

use crate::write::chunk_len;
use crate::{chunk_key, BackupError, DiskIndex, Progress, Repository, CHUNK_SIZE};

pub(crate) async fn restore(
    repo: &Repository,
    index: &DiskIndex,
    target: &Path,
    progress: Progress<'_>,
) -> Result<u64, BackupError> {
    let path = target.display().to_string();
    let io = |what: &'static str| {
        let path = path.clone();
        move |e| BackupError::Io { what, path, source: e }
    };
    let file =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(target).map_err(io("create"))?;
    file.set_len(index.size).map_err(io("size"))?;
    let file = Arc::new(file);
    let total: u64 = (0..index.chunks.len() as u64)
        .filter(|&i| index.chunks[i as usize].is_some())
        .map(|i| chunk_len(index.size, i))
        .sum();
    let in_flight = std::thread::available_parallelism().map(|n| n.get() * 2).unwrap_or(4).max(4);
    let jobs = stream::iter(index.chunks.iter().enumerate().filter_map(|(i, c)| c.map(|name| (i as u64, name))))
        .map(|(i, name)| {
            let file = file.clone();
            let io = io("write");
            async move {
                let plain = repo.get_chunk(name).await?;
                let len = chunk_len(index.size, i);
                if plain.len() as u64 != len {
                    return Err(repo.corrupt(
                        chunk_key(&name),
                        format!("it holds {} bytes where chunk {i} of the disk has {len}", plain.len()),
                    ));
                }
                tokio::task::spawn_blocking(move || file.write_all_at(&plain, i * CHUNK_SIZE))
                    .await
                    .map_err(|e| BackupError::Invalid(format!("writing chunk {i} failed: {e}")))?
                    .map_err(io)?;
                Ok::<_, BackupError>(len)
            }
        })
        .buffer_unordered(in_flight);
    futures::pin_mut!(jobs);
    let mut done = 0;
    progress(0, total);
    while let Some(r) = jobs.next().await {
        done += r?;
        progress(done, total);
    }
    let f = file.clone();
    tokio::task::spawn_blocking(move || f.sync_all())
        .await
        .map_err(|e| BackupError::Invalid(format!("flushing the restored disk failed: {e}")))?
        .map_err(io("flush"))?;
    Ok(done)
}
