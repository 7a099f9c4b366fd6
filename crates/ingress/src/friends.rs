//! Friends: what OwnTracks Recorder returns from `/pub` so that the apps
//! show the other members of a group on their map: each friend's last
//! location and card, as OwnTracks JSON with the friend's `topic`.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;

use otstream_model::Record;
use serde_json::{Value, json};

use crate::config::FriendsConfig;

/// Last location and card of every device in a group.
pub struct Friends {
    /// Device → the other devices it sees.
    peers: HashMap<String, Vec<String>>,
    last: RwLock<HashMap<String, Last>>,
}

#[derive(Default, Clone)]
struct Last {
    location: Option<Value>,
    card: Option<Value>,
}

/// What a friend is shown of a fix.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Fix {
    /// UNIX s.
    pub tst: i64,
    /// Degrees.
    pub lat: f64,
    /// Degrees.
    pub lon: f64,
    /// Accuracy, m.
    pub acc: Option<i32>,
    /// Altitude, m.
    pub alt: Option<i32>,
    /// Battery, %.
    pub batt: Option<i32>,
    /// Speed, km/h.
    pub vel: Option<i32>,
    /// Course, degrees.
    pub cog: Option<i32>,
    /// Vertical accuracy, m.
    pub vac: Option<i32>,
}

/// A device's last fix and card name as the store has them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Stored {
    /// User part of the identity.
    pub user: String,
    /// Device part of the identity.
    pub device: String,
    /// Tracker id.
    pub tid: Option<String>,
    /// Its last fix.
    pub fix: Fix,
    /// The name on its card.
    pub name: Option<String>,
}

/// Keeps `fix` as `key`'s location unless a newer one is there.
fn remember_fix(last: &mut HashMap<String, Last>, key: String, tid: Option<&str>, fix: &Fix) {
    let topic = format!("owntracks/{key}");
    let slot = last.entry(key).or_default();
    let newer = slot
        .location
        .as_ref()
        .and_then(|l| l["tst"].as_i64())
        .is_none_or(|t| fix.tst >= t);
    if !newer {
        return;
    }
    let mut v = json!({
        "_type": "location", "lat": fix.lat, "lon": fix.lon, "tst": fix.tst,
        "topic": topic,
    });
    let fields: BTreeMap<&str, Option<i32>> = [
        ("acc", fix.acc),
        ("alt", fix.alt),
        ("batt", fix.batt),
        ("vel", fix.vel),
        ("cog", fix.cog),
        ("vac", fix.vac),
    ]
    .into();
    for (k, x) in fields {
        if let Some(x) = x {
            v[k] = x.into();
        }
    }
    if let Some(tid) = tid {
        v["tid"] = tid.into();
    }
    slot.location = Some(v);
}

impl Friends {
    /// Friends of the members of `groups` (each a list of `user/device`:
    /// the access groups' single devices); `None` when `config` has the
    /// feature off.
    pub fn new(config: &FriendsConfig, groups: &BTreeMap<String, Vec<String>>) -> Option<Self> {
        if !config.enabled {
            return None;
        }
        let mut peers: HashMap<String, Vec<String>> = HashMap::new();
        for members in groups.values() {
            for m in members {
                let entry = peers.entry(m.clone()).or_default();
                for other in members.iter().filter(|o| *o != m) {
                    if !entry.contains(other) {
                        entry.push(other.clone());
                    }
                }
            }
        }
        Some(Self {
            peers,
            last: RwLock::new(HashMap::new()),
        })
    }

    /// Remembers the latest location and card among stored records.
    pub fn update(&self, records: &[Record]) {
        let Ok(mut last) = self.last.write() else {
            return;
        };
        for r in records {
            let Some(meta) = r.meta() else { continue };
            let key = meta.key();
            if !self.peers.contains_key(&key) {
                continue;
            }
            let tid = meta.tid.as_deref();
            match r {
                Record::Position(p) => {
                    let fix = Fix {
                        tst: p.tst,
                        lat: p.lat,
                        lon: p.lon,
                        acc: p.acc,
                        alt: p.alt,
                        batt: p.batt,
                        vel: p.vel,
                        cog: p.cog,
                        vac: p.vac,
                    };
                    remember_fix(&mut last, key, tid, &fix);
                }
                Record::Card(c) => {
                    let mut v = json!({"_type": "card", "topic": format!("owntracks/{key}")});
                    if let Some(n) = &c.name {
                        v["name"] = n.as_str().into();
                    }
                    if let Some(f) = &c.face {
                        v["face"] = f.as_str().into();
                    }
                    if let Some(tid) = tid {
                        v["tid"] = tid.into();
                    }
                    last.entry(key).or_default().card = Some(v);
                }
                _ => {}
            }
        }
    }

    /// Remembers what the store holds for a device (read at start, and
    /// again and again so that fixes other processes stored are seen): its
    /// last fix, unless this process saw a newer one, and its card's name
    /// when no card was seen here.
    pub fn remember(&self, stored: &Stored) {
        let key = format!("{}/{}", stored.user, stored.device);
        if !self.peers.contains_key(&key) {
            return;
        }
        let Ok(mut last) = self.last.write() else {
            return;
        };
        if let Some(name) = &stored.name {
            let slot = last.entry(key.clone()).or_default();
            if slot.card.is_none() {
                let mut v =
                    json!({"_type": "card", "topic": format!("owntracks/{key}"), "name": name});
                if let Some(tid) = &stored.tid {
                    v["tid"] = tid.as_str().into();
                }
                slot.card = Some(v);
            }
        }
        remember_fix(&mut last, key, stored.tid.as_deref(), &stored.fix);
    }

    /// The answer for `device`: each peer's card, then its location.
    pub fn response(&self, device: &str) -> Vec<Value> {
        let Some(peers) = self.peers.get(device) else {
            return Vec::new();
        };
        let Ok(last) = self.last.read() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for p in peers {
            if let Some(l) = last.get(p) {
                out.extend(l.card.iter().cloned());
                out.extend(l.location.iter().cloned());
            }
        }
        out
    }
}
