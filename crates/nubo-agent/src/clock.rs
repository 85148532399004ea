//! Wall-clock times as the control plane records them (milliseconds since
//! the Unix epoch), for events, results and samples.

use std::time::Instant;

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Wall-clock time of a monotonic instant (for events seen earlier).
pub(crate) fn ms_at(at: Instant) -> i64 {
    now_ms() - at.elapsed().as_millis() as i64
}
