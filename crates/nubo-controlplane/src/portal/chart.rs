//! Line charts of metric series as inline SVG, drawn on the server so the
//! portal needs no charting library and no script to show them. Series
//! are drawn as paths broken where samples are missing (a stopped
//! instance shows a gap, not a line across it).

use nubo_api::monitoring::MetricPoint;
use std::fmt::Write;

/// One line of a chart.
pub struct Line<'a> {
    pub label: &'a str,
    pub points: &'a [MetricPoint],
}

/// How a chart's values are written.
#[derive(Debug, Clone, Copy)]
pub enum Unit {
    Percent,
    BytesPerSecond,
}

impl Unit {
    pub fn format(self, v: f64) -> String {
        match self {
            Unit::Percent => format!("{v:.0}%"),
            Unit::BytesPerSecond => format!("{}/s", super::html::bytes(v)),
        }
    }
}

const W: f64 = 640.0;
const H: f64 = 180.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 24.0;

/// The smallest "round" number (1, 2 or 5 times a power of ten) at or above `v`.
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn clock(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.format("%H:%M").to_string()).unwrap_or_default()
}

/// An SVG chart of `lines` over `[from, to]`; `step_ms` is the series'
/// step, and a gap of more than three steps breaks the line.
pub fn svg(title: &str, unit: Unit, lines: &[Line], from: i64, to: i64, step_ms: i64) -> String {
    let max_seen = lines.iter().flat_map(|l| l.points.iter().map(|p| p.value)).fold(0.0f64, f64::max);
    let top = match unit {
        Unit::Percent => nice_ceiling(max_seen.max(10.0)).min(100.0).max(max_seen),
        _ => nice_ceiling(max_seen),
    };
    let span = (to - from).max(1) as f64;
    let x = |at: i64| LEFT + (at - from) as f64 / span * (W - LEFT - RIGHT);
    let y = |v: f64| TOP + (1.0 - (v / top).clamp(0.0, 1.0)) * (H - TOP - BOTTOM);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{t}" data-chart="{t}" xmlns="http://www.w3.org/2000/svg"><title>{t}</title>"#,
        t = escape(title)
    );
    for frac in [0.0, 0.5, 1.0] {
        let gy = y(top * frac);
        let _ = write!(
            s,
            r#"<line class="grid" x1="{LEFT}" x2="{}" y1="{gy:.1}" y2="{gy:.1}"/><text class="axis" x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            W - RIGHT,
            LEFT - 6.0,
            gy + 4.0,
            escape(&unit.format(top * frac))
        );
    }
    let _ = write!(
        s,
        r#"<text class="axis" x="{LEFT}" y="{}">{}</text><text class="axis" x="{}" y="{}" text-anchor="end">{}</text>"#,
        H - 6.0,
        clock(from),
        W - RIGHT,
        H - 6.0,
        clock(to)
    );
    let gap = step_ms.max(1000) * 3;
    for (i, line) in lines.iter().enumerate() {
        let mut d = String::new();
        let mut last: Option<i64> = None;
        for p in line.points.iter().filter(|p| p.value.is_finite() && p.at_ms >= from && p.at_ms <= to) {
            let cmd = if last.is_some_and(|l| p.at_ms - l <= gap) { 'L' } else { 'M' };
            let _ = write!(d, "{cmd}{:.1},{:.1} ", x(p.at_ms), y(p.value));
            last = Some(p.at_ms);
        }
        if !d.is_empty() {
            let _ = write!(s, r#"<path class="series s{i}" d="{}"/>"#, d.trim_end());
        }
    }
    if lines.iter().all(|l| l.points.is_empty()) {
        let _ = write!(
            s,
            r#"<text class="empty" x="{}" y="{}" text-anchor="middle">no samples yet</text>"#,
            (LEFT + W - RIGHT) / 2.0,
            H / 2.0
        );
    }
    s.push_str("</svg>");
    s
}

/// The legend under a chart: each line's label and its newest value.
pub fn legend(unit: Unit, lines: &[Line]) -> String {
    let mut s = String::from(r#"<ul class="legend">"#);
    for (i, l) in lines.iter().enumerate() {
        let latest = l.points.last().map(|p| unit.format(p.value)).unwrap_or_else(|| "-".into());
        let _ = write!(s, r#"<li class="s{i}">{}: <b>{}</b></li>"#, escape(l.label), escape(&latest));
    }
    s.push_str("</ul>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pts(v: &[(i64, f64)]) -> Vec<MetricPoint> {
        v.iter().map(|&(at_ms, value)| MetricPoint { at_ms, value }).collect()
    }

    #[test]
    fn round_ceilings() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(3.0), 5.0);
        assert_eq!(nice_ceiling(12.0), 20.0);
        assert_eq!(nice_ceiling(51.0), 100.0);
        assert_eq!(nice_ceiling(1e6 + 1.0), 2e6);
    }

    #[test]
    fn a_gap_breaks_the_line() {
        let p = pts(&[(0, 10.0), (10_000, 20.0), (100_000, 30.0), (110_000, 40.0)]);
        let s = svg("cpu", Unit::Percent, &[Line { label: "cpu", points: &p }], 0, 120_000, 10_000);
        let d = s.split("d=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or_default().to_string();
        assert_eq!(d.matches('M').count(), 2, "{d}");
        assert_eq!(d.matches('L').count(), 2, "{d}");
        assert!(s.contains("100%") || s.contains("50%"));
    }

    #[test]
    fn empty_charts_say_so_and_titles_are_escaped() {
        let s = svg("<x>", Unit::BytesPerSecond, &[Line { label: "rx", points: &[] }], 0, 60_000, 1000);
        assert!(s.contains("no samples yet"));
        assert!(!s.contains("<x>"));
        let l = legend(Unit::BytesPerSecond, &[Line { label: "rx", points: &pts(&[(0, 2048.0)]) }]);
        assert!(l.contains("2.0 KiB/s"), "{l}");
    }

    #[test]
    fn values_are_placed_inside_the_plot() {
        let p = pts(&[(0, 0.0), (60_000, 100.0)]);
        let s = svg("cpu", Unit::Percent, &[Line { label: "cpu", points: &p }], 0, 60_000, 30_000);
        // 0% at the bottom of the plot, 100% at its top.
        assert!(s.contains(&format!("M{LEFT:.1},{:.1}", H - BOTTOM)), "{s}");
        assert!(s.contains(&format!("L{:.1},{TOP:.1}", W - RIGHT)), "{s}");
    }
}
