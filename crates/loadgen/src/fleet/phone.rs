//! The phones of the fleet: how a phone's app decides when to report and
//! what its fixes look like (parked, moving, on Wi-Fi or cell).

use super::*;

/// One wake of a phone: what it sends, when it wakes next, and the trip
/// it finished, if any.
pub(super) fn phone_step(
    d: &mut Device,
    now: i64,
    interval: i64,
    (center, radius): (Point, f64),
    topic_base: &str,
    bodies: &mut Vec<(&'static str, Value)>,
) -> (i64, Option<Arrived>) {
    let mut finished = None;
    let next = match d.mode {
        Mode::Parked { until } if now < until => {
            let roll = d.rng.random::<f64>();
            if d.phone.errand_from.is_none() && !d.phone.moved && until - now > 900 && roll < 0.12 {
                // An errand: a short walk away and back; or, one time in
                // three, a move across the car park, staying there. No trip.
                d.phone.errand_from = Some(d.at);
                d.phone.errand_stays = roll >= 0.08;
                if d.phone.errand_stays {
                    d.phone.moves.push(now);
                    d.phone.moved = true;
                }
                d.target = Haversine.destination(
                    d.at,
                    d.rng.random_range(0.0..360.0),
                    d.rng.random_range(60.0..120.0),
                );
                d.phone.kind = Some(Kind::Walk);
                d.speed_mps = d.rng.random_range(1.1..1.7);
                d.mode = Mode::Walking;
                d.phone.errand_until = until;
                bodies.push(("", parked_fix(d, now, topic_base)));
                now + interval
            } else {
                bodies.push(("", parked_fix(d, now, topic_base)));
                now + d.rng.random_range(300..1200).min(until - now).max(1)
            }
        }
        Mode::Parked { .. } => {
            // Off somewhere at least 300 m away: home if away, else a new
            // destination. The phone notices one interval later.
            let mut target = if d.at_home {
                random_point(&mut d.rng, center, radius)
            } else {
                d.home
            };
            while Haversine.distance(d.at, target) < 300.0 {
                target = random_point(&mut d.rng, center, radius);
            }
            d.target = target;
            let far = Haversine.distance(d.at, d.target);
            let kind = if far < 1_200.0 {
                Kind::Walk
            } else if far < 3_000.0 {
                if d.rng.random::<bool>() {
                    Kind::Cycle
                } else {
                    Kind::Walk
                }
            } else if d.rng.random::<f64>() < 0.7 {
                Kind::Drive
            } else {
                Kind::Transit
            };
            d.speed_mps = match kind {
                Kind::Walk => d.rng.random_range(1.1..1.7),
                Kind::Cycle => d.rng.random_range(4.0..7.0),
                Kind::Drive => d.rng.random_range(8.0..25.0),
                Kind::Transit => d.rng.random_range(5.5..12.5),
            };
            d.phone.kind = Some(kind);
            d.phone.trip = Some((now, 0.0));
            d.phone.moved = false;
            d.phone.err = (0.0, 0.0);
            d.mode = if kind == Kind::Walk {
                Mode::Walking
            } else {
                Mode::Driving
            };
            now + interval
        }
        Mode::Walking | Mode::Driving => {
            let kind = d.phone.kind.unwrap_or(Kind::Walk);
            if d.phone.halted > 0 {
                d.phone.halted -= 1;
                bodies.push(("", moving_fix(d, now, 0.0, topic_base)));
                return (now + interval, None);
            }
            let step = d.speed_mps * interval as f64;
            let left = Haversine.distance(d.at, d.target);
            if left <= step {
                let arrived = now - interval + (left / d.speed_mps).round() as i64;
                d.at = d.target;
                match d.phone.errand_from.take() {
                    // Back from an errand, or at its turning point.
                    Some(from) if Haversine.distance(from, d.at) > 1.0 && !d.phone.errand_stays => {
                        d.target = from;
                        d.phone.errand_from = Some(from);
                    }
                    Some(_) => {
                        d.mode = Mode::Parked {
                            until: d.phone.errand_until,
                        };
                    }
                    None => {
                        if let Some((start, metres)) = d.phone.trip.take() {
                            finished = Some((kind, start, arrived, metres + left));
                        }
                        d.mode = Mode::Parked {
                            until: now + d.rng.random_range(600..3600),
                        };
                    }
                }
                d.phone.silent = 0;
                bodies.push(("", moving_fix(d, now, 0.0, topic_base)));
                return (now + interval, finished);
            }
            let aim = Haversine.bearing(d.at, d.target);
            d.heading = aim + d.rng.random_range(-25.0..25.0);
            d.at = Haversine.destination(d.at, d.heading, step);
            if let Some((_, metres)) = &mut d.phone.trip {
                *metres += step;
            }
            // Lights hold it now and then, bus stops every few hundred
            // metres; a tunnel hides it.
            d.phone.since_halt += step;
            let (halt_p, every_m, halt_wakes) = match kind {
                Kind::Drive | Kind::Cycle => (0.1, 300.0, 2..=9),
                Kind::Transit => (0.5, 400.0, 2..=4),
                Kind::Walk => (0.0, 0.0, 0..=0),
            };
            if d.phone.since_halt >= every_m
                && d.phone.errand_from.is_none()
                && d.rng.random::<f64>() < halt_p
            {
                d.phone.halted = d.rng.random_range(halt_wakes);
                d.phone.since_halt = 0.0;
            }
            if kind == Kind::Drive && d.phone.silent == 0 && d.rng.random::<f64>() < 0.01 {
                d.phone.silent = d.rng.random_range(6..=30);
            }
            if d.phone.silent > 0 {
                d.phone.silent -= 1;
            } else {
                let kmh = d.speed_mps * 3.6;
                bodies.push(("", moving_fix(d, now, kmh, topic_base)));
            }
            now + interval
        }
    };
    (next, finished)
}

/// A parked phone's fix: Wi-Fi, now and then far off.
fn parked_fix(d: &mut Device, now: i64, topic_base: &str) -> Value {
    let roll: f64 = d.rng.random();
    let (acc, at) = if roll < 0.02 {
        let far = d.rng.random_range(1_000.0..3_000.0);
        (
            d.rng.random_range(1_000..2_500),
            Haversine.destination(d.at, d.rng.random_range(0.0..360.0), far),
        )
    } else if roll < 0.06 {
        let far = d.rng.random_range(250.0..500.0);
        let acc = if d.rng.random::<bool>() {
            d.rng.random_range(50..80)
        } else {
            d.rng.random_range(400..800)
        };
        (
            acc,
            Haversine.destination(d.at, d.rng.random_range(0.0..360.0), far),
        )
    } else {
        let acc = d.rng.random_range(10..40);
        let sigma = f64::from(acc) / 2.0;
        let (n, e) = (gauss(&mut d.rng) * sigma, gauss(&mut d.rng) * sigma);
        (acc, offset(d.at, n, e))
    };
    let mut v = phone_location(d, now, "p", topic_base, (acc, at, 0));
    v["conn"] = Value::from("w");
    v
}

/// A moving phone's GPS fix at the true speed `kmh`.
fn moving_fix(d: &mut Device, now: i64, kmh: f64, topic_base: &str) -> Value {
    let acc = d.rng.random_range(4..16);
    let sigma = f64::from(acc) / 2.0;
    // Correlated: most of the error carries over from the last fix.
    let (a, b) = (0.85, (1.0f64 - 0.85 * 0.85).sqrt());
    d.phone.err = (
        a * d.phone.err.0 + b * gauss(&mut d.rng) * sigma,
        a * d.phone.err.1 + b * gauss(&mut d.rng) * sigma,
    );
    let at = offset(d.at, d.phone.err.0, d.phone.err.1);
    let vel = if kmh > 0.0 {
        (kmh + gauss(&mut d.rng)).max(0.0).round()
    } else {
        0.0
    };
    phone_location(d, now, "t", topic_base, (acc, at, vel as i64))
}

/// A location of the device's platform, reporting what the phone measured
/// (`acc`, where it thinks it is, `vel`) rather than the truth.
fn phone_location(
    d: &mut Device,
    now: i64,
    trigger: &str,
    topic_base: &str,
    (acc, at, vel): (i32, Point, i64),
) -> Value {
    let mut v = location(d, now, trigger, topic_base);
    v["acc"] = Value::from(acc);
    v["lat"] = Value::from(round6(at.y()));
    v["lon"] = Value::from(round6(at.x()));
    v["vel"] = Value::from(vel);
    v
}
