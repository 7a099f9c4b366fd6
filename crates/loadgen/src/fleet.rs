//! A synthetic fleet: devices that park, walk and drive around a city and
//! send what the OwnTracks apps send while they do.
//!
//! Every device has a home and alternates between parking there (or at a
//! destination) and travelling to the next place, on foot for short hops
//! and by car for longer ones, along a track that bends a little as streets
//! do. While moving it reports a location every `interval` seconds; while
//! parked a ping every 15 minutes. Leaving and reaching home is a
//! `transition` on the home region. Each device starts with its `card`,
//! and now and then one drops off the network and its broker publishes its
//! `lwt`. Even-numbered devices send Android's field set, odd ones iOS's
//! (with `topic` and pressure `p`).
//!
//! With [`FleetConfig::phones`] the devices send what real phones send
//! (see [`phones`](self#phones)), and the fleet keeps the ground truth of
//! their trips ([`Fleet::truth`]), so that trip detection is measured
//! against what really happened.
//!
//! The fleet is an iterator of [`RawMessage`] in time order, the same shape
//! a recording holds, so it is written to a file or sent by the replay
//! engine. It is deterministic: the same config gives the same messages.
//!
//! # Phones
//! - Four ways of moving: walking (short hops), cycling, driving, and
//!   transit (a bus halting every few hundred metres); destinations are at
//!   least 300 m away.
//! - GPS error as phones have it: Gaussian, scaled by the accuracy the fix
//!   reports, and correlated from one fix to the next (a first-order
//!   autoregression), so a track wanders rather than zigzags; the reported
//!   `vel` is the true speed with a km/h of noise.
//! - Parked: a Wi-Fi fix every 5 to 20 minutes, and among them outliers:
//!   Wi-Fi fixes 250 to 500 m off (some honest with `acc` 400 to 800, some
//!   claiming 50 to 80), cell fixes 1 to 3 km off with `acc` over 1000.
//! - Traffic lights (20 to 90 s halted, `vel` 0), bus stops, tunnels
//!   (1 to 5 minutes without a fix while driving on), errands (a walk
//!   of 60 to 120 m from where it is parked and back: no trip), and moves
//!   across the car park (a walk of 60 to 120 m, then the rest of the stop
//!   there: no trip either).
//! - The first fix after leaving comes one interval later, as a phone
//!   notices movement; the trip's truth starts when the device left.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use geo::{Bearing, Destination, Distance, Haversine, Point};
use otstream_model::{IdentityHints, RawMessage, Transport};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// The fleet's shape.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// How many devices.
    pub devices: u32,
    /// Stop after this many messages in all.
    pub messages: u64,
    /// Seconds between reports of a moving device.
    pub interval_s: u32,
    /// Seed of every random choice.
    pub seed: u64,
    /// The simulated clock's start, milliseconds since the UNIX epoch.
    pub start_ms: i64,
    /// The city the fleet moves around: its centre, degrees.
    pub center: (f64, f64),
    /// Homes and destinations lie within this many metres of the centre.
    pub radius_m: f64,
    /// `mqtt`: messages carry their topic; `http`: the X-Limit headers.
    pub transport: Transport,
    /// The topic prefix (MQTT) and the user name every device shares.
    pub prefix: String,
    /// The user every device belongs to.
    pub user: String,
    /// Send what real phones send: noise, outliers, lights, tunnels,
    /// errands, four ways of moving; and keep the trips' ground truth.
    pub phones: bool,
    /// Stop at this many simulated seconds from the start, if sooner than
    /// `messages`.
    pub duration_s: Option<i64>,
}

impl FleetConfig {
    /// One simulated day of `devices` phones from `seed`, with the truth
    /// kept: what trip detection is measured on.
    pub fn day_of_phones(seed: u64, devices: u32) -> Self {
        FleetConfig {
            devices,
            messages: u64::MAX,
            duration_s: Some(86_400),
            seed,
            phones: true,
            ..FleetConfig::default()
        }
    }
}

/// A trip as it really happened, to measure detection against.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TruthTrip {
    /// The device's user.
    pub user: String,
    /// The device.
    pub device: String,
    /// How it moved.
    pub kind: Kind,
    /// When it left, UNIX seconds.
    pub start: i64,
    /// When it arrived, UNIX seconds.
    pub end: i64,
    /// The path's length, metres.
    pub distance_m: f64,
}

/// How a device moves on a trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// 4 to 6 km/h.
    Walk,
    /// 14 to 25 km/h.
    Cycle,
    /// 30 to 90 km/h, with traffic lights and tunnels.
    Drive,
    /// A bus: 20 to 45 km/h between stops every few hundred metres.
    Transit,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            devices: 100,
            messages: 10_000,
            interval_s: 10,
            seed: 1,
            start_ms: 1_767_225_600_000, // 2026-01-01T00:00:00Z
            center: (48.8566, 2.3522),
            radius_m: 8_000.0,
            transport: Transport::Http,
            prefix: "owntracks".into(),
            user: "fleet".into(),
            phones: false,
            duration_s: None,
        }
    }
}

/// How long a parked device waits between pings.
const PING_S: i64 = 900;
/// The home region's radius, metres.
const HOME_RADIUS_M: f64 = 100.0;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Parked { until: i64 },
    Walking,
    Driving,
}

#[derive(Debug)]
struct Device {
    index: u32,
    name: String,
    tid: String,
    ios: bool,
    rng: StdRng,
    home: Point,
    at: Point,
    target: Point,
    heading: f64,
    speed_mps: f64,
    mode: Mode,
    batt: i64,
    /// Messages due before the next step of the simulation: a card first,
    /// a transition with the location that caused it.
    queue: Vec<Value>,
    /// The subtopic of each queued message.
    subtopics: Vec<&'static str>,
    at_home: bool,
    lwt_at: Option<i64>,
    /// What phones do (with `FleetConfig::phones`).
    phone: Phone,
}

/// A phone's moving parts: its GPS error, halts, tunnels, errands, and
/// the truth of the trip it is on.
#[derive(Debug, Default)]
struct Phone {
    kind: Option<Kind>,
    /// The GPS error, metres north and east, carried from fix to fix.
    err: (f64, f64),
    /// Wakes left halted (a light, a bus stop) or silent (a tunnel).
    halted: u32,
    silent: u32,
    /// Metres since the last halt.
    since_halt: f64,
    /// Where an errand started (it walks back there), and until when it
    /// stays parked after.
    errand_from: Option<Point>,
    errand_until: i64,
    /// The errand is a move across the car park: it stays where it walked.
    errand_stays: bool,
    /// When each move across the car park began.
    moves: Vec<i64>,
    /// It moved across the car park in this stop already: no more errands
    /// until it leaves (two chained could take it beyond the stop's
    /// reach, which would be a trip).
    moved: bool,
    /// The trip in progress: when it left, metres so far.
    trip: Option<(i64, f64)>,
}

/// The synthetic fleet, as an iterator of messages in time order.
#[derive(Debug)]
pub struct Fleet {
    config: FleetConfig,
    /// The city's centre.
    center: Point,
    /// `<prefix>/<user>`: every device's topic starts so.
    topic_base: String,
    devices: Vec<Device>,
    /// Each device's next event time (seconds), earliest first.
    due: BinaryHeap<Reverse<(i64, u32)>>,
    emitted: u64,
    pending: std::collections::VecDeque<RawMessage>,
    truth: Vec<TruthTrip>,
}

fn random_point(rng: &mut StdRng, center: Point, radius: f64) -> Point {
    // Uniform over the disc, not bunched at the centre.
    let d = radius * rng.random::<f64>().sqrt();
    Haversine.destination(center, rng.random_range(0.0..360.0), d)
}

impl Fleet {
    /// A fleet of `config.devices` devices.
    pub fn new(config: FleetConfig) -> Self {
        let center = Point::new(config.center.1, config.center.0);
        let start = config.start_ms / 1000;
        let mut due = BinaryHeap::new();
        let devices = (0..config.devices)
            .map(|index| {
                let mut rng = StdRng::seed_from_u64(config.seed ^ (u64::from(index) << 20));
                let home = random_point(&mut rng, center, config.radius_m);
                let parked_for = rng.random_range(0..1800);
                // Devices wake at different moments, as real ones do.
                due.push(Reverse((start + rng.random_range(0..i64::from(config.interval_s.max(1))), index)));
                Device {
                    index,
                    name: format!("d{index:05}"),
                    tid: format!("{:02}", index % 100),
                    ios: index % 2 == 1,
                    home,
                    at: home,
                    target: home,
                    heading: 0.0,
                    speed_mps: 0.0,
                    mode: Mode::Parked {
                        until: start + parked_for,
                    },
                    batt: rng.random_range(30..100),
                    queue: vec![json!({"_type": "card", "name": format!("Driver {index}"), "tid": format!("{:02}", index % 100)})],
                    subtopics: vec!["info"],
                    at_home: true,
                    lwt_at: (rng.random::<f64>() < 0.05)
                        .then(|| start + rng.random_range(600..7200)),
                    rng,
                    phone: Phone::default(),
                }
            })
            .collect();
        Self {
            topic_base: format!("{}/{}", config.prefix, config.user),
            center,
            config,
            devices,
            due,
            emitted: 0,
            pending: Default::default(),
            truth: Vec::new(),
        }
    }

    /// The moves across a car park so far (a walk of 60 to 120 m within a
    /// stop, and the rest of the stop there: no trip), each device's with
    /// when it began (with [`FleetConfig::phones`]; empty otherwise).
    pub fn moves(&self) -> Vec<(String, i64)> {
        self.devices
            .iter()
            .flat_map(|d| d.phone.moves.iter().map(|t| (d.name.clone(), *t)))
            .collect()
    }

    /// The trips finished so far, as they really happened, in the order
    /// they ended (with [`FleetConfig::phones`]; empty otherwise).
    pub fn truth(&self) -> &[TruthTrip] {
        &self.truth
    }

    fn message(&self, d: &Device, now: i64, subtopic: &str, body: &Value) -> RawMessage {
        let hints = match self.config.transport {
            Transport::Mqtt => IdentityHints {
                mqtt_topic: Some(match subtopic {
                    "" => format!("{}/{}", self.topic_base, d.name),
                    s => format!("{}/{}/{s}", self.topic_base, d.name),
                }),
                ..Default::default()
            },
            Transport::Http => IdentityHints {
                x_limit_u: Some(self.config.user.clone()),
                x_limit_d: Some(d.name.clone()),
                ..Default::default()
            },
        };
        RawMessage {
            received_at: now * 1000 + i64::from(d.index % 1000),
            transport: self.config.transport,
            hints,
            remote_addr: None,
            payload: body.to_string().into_bytes(),
        }
    }

    /// Advances one device to `now` and returns its messages and its next
    /// event time.
    fn step(&mut self, index: u32, now: i64) -> (Vec<RawMessage>, i64) {
        let interval = i64::from(self.config.interval_s.max(1));
        let (center, radius) = (self.center, self.config.radius_m);
        let topic_base = self.topic_base.as_str();
        let Some(d) = self.devices.get_mut(index as usize) else {
            return (Vec::new(), i64::MAX);
        };
        let mut bodies: Vec<(&'static str, Value)> = d
            .queue
            .drain(..)
            .zip(d.subtopics.drain(..))
            .map(|(b, s)| (s, b))
            .collect();
        if d.lwt_at.is_some_and(|at| now >= at) {
            d.lwt_at = None;
            bodies.push(("", json!({"_type": "lwt", "tst": now - 60})));
        }
        let next = if self.config.phones {
            let (next, finished) =
                phone_step(d, now, interval, (center, radius), topic_base, &mut bodies);
            if let Some((kind, start, end, distance_m)) = finished {
                self.truth.push(TruthTrip {
                    user: self.config.user.clone(),
                    device: d.name.clone(),
                    kind,
                    start,
                    end,
                    distance_m,
                });
            }
            next
        } else {
            match d.mode {
                Mode::Parked { until } if now < until => {
                    bodies.push(("", location(d, now, "p", topic_base)));
                    now + PING_S.min(until - now).max(1)
                }
                Mode::Parked { .. } => {
                    // Off somewhere: home if away, else a new destination.
                    d.target = if d.at_home {
                        random_point(&mut d.rng, center, radius)
                    } else {
                        d.home
                    };
                    let far = Haversine.distance(d.at, d.target) > 1_500.0;
                    d.mode = if far { Mode::Driving } else { Mode::Walking };
                    d.speed_mps = if far {
                        d.rng.random_range(8.0..25.0)
                    } else {
                        d.rng.random_range(1.1..1.7)
                    };
                    d.heading = Haversine.bearing(d.at, d.target);
                    bodies.push(("", location(d, now, "t", topic_base)));
                    now + interval
                }
                Mode::Walking | Mode::Driving => {
                    let step = d.speed_mps * interval as f64;
                    let left = Haversine.distance(d.at, d.target);
                    if left <= step {
                        d.at = d.target;
                        d.speed_mps = 0.0;
                        d.mode = Mode::Parked {
                            until: now + d.rng.random_range(600..3600),
                        };
                    } else {
                        // Streets bend: the heading wanders around the bearing
                        // to the target and comes back to it.
                        let aim = Haversine.bearing(d.at, d.target);
                        d.heading = aim + d.rng.random_range(-25.0..25.0);
                        d.at = Haversine.destination(d.at, d.heading, step);
                    }
                    let moving = !matches!(d.mode, Mode::Parked { .. });
                    bodies.push((
                        "",
                        location(d, now, if moving { "t" } else { "v" }, topic_base),
                    ));
                    match d.mode {
                        Mode::Parked { until } => now + PING_S.min(until - now).max(1),
                        _ => now + interval,
                    }
                }
            }
        };
        let home_now = Haversine.distance(d.at, d.home) <= HOME_RADIUS_M;
        if home_now != d.at_home {
            d.at_home = home_now;
            let event = if home_now { "enter" } else { "leave" };
            bodies.push((
                "event",
                json!({"_type": "transition", "acc": 10, "desc": "home", "event": event,
                       "lat": round6(d.at.y()), "lon": round6(d.at.x()), "t": "c",
                       "tid": d.tid, "tst": now, "wtst": 1_700_000_000, "rid": format!("home-{}", d.name)}),
            ));
        }
        if now % 600 < interval {
            d.batt = (d.batt - 1).max(5);
        }
        let d = &self.devices[index as usize];
        let out = bodies
            .iter()
            .map(|(sub, body)| self.message(d, now, sub, body))
            .collect();
        (out, next)
    }
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// A location with the field set of the device's platform.
fn location(d: &mut Device, now: i64, trigger: &str, topic_base: &str) -> Value {
    let acc = d.rng.random_range(3..25);
    let mut v = json!({
        "_type": "location",
        "acc": acc,
        "alt": d.rng.random_range(30..60),
        "batt": d.batt,
        "bs": 1,
        "conn": if matches!(d.mode, Mode::Parked { .. }) { "w" } else { "m" },
        "lat": round6(d.at.y()),
        "lon": round6(d.at.x()),
        "t": trigger,
        "tid": d.tid,
        "tst": now,
        "vac": d.rng.random_range(1..10),
        "vel": (d.speed_mps * 3.6).round() as i64,
        "cog": ((d.heading.rem_euclid(360.0)).round() as i64),
        "m": 1,
        "created_at": now,
    });
    if let Value::Object(m) = &mut v {
        if d.ios {
            m.insert(
                "topic".into(),
                Value::from(format!("{topic_base}/{}", d.name)),
            );
            m.insert(
                "p".into(),
                Value::from(round6(100.0 + d.rng.random_range(0.0..2.0))),
            );
        } else if matches!(d.mode, Mode::Parked { .. }) {
            m.insert(
                "BSSID".into(),
                Value::from(format!(
                    "02:00:00:00:{:02x}:{:02x}",
                    d.index >> 8 & 0xff,
                    d.index & 0xff
                )),
            );
            m.insert("SSID".into(), Value::from(format!("home-{}", d.index)));
        }
    }
    v
}

/// A standard normal deviate (Box-Muller): the one distribution phones
/// need, not worth a dependency.
fn gauss(rng: &mut StdRng) -> f64 {
    let u: f64 = rng.random_range(f64::EPSILON..1.0);
    let v: f64 = rng.random();
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

/// `p` moved `north` and `east` metres.
fn offset(p: Point, north: f64, east: f64) -> Point {
    let d = north.hypot(east);
    if d == 0.0 {
        return p;
    }
    Haversine.destination(p, east.atan2(north).to_degrees(), d)
}

/// A trip's ending: its kind, when it left and arrived, and its length.
type Arrived = (Kind, i64, i64, f64);

/// One wake of a phone: what it sends, when it wakes next, and the trip
/// it finished, if any.
fn phone_step(
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

impl Iterator for Fleet {
    type Item = RawMessage;

    fn next(&mut self) -> Option<RawMessage> {
        loop {
            if self.emitted >= self.config.messages {
                return None;
            }
            if let Some(m) = self.pending.pop_front() {
                self.emitted += 1;
                return Some(m);
            }
            let Reverse((now, index)) = self.due.pop()?;
            if let Some(d) = self.config.duration_s {
                if now >= self.config.start_ms / 1000 + d {
                    return None;
                }
            }
            let (messages, next) = self.step(index, now);
            self.pending.extend(messages);
            self.due.push(Reverse((next, index)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(m: &RawMessage) -> Value {
        serde_json::from_slice(&m.payload).unwrap()
    }

    #[test]
    fn same_config_same_messages_in_time_order() {
        let config = FleetConfig {
            devices: 20,
            messages: 5_000,
            ..Default::default()
        };
        let a: Vec<_> = Fleet::new(config.clone()).collect();
        let b: Vec<_> = Fleet::new(config).collect();
        assert_eq!(a.len(), 5_000);
        assert_eq!(a, b);
        assert!(
            a.windows(2)
                .all(|w| w[0].received_at / 1000 <= w[1].received_at / 1000)
        );
    }

    #[test]
    fn the_mix_real_apps_send() {
        let config = FleetConfig {
            devices: 40,
            messages: 60_000,
            transport: Transport::Mqtt,
            ..Default::default()
        };
        let all: Vec<_> = Fleet::new(config).collect();
        let kind = |m: &RawMessage| body(m)["_type"].as_str().unwrap().to_owned();
        let count = |k: &str| all.iter().filter(|m| kind(m) == k).count();
        assert_eq!(count("card"), 40, "one card per device");
        assert!(count("transition") > 40, "devices leave and reach home");
        assert!(count("lwt") >= 1);
        assert!(count("location") > 50_000);
        // Each card on /info, each transition on /event, with the device's name.
        for m in &all {
            let topic = m.hints.mqtt_topic.as_deref().unwrap();
            match kind(m).as_str() {
                "card" => assert!(topic.ends_with("/info"), "{topic}"),
                "transition" => assert!(topic.ends_with("/event"), "{topic}"),
                _ => assert_eq!(topic.split('/').count(), 3, "{topic}"),
            }
        }
        // iOS sends its topic and pressure; Android does not.
        let loc = |device: &str| {
            all.iter()
                .find(|m| kind(m) == "location" && m.hints.mqtt_topic.as_deref() == Some(device))
                .map(body)
                .unwrap()
        };
        let ios = loc("owntracks/fleet/d00001");
        assert_eq!(ios["topic"], "owntracks/fleet/d00001");
        assert!(ios["p"].is_number());
        let android = loc("owntracks/fleet/d00000");
        assert!(android.get("topic").is_none() && android.get("p").is_none());
        // Drivers and walkers both: speeds over 25 km/h and under 7.
        let speeds: Vec<i64> = all
            .iter()
            .filter(|m| kind(m) == "location")
            .map(|m| body(m)["vel"].as_i64().unwrap())
            .collect();
        assert!(speeds.iter().any(|&v| v > 25) && speeds.iter().any(|&v| (1..7).contains(&v)));
    }

    #[test]
    fn phones_send_noise_and_outliers_and_the_truth_is_kept() {
        let config = FleetConfig {
            devices: 10,
            messages: u64::MAX,
            duration_s: Some(6 * 3600),
            phones: true,
            ..Default::default()
        };
        let mut fleet = Fleet::new(config.clone());
        let all: Vec<_> = fleet.by_ref().collect();
        let again: Vec<_> = Fleet::new(config).collect();
        assert_eq!(all, again, "deterministic");
        let fixes: Vec<Value> = all
            .iter()
            .map(body)
            .filter(|b| b["_type"] == "location")
            .collect();
        let acc = |b: &Value| b["acc"].as_i64().unwrap();
        // Cell fixes, and Wi-Fi fixes claiming 50 to 80 m, among GPS ones.
        assert!(fixes.iter().any(|b| acc(b) >= 1000));
        assert!(fixes.iter().any(|b| (50..80).contains(&acc(b))));
        assert!(fixes.iter().filter(|b| acc(b) < 16).count() > fixes.len() / 2);
        // Every trip ended within the run, and none is shorter than a
        // destination can be near; every way of moving is there.
        let last = config_start() + 6 * 3600;
        let truth = fleet.truth();
        assert!(truth.len() >= 30, "{}", truth.len());
        for t in truth {
            assert!(t.start < t.end && t.end < last, "{t:?}");
            assert!(t.distance_m >= 300.0, "{t:?}");
        }
        let all_kinds = [Kind::Walk, Kind::Cycle, Kind::Drive, Kind::Transit];
        assert!(all_kinds.iter().all(|k| truth.iter().any(|t| t.kind == *k)));
    }

    fn config_start() -> i64 {
        FleetConfig::default().start_ms / 1000
    }

    #[test]
    fn tracks_are_continuous() {
        let config = FleetConfig {
            devices: 5,
            messages: 3_000,
            ..Default::default()
        };
        let mut last: std::collections::HashMap<String, (i64, Point)> = Default::default();
        for m in Fleet::new(config) {
            let b = body(&m);
            if b["_type"] != "location" {
                continue;
            }
            let p = Point::new(b["lon"].as_f64().unwrap(), b["lat"].as_f64().unwrap());
            let tst = b["tst"].as_i64().unwrap();
            let dev = m.hints.x_limit_d.clone().unwrap();
            if let Some((t0, p0)) = last.insert(dev, (tst, p)) {
                assert!(tst > t0, "tst strictly increases per device");
                // No jumps: at most 25 m/s (90 km/h) since the last fix.
                let speed = Haversine.distance(p0, p) / (tst - t0) as f64;
                assert!(speed <= 25.5, "{speed} m/s");
            }
        }
    }
}
