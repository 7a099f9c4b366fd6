//! What a replay measured: counts by outcome, throughput and latency
//! percentiles, as text for people and JSON for scripts.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// The longest latency the histogram tells apart: an hour, in microseconds.
/// Longer ones are recorded as an hour rather than lost.
const MAX_MICROS: u64 = 3_600_000_000;

/// Latencies in microseconds, with 3 significant digits: any percentile
/// read back is within 0.1% of the sample it stands for.
#[derive(Debug, Clone)]
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        // The bounds are constants that hdrhistogram accepts.
        Self(Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds"))
    }
}

impl Latencies {
    /// Records one latency.
    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.0.saturating_record(micros.clamp(1, MAX_MICROS));
    }

    /// Adds another set of latencies to this one.
    pub fn merge(&mut self, other: &Latencies) {
        // Both have the same bounds, so adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    /// How many latencies were recorded.
    pub fn len(&self) -> u64 {
        self.0.len()
    }

    /// Whether none were recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The latency at quantile `q` (0..=1), in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.0.value_at_quantile(q) as f64 / 1000.0
    }

    /// The largest latency, in milliseconds.
    pub fn max_ms(&self) -> f64 {
        self.0.max() as f64 / 1000.0
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    #[serde(rename = "p99.9")]
    pub p99_9: f64,
    /// The largest.
    pub max: f64,
}

impl From<&Latencies> for Percentiles {
    fn from(l: &Latencies) -> Self {
        Self {
            p50: l.quantile_ms(0.5),
            p90: l.quantile_ms(0.9),
            p99: l.quantile_ms(0.99),
            p99_9: l.quantile_ms(0.999),
            max: l.max_ms(),
        }
    }
}

/// The final report of a replay.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Where the messages went (`http://...` or `mqtt://...`).
    pub target: String,
    /// The pacing asked for, in words (`rate 1000/s`, `recorded x2`, `max`).
    pub pacing: String,
    /// Messages sent (a request written or a PUBLISH handed to the client).
    pub sent: u64,
    /// Answers by outcome: an HTTP status (`200`, `503`), `puback`, or
    /// `error` for a connection that failed before an answer.
    pub outcomes: BTreeMap<String, u64>,
    /// Messages acknowledged: HTTP 2xx or an MQTT PUBACK.
    pub acknowledged: u64,
    /// Messages of the input that could not be sent, with why (for MQTT, a
    /// message without an identity to build a topic from).
    pub skipped: u64,
    /// Seconds from the first send to the last answer.
    pub seconds: f64,
    /// Messages sent per second over `seconds`.
    pub sent_per_second: f64,
    /// Messages acknowledged per second over `seconds`.
    pub acknowledged_per_second: f64,
    /// Latency from when each message was due (open loop) or sent (as fast
    /// as possible) to its answer, in milliseconds.
    pub latency_ms: Percentiles,
}

impl Report {
    /// Builds the report from the raw tallies.
    pub fn new(
        target: String,
        pacing: String,
        outcomes: BTreeMap<String, u64>,
        skipped: u64,
        elapsed: Duration,
        latencies: &Latencies,
    ) -> Self {
        let sent = outcomes.values().sum();
        let acknowledged = outcomes
            .iter()
            .filter(|(k, _)| k.starts_with('2') || k.as_str() == "puback")
            .map(|(_, v)| v)
            .sum();
        let seconds = elapsed.as_secs_f64();
        let per_second = |n: u64| {
            if seconds > 0.0 {
                n as f64 / seconds
            } else {
                0.0
            }
        };
        Self {
            target,
            pacing,
            sent,
            acknowledged,
            sent_per_second: per_second(sent),
            acknowledged_per_second: per_second(acknowledged),
            outcomes,
            skipped,
            seconds,
            latency_ms: latencies.into(),
        }
    }

    /// The report as one JSON document.
    pub fn to_json(&self) -> String {
        // A struct of numbers, strings and a string-keyed map cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let l = &self.latency_ms;
        writeln!(f, "target        {} ({})", self.target, self.pacing)?;
        let outcomes: Vec<String> = self
            .outcomes
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        writeln!(
            f,
            "sent          {} in {:.2} s ({:.0}/s); skipped {}",
            self.sent, self.seconds, self.sent_per_second, self.skipped
        )?;
        writeln!(f, "answers       {}", outcomes.join(", "))?;
        writeln!(
            f,
            "acknowledged  {} ({:.0}/s)",
            self.acknowledged, self.acknowledged_per_second
        )?;
        write!(
            f,
            "latency ms    p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            l.p50, l.p90, l.p99, l.p99_9, l.max
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The exact quantile of sorted samples, as HDR defines it: the
    /// smallest sample with at least q of all samples at or below it.
    fn exact(sorted: &[u64], q: f64) -> u64 {
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    proptest! {
        #[test]
        fn percentiles_match_the_raw_samples(samples in prop::collection::vec(1u64..5_000_000, 1..2000)) {
            let mut l = Latencies::default();
            for &s in &samples {
                l.record(Duration::from_micros(s));
            }
            let mut sorted = samples.clone();
            sorted.sort_unstable();
            for q in [0.5, 0.9, 0.99, 0.999, 1.0] {
                let want = exact(&sorted, q) as f64;
                let got = l.quantile_ms(q) * 1000.0;
                // Three significant digits: within 0.1% (plus the 1 µs unit).
                prop_assert!((got - want).abs() <= want * 0.001 + 1.0, "q={q} got {got} want {want}");
            }
            prop_assert_eq!(l.len(), samples.len() as u64);
        }
    }

    #[test]
    fn acknowledged_counts_2xx_and_pubacks() {
        let mut l = Latencies::default();
        l.record(Duration::from_millis(2));
        let outcomes = BTreeMap::from([
            ("200".to_owned(), 90),
            ("503".to_owned(), 8),
            ("error".to_owned(), 2),
        ]);
        let r = Report::new(
            "http://x/pub".into(),
            "max".into(),
            outcomes,
            1,
            Duration::from_secs(2),
            &l,
        );
        assert_eq!((r.sent, r.acknowledged, r.skipped), (100, 90, 1));
        assert_eq!((r.sent_per_second, r.acknowledged_per_second), (50.0, 45.0));
        assert_eq!(r.latency_ms.p50, 2.0);
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(json["outcomes"]["503"], 8);
        assert_eq!(json["latency_ms"]["p99.9"], 2.0);
        let mqtt = Report::new(
            "mqtt://b".into(),
            "max".into(),
            BTreeMap::from([("puback".to_owned(), 7)]),
            0,
            Duration::from_secs(1),
            &l,
        );
        assert_eq!(mqtt.acknowledged, 7);
    }
}
