//! The trip rules as they were before trips learned what a fix says about
//! itself: Traccar's, with its defaults of 200 m and 180 s (a stay is
//! within `min_distance_m` of its first fix, a trip starts at the stop's
//! last fix and ends at the first fix of the next stay that becomes a
//! stop). Kept as the same-run baseline for the detector's quality and
//! speed (`trip_quality`, the `geofence` bench); not used by otstream.

use geo::{Distance, Geodesic, Point};
pub use otstream_trips::{Finished, Fix, StopSummary, TripConfig, TripSummary};
use serde::{Deserialize, Serialize};

/// Geodesic distance, as the rules measured every test.
fn distance_m(a: &Fix, b: &Fix) -> f64 {
    Geodesic.distance(Point::new(a.lon, a.lat), Point::new(b.lon, b.lat))
}

/// Traccar's defaults: 200 m, 180 s, and an hour without data ends a
/// trip (`minimalNoDataDuration`); the other knobs are not read.
pub fn traccar_config() -> TripConfig {
    TripConfig {
        min_distance_m: 200.0,
        min_stop_s: 180,
        max_gap_s: 3600,
        ..TripConfig::default()
    }
}

/// An open trip, up to (not including) the current stay.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct OpenTrip {
    start: Fix,
    /// Metres, up to and including the segment into the stay's anchor.
    distance: f64,
    /// Fixes before the stay's anchor.
    points: u32,
    /// km/h.
    max_vel: f64,
}

/// What is remembered per device between fixes: about 150 bytes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TripState {
    /// The last fix evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last: Option<Fix>,
    /// The first fix of the current stay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    anchor: Option<Fix>,
    /// Fixes in the stay, its anchor included.
    #[serde(default)]
    stay_points: u32,
    /// Path length within the stay, metres.
    #[serde(default)]
    stay_distance: f64,
    /// Highest speed within the stay (after its anchor), km/h.
    #[serde(default)]
    stay_max_vel: f64,
    /// The trip in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    trip: Option<OpenTrip>,
}

impl TripState {
    /// Whether a trip is in progress.
    pub fn on_trip(&self) -> bool {
        self.trip.is_some()
    }

    /// Time of the last fix evaluated (0 before any).
    pub fn last_tst(&self) -> i64 {
        self.last.map_or(0, |f| f.tst)
    }
}

/// The rules, applied to one device's state at a time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Detector {
    config: TripConfig,
}

impl Detector {
    /// A detector with `config`.
    pub fn new(config: TripConfig) -> Self {
        Self { config }
    }

    /// Evaluates the next fix of a device, appending what it finished to
    /// `out` (in time order). A fix no newer than the last changes nothing.
    pub fn on_fix(&self, state: &mut TripState, fix: Fix, out: &mut Vec<Finished>) {
        let (Some(last), Some(anchor)) = (state.last, state.anchor) else {
            *state = TripState::default();
            self.start_stay(state, fix);
            return;
        };
        if fix.tst <= last.tst {
            return;
        }
        let c = &self.config;
        if fix.tst - last.tst > c.max_gap_s {
            if let Some(trip) = state.trip.take() {
                out.push(Finished::Trip(self.close_trip(state, trip, last)));
                self.start_stay(state, fix);
                return;
            }
            if distance_m(&anchor, &fix) > c.min_distance_m {
                if let Some(stop) = self.confirmed_stop(state, last) {
                    out.push(Finished::Stop(stop));
                }
                self.start_stay(state, fix);
                return;
            }
            // Still where it stopped: the stop goes on through the gap.
        }
        let segment = distance_m(&last, &fix);
        let speed = fix.vel.unwrap_or_else(|| {
            let dt = (fix.tst - last.tst) as f64;
            if dt > 0.0 { segment / dt * 3.6 } else { 0.0 }
        });
        if distance_m(&anchor, &fix) <= c.min_distance_m {
            state.stay_points += 1;
            state.stay_distance += segment;
            state.stay_max_vel = state.stay_max_vel.max(speed);
            state.last = Some(fix);
            if fix.tst - anchor.tst >= c.min_stop_s {
                if let Some(trip) = state.trip.take() {
                    out.push(Finished::Trip(TripSummary::between(
                        trip.start,
                        anchor,
                        trip.distance,
                        trip.points + 1,
                        trip.max_vel,
                    )));
                }
            }
            return;
        }
        // Left the stay.
        let trip = match state.trip {
            Some(mut t) => {
                t.distance += state.stay_distance + segment;
                t.points += state.stay_points;
                t.max_vel = t.max_vel.max(state.stay_max_vel).max(speed);
                t
            }
            None => match self.confirmed_stop(state, last) {
                Some(stop) => {
                    out.push(Finished::Stop(stop));
                    OpenTrip {
                        start: last,
                        distance: segment,
                        points: 1,
                        max_vel: speed,
                    }
                }
                // Too short to be a stop: it was part of the trip.
                None => OpenTrip {
                    start: anchor,
                    distance: state.stay_distance + segment,
                    points: state.stay_points,
                    max_vel: state.stay_max_vel.max(speed),
                },
            },
        };
        self.start_stay(state, fix);
        state.trip = Some(trip);
    }

    fn start_stay(&self, state: &mut TripState, fix: Fix) {
        state.last = Some(fix);
        state.anchor = Some(fix);
        state.stay_points = 1;
        state.stay_distance = 0.0;
        state.stay_max_vel = 0.0;
    }

    /// The current stay as a stop ending at `last`, if it lasted long enough.
    fn confirmed_stop(&self, state: &TripState, last: Fix) -> Option<StopSummary> {
        let anchor = state.anchor?;
        (last.tst - anchor.tst >= self.config.min_stop_s).then(|| StopSummary {
            start: anchor,
            end_tst: last.tst,
            duration_s: last.tst - anchor.tst,
            points: state.stay_points,
        })
    }

    /// The open trip, with the current stay, ending at `last`.
    fn close_trip(&self, state: &TripState, trip: OpenTrip, last: Fix) -> TripSummary {
        TripSummary::between(
            trip.start,
            last,
            trip.distance + state.stay_distance,
            trip.points + state.stay_points,
            trip.max_vel.max(state.stay_max_vel),
        )
    }
}
