//! The rules ([`Detector`]), applied to one device's state at a time.

use super::*;

/// Faster than anyone walks, km/h: a device that stops at this speed and
/// moves on slower came out of a vehicle.
const WALK_KMH: f64 = 8.0;

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

    /// The trip in progress: its departure (estimated time, at the centre
    /// of the stay it left); none yet while that departure waits for the
    /// trip's first speed (a stop held, [`Finished::Stop`] not yet told),
    /// so that a trip is announced once, at its time.
    pub fn open_trip(&self, state: &TripState) -> Option<Fix> {
        state
            .trip
            .as_ref()
            .filter(|t| t.held.as_ref().is_none_or(|h| h.split.is_some()))
            .map(|t| t.start)
    }

    /// The stop in progress, once the stay has lasted `min_stop_s`: its
    /// arrival (estimated time, at the stay's centre so far).
    pub fn open_stop(&self, state: &TripState) -> Option<Fix> {
        let stay = state.stay.as_ref()?;
        stay.is_stop(self.config.min_stop_s).then(|| {
            let (_, arrived) = stay.arrival_or_first();
            stay.centre(arrived)
        })
    }

    /// Evaluates the next fix of a device, appending what it finished to
    /// `out` (in time order). A fix no newer than the last changes nothing.
    pub fn on_fix(&self, state: &mut TripState, fix: Fix, out: &mut Vec<Finished>) {
        let (Some(last), Some(stay)) = (state.last, state.stay.as_ref()) else {
            *state = TripState::default();
            self.restart_at(state, fix);
            return;
        };
        if fix.tst <= state.last_tst() {
            return;
        }
        let c = &self.config;
        if let Some(trip) = state.trip.as_mut() {
            if let Some(v) = fix.vel().filter(|v| *v >= c.moving_kmh) {
                tell_held(trip, Some(v), c.min_stop_s, out);
            }
        }
        // What this fix needs of the stay, read before the state changes.
        let reaches = self.reaches(stay, &fix);
        let centre = (stay.lat, stay.lon);
        let gap = (fix.tst - last.tst > c.max_gap_s).then(|| {
            let stop = stay
                .is_stop(c.min_stop_s)
                .then(|| stop(stay, stay.settled.t));
            (stay.max, stop)
        });
        if let Some((stay_max, stop)) = gap {
            // Whatever waited for confirmation is too old to tell.
            state.pending = None;
            if let Some(mut trip) = state.trip.take() {
                tell_held(&mut trip, None, self.config.min_stop_s, out);
                out.push(Finished::Trip(TripSummary::between(
                    trip.start,
                    last,
                    state.odo - trip.odo,
                    state.n - trip.n + 1,
                    trip.max.max(stay_max),
                )));
                self.restart_at(state, fix);
                return;
            }
            if !reaches {
                out.extend(stop.map(Finished::Stop));
                self.restart_at(state, fix);
                return;
            }
            // Still where it stopped: the stop goes on through the gap.
        }
        // An accuracy circle wider than a stay (a cell fix a kilometre
        // off) cannot tell whether the device came back to a stay it
        // seemed to leave or went on from it, nor give a stay without a
        // settled fix its centre: it is passed over.
        let vague = fix.acc() > c.min_distance_m;
        if vague && (state.pending.is_some() || stay.w == 0.0) {
            return;
        }
        // A device first seen only that vaguely (a cell fix as its first)
        // was not there to leave from: it begins at the first sharp fix.
        if !vague
            && state.trip.is_none()
            && stay.w > 0.0
            && stay.w < c.min_distance_m.powi(-2)
            && !stay.is_stop(c.min_stop_s)
        {
            state.pending = None;
            self.restart_at(state, fix);
            return;
        }
        if reaches {
            if vague {
                // It says the device is still here, not where: it counts
                // at the centre, so that a departure is not timed from it.
                let fix = Fix {
                    lat: centre.0,
                    lon: centre.1,
                    ..fix
                };
                self.settle(state, fix, out);
                return;
            }
            // A lone fix out and back in: an outlier, forgotten.
            state.pending = None;
            self.settle(state, fix, out);
            return;
        }
        let plausible = |a: &Fix| implied_kmh(a, &fix) <= c.max_kmh;
        let clearly_moving = fix.vel().is_some_and(|v| v >= c.moving_kmh) && plausible(&last);
        // The fix waiting is confirmed by this one if the device could go
        // from it to here, and here is near it or farther on from the
        // stay; an outlier off to one side before a real departure is not.
        let from_stay = |f: &Fix| distance(centre.0, centre.1, f.lat, f.lon);
        let agrees = |p: &Fix| {
            plausible(p)
                && (p.distance_m(&fix) <= c.min_distance_m || from_stay(p) <= from_stay(&fix))
        };
        // A device's first fix (or its first after a gap) alone, and the
        // next two elsewhere, at rest: the first was the outlier (a Wi-Fi
        // fix hundreds of metres off), not a trip from it.
        let on_the_move = stay.w == 0.0 || (stay.departed.is_some() && !stay.is_stop(c.min_stop_s));
        let lone = state.trip.is_none()
            && stay.departed.is_none()
            && stay
                .arrival
                .is_some_and(|(a, _)| a.n == stay.first.n && stay.settled.n == a.n);
        match state.pending.take() {
            Some(p) if lone && agrees(&p) && p.vel().is_some_and(|v| v < c.moving_kmh) => {
                self.restart_at(state, *p);
                self.on_fix(state, fix, out);
            }
            Some(p) if agrees(&p) => {
                self.leave(state, *p, out);
                // `fix` against the stay that `p` began.
                self.on_fix(state, fix, out);
            }
            _ if clearly_moving => self.leave(state, fix, out),
            // On the move (never settled here, or on the way out of a
            // pause too short for a stop): where the device went, at a
            // plausible speed, even if it rests there with its phone
            // silent (parked past the light, a cell fix in between).
            // Outliers come from parked phones, not from moving ones; a
            // fix without a reported speed still waits for a second.
            _ if on_the_move && fix.vel().is_some() && plausible(&last) => {
                self.leave(state, fix, out)
            }
            // Of two fixes out that disagree, the sharper waits: a Wi-Fi
            // fix claiming 70 m right after a GPS arrival at 6 m is the
            // outlier, not the arrival.
            Some(p) if p.acc() > 0.0 && p.acc() < fix.acc() => state.pending = Some(p),
            _ => state.pending = Some(Box::new(fix)),
        }
    }

    /// Whether `fix`, or its accuracy circle, is within the stay.
    fn reaches(&self, stay: &Stay, fix: &Fix) -> bool {
        distance(stay.lat, stay.lon, fix.lat, fix.lon) <= self.config.min_distance_m + fix.acc()
    }

    /// How close a settled fix must be to a stay's centre to be at it.
    fn near_m(&self, fix: &Fix) -> f64 {
        self.config.min_distance_m / 4.0 + 2.0 * fix.acc()
    }

    /// Whether `fix` is on the move, coming from `last`.
    fn moving(&self, last: Option<&Fix>, fix: &Fix, segment: f64) -> bool {
        let kmh = match (fix.vel(), last) {
            (Some(v), _) => v,
            (None, Some(l)) => {
                let dt = (fix.tst - l.tst) as f64;
                (segment - fix.acc().max(l.acc())).max(0.0) / dt * 3.6
            }
            (None, None) => 0.0,
        };
        kmh >= self.config.moving_kmh
    }

    /// A stay beginning at `fix`, reached from `last` over `segment`
    /// metres, if known.
    fn new_stay(&self, last: Option<(&Fix, f64)>, fix: Fix, odo: f64, n: u32) -> Stay {
        let mark = Mark::at(&fix, odo, n);
        let (last, segment) = match last {
            Some((l, segment)) => (Some(l), segment),
            None => (None, 0.0),
        };
        let mut stay = Stay {
            first: mark,
            lat: fix.lat,
            lon: fix.lon,
            w: 0.0,
            arrival: None,
            settled: mark,
            departed: None,
            max: 0.0,
            head_max: 0.0,
            tail_max: 0.0,
            alt: None,
            resumed: None,
        };
        if !self.moving(last, &fix, segment) {
            self.add_settled(&mut stay, last, &fix, mark);
        }
        stay
    }

    /// Counts a settled fix into the stay: its centre, its arrival, its
    /// last settled fix.
    fn add_settled(&self, stay: &mut Stay, last: Option<&Fix>, fix: &Fix, mark: Mark) {
        if stay.arrival.is_none() {
            let arrived = last.map_or(fix.tst, |l| self.arrival_time(l, fix));
            stay.arrival = Some((mark, arrived));
            // How it came: the speed it reported last.
            stay.head_max = stay.head_max.max(last.and_then(Fix::vel).unwrap_or(0.0));
        }
        stay.settled = mark;
        stay.departed = None;
        stay.resumed = None;
        stay.tail_max = 0.0;
        let w = 1.0 / fix.acc().max(5.0).powi(2);
        let total = stay.w + w;
        stay.lat += (fix.lat - stay.lat) * w / total;
        stay.lon += (fix.lon - stay.lon) * w / total;
        stay.w = total;
    }

    /// When the device got to `fix`, coming from `last` at its speed.
    fn arrival_time(&self, last: &Fix, fix: &Fix) -> i64 {
        match last.vel().filter(|v| *v >= self.config.moving_kmh) {
            Some(v) => (last.tst + (last.distance_m(fix) / (v / 3.6)).round() as i64).min(fix.tst),
            None => fix.tst,
        }
    }

    /// When the device left `settled` to be at `fix`, at its speed.
    fn departure_time(&self, settled: &Mark, fix: &Fix) -> i64 {
        match fix.vel().filter(|v| *v >= self.config.moving_kmh) {
            Some(v) => {
                let d = distance(settled.lat, settled.lon, fix.lat, fix.lon);
                (fix.tst - (d / (v / 3.6)).ceil() as i64).max(settled.t)
            }
            None => settled.t,
        }
    }

    /// A fix within the stay.
    fn settle(&self, state: &mut TripState, fix: Fix, out: &mut Vec<Finished>) {
        let (Some(last), Some(mut stay)) = (state.last, state.stay.take()) else {
            return;
        };
        let (segment, speed) = state.advance(&last, &fix);
        stay.max = stay.max.max(speed);
        let mark = Mark::at(&fix, state.odo, state.n);
        let near =
            stay.w == 0.0 || distance(stay.lat, stay.lon, fix.lat, fix.lon) <= self.near_m(&fix);
        if self.moving(Some(&last), &fix, segment) {
            if stay.arrival.is_none() {
                stay.head_max = stay.head_max.max(speed);
            }
            stay.tail_max = stay.tail_max.max(speed);
            self.rest_before(&mut stay, &fix);
            if stay.departed.is_none() {
                stay.departed = Some(self.departure_time(&stay.settled, &fix));
            }
        } else if near {
            self.add_settled(&mut stay, Some(&last), &fix, mark);
        } else if let Some(alt) = stay
            .alt
            .take_if(|a| distance(a.lat, a.lon, fix.lat, fix.lon) <= self.near_m(&fix))
        {
            // Back where it first settled (an errand on arrival): that was
            // the arrival after all.
            stay.alt = Some(Box::new(stay.anchor()));
            stay.restore(*alt);
            self.add_settled(&mut stay, Some(&last), &fix, mark);
        } else if stay.arrival.is_some()
            && stay.head_max >= WALK_KMH
            && stay.tail_max < WALK_KMH
            && !stay.is_stop(self.config.min_stop_s)
        {
            // Out of a vehicle and on foot, within reach (from the car to
            // the shop): it arrived when the vehicle stopped, and the stay
            // goes on where the walk came to rest. Only until it is a stop:
            // after that a move within it is the stop's (below), and
            // jitter does not move it.
            self.rests_here(&mut stay, &fix, mark);
        } else if !stay.is_stop(self.config.min_stop_s) {
            // Settling somewhere else than where it paused before (a light
            // short of the destination, a slow step of a walk): the stay
            // begins again here, and what came before is the trip's. The
            // place left is kept in case the device comes back to it.
            if stay.arrival.is_some() {
                stay.alt = Some(Box::new(stay.anchor()));
            }
            stay.head_max = stay.max;
            stay.arrival = None;
            stay.w = 0.0;
            (stay.lat, stay.lon) = (fix.lat, fix.lon);
            self.add_settled(&mut stay, Some(&last), &fix, mark);
        } else if stay.departed.is_some() {
            match stay.resumed.as_deref() {
                // At rest for a stop's length after a move that stayed
                // within reach (a walk across a car park, a drift at
                // walking pace): the move was part of the stop, which goes
                // on here.
                Some(r) if fix.tst - r.t >= self.config.min_stop_s => {
                    self.rests_here(&mut stay, &fix, mark);
                }
                // Otherwise a pause on the way out of a stop (a light
                // round the corner): the departure stands, unless the
                // pause lasts.
                Some(_) => {}
                None => stay.resumed = Some(Box::new(mark)),
            }
        }
        state.last = Some(fix);
        if stay.is_stop(self.config.min_stop_s) {
            if let Some(mut trip) = state.trip.take() {
                tell_held(&mut trip, None, self.config.min_stop_s, out);
                out.push(Finished::Trip(arrive(&trip, &stay)));
            }
        }
        state.stay = Some(stay);
    }

    /// The stop goes on at `fix` after a move within it: the place before
    /// is kept in case the device comes back to it.
    fn rests_here(&self, stay: &mut Stay, fix: &Fix, mark: Mark) {
        stay.alt = Some(Box::new(stay.anchor()));
        stay.w = 0.0;
        (stay.lat, stay.lon) = (fix.lat, fix.lon);
        self.add_settled(stay, None, fix, mark);
    }

    /// At rest after a move within the stop until `fix` moves on (a
    /// parked phone may send nothing in between): a stop's length of rest
    /// makes the move part of the stop, which ends when `fix` left.
    fn rest_before(&self, stay: &mut Stay, fix: &Fix) {
        if let Some(r) = stay.resumed.take() {
            if self.departure_time(&r, fix) - r.t >= self.config.min_stop_s {
                self.rests_here(stay, &Fix::new(r.t, r.lat, r.lon), *r);
            }
        }
    }

    /// A fix out of the stay, accepted: the device left it.
    fn leave(&self, state: &mut TripState, fix: Fix, out: &mut Vec<Finished>) {
        let (Some(last), Some(mut stay)) = (state.last, state.stay.take()) else {
            return;
        };
        self.rest_before(&mut stay, &fix);
        let (segment, speed) = state.advance(&last, &fix);
        // Left without a speed to time it by (the first fix out says it
        // is at rest): the stop's end is told once the trip has one.
        let untimed =
            stay.departed.is_none() && fix.vel().is_some_and(|v| v < self.config.moving_kmh);
        let departed = *stay
            .departed
            .get_or_insert_with(|| self.departure_time(&stay.settled, &fix));
        let stopped = stay.is_stop(self.config.min_stop_s);
        if stopped {
            if let Some(mut trip) = state.trip.take() {
                tell_held(&mut trip, None, self.config.min_stop_s, out);
                out.push(Finished::Trip(arrive(&trip, &stay)));
            }
        }
        state.trip = Some(match state.trip.take() {
            Some(mut t) => {
                // A pause that is a stop if it left late enough: the trip's
                // first speed will tell (one at a time: the stop the trip
                // left, still untold, comes first).
                if untimed && stay.arrival.is_some() && t.held.is_none() {
                    let (arrival, arrived) = stay.arrival_or_first();
                    t.held = Some(Box::new(HeldStop {
                        start: stay.centre(arrived),
                        points: stay.settled.n - arrival.n + 1,
                        settled: stay.settled.t,
                        out: Fix::new(fix.tst, fix.lat, fix.lon),
                        split: Some(Split {
                            odo: arrival.odo,
                            n: arrival.n,
                            max: t.max.max(stay.head_max),
                            next_odo: stay.settled.odo,
                            next_n: stay.settled.n,
                            next_max: stay.tail_max.max(speed),
                        }),
                    }));
                }
                t.max = t.max.max(stay.max).max(speed);
                t
            }
            // At rest there (a stop, or too short for one: the first
            // fixes ever): it left when it left.
            None if stay.arrival.is_some() => {
                let stop = stopped.then(|| stop(&stay, departed));
                let held = match stop {
                    Some(s) if untimed => Some(Box::new(HeldStop {
                        start: s.start,
                        points: s.points,
                        settled: departed,
                        out: Fix::new(fix.tst, fix.lat, fix.lon),
                        split: None,
                    })),
                    _ => {
                        out.extend(stop.map(Finished::Stop));
                        None
                    }
                };
                OpenTrip {
                    start: stay.centre(departed),
                    odo: stay.settled.odo,
                    n: stay.settled.n,
                    max: stay.tail_max.max(speed),
                    held,
                }
            }
            // Never at rest: it was moving all along.
            None => OpenTrip {
                start: Fix::new(stay.first.t, stay.first.lat, stay.first.lon),
                odo: stay.first.odo,
                n: stay.first.n,
                max: stay.max.max(speed),
                held: None,
            },
        });
        state.stay = Some(self.new_stay(Some((&last, segment)), fix, state.odo, state.n));
        state.last = Some(fix);
    }

    /// After a long gap (or before any fix): a new stay at `fix`, the path
    /// across the gap not counted.
    fn restart_at(&self, state: &mut TripState, fix: Fix) {
        state.n += 1;
        state.stay = Some(self.new_stay(None, fix, state.odo, state.n));
        state.last = Some(fix);
    }
}

/// Tells the stop `trip` left, if it still waits: its departure timed by
/// `speed` (km/h) over the way to the first fix out, else the earliest.
/// A pause the trip went on through is a stop if that departure is
/// `min_stop_s` after its arrival: the trip ends there, and the trip open
/// is the one from it.
fn tell_held(trip: &mut OpenTrip, speed: Option<f64>, min_stop_s: i64, out: &mut Vec<Finished>) {
    let Some(h) = trip.held.take() else {
        return;
    };
    let departed = match speed {
        Some(v) => {
            let way = (h.start.distance_m(&h.out) / (v / 3.6)).ceil() as i64;
            h.out.tst.saturating_sub(way).max(h.settled)
        }
        None => h.settled,
    };
    if let Some(s) = h.split {
        if departed - h.start.tst < min_stop_s {
            return;
        }
        out.push(Finished::Trip(TripSummary::between(
            trip.start,
            h.start,
            s.odo - trip.odo,
            s.n - trip.n + 1,
            s.max,
        )));
        *trip = OpenTrip {
            start: Fix::new(departed, h.start.lat, h.start.lon),
            odo: s.next_odo,
            n: s.next_n,
            max: s.next_max,
            held: None,
        };
    }
    trip.start.tst = departed;
    out.push(Finished::Stop(StopSummary {
        start: h.start,
        end_tst: departed,
        duration_s: departed - h.start.tst,
        points: h.points,
    }));
}

/// The trip, ended at the stay's arrival.
fn arrive(trip: &OpenTrip, stay: &Stay) -> TripSummary {
    let (arrival, arrived) = stay.arrival_or_first();
    TripSummary::between(
        trip.start,
        stay.centre(arrived),
        arrival.odo - trip.odo,
        arrival.n - trip.n + 1,
        trip.max.max(stay.head_max),
    )
}

/// The stay as a stop that ended at `departed`.
fn stop(stay: &Stay, departed: i64) -> StopSummary {
    let (arrival, arrived) = stay.arrival_or_first();
    StopSummary {
        start: stay.centre(arrived),
        end_tst: departed,
        duration_s: departed - arrived,
        points: stay.settled.n - arrival.n + 1,
    }
}
