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

use phone::phone_step;

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

mod phone;
#[cfg(test)]
mod tests;
