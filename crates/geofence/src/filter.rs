//! Position filters: the fixes no phone means, set aside with a reason.
//!
//! Real phones send 0,0 when the GPS has no fix, clocks a year ahead,
//! fixes hundreds of kilometres off from a bad cell tower, the same fix
//! again with a new time, jitter around a parked car. A fix set aside is
//! still stored, with its reason in `filtered` (nothing is lost), but kept
//! out of fence evaluation, trips and stops, last positions and events.
//!
//! The rules (Traccar's set; each off at 0 unless said):
//! - `invalid`: coordinates out of range or not finite (always on);
//! - `zero`: exactly 0,0 (on);
//! - `future`: dated more than `future_s` after the server's clock
//!   (on, a day);
//! - `past`: dated more than `past_s` before it;
//! - `accuracy`: an accuracy radius worse than `max_accuracy_m`;
//! - `duplicate`: the same coordinates as the last fix taken, again within
//!   `duplicate_s`;
//! - `period`: less than `min_period_s` after the last fix taken;
//! - `static`: less than `min_distance_m` from the last fix taken (drift
//!   around a parked device);
//! - `speed`: reached from the last fix taken at more than
//!   max(`max_speed_kmh`, `median_factor` × the device's median speed
//!   over its last 8 segments) (on: 1,000 km/h, Dawarich's rule). Two fixes
//!   in a row that agree with each other outvote the last one taken: the
//!   second is taken (the device really is there; the jump was the
//!   earlier fix's), so one bad fix cannot lock a device out.
//!
//! Pure: the verdict depends on the fix, the device's [`FilterState`] and
//! the time given. The rules that look at the last fix taken apply only to
//! a fix newer than it; a late or redelivered fix gets the verdict of the
//! rules on its own (the same one a redelivery got first, unless another
//! fix came between).

use otstream_model::{ConfigError, Position};
use serde::{Deserialize, Serialize};

/// Why a fix was set aside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Out of range or not finite.
    Invalid,
    /// Exactly 0,0.
    Zero,
    /// Too far in the future.
    Future,
    /// Too far in the past.
    Past,
    /// Accuracy radius too large.
    Accuracy,
    /// The last fix again.
    Duplicate,
    /// Too soon after the last fix.
    Period,
    /// Too close to the last fix.
    Static,
    /// An implausible jump.
    Speed,
}

impl Reason {
    /// Every reason, for metrics.
    pub const ALL: [Reason; 9] = [
        Reason::Invalid,
        Reason::Zero,
        Reason::Future,
        Reason::Past,
        Reason::Accuracy,
        Reason::Duplicate,
        Reason::Period,
        Reason::Static,
        Reason::Speed,
    ];

    /// The name stored in `filtered`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Invalid => "invalid",
            Reason::Zero => "zero",
            Reason::Future => "future",
            Reason::Past => "past",
            Reason::Accuracy => "accuracy",
            Reason::Duplicate => "duplicate",
            Reason::Period => "period",
            Reason::Static => "static",
            Reason::Speed => "speed",
        }
    }
}

/// `[filters]`: which rules run and their limits. The defaults catch only
/// what no phone means: 0,0, a day ahead, 1,000 km/h.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilterConfig {
    /// Off: every fix is taken.
    pub enabled: bool,
    /// Set aside 0,0.
    pub zero: bool,
    /// Seconds ahead of the server's clock a fix may be dated; 0 is off.
    pub future_s: u64,
    /// Seconds behind it; 0 is off (imports and phones that were offline
    /// send old fixes).
    pub past_s: u64,
    /// Largest accuracy radius taken, metres; 0 is off.
    pub max_accuracy_m: u32,
    /// Speed from the last fix above which a fix is a jump, km/h; 0 is off.
    pub max_speed_kmh: f64,
    /// ... unless below this many times the device's median speed.
    pub median_factor: f64,
    /// Window in which the same coordinates again are a duplicate, s; 0 is
    /// off.
    pub duplicate_s: u64,
    /// Shortest time between fixes taken, s; 0 is off.
    pub min_period_s: u64,
    /// Shortest distance between fixes taken, metres; 0 is off.
    pub min_distance_m: f64,
}

impl Default for FilterConfig {
    fn default() -> Self {
        FilterConfig {
            enabled: true,
            zero: true,
            future_s: 86_400,
            past_s: 0,
            max_accuracy_m: 0,
            max_speed_kmh: 1000.0,
            median_factor: 3.0,
            duplicate_s: 0,
            min_period_s: 0,
            min_distance_m: 0.0,
        }
    }
}

impl FilterConfig {
    /// Checks the limits make sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.max_speed_kmh >= 0.0 && self.max_speed_kmh.is_finite()) {
            return Err(ConfigError::new(
                "filters.max_speed_kmh",
                "filters.max_speed_kmh must be 0 (off) or a positive speed in km/h",
            ));
        }
        if !(self.median_factor >= 0.0 && self.median_factor.is_finite()) {
            return Err(ConfigError::new(
                "filters.median_factor",
                "filters.median_factor must be a non-negative number",
            ));
        }
        if !(self.min_distance_m >= 0.0 && self.min_distance_m.is_finite()) {
            return Err(ConfigError::new(
                "filters.min_distance_m",
                "filters.min_distance_m must be 0 (off) or a positive number of metres",
            ));
        }
        Ok(())
    }
}

/// Segments whose speeds make a device's median.
const SPEEDS: usize = 8;

/// A fix as the filters remember it: time, latitude, longitude.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Seen(i64, f64, f64);

/// What the filters remember of a device: about 100 bytes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FilterState {
    /// The last fix taken.
    #[serde(rename = "l", default, skip_serializing_if = "Option::is_none")]
    last: Option<Seen>,
    /// The last fix set aside as a jump, which the next may confirm.
    #[serde(rename = "j", default, skip_serializing_if = "Option::is_none")]
    jump: Option<Seen>,
    /// Speeds of the last segments between fixes taken, whole km/h, newest
    /// last: whole numbers keep the state (written with every fix) short
    /// and cheap to write, and a median needs no finer.
    #[serde(rename = "v", default, skip_serializing_if = "Vec::is_empty")]
    speeds: Vec<u16>,
}

/// The filters of a [`FilterConfig`].
#[derive(Debug, Clone, Copy)]
pub struct Filters {
    config: FilterConfig,
}

impl Filters {
    /// The filters `config` asks for.
    pub fn new(config: FilterConfig) -> Self {
        Filters { config }
    }

    /// The verdict on `p`, at `now` (UNIX seconds), updating `state`: `None`
    /// when it is taken.
    pub fn check(&self, state: &mut FilterState, p: &Position, now: i64) -> Option<Reason> {
        let c = &self.config;
        if !c.enabled {
            return None;
        }
        if !(p.lat.is_finite() && p.lon.is_finite() && p.lat.abs() <= 90.0 && p.lon.abs() <= 180.0)
        {
            return Some(Reason::Invalid);
        }
        if c.zero && p.lat == 0.0 && p.lon == 0.0 {
            return Some(Reason::Zero);
        }
        if c.future_s > 0 && p.tst > now.saturating_add(c.future_s as i64) {
            return Some(Reason::Future);
        }
        if c.past_s > 0 && p.tst < now.saturating_sub(c.past_s as i64) {
            return Some(Reason::Past);
        }
        if c.max_accuracy_m > 0 && p.acc.is_some_and(|a| a > c.max_accuracy_m as i32) {
            return Some(Reason::Accuracy);
        }
        let fix = Seen(p.tst, p.lat, p.lon);
        let Some(last) = state.last else {
            state.last = Some(fix);
            return None;
        };
        if p.tst <= last.0 {
            // Late or redelivered: nothing to compare it with.
            return None;
        }
        let dt = (p.tst - last.0) as f64;
        let metres = haversine_m(&last, &fix);
        if c.duplicate_s > 0
            && p.tst - last.0 <= c.duplicate_s as i64
            && p.lat == last.1
            && p.lon == last.2
        {
            return Some(Reason::Duplicate);
        }
        if c.min_period_s > 0 && p.tst - last.0 < c.min_period_s as i64 {
            return Some(Reason::Period);
        }
        if c.min_distance_m > 0.0 && metres < c.min_distance_m {
            return Some(Reason::Static);
        }
        let kmh = metres / dt * 3.6;
        if c.max_speed_kmh > 0.0 {
            let limit = c.max_speed_kmh.max(c.median_factor * median(&state.speeds));
            if kmh > limit {
                // The fix before this one was a jump too, and this one
                // agrees with it: the device is there.
                let confirms = state.jump.is_some_and(|j| {
                    j.0 < p.tst && haversine_m(&j, &fix) / (p.tst - j.0) as f64 * 3.6 <= limit
                });
                if !confirms {
                    state.jump = Some(fix);
                    return Some(Reason::Speed);
                }
                // A relocation, not a speed: it does not count in the median.
                state.jump = None;
                state.last = Some(fix);
                return None;
            }
        }
        state.jump = None;
        state.last = Some(fix);
        if state.speeds.len() == SPEEDS {
            state.speeds.remove(0);
        }
        state
            .speeds
            .push(kmh.round().min(f64::from(u16::MAX)) as u16);
        None
    }
}

/// The median of `speeds` (0 for none).
fn median(speeds: &[u16]) -> f64 {
    if speeds.is_empty() {
        return 0.0;
    }
    let mut s: smallvec::SmallVec<[u16; SPEEDS]> = speeds.iter().copied().collect();
    s.sort_unstable();
    let mid = s.len() / 2;
    if s.len() % 2 == 1 {
        f64::from(s[mid])
    } else {
        (f64::from(s[mid - 1]) + f64::from(s[mid])) / 2.0
    }
}

/// Great-circle distance, metres: a filter's threshold needs no more.
fn haversine_m(a: &Seen, b: &Seen) -> f64 {
    use geo::{Distance, Haversine, Point};
    Haversine.distance(Point::new(a.2, a.1), Point::new(b.2, b.1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use otstream_model::{Meta, Transport};

    fn fix(tst: i64, lat: f64, lon: f64) -> Position {
        let meta = Meta {
            user: "u".into(),
            device: "d".into(),
            tid: None,
            received_at: 0,
            transport: Transport::Http,
            topic: None,
        };
        Position::at(meta, tst, lat, lon)
    }

    const NOW: i64 = 1_700_100_000;

    fn verdicts(config: FilterConfig, track: &[Position]) -> Vec<Option<&'static str>> {
        let filters = Filters::new(config);
        let mut state = FilterState::default();
        track
            .iter()
            .map(|p| filters.check(&mut state, p, NOW).map(Reason::as_str))
            .collect()
    }

    #[test]
    fn defaults_catch_zero_far_future_and_jumps_only() {
        let t0 = 1_700_000_000;
        // Walking along a street in Lyon, a fix a minute: about 5 km/h.
        let track = [
            fix(t0, 45.7600, 4.8350),
            fix(t0 + 60, 45.7607, 4.8350),
            fix(t0 + 120, 0.0, 0.0),
            fix(t0 + 180, 45.7614, 4.8350),
            // 500 km away a minute later.
            fix(t0 + 240, 49.9, 2.3),
            fix(t0 + 300, 45.7621, 4.8350),
            // The same again, and a year ahead.
            fix(t0 + 360, 45.7621, 4.8350),
            fix(t0 + 365 * 86_400, 45.7628, 4.8350),
            // Late: compared with nothing.
            fix(t0 + 30, 45.7603, 4.8350),
            fix(t0 + 420, 45.7628, 4.8350),
        ];
        assert_eq!(
            verdicts(FilterConfig::default(), &track),
            [
                None,
                None,
                Some("zero"),
                None,
                Some("speed"),
                None,
                None,
                Some("future"),
                None,
                None
            ]
        );
        let strict = FilterConfig {
            duplicate_s: 300,
            max_accuracy_m: 100,
            past_s: 86_400 * 30,
            ..FilterConfig::default()
        };
        let mut bad_acc = fix(t0 + 480, 45.7635, 4.8350);
        bad_acc.acc = Some(2_000);
        let more = [
            fix(t0, 45.7600, 4.8350),
            fix(t0 + 60, 45.7600, 4.8350),
            bad_acc,
            fix(NOW - 86_400 * 31, 45.7600, 4.8350),
            fix(t0 + 540, 45.7642, 4.8350),
        ];
        assert_eq!(
            verdicts(strict, &more),
            [
                None,
                Some("duplicate"),
                Some("accuracy"),
                Some("past"),
                None
            ]
        );
    }

    #[test]
    fn two_fixes_that_agree_outvote_a_bad_last_fix() {
        let t0 = 1_700_000_000;
        // The first fix taken was the bad one (a cell fix in Paris); the
        // device is in Lyon and keeps saying so.
        let track = [
            fix(t0, 48.8566, 2.3522),
            fix(t0 + 60, 45.7600, 4.8350),
            fix(t0 + 120, 45.7607, 4.8350),
            fix(t0 + 180, 45.7614, 4.8350),
        ];
        assert_eq!(
            verdicts(FilterConfig::default(), &track),
            [None, Some("speed"), None, None]
        );
    }

    #[test]
    fn the_median_raises_the_limit_for_fast_devices_and_period_static_apply() {
        // A plane at 900 km/h: 15 km a minute (0.135° of latitude).
        let t0 = 1_700_000_000;
        let mut plane: Vec<Position> = (0..10)
            .map(|i| fix(t0 + 60 * i, 40.0 + 0.135 * i as f64, 0.0))
            .collect();
        // 1,500 km/h for one minute: above 1,000, under 3 × 900.
        plane.push(fix(t0 + 600, 40.0 + 0.135 * 9.0 + 0.225, 0.0));
        let v = verdicts(FilterConfig::default(), &plane);
        assert!(v.iter().all(Option::is_none), "{v:?}");
        let config = FilterConfig {
            min_period_s: 30,
            min_distance_m: 20.0,
            ..FilterConfig::default()
        };
        let track = [
            fix(t0, 45.7600, 4.8350),
            fix(t0 + 10, 45.7610, 4.8350),
            fix(t0 + 60, 45.76005, 4.8350),
            fix(t0 + 120, 45.7610, 4.8350),
        ];
        assert_eq!(
            verdicts(config, &track),
            [None, Some("period"), Some("static"), None]
        );
        let off = FilterConfig {
            enabled: false,
            ..FilterConfig::default()
        };
        assert_eq!(verdicts(off, &[fix(t0, 0.0, 0.0)]), [None]);
    }
}
