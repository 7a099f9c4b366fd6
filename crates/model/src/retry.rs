//! The one backoff every retry loop uses (sink commits, ClickHouse inserts,
//! MQTT reconnects): exponential from `first`, with jitter so that many
//! clients retrying after one outage spread out, never above `max`, and
//! no limit on attempts: data waits, it is never dropped.

use std::time::Duration;

use backon::BackoffBuilder;

/// The delays before each retry: a base of `first`, doubling up to half
/// of `max`, each with jitter (backon's `ExponentialBuilder` adds up to the
/// base again at random), so every delay lies in `[base, 2 × base]` and
/// never above `max`. Never ends.
pub fn backoff(first: Duration, max: Duration) -> impl Iterator<Item = Duration> + Send {
    backon::ExponentialBuilder::new()
        .with_min_delay(first)
        .with_max_delay((max / 2).max(first))
        .with_jitter()
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_with_jitter_and_never_end() {
        let first = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        let delays: Vec<Duration> = backoff(first, max).take(50).collect();
        assert_eq!(delays.len(), 50);
        // Bases: 100, 200, 400, 800, then 1000 ms.
        for (i, d) in delays.iter().enumerate() {
            let base = (first * 2u32.pow(i.min(5) as u32)).min(max / 2);
            assert!(
                *d >= base && *d <= base * 2,
                "retry {i}: {d:?} against {base:?}"
            );
        }
    }
}
