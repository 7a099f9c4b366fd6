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
//! The fleet is an iterator of [`RawMessage`] in time order, the same shape
//! a recording holds, so it is written to a file or sent by the replay
//! engine. It is deterministic: the same config gives the same messages.

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
        }
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
        let next = match d.mode {
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
