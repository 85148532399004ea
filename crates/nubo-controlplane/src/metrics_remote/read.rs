//! Reading Nubo's series back from Prometheus' HTTP query API, for the
//! store's query methods when `--metrics-read-from` is set: the newest
//! value of a series (`last_over_time`), its average over a window
//! (`avg_over_time`), a chart's points (`query_range` of `avg_over_time`
//! per step) and a resource's newest values (a range selector). Series are
//! selected by the `metric` and `resource` labels the writer sets.

use nubo_api::monitoring::{MetricLatest, MetricPoint};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// How far back a resource's "newest values" (`latest_of`) look: longer
/// than any agent's interval, short enough for one cheap query.
const LATEST_WINDOW_MS: i64 = 15 * 60_000;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot set up the Prometheus client: {0}")]
    Client(String),
    #[error(
        "Prometheus at {url} cannot be reached ({why}): check that it runs and that --metrics-read-from names its \
         base URL (e.g. http://127.0.0.1:9090)"
    )]
    Unreachable { url: String, why: String },
    #[error("Prometheus at {url} refused the query ({status}): {message}")]
    Refused { url: String, status: u16, message: String },
    #[error("Prometheus at {url} answered something that is not its query API's JSON ({why}): is --metrics-read-from its base URL?")]
    NotPrometheus { url: String, why: String },
}

impl From<ReadError> for sqlx::Error {
    /// The store's methods speak `sqlx::Error`; the message stays whole.
    fn from(e: ReadError) -> Self {
        sqlx::Error::Io(std::io::Error::other(e.to_string()))
    }
}

/// The client of one Prometheus.
pub struct Reader {
    base: url::Url,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(default)]
    result: Vec<Series>,
}

#[derive(Deserialize)]
struct Series {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    /// An instant vector's one point.
    #[serde(default)]
    value: Option<(f64, String)>,
    /// A matrix's points.
    #[serde(default)]
    values: Vec<(f64, String)>,
}

/// A label value inside double quotes in PromQL.
fn quoted(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The selector of one of Nubo's series.
pub fn selector(resource: &str, metric: &str) -> String {
    format!(
        "{}{{metric={},resource={}}}",
        crate::metrics_remote::labels::prom_name(metric),
        quoted(metric),
        quoted(resource)
    )
}

/// A PromQL range of at least a millisecond.
fn range(ms: i64) -> String {
    format!("{}ms", ms.max(1))
}

/// Prometheus' time: seconds, with milliseconds.
fn prom_time(ms: i64) -> String {
    format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000))
}

fn number(s: &str) -> Option<f64> {
    s.parse::<f64>().ok().filter(|v| v.is_finite())
}

impl Reader {
    pub fn new(base: url::Url) -> Result<Self, ReadError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| ReadError::Client(e.to_string()))?;
        Ok(Self { base, http })
    }

    pub fn base(&self) -> &url::Url {
        &self.base
    }

    async fn get(&self, path: &str, params: &[(&str, String)]) -> Result<Vec<Series>, ReadError> {
        let mut url = self.base.clone();
        // The base may have a path of its own (a proxy's prefix).
        let prefix = url.path().trim_end_matches('/').to_string();
        url.set_path(&format!("{prefix}{path}"));
        let shown = self.base.to_string();
        let resp = self
            .http
            .get(url)
            .query(params)
            .send()
            .await
            .map_err(|e| ReadError::Unreachable { url: shown.clone(), why: e.to_string() })?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| ReadError::Unreachable { url: shown.clone(), why: e.to_string() })?;
        let answer: Answer = serde_json::from_slice(&body)
            .map_err(|e| ReadError::NotPrometheus { url: shown.clone(), why: format!("HTTP {status}, {e}") })?;
        if answer.status != "success" {
            return Err(ReadError::Refused {
                url: shown,
                status: status.as_u16(),
                message: answer.error.unwrap_or_default().chars().take(300).collect(),
            });
        }
        Ok(answer.data.map(|d| d.result).unwrap_or_default())
    }

    async fn instant(&self, query: String, at_ms: i64) -> Result<Vec<Series>, ReadError> {
        self.get("/api/v1/query", &[("query", query), ("time", prom_time(at_ms))]).await
    }

    /// The newest value of one series, if it is newer than `since`.
    pub async fn latest_value(&self, resource: &str, metric: &str, since: i64) -> Result<Option<f64>, ReadError> {
        let now = crate::store::now_ms();
        let q = format!("last_over_time({}[{}])", selector(resource, metric), range(now - since));
        let r = self.instant(q, now).await?;
        Ok(r.first().and_then(|s| s.value.as_ref()).and_then(|(_, v)| number(v)))
    }

    /// The average of one series since `since`, if it has samples then.
    pub async fn average_since(&self, resource: &str, metric: &str, since: i64) -> Result<Option<f64>, ReadError> {
        let now = crate::store::now_ms();
        let q = format!("avg_over_time({}[{}])", selector(resource, metric), range(now - since));
        let r = self.instant(q, now).await?;
        Ok(r.first().and_then(|s| s.value.as_ref()).and_then(|(_, v)| number(v)))
    }

    /// The average per `step_ms` over `[from, to)`, a point per step that
    /// has samples, stamped with the step's start as the embedded store does.
    pub async fn query_series(
        &self,
        resource: &str,
        metric: &str,
        from: i64,
        to: i64,
        step_ms: i64,
    ) -> Result<Vec<MetricPoint>, ReadError> {
        let step_ms = step_ms.max(1);
        // Evaluated at each step's end, avg_over_time covers (start, end].
        let q = format!("avg_over_time({}[{}])", selector(resource, metric), range(step_ms));
        let last_start = from + ((to - from - 1).max(0) / step_ms) * step_ms;
        let params = [
            ("query", q),
            ("start", prom_time(from + step_ms)),
            ("end", prom_time(last_start + step_ms)),
            ("step", format!("{}ms", step_ms)),
        ];
        let r = self.get("/api/v1/query_range", &params).await?;
        let mut points: Vec<MetricPoint> = r
            .first()
            .map(|s| {
                s.values
                    .iter()
                    .filter_map(|(t, v)| {
                        Some(MetricPoint { at_ms: (t * 1000.0).round() as i64 - step_ms, value: number(v)? })
                    })
                    .collect()
            })
            .unwrap_or_default();
        points.sort_by_key(|p| p.at_ms);
        Ok(points)
    }

    /// The newest value of each of `resource`'s series in the last
    /// [`LATEST_WINDOW_MS`], with its own timestamp, sorted by metric.
    pub async fn latest_of(&self, resource: &str) -> Result<Vec<MetricLatest>, ReadError> {
        let now = crate::store::now_ms();
        let q = format!("{{__name__=~\"nubo_.+\",resource={}}}[{}]", quoted(resource), range(LATEST_WINDOW_MS));
        let r = self.instant(q, now).await?;
        let mut out: Vec<MetricLatest> = r
            .into_iter()
            .filter_map(|s| {
                let metric = s.metric.get("metric")?.clone();
                let (t, v) = s.values.last()?;
                Some(MetricLatest { metric, at_ms: (t * 1000.0).round() as i64, value: number(v)? })
            })
            .collect();
        out.sort_by(|a, b| a.metric.cmp(&b.metric));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_quote_what_they_carry() {
        assert_eq!(
            selector("i-0123456789abcdef0", "cpu_percent"),
            "nubo_cpu_percent{metric=\"cpu_percent\",resource=\"i-0123456789abcdef0\"}"
        );
        assert_eq!(quoted("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(prom_time(1_700_000_000_123), "1700000000.123");
        assert_eq!(range(0), "1ms");
    }
}
