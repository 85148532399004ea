//! The embedded time-series store: Nubo's metric history, charts and
//! policy input, in the control plane's database with no server to
//! install. This module owns its public face (the `impl Store` methods the
//! rest of the control plane calls) and the SQL; `chunk` owns the
//! compressed format, `head` the samples held in memory.
//!
//! Layout. Samples arrive into this server's in-memory head (`head`): per
//! series, a compressed head chunk and the newest value. Every
//! [`FLUSH_INTERVAL`] (and on a graceful shutdown, and before a rollup)
//! the head is flushed: one `metric_chunks` row per resource (all its
//! series, Gorilla-compressed) and one `metric_latest_sets` row per
//! resource whose newest values changed. Per resource rather than per
//! series: an instance's dozen series share the row's key and overhead,
//! so 120,000 series at 10,000 instances are 10,000 row writes a flush,
//! not 120,000.
//!
//! What a server sees. Queries merge the database with this server's head,
//! so the server that received samples sees them at once. Another server
//! sharing the database sees them once flushed: up to [`FLUSH_INTERVAL`]
//! late (plus the agents' sampling interval). A crash loses at most the
//! last [`FLUSH_INTERVAL`] of raw samples received by the crashed server.
//!
//! Rollups and retention are unchanged: every minute the lease holder
//! rolls complete minutes into one-minute rollups (min, max, sum, count;
//! kept a month), reading the chunks; raw chunks are kept a day. A query
//! reads raw samples while its range is still covered by them and rollups
//! otherwise, averaged per step. Raw samples stored before the chunks
//! (migration 0037) are answered from rollups.

pub mod chunk;
pub mod head;

use crate::store::{now_ms, Store};
use head::HeadLatest;
use nubo_api::monitoring::{MetricLatest, MetricPoint, MetricSample};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

pub use head::Head;

/// How long raw samples and rollups are kept.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub raw: Duration,
    pub rollups: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self { raw: Duration::from_secs(24 * 3600), rollups: Duration::from_secs(30 * 24 * 3600) }
    }
}

/// How often a server writes its head to the database: how stale another
/// server's view of this one's samples may be, and what a crash loses.
/// A minute: six samples a series at the default 10-s interval, and a
/// write a minute per resource.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(60);

const MINUTE_MS: i64 = 60_000;
/// Most points one query returns; a finer step is widened to fit.
pub const MAX_POINTS: i64 = 10_000;

/// Rows per multi-row INSERT: at 7 parameters a row (rollups) this stays
/// far below SQLite's (32,766) and PostgreSQL's (65,535) limits.
pub const INGEST_ROWS: usize = 200;

/// Most minutes one rollup pass reads at once, so that catching up after a
/// long stop does not hold a day of chunks in memory.
const ROLLUP_WINDOW_MS: i64 = 60 * MINUTE_MS;

/// `($1, ..., $n), ($n+1, ...)`: the VALUES of `rows` rows of `width`.
fn value_rows(rows: usize, width: usize) -> String {
    (0..rows).map(|r| format!("({})", crate::store::placeholders(width * r + 1, width))).collect::<Vec<_>>().join(", ")
}

/// Where a query's points came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Raw,
    Rollup,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Rollup => "rollup",
        }
    }
}

/// A stored chunk that cannot be read is a database error to the caller:
/// it says which, and the rest of the store keeps working.
fn decode_err(e: chunk::ChunkError) -> sqlx::Error {
    sqlx::Error::Decode(Box::new(e))
}

impl Store {
    /// Stores samples (a repeated one is ignored, as is one older than its
    /// series' newest: agents send in order) and moves each series' newest
    /// value forward, in this server's memory; the database gets them at
    /// the next flush ([`FLUSH_INTERVAL`]).
    pub async fn ingest(&self, samples: &[MetricSample]) -> Result<(), sqlx::Error> {
        if let Some(remote) = self.metrics_remote.get() {
            remote.forward(samples);
            if !remote.embedded {
                return Ok(());
            }
        }
        self.metrics_head.append(samples);
        Ok(())
    }

    /// Writes this server's head to the database (see the module's
    /// comment); forgets, in memory, series silent for longer than raw
    /// retention. Returns the chunks written.
    pub async fn flush_metrics(&self, retention: &Retention) -> Result<usize, sqlx::Error> {
        flush(self, now_ms() - retention.raw.as_millis() as i64).await
    }

    /// Rolls the complete minutes not rolled up yet into one-minute
    /// rollups, then drops what is past its retention. Returns the rollup
    /// rows written. Samples arriving for a minute already rolled up stay
    /// in the raw chunks only.
    pub async fn rollup_and_expire(&self, retention: &Retention, now: i64) -> Result<u64, sqlx::Error> {
        if self.metrics_remote.get().is_some_and(|r| !r.embedded) {
            return Ok(0);
        }
        self.flush_metrics(retention).await?;
        rollup_and_expire(self, retention, now).await
    }

    /// The average of `metric` of `resource` per `step_ms` in `[from, to)`.
    pub async fn query_series(
        &self,
        resource: &str,
        metric: &str,
        from: i64,
        to: i64,
        step_ms: i64,
        retention: &Retention,
    ) -> Result<(Source, Vec<MetricPoint>), sqlx::Error> {
        if let Some(r) = self.metrics_reader() {
            return Ok((Source::Raw, r.query_series(resource, metric, from, to, step_ms).await?));
        }
        let raw_covers = from >= now_ms() - retention.raw.as_millis() as i64 && from >= raw_start(self).await?;
        if !raw_covers {
            return Ok((Source::Rollup, query_rollups(self, resource, metric, from, to, step_ms).await?));
        }
        let samples = raw_samples(self, resource, metric, from, to).await?;
        let mut buckets: BTreeMap<i64, (f64, u64)> = BTreeMap::new();
        for (at, value) in samples {
            let b = buckets.entry((at - from) / step_ms).or_default();
            b.0 += value;
            b.1 += 1;
        }
        let points = buckets
            .into_iter()
            .map(|(b, (sum, n))| MetricPoint { at_ms: from + b * step_ms, value: sum / n as f64 })
            .collect();
        Ok((Source::Raw, points))
    }

    /// The newest value of every series of `resource`.
    pub async fn latest_of(&self, resource: &str) -> Result<Vec<MetricLatest>, sqlx::Error> {
        if let Some(r) = self.metrics_reader() {
            return Ok(r.latest_of(resource).await?);
        }
        let merged = latest_merged(self, resource).await?;
        Ok(merged.into_iter().map(|(metric, (at_ms, value))| MetricLatest { metric, at_ms, value }).collect())
    }

    /// The newest value of one series, if it is newer than `since`.
    pub async fn latest_value(&self, resource: &str, metric: &str, since: i64) -> Result<Option<f64>, sqlx::Error> {
        if let Some(r) = self.metrics_reader() {
            return Ok(r.latest_value(resource, metric, since).await?);
        }
        let merged = latest_merged(self, resource).await?;
        Ok(merged.get(metric).filter(|(at, _)| *at >= since).map(|(_, v)| *v))
    }

    /// The average of one series' raw samples since `since`, if it has any.
    pub async fn average_since(&self, resource: &str, metric: &str, since: i64) -> Result<Option<f64>, sqlx::Error> {
        if let Some(r) = self.metrics_reader() {
            return Ok(r.average_since(resource, metric, since).await?);
        }
        let samples = raw_samples(self, resource, metric, since, i64::MAX).await?;
        if samples.is_empty() {
            return Ok(None);
        }
        Ok(Some(samples.iter().map(|(_, v)| v).sum::<f64>() / samples.len() as f64))
    }

    /// Every series' newest value: (resource, metric, at_ms, value).
    pub async fn all_latest(&self) -> Result<Vec<(String, String, i64, f64)>, sqlx::Error> {
        // Off, the series are in Prometheus already: not exposed again.
        if self.metrics_remote.get().is_some_and(|r| !r.embedded) {
            return Ok(Vec::new());
        }
        let rows: Vec<(String, Vec<u8>)> =
            sqlx::query_as("SELECT resource, data FROM metric_latest_sets").fetch_all(&self.pool).await?;
        let mut stored: HashMap<String, Vec<u8>> = rows.into_iter().collect();
        let mut out = Vec::new();
        for (resource, head) in self.metrics_head.all_latest() {
            let db = stored.remove(&resource);
            let merged = merge_latest(db.as_deref(), head)?;
            out.extend(merged.into_iter().map(|(m, (at, v))| (resource.clone(), m, at, v)));
        }
        for (resource, data) in stored {
            let merged = merge_latest(Some(&data), Vec::new())?;
            out.extend(merged.into_iter().map(|(m, (at, v))| (resource.clone(), m, at, v)));
        }
        out.sort_by(|a, b| (&a.1, &a.0).cmp(&(&b.1, &b.0)));
        Ok(out)
    }
}

/// Writes the head's sealed chunks and changed newest values in one
/// transaction; on failure they stay in memory for the next flush.
async fn flush(store: &Store, forget_before: i64) -> Result<usize, sqlx::Error> {
    let head = &store.metrics_head;
    let _one = head.flushing.lock().await;
    let f = head.take_flush(forget_before);
    if f.chunks.is_empty() && f.latest.is_empty() {
        return Ok(0);
    }
    let result = async {
        let mut tx = store.begin().await?;
        for rows in f.chunks.chunks(INGEST_ROWS) {
            let sql = format!(
                "INSERT INTO metric_chunks (resource, start_ms, end_ms, samples, data) VALUES {}",
                value_rows(rows.len(), 5)
            );
            let mut q = sqlx::query(&sql);
            for c in rows {
                q = q.bind(&c.resource).bind(c.start_ms).bind(c.end_ms).bind(c.samples).bind(&c.data);
            }
            q.execute(&mut *tx).await?;
        }
        for rows in f.latest.chunks(INGEST_ROWS) {
            let sql = format!(
                "INSERT INTO metric_latest_sets (resource, at_ms, data) VALUES {}
                 ON CONFLICT (resource) DO UPDATE SET at_ms = excluded.at_ms, data = excluded.data
                 WHERE excluded.at_ms >= metric_latest_sets.at_ms",
                value_rows(rows.len(), 3)
            );
            let mut q = sqlx::query(&sql);
            for l in rows {
                q = q.bind(&l.resource).bind(l.at_ms).bind(&l.data);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await
    }
    .await;
    match result {
        Ok(()) => {
            head.written(&f.chunks);
            Ok(f.chunks.len())
        }
        Err(e) => {
            head.latest_unwritten(f.latest.into_iter().map(|l| l.resource));
            Err(e)
        }
    }
}

/// Raw samples before this instant are in rollups only (from before
/// migration 0037); read once.
async fn raw_start(store: &Store) -> Result<i64, sqlx::Error> {
    store
        .metrics_head
        .raw_start
        .get_or_try_init(|| async {
            let from: Option<i64> = sqlx::query_scalar("SELECT from_ms FROM metric_raw_start WHERE id = 1")
                .fetch_optional(&store.pool)
                .await?;
            Ok::<_, sqlx::Error>(from.unwrap_or(0))
        })
        .await
        .copied()
}

/// One series' raw samples in `[from, to)`, from the head and the stored
/// chunks, in time order, each instant once. The head is read first: a
/// flush between the two reads then shows samples twice (deduplicated)
/// rather than not at all.
async fn raw_samples(
    store: &Store,
    resource: &str,
    metric: &str,
    from: i64,
    to: i64,
) -> Result<Vec<(i64, f64)>, sqlx::Error> {
    let mut samples = store.metrics_head.samples(resource, metric, from, to);
    let rows: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT data FROM metric_chunks WHERE resource = $1 AND end_ms >= $2 AND start_ms < $3")
            .bind(resource)
            .bind(from)
            .bind(to)
            .fetch_all(&store.pool)
            .await?;
    for data in rows {
        for (_, series) in chunk::unpack(&data, Some(metric)).map_err(decode_err)? {
            samples.extend(series.into_iter().filter(|(at, _)| *at >= from && *at < to));
        }
    }
    samples.sort_by_key(|(at, _)| *at);
    samples.dedup_by_key(|(at, _)| *at);
    Ok(samples)
}

async fn query_rollups(
    store: &Store,
    resource: &str,
    metric: &str,
    from: i64,
    to: i64,
    step_ms: i64,
) -> Result<Vec<MetricPoint>, sqlx::Error> {
    let rows: Vec<(i64, f64)> = sqlx::query_as(
        "SELECT (bucket_ms - $3) / $5 AS b, SUM(sum_value) / SUM(samples) FROM metric_rollups
         WHERE resource = $1 AND metric = $2 AND bucket_ms >= $3 AND bucket_ms < $4 GROUP BY b ORDER BY b",
    )
    .bind(resource)
    .bind(metric)
    .bind(from)
    .bind(to)
    .bind(step_ms)
    .fetch_all(&store.pool)
    .await?;
    Ok(rows.into_iter().map(|(b, value)| MetricPoint { at_ms: from + b * step_ms, value }).collect())
}

/// The newest value of each series of `resource`: the database's and this
/// server's head's, the newer of the two.
async fn latest_merged(store: &Store, resource: &str) -> Result<BTreeMap<String, (i64, f64)>, sqlx::Error> {
    let head = store.metrics_head.latest_of(resource);
    let row: Option<Vec<u8>> = sqlx::query_scalar("SELECT data FROM metric_latest_sets WHERE resource = $1")
        .bind(resource)
        .fetch_optional(&store.pool)
        .await?;
    merge_latest(row.as_deref(), head)
}

/// Merges a stored set with the head's values. Values the head wrote back
/// already count only while the database still has the resource: the
/// rollup pass drops the sets of terminated instances, and a value in
/// some server's memory must not bring one back.
fn merge_latest(stored: Option<&[u8]>, head: Vec<HeadLatest>) -> Result<BTreeMap<String, (i64, f64)>, sqlx::Error> {
    let mut out = BTreeMap::new();
    if let Some(data) = stored {
        for (metric, samples) in chunk::unpack(data, None).map_err(decode_err)? {
            if let Some(&last) = samples.last() {
                out.insert(metric, last);
            }
        }
    }
    for h in head {
        if stored.is_none() && !h.unwritten {
            continue;
        }
        let e = out.entry(h.metric).or_insert((h.at_ms, h.value));
        if h.at_ms > e.0 {
            *e = (h.at_ms, h.value);
        }
    }
    Ok(out)
}

/// Aggregates of one series over one minute.
#[derive(Clone, Copy)]
struct Rollup {
    min: f64,
    max: f64,
    sum: f64,
    count: i64,
}

async fn rollup_and_expire(store: &Store, retention: &Retention, now: i64) -> Result<u64, sqlx::Error> {
    let mut tx = store.begin().await?;
    let mark: Option<i64> = sqlx::query_scalar("SELECT done_until_ms FROM metric_rollup_mark WHERE id = 1")
        .fetch_optional(&mut *tx)
        .await?;
    // A minute is complete once the next one has started, a late sample
    // had half a minute to arrive, and every server has flushed it.
    let lag = MINUTE_MS / 2 + FLUSH_INTERVAL.as_millis() as i64;
    let until = ((now - lag) / MINUTE_MS) * MINUTE_MS;
    // The oldest chunk still to roll up; before the first rollup, or
    // after a long stop, the pass starts there rather than at the mark.
    let oldest: Option<i64> =
        sqlx::query_scalar::<_, Option<i64>>("SELECT MIN(end_ms) FROM metric_chunks WHERE end_ms >= $1")
            .bind(mark.unwrap_or(i64::MIN))
            .fetch_one(&mut *tx)
            .await?;
    // A chunk starts at most a few flushes before it ends, unless samples
    // came late: an hour before the oldest end covers both.
    let first = oldest.map(|t| ((t - ROLLUP_WINDOW_MS) / MINUTE_MS) * MINUTE_MS);
    let mut from = match (mark, first) {
        (Some(m), Some(f)) => m.max(f),
        (Some(m), None) => m,
        (None, Some(f)) => f,
        (None, None) => until,
    };
    let mut written = 0;
    while until > from {
        let to = until.min(from + ROLLUP_WINDOW_MS);
        written += rollup_window(&mut tx, from, to).await?;
        from = to;
    }
    sqlx::query(
        "INSERT INTO metric_rollup_mark (id, done_until_ms) VALUES (1, $1)
         ON CONFLICT (id) DO UPDATE SET done_until_ms = excluded.done_until_ms",
    )
    .bind(until.max(from))
    .execute(&mut *tx)
    .await?;
    let raw_cutoff = now - retention.raw.as_millis() as i64;
    sqlx::query("DELETE FROM metric_chunks WHERE end_ms < $1").bind(raw_cutoff).execute(&mut *tx).await?;
    sqlx::query("DELETE FROM metric_rollups WHERE bucket_ms < $1")
        .bind(now - retention.rollups.as_millis() as i64)
        .execute(&mut *tx)
        .await?;
    // Series of instances that are gone are not "latest" any more.
    sqlx::query(
        "DELETE FROM metric_latest_sets WHERE resource IN (SELECT id FROM instances WHERE state = 'terminated')
           OR at_ms < $1",
    )
    .bind(raw_cutoff)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(written)
}

/// Rolls the samples in `[from, to)` up per series and minute; returns
/// the rollup rows written (a minute already rolled up is left as it is).
async fn rollup_window(tx: &mut crate::store::Tx<'_>, from: i64, to: i64) -> Result<u64, sqlx::Error> {
    let rows: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT resource, data FROM metric_chunks WHERE end_ms >= $1 AND start_ms < $2")
            .bind(from)
            .bind(to)
            .fetch_all(&mut **tx)
            .await?;
    // Per series, its samples in the window, each instant once (two
    // servers may both have stored one an agent sent twice).
    let mut series: HashMap<(String, String), Vec<(i64, f64)>> = HashMap::new();
    for (resource, data) in rows {
        for (metric, samples) in chunk::unpack(&data, None).map_err(decode_err)? {
            let in_window = samples.into_iter().filter(|(at, _)| *at >= from && *at < to);
            series.entry((resource.clone(), metric)).or_default().extend(in_window);
        }
    }
    let mut rollups: Vec<(&str, &str, i64, Rollup)> = Vec::new();
    for ((resource, metric), samples) in series.iter_mut() {
        samples.sort_by_key(|(at, _)| *at);
        samples.dedup_by_key(|(at, _)| *at);
        for &(at, v) in samples.iter() {
            let bucket = at.div_euclid(MINUTE_MS) * MINUTE_MS;
            match rollups.last_mut() {
                Some((r, m, b, agg)) if *r == resource.as_str() && *m == metric.as_str() && *b == bucket => {
                    agg.min = agg.min.min(v);
                    agg.max = agg.max.max(v);
                    agg.sum += v;
                    agg.count += 1;
                }
                _ => rollups.push((
                    resource.as_str(),
                    metric.as_str(),
                    bucket,
                    Rollup { min: v, max: v, sum: v, count: 1 },
                )),
            }
        }
    }
    let mut written = 0;
    for rows in rollups.chunks(INGEST_ROWS) {
        let sql = format!(
            "INSERT INTO metric_rollups (resource, metric, bucket_ms, min_value, max_value, sum_value, samples)
             VALUES {} ON CONFLICT DO NOTHING",
            value_rows(rows.len(), 7)
        );
        let mut q = sqlx::query(&sql);
        for (resource, metric, bucket, r) in rows {
            q = q.bind(*resource).bind(*metric).bind(*bucket).bind(r.min).bind(r.max).bind(r.sum).bind(r.count);
        }
        written += q.execute(&mut **tx).await?.rows_affected();
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(metric: &str, at_ms: i64, value: f64) -> MetricSample {
        MetricSample { resource: "i-0123456789abcdef0".into(), metric: metric.into(), at_ms, value }
    }

    /// A store on PostgreSQL when NUBO_TEST_DATABASE is set, else on SQLite
    /// in a temporary directory. Keep the tuple whole: its fields drop in
    /// order, the pool before the database it is connected to.
    async fn test_store() -> (Store, tempfile::TempDir, Option<crate::testdb::TestDatabase>) {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::testdb::from_env().await.unwrap_or_else(|e| panic!("{e}"));
        let store = match &db {
            Some(db) => Store::connect(&db.url).await.unwrap(),
            None => Store::open(&dir.path().join("t.db")).await.unwrap(),
        };
        (store, dir, db)
    }

    #[test]
    fn value_rows_number_the_parameters_in_order() {
        assert_eq!(value_rows(2, 4), "($1, $2, $3, $4), ($5, $6, $7, $8)");
        assert_eq!(value_rows(2, 3), "($1, $2, $3), ($4, $5, $6)");
    }

    /// More samples than one statement takes, repeats inside the batch,
    /// and several series: each sample stored once, each series' newest
    /// value kept.
    #[tokio::test]
    async fn a_large_batch_goes_in_whole() {
        // On PostgreSQL too when NUBO_TEST_DATABASE is set: it is the one
        // that refuses an upsert touching a row twice.
        let t = test_store().await;
        let store = &t.0;
        let t0 = now_ms() - 3_600_000;
        let mut samples = Vec::new();
        for i in 0..(INGEST_ROWS as i64 + 50) {
            for m in ["cpu_percent", "memory_used_bytes", "disk_used_bytes"] {
                samples.push(s(m, t0 + i * 1_000, i as f64));
            }
        }
        // The same samples again in the batch, oldest last.
        let mut again = samples.clone();
        again.reverse();
        samples.extend(again);
        store.ingest(&samples).await.unwrap();
        // More resources than one statement takes, so the flush's
        // multi-row statements are exercised on both databases.
        let many: Vec<_> = (0..INGEST_ROWS + 10)
            .map(|r| MetricSample {
                resource: format!("i-{r:017x}"),
                metric: "cpu_percent".into(),
                at_ms: t0,
                value: 1.0,
            })
            .collect();
        store.ingest(&many).await.unwrap();
        assert_eq!(store.flush_metrics(&Retention::default()).await.unwrap(), INGEST_ROWS + 11);
        let stored: i64 = sqlx::query_scalar("SELECT CAST(SUM(samples) AS BIGINT) FROM metric_chunks")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(stored, 3 * (INGEST_ROWS as i64 + 50) + INGEST_ROWS as i64 + 10);
        let (_, pts) = store
            .query_series("i-0123456789abcdef0", "disk_used_bytes", t0, t0 + 3_600_000, 1_000, &Retention::default())
            .await
            .unwrap();
        assert_eq!(pts.len(), INGEST_ROWS + 50);
        assert!(pts.iter().enumerate().all(|(i, p)| p.value == i as f64 && p.at_ms == t0 + i as i64 * 1_000));
        let latest = store.latest_of("i-0123456789abcdef0").await.unwrap();
        assert_eq!(latest.len(), 3);
        assert!(latest.iter().all(|l| l.value == (INGEST_ROWS + 49) as f64), "{latest:?}");
    }

    /// The window's samples are averaged, older ones left out, and a series
    /// with none in the window has no average (not zero).
    #[tokio::test]
    async fn average_since_covers_only_the_window() {
        let t = test_store().await;
        let store = &t.0;
        let now = now_ms();
        let samples = [
            s("cpu_percent", now - 90_000, 100.0),
            s("cpu_percent", now - 20_000, 10.0),
            s("cpu_percent", now - 10_000, 30.0),
        ];
        store.ingest(&samples).await.unwrap();
        let avg = store.average_since("i-0123456789abcdef0", "cpu_percent", now - 30_000).await.unwrap();
        assert_eq!(avg, Some(20.0));
        let none = store.average_since("i-0123456789abcdef0", "cpu_percent", now - 5_000).await.unwrap();
        assert_eq!(none, None);
    }

    #[tokio::test]
    async fn ingest_query_rollup_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).await.unwrap();
        let r = Retention::default();
        let now = now_ms();
        let t0 = (now / MINUTE_MS - 10) * MINUTE_MS; // ten minutes ago, on a minute
                                                     // One sample every 10 s for 5 minutes: value = minute index.
        let samples: Vec<_> = (0..30).map(|i| s("cpu_percent", t0 + i * 10_000, (i / 6) as f64)).collect();
        store.ingest(&samples).await.unwrap();
        store.ingest(&samples[..3]).await.unwrap(); // repeats are ignored
        let (src, pts) = store
            .query_series("i-0123456789abcdef0", "cpu_percent", t0, t0 + 5 * MINUTE_MS, MINUTE_MS, &r)
            .await
            .unwrap();
        assert_eq!(src, Source::Raw);
        assert_eq!(pts.iter().map(|p| p.value).collect::<Vec<_>>(), vec![0.0, 1.0, 2.0, 3.0, 4.0]);
        assert_eq!(pts[1].at_ms, t0 + MINUTE_MS);
        assert_eq!(store.latest_of("i-0123456789abcdef0").await.unwrap()[0].value, 4.0);

        let written = store.rollup_and_expire(&r, now).await.unwrap();
        assert_eq!(written, 5);
        assert_eq!(store.rollup_and_expire(&r, now).await.unwrap(), 0, "each minute is rolled up once");
        // A short raw retention: the raw samples go, the rollups answer.
        let short = Retention { raw: Duration::from_secs(60), rollups: r.rollups };
        store.rollup_and_expire(&short, now).await.unwrap();
        let (src, pts) = store
            .query_series("i-0123456789abcdef0", "cpu_percent", t0, t0 + 5 * MINUTE_MS, 2 * MINUTE_MS, &short)
            .await
            .unwrap();
        assert_eq!(src, Source::Rollup);
        assert_eq!(pts.iter().map(|p| p.value).collect::<Vec<_>>(), vec![0.5, 2.5, 4.0]);
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM metric_chunks").fetch_one(&store.pool).await.unwrap();
        assert_eq!(n, 0);
    }
}
