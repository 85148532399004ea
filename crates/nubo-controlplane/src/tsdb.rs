//! The embedded time-series store, in the control plane's database: raw
//! samples as agents send them (kept a day by default), one-minute
//! rollups with min, max, sum and count (kept a month), and the newest
//! value of every series (for `/metrics`, alert rules and listings).
//! Queries read raw samples when the range is still covered by them and
//! rollups otherwise, averaged per step. Plain SQL, so PostgreSQL can run it.

use crate::store::{now_ms, Store};
use nubo_api::monitoring::{MetricLatest, MetricPoint, MetricSample};
use std::time::Duration;

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

const MINUTE_MS: i64 = 60_000;
/// Most points one query returns; a finer step is widened to fit.
pub const MAX_POINTS: i64 = 10_000;

/// Rows per multi-row INSERT of samples: 4 parameters a row stays far
/// below SQLite's (32,766) and PostgreSQL's (65,535) parameter limits.
pub const INGEST_ROWS: usize = 200;

/// `($1, $2, $3, $4), ($5, ...)`: the VALUES of `rows` rows of four.
fn value_rows(rows: usize) -> String {
    (0..rows)
        .map(|r| format!("(${}, ${}, ${}, ${})", 4 * r + 1, 4 * r + 2, 4 * r + 3, 4 * r + 4))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `head VALUES-rows tail` for `rows`, in statements of [`INGEST_ROWS`]
/// rows, each row bound as (resource, metric, at_ms, value).
async fn insert_rows(
    tx: &mut crate::store::Tx<'_>,
    head: &str,
    tail: &str,
    rows: &[&MetricSample],
) -> Result<(), sqlx::Error> {
    for chunk in rows.chunks(INGEST_ROWS) {
        let sql = format!("{head} {} {tail}", value_rows(chunk.len()));
        let mut q = sqlx::query(&sql);
        for s in chunk {
            q = q.bind(&s.resource).bind(&s.metric).bind(s.at_ms).bind(s.value);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
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

impl Store {
    /// Stores samples (a repeated one is ignored) and moves each series'
    /// newest value forward. A fleet sends a batch per host every few
    /// seconds, tens of samples each: they go in as multi-row statements
    /// of [`INGEST_ROWS`] rows, not two statements a sample, which on
    /// SQLite queued every other write behind metrics.
    pub async fn ingest(&self, samples: &[MetricSample]) -> Result<(), sqlx::Error> {
        if let Some(remote) = self.metrics_remote.get() {
            remote.forward(samples);
            if !remote.embedded {
                return Ok(());
            }
        }
        // Per series, the newest sample of the batch: one upsert may not
        // touch a row twice (PostgreSQL refuses it).
        let mut latest: std::collections::BTreeMap<(&str, &str), &MetricSample> = Default::default();
        for s in samples {
            let e = latest.entry((s.resource.as_str(), s.metric.as_str())).or_insert(s);
            if s.at_ms > e.at_ms {
                *e = s;
            }
        }
        let latest: Vec<&MetricSample> = latest.into_values().collect();
        let all: Vec<&MetricSample> = samples.iter().collect();
        let mut tx = self.begin().await?;
        insert_rows(
            &mut tx,
            "INSERT INTO metric_samples (resource, metric, at_ms, value) VALUES",
            "ON CONFLICT DO NOTHING",
            &all,
        )
        .await?;
        insert_rows(
            &mut tx,
            "INSERT INTO metric_latest (resource, metric, at_ms, value) VALUES",
            "ON CONFLICT (resource, metric) DO UPDATE SET at_ms = excluded.at_ms, value = excluded.value
             WHERE excluded.at_ms >= metric_latest.at_ms",
            &latest,
        )
        .await?;
        tx.commit().await
    }

    /// Rolls the complete minutes not rolled up yet into one-minute
    /// rollups, then drops what is past its retention. Returns the rollup
    /// rows written. Samples arriving for a minute already rolled up stay
    /// in the raw table only.
    pub async fn rollup_and_expire(&self, retention: &Retention, now: i64) -> Result<u64, sqlx::Error> {
        if self.metrics_remote.get().is_some_and(|r| !r.embedded) {
            return Ok(0);
        }
        let mut tx = self.begin().await?;
        let mark: Option<i64> = sqlx::query_scalar("SELECT done_until_ms FROM metric_rollup_mark WHERE id = 1")
            .fetch_optional(&mut *tx)
            .await?;
        // A minute is complete once the next one has started and a late
        // sample had half a minute to arrive.
        let until = ((now - MINUTE_MS / 2) / MINUTE_MS) * MINUTE_MS;
        let from = match mark {
            Some(m) => m,
            None => sqlx::query_scalar::<_, Option<i64>>("SELECT MIN(at_ms) FROM metric_samples")
                .fetch_one(&mut *tx)
                .await?
                .map(|t| (t / MINUTE_MS) * MINUTE_MS)
                .unwrap_or(until),
        };
        let mut written = 0;
        if until > from {
            written = sqlx::query(
                "INSERT INTO metric_rollups (resource, metric, bucket_ms, min_value, max_value, sum_value, samples)
                 SELECT resource, metric, (at_ms / 60000) * 60000, MIN(value), MAX(value), SUM(value), COUNT(*)
                 FROM metric_samples WHERE at_ms >= $1 AND at_ms < $2
                 GROUP BY resource, metric, (at_ms / 60000) * 60000
                 ON CONFLICT DO NOTHING",
            )
            .bind(from)
            .bind(until)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        sqlx::query(
            "INSERT INTO metric_rollup_mark (id, done_until_ms) VALUES (1, $1)
             ON CONFLICT (id) DO UPDATE SET done_until_ms = excluded.done_until_ms",
        )
        .bind(until.max(from))
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM metric_samples WHERE at_ms < $1")
            .bind(now - retention.raw.as_millis() as i64)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM metric_rollups WHERE bucket_ms < $1")
            .bind(now - retention.rollups.as_millis() as i64)
            .execute(&mut *tx)
            .await?;
        // Series of instances that are gone are not "latest" any more.
        sqlx::query(
            "DELETE FROM metric_latest WHERE resource IN (SELECT id FROM instances WHERE state = 'terminated')
               OR at_ms < $1",
        )
        .bind(now - retention.raw.as_millis() as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(written)
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
        let raw_covers = from >= now_ms() - retention.raw.as_millis() as i64;
        let (source, sql) = if raw_covers {
            (
                Source::Raw,
                "SELECT (at_ms - $3) / $5 AS b, AVG(value) FROM metric_samples
                 WHERE resource = $1 AND metric = $2 AND at_ms >= $3 AND at_ms < $4 GROUP BY b ORDER BY b",
            )
        } else {
            (
                Source::Rollup,
                "SELECT (bucket_ms - $3) / $5 AS b, SUM(sum_value) / SUM(samples) FROM metric_rollups
                 WHERE resource = $1 AND metric = $2 AND bucket_ms >= $3 AND bucket_ms < $4 GROUP BY b ORDER BY b",
            )
        };
        let rows: Vec<(i64, f64)> = sqlx::query_as(sql)
            .bind(resource)
            .bind(metric)
            .bind(from)
            .bind(to)
            .bind(step_ms)
            .fetch_all(&self.pool)
            .await?;
        Ok((source, rows.into_iter().map(|(b, value)| MetricPoint { at_ms: from + b * step_ms, value }).collect()))
    }

    /// The newest value of every series of `resource`.
    pub async fn latest_of(&self, resource: &str) -> Result<Vec<MetricLatest>, sqlx::Error> {
        if let Some(r) = self.metrics_reader() {
            return Ok(r.latest_of(resource).await?);
        }
        let rows: Vec<(String, i64, f64)> =
            sqlx::query_as("SELECT metric, at_ms, value FROM metric_latest WHERE resource = $1 ORDER BY metric")
                .bind(resource)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|(metric, at_ms, value)| MetricLatest { metric, at_ms, value }).collect())
    }

    /// The newest value of one series, if it is newer than `since`.
    pub async fn latest_value(&self, resource: &str, metric: &str, since: i64) -> Result<Option<f64>, sqlx::Error> {
        if let Some(r) = self.metrics_reader() {
            return Ok(r.latest_value(resource, metric, since).await?);
        }
        sqlx::query_scalar("SELECT value FROM metric_latest WHERE resource = $1 AND metric = $2 AND at_ms >= $3")
            .bind(resource)
            .bind(metric)
            .bind(since)
            .fetch_optional(&self.pool)
            .await
    }

    /// The average of one series' raw samples since `since`, if it has any.
    pub async fn average_since(&self, resource: &str, metric: &str, since: i64) -> Result<Option<f64>, sqlx::Error> {
        if let Some(r) = self.metrics_reader() {
            return Ok(r.average_since(resource, metric, since).await?);
        }
        sqlx::query_scalar("SELECT AVG(value) FROM metric_samples WHERE resource = $1 AND metric = $2 AND at_ms >= $3")
            .bind(resource)
            .bind(metric)
            .bind(since)
            .fetch_one(&self.pool)
            .await
    }

    /// Every series' newest value: (resource, metric, at_ms, value).
    pub async fn all_latest(&self) -> Result<Vec<(String, String, i64, f64)>, sqlx::Error> {
        // Off, the series are in Prometheus already: not exposed again.
        if self.metrics_remote.get().is_some_and(|r| !r.embedded) {
            return Ok(Vec::new());
        }
        sqlx::query_as("SELECT resource, metric, at_ms, value FROM metric_latest ORDER BY metric, resource")
            .fetch_all(&self.pool)
            .await
    }
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
        assert_eq!(value_rows(2), "($1, $2, $3, $4), ($5, $6, $7, $8)");
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
        let stored: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM metric_samples").fetch_one(&store.pool).await.unwrap();
        assert_eq!(stored, 3 * (INGEST_ROWS as i64 + 50));
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
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM metric_samples").fetch_one(&store.pool).await.unwrap();
        assert_eq!(n, 0);
    }
}
