//! The remote-write sender. Ingest hands samples to [`Writer::enqueue`],
//! which only appends to a bounded in-memory queue (or drops the samples
//! and counts them when it is full): ingest never waits for Prometheus. A
//! background task takes up to [`WriterOptions::max_per_send`] samples at a
//! time, groups them into series, and POSTs them as one WriteRequest,
//! retrying with backoff while the receiver is unreachable or answers
//! 5xx (or 429); a 4xx other than 429 means the receiver will never take
//! that batch (out-of-order samples, say), so it is dropped and counted.

use crate::metrics_remote::labels::LabelCache;
use crate::metrics_remote::prompb::{self, Sample, TimeSeries, WriteRequest};
use nubo_api::monitoring::MetricSample;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the sender batches and retries.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Samples the queue holds; past it new samples are dropped.
    pub capacity: usize,
    /// Samples in one request (Prometheus' own default is 2,000).
    pub max_per_send: usize,
    /// Attempts of one request before its samples are given up.
    pub max_attempts: u32,
    /// First wait after a failed attempt; doubled up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Timeout of one request.
    pub timeout: Duration,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            // A minute of a 10,000-instance fleet (about 1,200 samples/s):
            // a receiver's restart is ridden out, a dead one costs ~40 MB.
            capacity: 100_000,
            max_per_send: 2_000,
            max_attempts: 8,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
        }
    }
}

/// What the sender has done, for `/metrics` and logs.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Samples the receiver accepted.
    pub sent: AtomicU64,
    /// Samples dropped because the queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Samples given up: refused (4xx) or still failing after every attempt.
    pub failed: AtomicU64,
    /// Requests that failed and were tried again.
    pub retries: AtomicU64,
}

/// One queued sample with the labels it had when it was queued.
struct Pending {
    labels: Arc<Vec<prompb::Label>>,
    at_ms: i64,
    value: f64,
}

struct Shared {
    queue: Mutex<VecDeque<Pending>>,
    wake: tokio::sync::Notify,
    stats: WriterStats,
    labels: LabelCache,
    capacity: usize,
}

/// The handle ingest uses; the sender task runs for the server's life.
pub struct Writer {
    shared: Arc<Shared>,
    url: url::Url,
}

impl Writer {
    /// Starts the sender task (needs a tokio runtime).
    pub fn start(url: url::Url, options: WriterOptions) -> Self {
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            wake: tokio::sync::Notify::new(),
            stats: WriterStats::default(),
            labels: LabelCache::default(),
            capacity: options.capacity,
        });
        tokio::spawn(send_loop(shared.clone(), url.clone(), options));
        Self { shared, url }
    }

    pub fn url(&self) -> &url::Url {
        &self.url
    }

    pub fn stats(&self) -> &WriterStats {
        &self.shared.stats
    }

    /// Who runs which instance: see [`LabelCache::note_instances`].
    pub fn labels(&self) -> &LabelCache {
        &self.shared.labels
    }

    /// Samples queued and not sent yet.
    pub fn queued(&self) -> usize {
        self.shared.queue.lock().map(|q| q.len()).unwrap_or(0)
    }

    /// Queues `samples` for sending, or drops them (counted) when the
    /// queue has no room for the whole batch. Never waits on the network.
    pub fn enqueue(&self, samples: &[MetricSample]) {
        if samples.is_empty() {
            return;
        }
        // Labels are built outside the queue's lock, once per series.
        let mut by_series: BTreeMap<(&str, &str), Arc<Vec<prompb::Label>>> = BTreeMap::new();
        let pending: Vec<Pending> = samples
            .iter()
            .map(|s| {
                let labels = by_series
                    .entry((s.resource.as_str(), s.metric.as_str()))
                    .or_insert_with(|| Arc::new(self.shared.labels.series_labels(&s.resource, &s.metric)))
                    .clone();
                Pending { labels, at_ms: s.at_ms, value: s.value }
            })
            .collect();
        let Ok(mut q) = self.shared.queue.lock() else { return };
        if q.len() + pending.len() > self.shared.capacity {
            drop(q);
            let before = self.shared.stats.dropped_queue_full.fetch_add(pending.len() as u64, Ordering::Relaxed);
            // Once per 10,000 dropped, not once per batch.
            if before / 10_000 != (before + pending.len() as u64) / 10_000 || before == 0 {
                tracing::warn!(
                    url = %self.url, dropped_total = before + pending.len() as u64, capacity = self.shared.capacity,
                    "remote-write queue full: samples dropped; is the receiver up and fast enough?"
                );
            }
            return;
        }
        q.extend(pending);
        drop(q);
        self.shared.wake.notify_one();
    }
}

/// The sender's counters in the text exposition (the server's `/metrics`).
pub fn expose(w: &Writer, out: &mut String) {
    use std::fmt::Write as _;
    let s = w.stats();
    let counters = [
        ("nubo_remote_write_samples_sent_total", "Samples the remote-write receiver accepted", &s.sent),
        (
            "nubo_remote_write_samples_dropped_total",
            "Samples dropped because the remote-write queue was full",
            &s.dropped_queue_full,
        ),
        (
            "nubo_remote_write_samples_failed_total",
            "Samples the remote-write receiver refused, or that failed every attempt",
            &s.failed,
        ),
        ("nubo_remote_write_retries_total", "Remote-write requests tried again", &s.retries),
    ];
    for (name, help, v) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", v.load(Ordering::Relaxed));
    }
    let _ = writeln!(
        out,
        "# HELP nubo_remote_write_queued_samples Samples waiting to be sent\n# TYPE nubo_remote_write_queued_samples gauge\nnubo_remote_write_queued_samples {}",
        w.queued()
    );
}

/// Groups samples into series, each series' samples oldest first. The
/// samples of one series queued by one `enqueue` share their labels'
/// `Arc`, so grouping goes by that pointer (no label is compared or
/// copied per sample). A series queued by several `enqueue`s appears as
/// several entries, in queue order, which the protocol allows: the
/// receiver appends them one after the other.
fn build_request(batch: &[Pending]) -> WriteRequest {
    let mut index: std::collections::HashMap<*const Vec<prompb::Label>, usize> = Default::default();
    let mut timeseries: Vec<TimeSeries> = Vec::new();
    // By reference: every Arc stays alive, so no pointer is reused meanwhile.
    for p in batch {
        let at = *index.entry(Arc::as_ptr(&p.labels)).or_insert_with(|| {
            timeseries.push(TimeSeries { labels: p.labels.as_ref().clone(), samples: Vec::new() });
            timeseries.len() - 1
        });
        timeseries[at].samples.push(Sample { value: p.value, timestamp: p.at_ms });
    }
    for ts in &mut timeseries {
        ts.samples.sort_by_key(|s| s.timestamp);
        ts.samples.dedup_by_key(|s| s.timestamp);
    }
    WriteRequest { timeseries }
}

/// How one attempt ended.
enum Outcome {
    Sent,
    /// Worth another attempt (unreachable, 5xx, 429).
    Retry(String),
    /// The receiver will never take it.
    Refused(String),
}

async fn post(http: &reqwest::Client, url: &url::Url, body: &[u8]) -> Outcome {
    let resp = http
        .post(url.clone())
        .header("Content-Encoding", "snappy")
        .header("Content-Type", "application/x-protobuf")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
        .header("User-Agent", concat!("nubo/", env!("CARGO_PKG_VERSION")))
        .body(body.to_vec())
        .send()
        .await;
    match resp {
        Err(e) => Outcome::Retry(format!("cannot reach it: {e}")),
        Ok(r) if r.status().is_success() => Outcome::Sent,
        Ok(r) => {
            let status = r.status();
            let text: String = r.text().await.unwrap_or_default().chars().take(300).collect();
            let why = format!("it answered {status}: {}", text.trim());
            if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
                Outcome::Retry(why)
            } else {
                Outcome::Refused(why)
            }
        }
    }
}

async fn send_loop(shared: Arc<Shared>, url: url::Url, options: WriterOptions) {
    let http = match reqwest::Client::builder().timeout(options.timeout).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the remote-write HTTP client: metrics are not forwarded");
            return;
        }
    };
    loop {
        let batch: Vec<Pending> = {
            let Ok(mut q) = shared.queue.lock() else { return };
            let n = q.len().min(options.max_per_send);
            q.drain(..n).collect()
        };
        if batch.is_empty() {
            // Woken by the next enqueue; the timeout only guards a lost wake-up.
            let _ = tokio::time::timeout(Duration::from_secs(1), shared.wake.notified()).await;
            continue;
        }
        let n = batch.len() as u64;
        let body = match prompb::encode(&build_request(&batch)) {
            Ok(b) => b,
            Err(e) => {
                shared.stats.failed.fetch_add(n, Ordering::Relaxed);
                tracing::error!(error = %e, "cannot compress a remote-write request: its samples are dropped");
                continue;
            }
        };
        let mut backoff = options.min_backoff;
        for attempt in 1..=options.max_attempts {
            match post(&http, &url, &body).await {
                Outcome::Sent => {
                    shared.stats.sent.fetch_add(n, Ordering::Relaxed);
                    break;
                }
                Outcome::Refused(why) => {
                    shared.stats.failed.fetch_add(n, Ordering::Relaxed);
                    tracing::warn!(%url, samples = n, "remote write refused: {why}; these samples are dropped");
                    break;
                }
                Outcome::Retry(why) if attempt == options.max_attempts => {
                    shared.stats.failed.fetch_add(n, Ordering::Relaxed);
                    tracing::warn!(
                        %url, samples = n, attempts = attempt,
                        "remote write failed: {why}; these samples are dropped (check that the receiver is up)"
                    );
                }
                Outcome::Retry(why) => {
                    shared.stats.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%url, attempt, "remote write failed, trying again: {why}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(options.max_backoff);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(resource: &str, metric: &str, at_ms: i64, value: f64) -> MetricSample {
        MetricSample { resource: resource.into(), metric: metric.into(), at_ms, value }
    }

    /// A receiver on 127.0.0.1 that answers `status` to every request and
    /// hands each request's headers and decoded body to the test.
    async fn receiver(status: u16) -> (url::Url, tokio::sync::mpsc::UnboundedReceiver<(String, WriteRequest)>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/api/v1/write", listener.local_addr().unwrap()).parse().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    loop {
                        let n = s.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if buf.len() < end + 4 + len {
                            continue;
                        }
                        let body = &buf[end + 4..end + 4 + len];
                        let _ = tx.send((head.clone(), prompb::decode(body).unwrap()));
                        let reply = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
                        let _ = s.write_all(reply.as_bytes()).await;
                        buf.drain(..end + 4 + len);
                    }
                });
            }
        });
        (url, rx)
    }

    /// Samples queued by ingest arrive as one request per batch, with the
    /// protocol's headers, grouped into series with sorted labels and
    /// samples in time order; the stats count them as sent.
    #[tokio::test]
    async fn queued_samples_arrive_grouped_with_the_protocols_headers() {
        let (url, mut got) = receiver(204).await;
        let w = Writer::start(url, WriterOptions::default());
        w.labels().note_instances("h-00000000000000aa", [("i-0123456789abcdef0", Some("p-1"))]);
        w.enqueue(&[
            sample("i-0123456789abcdef0", "cpu_percent", 2_000, 20.0),
            sample("i-0123456789abcdef0", "cpu_percent", 1_000, 10.0),
            sample("h-00000000000000aa", "load1", 1_000, 0.5),
        ]);
        let (head, req) = tokio::time::timeout(Duration::from_secs(10), got.recv()).await.unwrap().unwrap();
        assert!(head.contains("content-encoding: snappy"), "{head}");
        assert!(head.contains("content-type: application/x-protobuf"), "{head}");
        assert!(head.contains("x-prometheus-remote-write-version: 0.1.0"), "{head}");
        assert_eq!(req.timeseries.len(), 2);
        let cpu = req.timeseries.iter().find(|t| t.labels.iter().any(|l| l.value == "nubo_cpu_percent")).unwrap();
        assert_eq!(cpu.samples.iter().map(|s| s.timestamp).collect::<Vec<_>>(), vec![1_000, 2_000]);
        let names: Vec<&str> = cpu.labels.iter().map(|l| l.name.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert!(cpu.labels.iter().any(|l| l.name == "project" && l.value == "p-1"));
        for _ in 0..100 {
            if w.stats().sent.load(Ordering::Relaxed) == 3 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the sent counter is {}", w.stats().sent.load(Ordering::Relaxed));
    }

    /// A full queue drops (and counts) what does not fit, at once, even
    /// with no receiver at all.
    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_waiting() {
        // Nothing listens on this port: the sender keeps retrying.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url: url::Url = format!("http://{}/api/v1/write", listener.local_addr().unwrap()).parse().unwrap();
        drop(listener);
        let w = Writer::start(url, WriterOptions { capacity: 10, ..WriterOptions::default() });
        let batch: Vec<_> = (0..8).map(|i| sample("h-00000000000000aa", "load1", i, 1.0)).collect();
        let t = std::time::Instant::now();
        w.enqueue(&batch);
        w.enqueue(&batch);
        w.enqueue(&batch);
        assert!(t.elapsed() < Duration::from_millis(100), "enqueue waited {:?}", t.elapsed());
        // The first batch fits (or is already taken by the sender); later ones cannot all fit.
        assert!(w.stats().dropped_queue_full.load(Ordering::Relaxed) >= 8);
    }

    /// 5xx is retried; the samples arrive again and are counted once.
    #[tokio::test]
    async fn a_server_error_is_retried_and_a_refusal_is_not() {
        let (url, mut got) = receiver(503).await;
        let opts = WriterOptions { max_attempts: 3, min_backoff: Duration::from_millis(10), ..Default::default() };
        let w = Writer::start(url, opts);
        w.enqueue(&[sample("h-00000000000000aa", "load1", 1, 1.0)]);
        for _ in 0..3 {
            tokio::time::timeout(Duration::from_secs(10), got.recv()).await.unwrap().unwrap();
        }
        for _ in 0..100 {
            if w.stats().failed.load(Ordering::Relaxed) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(w.stats().failed.load(Ordering::Relaxed), 1);
        assert_eq!(w.stats().retries.load(Ordering::Relaxed), 2);

        let (url, mut got) = receiver(400).await;
        let w = Writer::start(url, opts_fast());
        w.enqueue(&[sample("h-00000000000000aa", "load1", 1, 1.0)]);
        tokio::time::timeout(Duration::from_secs(10), got.recv()).await.unwrap().unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(300), got.recv()).await.is_err(), "a 400 is not retried");
        assert_eq!(w.stats().retries.load(Ordering::Relaxed), 0);
    }

    fn opts_fast() -> WriterOptions {
        WriterOptions { min_backoff: Duration::from_millis(10), ..Default::default() }
    }
}
