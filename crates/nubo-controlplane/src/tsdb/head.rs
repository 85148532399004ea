//! The head of the metrics store: what this server received and has not
//! written to the database yet, in memory. Per series, samples append to
//! a compressed head chunk ([`SeriesEncoder`]); per series too, the newest
//! value. A flush ([`Head::take_flush`]) seals every resource's head
//! chunks into one resource chunk (a database row) and the changed
//! resources' newest values into one row each; until the database has
//! them, sealed chunks stay here and queries read them with the head.

use super::chunk::{self, SeriesEncoder};
use nubo_api::monitoring::MetricSample;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

/// Sealed chunks kept for a database that keeps refusing them; past this,
/// the oldest are dropped (with a warning) rather than memory growing.
const MAX_SEALED: usize = 500_000;

/// The head of one series.
struct SeriesHead {
    /// The newest sample: the series' latest value, and the bar a new
    /// sample must pass (one at or before it is a repeat or out of order).
    last_at: i64,
    last_value: f64,
    /// Samples since the last flush.
    chunk: SeriesEncoder,
}

#[derive(Default)]
struct ResourceHead {
    series: BTreeMap<String, SeriesHead>,
    /// A newest value changed since the last write-back.
    latest_dirty: bool,
}

/// Some samples of one resource, compressed: a row of `metric_chunks`.
#[derive(Debug)]
pub struct SealedChunk {
    pub resource: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub samples: i64,
    pub data: Vec<u8>,
}

/// The newest value of each series of one resource: a row of
/// `metric_latest_sets` (one sample per series, in the chunk format).
#[derive(Debug)]
pub struct LatestSet {
    pub resource: String,
    pub at_ms: i64,
    pub data: Vec<u8>,
}

/// What a flush writes: the chunks (with those an earlier flush could not
/// write) and the changed latest values.
pub struct Flush {
    pub chunks: Vec<Arc<SealedChunk>>,
    pub latest: Vec<LatestSet>,
}

#[derive(Default)]
struct State {
    resources: HashMap<String, ResourceHead>,
    /// Taken from the head, not yet in the database.
    sealed: Vec<Arc<SealedChunk>>,
}

/// A newest value as the head knows it, and whether the database has it
/// yet (see [`super`]'s reads: a written one defers to the database, which
/// forgets the series of a terminated instance).
#[derive(Debug, Clone, PartialEq)]
pub struct HeadLatest {
    pub metric: String,
    pub at_ms: i64,
    pub value: f64,
    pub unwritten: bool,
}

/// This server's unflushed samples and newest values.
#[derive(Default)]
pub struct Head {
    state: Mutex<State>,
    /// One flush at a time: the periodic one, a rollup's, the shutdown one.
    pub(super) flushing: tokio::sync::Mutex<()>,
    /// Where raw samples start (see `metric_raw_start`), once read.
    pub(super) raw_start: tokio::sync::OnceCell<i64>,
}

impl Head {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the maps consistent (each
        // change is one insert), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends samples to their series. A sample at or before its series'
    /// newest one is dropped: a repeat (an agent's retry) or out of order
    /// (agents send each series in order, so only a retry or a clock step
    /// back makes one). Returns how many were kept.
    pub fn append(&self, samples: &[MetricSample]) -> usize {
        let mut state = self.lock();
        let mut kept = 0;
        for s in samples {
            // Looked up by &str first: a key is cloned only when new.
            if !state.resources.contains_key(s.resource.as_str()) {
                state.resources.insert(s.resource.clone(), ResourceHead::default());
            }
            let Some(r) = state.resources.get_mut(s.resource.as_str()) else { continue };
            if !r.series.contains_key(s.metric.as_str()) {
                let new = SeriesHead { last_at: i64::MIN, last_value: 0.0, chunk: SeriesEncoder::new() };
                r.series.insert(s.metric.clone(), new);
            }
            let Some(series) = r.series.get_mut(s.metric.as_str()) else { continue };
            if s.at_ms <= series.last_at {
                continue;
            }
            series.chunk.push(s.at_ms, s.value);
            series.last_at = s.at_ms;
            series.last_value = s.value;
            r.latest_dirty = true;
            kept += 1;
        }
        kept
    }

    /// The samples of one series in `[from, to)` that are here (head and
    /// sealed chunks), in no particular order.
    pub fn samples(&self, resource: &str, metric: &str, from: i64, to: i64) -> Vec<(i64, f64)> {
        let state = self.lock();
        let mut out = Vec::new();
        let keep = |&(at, _): &(i64, f64)| at >= from && at < to;
        if let Some(series) = state.resources.get(resource).and_then(|r| r.series.get(metric)) {
            let c = &series.chunk;
            out.extend(chunk::decode_series(c.bytes(), c.len()).unwrap_or_default().into_iter().filter(keep));
        }
        for sealed in state.sealed.iter().filter(|c| c.resource == resource && c.end_ms >= from && c.start_ms < to) {
            if let Ok(series) = chunk::unpack(&sealed.data, Some(metric)) {
                out.extend(series.into_iter().flat_map(|(_, s)| s).filter(keep));
            }
        }
        out
    }

    /// The newest value of each series of `resource` here.
    pub fn latest_of(&self, resource: &str) -> Vec<HeadLatest> {
        let state = self.lock();
        let Some(r) = state.resources.get(resource) else { return Vec::new() };
        r.series
            .iter()
            .filter(|(_, s)| s.last_at != i64::MIN)
            .map(|(metric, s)| HeadLatest {
                metric: metric.clone(),
                at_ms: s.last_at,
                value: s.last_value,
                unwritten: r.latest_dirty,
            })
            .collect()
    }

    /// Every resource's newest values here.
    pub fn all_latest(&self) -> Vec<(String, Vec<HeadLatest>)> {
        let resources: Vec<String> = self.lock().resources.keys().cloned().collect();
        resources
            .into_iter()
            .map(|r| {
                let l = self.latest_of(&r);
                (r, l)
            })
            .collect()
    }

    /// Seals what the head holds for the database: each resource's head
    /// chunks as one resource chunk, each changed resource's newest values
    /// as one set. Series silent since `forget_before` are forgotten.
    pub fn take_flush(&self, forget_before: i64) -> Flush {
        let mut state = self.lock();
        let mut fresh = Vec::new();
        let mut latest = Vec::new();
        for (resource, r) in state.resources.iter_mut() {
            let with_samples: Vec<(&str, &SeriesEncoder)> =
                r.series.iter().filter(|(_, s)| !s.chunk.is_empty()).map(|(m, s)| (m.as_str(), &s.chunk)).collect();
            if !with_samples.is_empty() {
                let start_ms = r.series.values().filter(|s| !s.chunk.is_empty()).map(|s| first_at(&s.chunk)).min();
                let end_ms = r.series.values().filter(|s| !s.chunk.is_empty()).map(|s| s.last_at).max();
                let samples = with_samples.iter().map(|(_, e)| i64::from(e.len())).sum();
                let data = chunk::pack(with_samples);
                fresh.push(Arc::new(SealedChunk {
                    resource: resource.clone(),
                    start_ms: start_ms.unwrap_or(i64::MIN),
                    end_ms: end_ms.unwrap_or(i64::MIN),
                    samples,
                    data,
                }));
                for s in r.series.values_mut() {
                    s.chunk = SeriesEncoder::new();
                }
            }
            if r.latest_dirty {
                let ones: Vec<(String, SeriesEncoder)> = r
                    .series
                    .iter()
                    .filter(|(_, s)| s.last_at != i64::MIN)
                    .map(|(m, s)| {
                        let mut e = SeriesEncoder::new();
                        e.push(s.last_at, s.last_value);
                        (m.clone(), e)
                    })
                    .collect();
                let at_ms = r.series.values().map(|s| s.last_at).max().unwrap_or(i64::MIN);
                latest.push(LatestSet {
                    resource: resource.clone(),
                    at_ms,
                    data: chunk::pack(ones.iter().map(|(m, e)| (m.as_str(), e))),
                });
                r.latest_dirty = false;
            }
            // Their samples are sealed above: only the bar and the newest
            // value go, and the database has the newest value.
            r.series.retain(|_, s| s.last_at >= forget_before);
        }
        state.resources.retain(|_, r| !r.series.is_empty());
        state.sealed.extend(fresh);
        if state.sealed.len() > MAX_SEALED {
            let excess = state.sealed.len() - MAX_SEALED;
            tracing::warn!(chunks = excess, "the database has refused metric chunks for long; dropping the oldest");
            state.sealed.drain(..excess);
        }
        Flush { chunks: state.sealed.clone(), latest }
    }

    /// The database has these chunks now: they leave memory.
    pub fn written(&self, chunks: &[Arc<SealedChunk>]) {
        let mut state = self.lock();
        state.sealed.retain(|c| !chunks.iter().any(|w| Arc::ptr_eq(c, w)));
    }

    /// A write-back of these resources' newest values failed: the next
    /// flush writes them again.
    pub fn latest_unwritten(&self, resources: impl IntoIterator<Item = String>) {
        let mut state = self.lock();
        for r in resources {
            if let Some(r) = state.resources.get_mut(&r) {
                r.latest_dirty = true;
            }
        }
    }
}

fn first_at(e: &SeriesEncoder) -> i64 {
    // The first timestamp is the stream's first 64 bits.
    e.bytes().get(..8).and_then(|b| b.try_into().ok()).map(i64::from_be_bytes).unwrap_or(i64::MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(resource: &str, metric: &str, at_ms: i64, value: f64) -> MetricSample {
        MetricSample { resource: resource.into(), metric: metric.into(), at_ms, value }
    }

    #[test]
    fn repeats_and_older_samples_are_dropped() {
        let h = Head::default();
        assert_eq!(h.append(&[s("i-1", "m", 10, 1.0), s("i-1", "m", 20, 2.0)]), 2);
        assert_eq!(h.append(&[s("i-1", "m", 20, 9.0), s("i-1", "m", 15, 9.0), s("i-1", "m", 30, 3.0)]), 1);
        let mut got = h.samples("i-1", "m", 0, 100);
        got.sort_by_key(|x| x.0);
        assert_eq!(got, vec![(10, 1.0), (20, 2.0), (30, 3.0)]);
        // A flush does not lower the bar: a repeat after it is still one.
        let f = h.take_flush(0);
        assert_eq!(f.chunks.len(), 1);
        assert_eq!(h.append(&[s("i-1", "m", 30, 3.0)]), 0);
    }

    #[test]
    fn a_flush_seals_one_chunk_per_resource_until_written() {
        let h = Head::default();
        h.append(&[s("i-1", "a", 10, 1.0), s("i-1", "b", 5, 2.0), s("h-1", "a", 7, 3.0), s("i-1", "a", 20, 4.0)]);
        let f = h.take_flush(0);
        assert_eq!(f.chunks.len(), 2);
        let i1 = f.chunks.iter().find(|c| c.resource == "i-1").unwrap();
        assert_eq!((i1.start_ms, i1.end_ms, i1.samples), (5, 20, 3));
        assert_eq!(f.latest.len(), 2);
        // Sealed but unwritten chunks are still read.
        assert_eq!(h.samples("i-1", "a", 0, 100).len(), 2);
        // Nothing new: the next flush has only the unwritten chunks, no latest.
        let again = h.take_flush(0);
        assert_eq!(again.chunks.len(), 2);
        assert!(again.latest.is_empty());
        h.written(&again.chunks);
        assert!(h.samples("i-1", "a", 0, 100).is_empty());
        assert!(h.take_flush(0).chunks.is_empty());
        // The newest values stay, written.
        let l = h.latest_of("i-1");
        assert_eq!(l.len(), 2);
        assert!(l.iter().all(|l| !l.unwritten));
        assert_eq!(l[0], HeadLatest { metric: "a".into(), at_ms: 20, value: 4.0, unwritten: false });
    }

    #[test]
    fn silent_series_are_forgotten_once_flushed() {
        let h = Head::default();
        h.append(&[s("i-1", "a", 10, 1.0), s("i-2", "a", 200, 1.0)]);
        let f = h.take_flush(100);
        // Its samples and newest value go to the database all the same.
        assert_eq!((f.chunks.len(), f.latest.len()), (2, 2));
        assert!(h.latest_of("i-1").is_empty());
        assert_eq!(h.latest_of("i-2").len(), 1);
        assert_eq!(h.samples("i-1", "a", 0, 100), vec![(10, 1.0)], "still sealed, unwritten");
    }
}
