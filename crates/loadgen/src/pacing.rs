//! When each message of a replay is due.
//!
//! Open-loop pacing (a fixed rate, or the recorded pacing scaled) fixes every
//! message's due time before anything is sent, so a slow server shows up as
//! latency measured from the due time rather than as fewer messages sent: no
//! coordinated omission. Closed-loop pacing (as fast as possible) has no due
//! times; latency is measured from the moment of sending.

use std::time::Duration;

/// How fast to send.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pacing {
    /// A fixed rate, messages per second.
    Rate(f64),
    /// The gaps between the recorded `received_at` times, divided by this
    /// factor (2.0 replays twice as fast as recorded).
    Recorded(f64),
    /// Back to back on every connection: each sends its next message when
    /// the previous one is answered.
    Max,
}

impl Pacing {
    /// Refuses rates and factors that are not positive and finite.
    pub fn validate(self) -> Result<Self, String> {
        match self {
            Pacing::Rate(r) if !(r.is_finite() && r > 0.0) => {
                Err(format!("rate must be a positive number, not {r}"))
            }
            Pacing::Recorded(s) if !(s.is_finite() && s > 0.0) => {
                Err(format!("speed must be a positive number, not {s}"))
            }
            p => Ok(p),
        }
    }
}

impl std::fmt::Display for Pacing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pacing::Rate(r) => write!(f, "rate {r}/s"),
            Pacing::Recorded(s) => write!(f, "recorded pacing x{s}"),
            Pacing::Max => write!(f, "as fast as possible"),
        }
    }
}

/// Turns a stream of messages into due times, as offsets from the start.
#[derive(Debug)]
pub struct Schedule {
    pacing: Pacing,
    sent: u64,
    first_received_at: Option<i64>,
    last: Duration,
}

impl Schedule {
    /// A schedule for `pacing`.
    pub fn new(pacing: Pacing) -> Self {
        Self {
            pacing,
            sent: 0,
            first_received_at: None,
            last: Duration::ZERO,
        }
    }

    /// The due time of the next message, recorded at `received_at` (ms), or
    /// `None` when pacing is closed-loop. Due times never go backwards, even
    /// when a recording's clock does.
    pub fn next(&mut self, received_at: i64) -> Option<Duration> {
        let due = match self.pacing {
            Pacing::Max => return None,
            Pacing::Rate(rate) => Duration::from_secs_f64(self.sent as f64 / rate),
            Pacing::Recorded(speed) => {
                let first = *self.first_received_at.get_or_insert(received_at);
                let gap_ms = received_at.saturating_sub(first).max(0) as f64;
                Duration::from_secs_f64(gap_ms / 1000.0 / speed)
            }
        };
        self.sent += 1;
        self.last = self.last.max(due);
        Some(self.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_spaces_messages_evenly() {
        let mut s = Schedule::new(Pacing::Rate(1000.0));
        let due: Vec<_> = (0..4).map(|_| s.next(0).unwrap()).collect();
        assert_eq!(
            due,
            [0, 1, 2, 3].map(Duration::from_millis).to_vec(),
            "1000/s is one every millisecond, whatever was recorded"
        );
    }

    #[test]
    fn recorded_pacing_is_scaled_and_never_goes_backwards() {
        let mut s = Schedule::new(Pacing::Recorded(2.0));
        let due: Vec<_> = [10_000, 11_000, 14_000, 13_000, 16_000]
            .map(|at| s.next(at).unwrap())
            .to_vec();
        assert_eq!(
            due,
            [0, 500, 2000, 2000, 3000]
                .map(Duration::from_millis)
                .to_vec()
        );
    }

    #[test]
    fn max_has_no_due_times_and_bad_numbers_are_refused() {
        assert_eq!(Schedule::new(Pacing::Max).next(5), None);
        assert!(Pacing::Rate(0.0).validate().is_err());
        assert!(Pacing::Recorded(f64::NAN).validate().is_err());
        assert_eq!(Pacing::Rate(5.0).validate(), Ok(Pacing::Rate(5.0)));
    }
}
