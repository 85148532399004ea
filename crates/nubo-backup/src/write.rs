//! Writing one disk: deciding for each chunk where its content comes from
//! (the copy, zeros, or the parent backup), then naming, deduplicating,
//! sealing and sending the chunks that are new.
//!
//! Chunks sit at fixed offsets (chunk i is bytes i*CHUNK_SIZE..), so the
//! same content at the same place of two disks (two instances made from
//! one image) gets the same name and is stored once. Hashing, compressing
//! and encrypting run on the blocking pool with several chunks in flight,
//! so a first backup uses every core and keeps the store busy.

use std::collections::HashSet;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use futures::stream::{self, StreamExt};

use crate::index::chunk_count;
use crate::{chunk_key, BackupError, CopySource, DiskIndex, Extent, Progress, Repository, WriteStats, CHUNK_SIZE};

/// One stretch of a chunk and where its bytes come from. `at` is relative
/// to the chunk's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Part {
    /// Bytes at `file_offset` of the copy.
    Data { at: u64, len: u64, file_offset: u64 },
    /// Zeros.
    Zero { at: u64, len: u64 },
    /// Not in the (incremental) copy: unchanged since the parent.
    Absent { at: u64, len: u64 },
}

/// Where a whole chunk comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Unchanged: the parent's entry.
    Parent,
    /// All zeros.
    Zero,
    /// Assembled from these parts, in order, covering the chunk.
    Read(Vec<Part>),
}

/// The length of chunk `i` of a disk of `size` bytes (the last may be short).
pub(crate) fn chunk_len(size: u64, i: u64) -> u64 {
    CHUNK_SIZE.min(size.saturating_sub(i * CHUNK_SIZE))
}

/// Classify the chunk `[start, start + len)` against `extents` (sorted by
/// start, not overlapping). In a full copy an extent not present, or a
/// stretch no extent covers, is zeros; in an incremental copy it is
/// unchanged since the parent.
pub(crate) fn classify(extents: &[Extent], start: u64, len: u64, incremental: bool) -> Result<Plan, String> {
    let end = start + len;
    let gap = |at: u64, len: u64| if incremental { Part::Absent { at, len } } else { Part::Zero { at, len } };
    let mut parts = Vec::new();
    let mut cursor = start;
    // The first extent that ends after the chunk's start.
    let first = extents.partition_point(|e| e.start.saturating_add(e.length) <= start);
    for e in &extents[first..] {
        if e.start >= end {
            break;
        }
        if e.length == 0 {
            continue;
        }
        if e.start > cursor {
            parts.push(gap(cursor - start, e.start - cursor));
            cursor = e.start;
        }
        let o_end = end.min(e.start.saturating_add(e.length));
        if o_end <= cursor {
            continue;
        }
        let (at, l) = (cursor - start, o_end - cursor);
        parts.push(if !e.present {
            gap(at, l)
        } else if e.zero || !e.data {
            Part::Zero { at, len: l }
        } else {
            let Some(offset) = e.offset else {
                return Err(format!("the extent at {} holds data but has no offset in the file", e.start));
            };
            Part::Data { at, len: l, file_offset: offset + (cursor - e.start) }
        });
        cursor = o_end;
    }
    if cursor < end {
        parts.push(gap(cursor - start, end - cursor));
    }
    let any_data = parts.iter().any(|p| matches!(p, Part::Data { .. }));
    let any_absent = parts.iter().any(|p| matches!(p, Part::Absent { .. }));
    let all_absent = parts.iter().all(|p| matches!(p, Part::Absent { .. }));
    Ok(if all_absent && incremental {
        Plan::Parent
    } else if !any_data && !any_absent {
        Plan::Zero
    } else {
        Plan::Read(parts)
    })
}

/// What one chunk cost.
#[derive(Default)]
struct ChunkCost {
    read: u64,
    sent: u64,
    stored: u64,
    new: bool,
}

pub(crate) async fn write_disk(
    repo: &Repository,
    source: &CopySource,
    parent: Option<&DiskIndex>,
    progress: Progress<'_>,
) -> Result<(DiskIndex, WriteStats), BackupError> {
    if source.incremental && parent.is_none() {
        return Err(BackupError::Invalid(
            "an incremental copy needs its parent's index: pass the parent backup's index, or take a full copy".into(),
        ));
    }
    let mut extents = source.extents.clone();
    extents.sort_by_key(|e| e.start);
    let path = source.file.display().to_string();
    let file = std::fs::File::open(&source.file).map_err(|e| BackupError::Io {
        what: "open the copy",
        path: path.clone(),
        source: e,
    })?;
    let file = Arc::new(file);
    let count = chunk_count(source.size);
    let seen: Arc<Mutex<HashSet<[u8; 32]>>> = Arc::default();
    let in_flight = crate::in_flight();

    let jobs = stream::iter(0..count)
        .map(|i| {
            let file = file.clone();
            let seen = seen.clone();
            let extents = &extents;
            let path = &path;
            async move {
                let len = chunk_len(source.size, i);
                let parent_entry = parent.and_then(|p| p.chunks.get(i as usize).copied().flatten());
                let plan = classify(extents, i * CHUNK_SIZE, len, source.incremental).map_err(|e| {
                    BackupError::Invalid(format!("the copy's allocation map is unusable: {e}; map the copy again"))
                })?;
                // A parent chunk of another length (the disk was resized to
                // a size that is not a whole number of chunks) is re-read.
                let parent_fits = parent.is_some_and(|p| chunk_len(p.size, i) == len);
                let parts = match plan {
                    Plan::Zero => return Ok((i, None, ChunkCost::default())),
                    Plan::Parent if parent_fits || parent_entry.is_none() => {
                        return Ok((i, parent_entry, ChunkCost::default()))
                    }
                    Plan::Parent => vec![Part::Absent { at: 0, len }],
                    Plan::Read(parts) => parts,
                };
                let base = match parent_entry {
                    Some(name) if parts.iter().any(|p| matches!(p, Part::Absent { .. })) => {
                        Some(repo.get_chunk(name).await?)
                    }
                    _ => None,
                };
                let keys = repo.keys.clone();
                let p = path.clone();
                let (plain, name, read) = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; len as usize];
                    let mut read = 0;
                    for part in &parts {
                        match *part {
                            Part::Data { at, len, file_offset } => {
                                file.read_exact_at(&mut buf[at as usize..(at + len) as usize], file_offset).map_err(
                                    |e| BackupError::Io { what: "read the copy", path: p.clone(), source: e },
                                )?;
                                read += len;
                            }
                            Part::Absent { at, len } => {
                                if let Some(base) = &base {
                                    let from = (at as usize).min(base.len());
                                    let to = ((at + len) as usize).min(base.len());
                                    buf[at as usize..at as usize + (to - from)].copy_from_slice(&base[from..to]);
                                }
                            }
                            Part::Zero { .. } => {}
                        }
                    }
                    if buf.iter().all(|&b| b == 0) {
                        return Ok((buf, None, read));
                    }
                    let name = keys.chunk_name(&buf);
                    Ok::<_, BackupError>((buf, Some(name), read))
                })
                .await
                .map_err(|e| BackupError::Invalid(format!("reading chunk {i} failed: {e}")))??;
                let mut cost = ChunkCost { read, ..Default::default() };
                let Some(name) = name else { return Ok((i, None, cost)) };
                let first_here = seen.lock().map(|mut s| s.insert(name)).unwrap_or(true);
                let key = chunk_key(&name);
                if first_here && !repo.backend.exists(&key).await? {
                    let keys = repo.keys.clone();
                    let k = key.clone();
                    let sealed = tokio::task::spawn_blocking(move || keys.seal(&k, &plain))
                        .await
                        .map_err(|e| BackupError::Invalid(format!("sealing chunk {i} failed: {e}")))?;
                    cost.sent = sealed.len() as u64;
                    cost.stored = cost.sent;
                    cost.new = true;
                    repo.backend.put(&key, sealed).await?;
                }
                Ok::<_, BackupError>((i, Some(name), cost))
            }
        })
        .buffer_unordered(in_flight);
    futures::pin_mut!(jobs);

    let mut chunks = vec![None; count as usize];
    let mut stats = WriteStats { chunks: count, ..Default::default() };
    let mut done = 0;
    progress(0, source.size);
    while let Some(r) = jobs.next().await {
        let (i, name, cost) = r?;
        chunks[i as usize] = name;
        stats.bytes_read += cost.read;
        stats.bytes_sent += cost.sent;
        stats.bytes_stored += cost.stored;
        stats.chunks_new += u64::from(cost.new);
        done += chunk_len(source.size, i);
        progress(done, source.size);
    }
    Ok((DiskIndex { size: source.size, chunks }, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = CHUNK_SIZE;

    fn ext(start: u64, length: u64, present: bool, zero: bool, data: bool, offset: Option<u64>) -> Extent {
        Extent { start, length, present, zero, data, offset }
    }

    #[test]
    fn full_copy() {
        // qemu-img map of a full copy: data, then zeros, then data.
        let extents = vec![
            ext(0, 2 * M, true, false, true, Some(5 * M)),
            ext(2 * M, M, true, true, false, None),
            ext(3 * M, M / 2, true, false, true, Some(9 * M)),
            ext(3 * M + M / 2, M / 2, true, true, false, None),
        ];
        assert_eq!(
            classify(&extents, M, M, false).unwrap(),
            Plan::Read(vec![Part::Data { at: 0, len: M, file_offset: 6 * M }])
        );
        assert_eq!(classify(&extents, 2 * M, M, false).unwrap(), Plan::Zero);
        assert_eq!(
            classify(&extents, 3 * M, M, false).unwrap(),
            Plan::Read(vec![
                Part::Data { at: 0, len: M / 2, file_offset: 9 * M },
                Part::Zero { at: M / 2, len: M / 2 }
            ])
        );
        // Beyond every extent, and not-present extents, are zeros in a full copy.
        assert_eq!(classify(&extents, 7 * M, M, false).unwrap(), Plan::Zero);
        let absent = vec![ext(0, 4 * M, false, false, false, None)];
        assert_eq!(classify(&absent, M, M, false).unwrap(), Plan::Zero);
    }

    #[test]
    fn incremental_copy() {
        // Dirty granules present (data or zero), untouched ones absent.
        let extents = vec![
            ext(0, M, false, false, false, None),
            ext(M, M, true, false, true, Some(0x50000)),
            ext(2 * M, M, true, true, false, None),
            ext(3 * M, 4 * M, false, false, false, None),
        ];
        assert_eq!(classify(&extents, 0, M, true).unwrap(), Plan::Parent);
        assert_eq!(
            classify(&extents, M, M, true).unwrap(),
            Plan::Read(vec![Part::Data { at: 0, len: M, file_offset: 0x50000 }])
        );
        assert_eq!(classify(&extents, 2 * M, M, true).unwrap(), Plan::Zero);
        assert_eq!(classify(&extents, 4 * M, M, true).unwrap(), Plan::Parent);
        // Past the map: unchanged.
        assert_eq!(classify(&extents, 9 * M, M, true).unwrap(), Plan::Parent);
    }

    #[test]
    fn partial_chunk() {
        // A chunk of which only a middle part is in the copy: the rest
        // comes from the parent.
        let extents = vec![
            ext(0, M + 4096, false, false, false, None),
            ext(M + 4096, 8192, true, false, true, Some(0)),
            ext(M + 12288, 4096, true, true, false, None),
            ext(M + 16384, 10 * M, false, false, false, None),
        ];
        assert_eq!(
            classify(&extents, M, M, true).unwrap(),
            Plan::Read(vec![
                Part::Absent { at: 0, len: 4096 },
                Part::Data { at: 4096, len: 8192, file_offset: 0 },
                Part::Zero { at: 12288, len: 4096 },
                Part::Absent { at: 16384, len: M - 16384 },
            ])
        );
        // Only a zero part present, the rest absent: still read (the
        // parent's bytes with zeros over them).
        let z = vec![ext(0, 4096, true, true, false, None)];
        assert_eq!(
            classify(&z, 0, M, true).unwrap(),
            Plan::Read(vec![Part::Zero { at: 0, len: 4096 }, Part::Absent { at: 4096, len: M - 4096 }])
        );
        // Gaps between extents of a full copy are zeros.
        let gaps = vec![ext(4096, 4096, true, false, true, Some(100))];
        assert_eq!(
            classify(&gaps, 0, M, false).unwrap(),
            Plan::Read(vec![
                Part::Zero { at: 0, len: 4096 },
                Part::Data { at: 4096, len: 4096, file_offset: 100 },
                Part::Zero { at: 8192, len: M - 8192 },
            ])
        );
    }

    #[test]
    fn data_without_offset_refused() {
        let bad = vec![ext(0, M, true, false, true, None)];
        assert!(classify(&bad, 0, M, false).is_err());
    }

    #[test]
    fn short_last_chunk() {
        assert_eq!(chunk_len(3 * M + 5, 3), 5);
        assert_eq!(chunk_len(3 * M, 2), M);
        let extents = vec![ext(0, 5, true, false, true, Some(0))];
        assert_eq!(
            classify(&extents, 0, 5, false).unwrap(),
            Plan::Read(vec![Part::Data { at: 0, len: 5, file_offset: 0 }])
        );
    }
}
