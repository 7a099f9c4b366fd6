//! Trips and stops, per device, from its positions in order; and the
//! places its stops are visits of ([`places`]).
//!
//! In: one device's fixes (time, place, and what the fix says about
//! itself: accuracy and reported speed), in order, through
//! [`Detector::on_fix`] with that device's [`TripState`]. Out: finished
//! [`TripSummary`]s and [`StopSummary`]s. Pure: no I/O, no clock; the
//! geofence stage runs it beside the fence evaluation and persists the
//! state with what it derived, so a restart anywhere gives what an
//! uninterrupted run gives.
//!
//! Phones are noisy: a parked phone reports a Wi-Fi fix 400 m away with
//! `acc` 600, a cell fix kilometres off, GPS jitter of tens of metres; a
//! walk starts slowly inside the radius that a stay is measured by. So:
//! - A device *stays* while its fixes are within `min_distance_m` of the
//!   stay's centre, or their accuracy circle still reaches that distance.
//!   The centre is the mean of the stay's settled fixes weighted by
//!   `1/acc²`: a fix far worse than the others weighs little, and a fix
//!   on the move does not pull it.
//! - A fix is *moving* when its reported `vel` is at least `moving_kmh`
//!   (or, without `vel`, the segment to it is, less the accuracies);
//!   otherwise it is *settled*. A stay whose settled fixes span
//!   `min_stop_s` is a stop: from the first settled fix (the arrival) to
//!   the last (the departure).
//! - Leaving takes a fix out of the stay that is clearly moving (`vel` at
//!   least `moving_kmh`, at a plausible speed from the last fix), or two
//!   fixes out in a row that agree with each other. A lone fix out and
//!   back, or one implying more than `max_kmh`, is an outlier: it is
//!   dropped and counts nowhere.
//! - A trip runs from the departure to the arrival. The departure time is
//!   estimated from the first moving fix and its speed (between the last
//!   settled fix and it), the arrival from the last moving fix and its
//!   speed (between it and the first settled fix), so a trip starts and
//!   ends when the device left and arrived even when the parked phone
//!   pinged every quarter of an hour. Its ends lie at the stays' centres
//!   and its distance runs along every fix from the last settled fix of
//!   the stop it left to the first of the stop it reached: the first and
//!   last hundred metres included.
//! - A move within a stop that stays within reach of it (a walk across
//!   the car park, a drift at walking pace) followed by a rest of
//!   `min_stop_s` there, up to a fix or up to when it left, is part of the
//!   stop, which goes on at the new place: no trip starts at the walk. So
//!   is a walk within reach right after a vehicle stopped (from the car to
//!   the shop): the trip arrived when the vehicle stopped.
//! - A fix whose accuracy is wider than `min_distance_m` (a cell fix) says
//!   the device is still at a stay its circle reaches, never where: it
//!   neither confirms nor cancels a fix waiting out of the stay, gives no
//!   stay its centre, and times no departure.
//! - On the move (a stay never settled at, or a pause too short for a
//!   stop that it moved on from), a fix out of reach at a plausible speed
//!   needs no second fix to agree: outliers come from parked phones. Of
//!   two fixes out that disagree, the one with the smaller accuracy waits.
//!   A device's first fix alone, followed by two at rest elsewhere that
//!   agree, was the outlier; a first fix vaguer than a stay is no place to
//!   leave from.
//! - A departure first seen as a fix at rest (a phone that pinged every
//!   quarter of an hour, first heard at a light) is timed by the trip's
//!   first reported speed over the way to that fix: the stop's end is told
//!   with that fix, a few fixes after the departure. A pause the phone was
//!   silent through is a stop if that timing leaves `min_stop_s` at it.
//! - A stay too short to be a stop (a red light, a jam shorter than
//!   `min_stop_s`) is part of the trip; so is a tunnel or a data gap up to
//!   `max_gap_s`. A longer gap ends an open trip at the last fix before it;
//!   a stop survives a gap if the device is still there afterwards.
//! - A fix no newer than the last one is ignored (late or redelivered), so
//!   evaluation is idempotent under at-least-once delivery.
//!
//! A trip's length is measured on the WGS84 ellipsoid (its local scale
//! for the short segments between fixes, the geodesic for longer ones);
//! thresholds on the haversine. Its maximum speed is the reported `vel` of
//! its fixes where they have one, else the speed over the segment.

mod detector;
pub mod places;

use geo::{Distance, Geodesic, Haversine, Point};
use otstream_model::ConfigError;
use serde::{Deserialize, Serialize};

pub use detector::Detector;

/// The rules' knobs.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TripConfig {
    /// A device farther than this from where it stays (beyond its fix's
    /// accuracy) has left, metres.
    #[serde(default = "default_min_distance_m")]
    pub min_distance_m: f64,
    /// Settled this long in one place is a stop, seconds.
    #[serde(default = "default_min_stop_s")]
    pub min_stop_s: i64,
    /// No data for longer than this ends a trip, seconds (Traccar's
    /// `minimalNoDataDuration`: 3600).
    #[serde(default = "default_max_gap_s")]
    pub max_gap_s: i64,
    /// A fix reporting at least this speed is moving, km/h.
    #[serde(default = "default_moving_kmh")]
    pub moving_kmh: f64,
    /// A fix implying more than this speed from the last is an outlier
    /// unless the next one agrees with it, km/h.
    #[serde(default = "default_max_kmh")]
    pub max_kmh: f64,
    /// A stop within this distance of one of the device's places is a
    /// visit of it, metres ([`places`]).
    #[serde(default = "default_place_radius_m")]
    pub place_radius_m: f64,
}

fn default_min_distance_m() -> f64 {
    150.0
}
fn default_min_stop_s() -> i64 {
    180
}
fn default_max_gap_s() -> i64 {
    3600
}
fn default_moving_kmh() -> f64 {
    3.0
}
fn default_max_kmh() -> f64 {
    300.0
}
fn default_place_radius_m() -> f64 {
    150.0
}

impl Default for TripConfig {
    fn default() -> Self {
        Self {
            min_distance_m: default_min_distance_m(),
            min_stop_s: default_min_stop_s(),
            max_gap_s: default_max_gap_s(),
            moving_kmh: default_moving_kmh(),
            max_kmh: default_max_kmh(),
            place_radius_m: default_place_radius_m(),
        }
    }
}

impl TripConfig {
    /// Checks the values make sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.min_distance_m > 0.0 && self.min_distance_m.is_finite()) {
            return Err(ConfigError::new(
                "trips.min_distance_m",
                "trips.min_distance_m must be a positive number of metres",
            ));
        }
        if !(self.place_radius_m > 0.0 && self.place_radius_m.is_finite()) {
            return Err(ConfigError::new(
                "trips.place_radius_m",
                "trips.place_radius_m must be a positive number of metres",
            ));
        }
        if self.min_stop_s <= 0 || self.max_gap_s <= 0 {
            return Err(ConfigError::new(
                "trips.min_stop_s",
                "trips.min_stop_s and trips.max_gap_s must be positive seconds",
            ));
        }
        if !(self.moving_kmh > 0.0 && self.moving_kmh < self.max_kmh && self.max_kmh.is_finite()) {
            return Err(ConfigError::new(
                "trips.moving_kmh",
                "trips.moving_kmh and trips.max_kmh must be positive km/h, moving_kmh below max_kmh",
            ));
        }
        Ok(())
    }
}

/// One fix.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Fix {
    /// Time, UNIX seconds.
    #[serde(rename = "t")]
    pub tst: i64,
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lon: f64,
    /// Reported speed, km/h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vel: Option<f64>,
    /// Reported accuracy (radius), metres.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acc: Option<f64>,
}

impl Fix {
    /// A fix without a reported speed or accuracy.
    pub fn new(tst: i64, lat: f64, lon: f64) -> Self {
        Self {
            tst,
            lat,
            lon,
            vel: None,
            acc: None,
        }
    }

    /// Great-circle distance: what thresholds and estimates compare.
    pub fn distance_m(&self, other: &Fix) -> f64 {
        distance(self.lat, self.lon, other.lat, other.lon)
    }

    /// Distance on the WGS84 ellipsoid: what a trip's length adds up.
    ///
    /// Consecutive fixes are metres to kilometres apart, where the
    /// ellipsoid's local scale (its meridional and prime-vertical radii at
    /// the segment's mid-latitude, as Mapbox's cheap-ruler does) is within
    /// 2e-5 of the geodesic (tested) for a few multiplications and one
    /// cosine, where Karney's algorithm took a fifth of the geofence
    /// stage's time (BENCHMARKS.md). Longer segments (after a gap) take the
    /// geodesic.
    fn path_m(&self, other: &Fix) -> f64 {
        const A: f64 = 6_378_137.0;
        const F: f64 = 1.0 / 298.257_223_563;
        const E2: f64 = F * (2.0 - F);
        let mut dlon = other.lon - self.lon;
        if dlon > 180.0 {
            dlon -= 360.0;
        } else if dlon < -180.0 {
            dlon += 360.0;
        }
        let cos = ((self.lat + other.lat) / 2.0).to_radians().cos();
        let w2 = 1.0 / (1.0 - E2 * (1.0 - cos * cos));
        let w = w2.sqrt();
        let dx = dlon.to_radians() * A * w * cos;
        let dy = (other.lat - self.lat).to_radians() * A * w * w2 * (1.0 - E2);
        let d = (dx * dx + dy * dy).sqrt();
        if d <= LOCAL_M {
            d
        } else {
            Geodesic.distance(
                Point::new(self.lon, self.lat),
                Point::new(other.lon, other.lat),
            )
        }
    }

    /// The reported speed, if it is one (iOS sends -1 for unknown).
    fn vel(&self) -> Option<f64> {
        self.vel.filter(|v| *v >= 0.0)
    }

    /// The reported accuracy, 0 when unknown.
    fn acc(&self) -> f64 {
        self.acc.filter(|a| *a > 0.0).unwrap_or(0.0)
    }
}

/// Segments up to this long are measured on the ellipsoid's local scale,
/// metres.
const LOCAL_M: f64 = 20_000.0;

/// Haversine: within 0.5% of the ellipsoid at a tenth of its cost; the
/// thresholds it decides are far coarser than that. A trip's length is
/// summed with the geodesic ([`Fix::path_m`]).
fn distance(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    Haversine.distance(Point::new(lon1, lat1), Point::new(lon2, lat2))
}

/// A fix as remembered: where and when, with the path counters at it.
/// Stored as `[t, lat, lon, odo, n]`: the state is written with every fix.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(from = "(i64, f64, f64, f64, u32)", into = "(i64, f64, f64, f64, u32)")]
struct Mark {
    t: i64,
    lat: f64,
    lon: f64,
    /// The device's odometer at this fix, metres.
    odo: f64,
    /// Fixes counted up to and including this one.
    n: u32,
}

impl Mark {
    /// `fix`, with the odometer and count at it.
    fn at(fix: &Fix, odo: f64, n: u32) -> Self {
        Mark {
            t: fix.tst,
            lat: fix.lat,
            lon: fix.lon,
            odo,
            n,
        }
    }
}

impl From<(i64, f64, f64, f64, u32)> for Mark {
    fn from((t, lat, lon, odo, n): (i64, f64, f64, f64, u32)) -> Self {
        Mark {
            t,
            lat,
            lon,
            odo,
            n,
        }
    }
}

impl From<Mark> for (i64, f64, f64, f64, u32) {
    fn from(m: Mark) -> Self {
        (m.t, m.lat, m.lon, m.odo, m.n)
    }
}

/// Where the device is, or was last seen settling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "StayRepr", into = "StayRepr")]
struct Stay {
    /// Its first fix.
    first: Mark,
    /// The weighted centre of its settled fixes (the first fix while
    /// `w` is 0).
    lat: f64,
    lon: f64,
    w: f64,
    /// The first settled fix, and the estimated arrival time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    arrival: Option<(Mark, i64)>,
    /// The last settled fix (the first fix until one settles).
    settled: Mark,
    /// The estimated departure time, once a moving fix followed `settled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    departed: Option<i64>,
    /// Highest speed in the stay, before its arrival, after `settled`.
    max: f64,
    head_max: f64,
    tail_max: f64,
    /// Where it settled before settling again elsewhere in the stay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    alt: Option<Box<Anchor>>,
    /// Its first fix at rest again after a move within a stop, away from
    /// its centre (a walk across a car park): at rest there for
    /// `min_stop_s`, until a fix or until it left, the move was part of
    /// the stop. Boxed: rare.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    resumed: Option<Box<Mark>>,
}

/// A stay as stored, without what repeats its first fix: on the move (a
/// new stay at every fix) it is that fix alone.
#[derive(Serialize, Deserialize)]
struct StayRepr {
    f: Mark,
    /// Centre and weight, once a fix settled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    c: Option<(f64, f64, f64)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    a: Option<(Mark, i64)>,
    /// The last settled fix, unless it is the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    s: Option<Mark>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    d: Option<i64>,
    /// Highest speeds (whole, head, tail), unless all are 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    m: Option<(f64, f64, f64)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    x: Option<Box<Anchor>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    r: Option<Box<Mark>>,
}

impl From<Stay> for StayRepr {
    fn from(s: Stay) -> Self {
        StayRepr {
            f: s.first,
            c: (s.w != 0.0).then_some((s.lat, s.lon, s.w)),
            a: s.arrival,
            s: (s.settled != s.first).then_some(s.settled),
            d: s.departed,
            m: (s.max != 0.0 || s.head_max != 0.0 || s.tail_max != 0.0)
                .then_some((s.max, s.head_max, s.tail_max)),
            x: s.alt,
            r: s.resumed,
        }
    }
}

impl From<StayRepr> for Stay {
    fn from(r: StayRepr) -> Self {
        let (lat, lon, w) = r.c.unwrap_or((r.f.lat, r.f.lon, 0.0));
        let (max, head_max, tail_max) = r.m.unwrap_or_default();
        Stay {
            first: r.f,
            lat,
            lon,
            w,
            arrival: r.a,
            settled: r.s.unwrap_or(r.f),
            departed: r.d,
            max,
            head_max,
            tail_max,
            alt: r.x,
            resumed: r.r,
        }
    }
}

/// Where a stay settled: its centre and arrival.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Anchor {
    lat: f64,
    lon: f64,
    w: f64,
    arrival: Option<(Mark, i64)>,
    head_max: f64,
}

impl Stay {
    fn anchor(&self) -> Anchor {
        Anchor {
            lat: self.lat,
            lon: self.lon,
            w: self.w,
            arrival: self.arrival,
            head_max: self.head_max,
        }
    }

    fn restore(&mut self, a: Anchor) {
        (self.lat, self.lon, self.w) = (a.lat, a.lon, a.w);
        self.arrival = a.arrival;
        self.head_max = a.head_max;
    }

    /// Whether it was at rest long enough, to its last settled fix or,
    /// once it moved on, to its estimated departure (a parked phone may
    /// send nothing at all until it leaves).
    fn is_stop(&self, min_stop_s: i64) -> bool {
        let until = self.departed.unwrap_or(self.settled.t);
        self.arrival
            .is_some_and(|(_, arrived)| until - arrived >= min_stop_s)
    }

    fn centre(&self, t: i64) -> Fix {
        Fix::new(t, self.lat, self.lon)
    }

    /// Its arrival fix and time, or its first fix where it never settled.
    fn arrival_or_first(&self) -> (Mark, i64) {
        self.arrival.unwrap_or((self.first, self.first.t))
    }
}

/// A trip in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OpenTrip {
    start: Fix,
    /// The odometer and fix count at its first fix.
    odo: f64,
    n: u32,
    /// km/h.
    max: f64,
    /// The stop it left, not yet told: the first fix out reported rest (a
    /// light round the corner from a phone that pinged every quarter of
    /// an hour), so its departure waits for the trip's first speed.
    #[serde(default, rename = "h", skip_serializing_if = "Option::is_none")]
    held: Option<Box<HeldStop>>,
}

/// A stop whose end waits for a speed to be estimated from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct HeldStop {
    /// Its arrival (time and centre).
    #[serde(rename = "s")]
    start: Fix,
    #[serde(rename = "n")]
    points: u32,
    /// Its last settled fix's time: the earliest it can have left.
    #[serde(rename = "l")]
    settled: i64,
    /// The first fix out of it, which reported rest.
    #[serde(rename = "o")]
    out: Fix,
    /// Set when the stay was too short for a stop unless it left late
    /// (the phone silent from its arrival until a light 2 km on): the
    /// trip open goes on through it unless the speed proves a stop.
    #[serde(default, rename = "t", skip_serializing_if = "Option::is_none")]
    split: Option<Split>,
}

/// A trip that went on through a stay, and the trip from it, should the
/// stay prove a stop.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(from = "[f64; 6]", into = "[f64; 6]")]
struct Split {
    /// The odometer and count at the stay's arrival, and the top speed
    /// up to it.
    odo: f64,
    n: u32,
    max: f64,
    /// The same at its last settled fix, and the top speed since.
    next_odo: f64,
    next_n: u32,
    next_max: f64,
}

impl From<[f64; 6]> for Split {
    fn from(a: [f64; 6]) -> Self {
        Split {
            odo: a[0],
            n: a[1] as u32,
            max: a[2],
            next_odo: a[3],
            next_n: a[4] as u32,
            next_max: a[5],
        }
    }
}

impl From<Split> for [f64; 6] {
    fn from(s: Split) -> Self {
        [
            s.odo,
            f64::from(s.n),
            s.max,
            s.next_odo,
            f64::from(s.next_n),
            s.next_max,
        ]
    }
}

/// What is remembered per device between fixes: a few hundred bytes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TripState {
    /// The last fix accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last: Option<Fix>,
    /// Metres along every accepted fix.
    #[serde(default)]
    odo: f64,
    /// Accepted fixes.
    #[serde(default)]
    n: u32,
    /// A fix out of the stay waiting for the next to say whether the
    /// device left or it was an outlier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pending: Option<Box<Fix>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stay: Option<Stay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    trip: Option<OpenTrip>,
}

impl TripState {
    /// Whether a trip is in progress.
    pub fn on_trip(&self) -> bool {
        self.trip.is_some()
    }

    /// Counts `fix`, reached from `last`, on the odometer; the segment's
    /// length and the fix's speed.
    fn advance(&mut self, last: &Fix, fix: &Fix) -> (f64, f64) {
        let segment = last.path_m(fix);
        self.odo += segment;
        self.n += 1;
        (segment, speed(last, fix, segment))
    }

    /// Time of the last fix evaluated (0 before any).
    pub fn last_tst(&self) -> i64 {
        self.pending
            .as_deref()
            .or(self.last.as_ref())
            .map_or(0, |f| f.tst)
    }
}

/// A finished trip.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TripSummary {
    /// The departure: its estimated time, at the centre of the stay left.
    pub start: Fix,
    /// The arrival: its estimated time, at the centre of the stop reached
    /// (or the last fix before a gap).
    pub end: Fix,
    /// Sum of geodesic segments, metres.
    pub distance_m: f64,
    /// `end - start`, seconds.
    pub duration_s: i64,
    /// `distance / duration`, km/h (0 for a zero duration).
    pub avg_kmh: f64,
    /// Highest speed, km/h.
    pub max_kmh: f64,
    /// Fixes, from the last at the stay left to the first at the stop
    /// reached.
    pub points: u32,
}

impl TripSummary {
    /// A trip from `start` to `end` over `distance_m` metres and `points`
    /// fixes, at `max_kmh` at most: its duration and average follow.
    pub fn between(start: Fix, end: Fix, distance_m: f64, points: u32, max_kmh: f64) -> Self {
        let duration_s = end.tst - start.tst;
        TripSummary {
            start,
            end,
            distance_m,
            duration_s,
            avg_kmh: if duration_s > 0 {
                distance_m / duration_s as f64 * 3.6
            } else {
                0.0
            },
            max_kmh,
            points,
        }
    }
}

/// A finished stop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StopSummary {
    /// The arrival: its estimated time, at the stop's centre.
    pub start: Fix,
    /// The departure, UNIX seconds.
    pub end_tst: i64,
    /// `end - start`, seconds.
    pub duration_s: i64,
    /// Settled fixes and those between them.
    pub points: u32,
}

/// What one fix finished.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Finished {
    /// A trip.
    Trip(TripSummary),
    /// A stop.
    Stop(StopSummary),
}

/// The fix's reported speed, else the speed over the segment to it, km/h.
fn speed(last: &Fix, fix: &Fix, segment: f64) -> f64 {
    fix.vel().unwrap_or_else(|| {
        let dt = (fix.tst - last.tst) as f64;
        if dt > 0.0 { segment / dt * 3.6 } else { 0.0 }
    })
}

/// The speed it takes to get from `a` to `b`, km/h.
fn implied_kmh(a: &Fix, b: &Fix) -> f64 {
    let dt = (b.tst - a.tst).max(1) as f64;
    a.distance_m(b) / dt * 3.6
}

#[cfg(test)]
mod tests;
