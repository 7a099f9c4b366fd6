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

impl Friends {
    /// Friends per the configuration; `None` when the feature is off.
    pub fn new(config: &FriendsConfig) -> Option<Self> {
        if !config.enabled {
            return None;
        }
        let mut peers: HashMap<String, Vec<String>> = HashMap::new();
        for members in config.groups.values() {
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
            let topic = format!("owntracks/{key}");
            let slot = last.entry(key).or_default();
            match r {
                Record::Position(p) => {
                    let newer = slot
                        .location
                        .as_ref()
                        .and_then(|l| l["tst"].as_i64())
                        .is_none_or(|t| p.tst >= t);
                    if newer {
                        let mut v = json!({
                            "_type": "location", "lat": p.lat, "lon": p.lon, "tst": p.tst,
                            "topic": topic,
                        });
                        let fields: BTreeMap<&str, Option<i32>> = [
                            ("acc", p.acc),
                            ("alt", p.alt),
                            ("batt", p.batt),
                            ("vel", p.vel),
                            ("cog", p.cog),
                            ("vac", p.vac),
                        ]
                        .into();
                        for (k, x) in fields {
                            if let Some(x) = x {
                                v[k] = x.into();
                            }
                        }
                        if let Some(tid) = &meta.tid {
                            v["tid"] = tid.as_str().into();
                        }
                        slot.location = Some(v);
                    }
                }
                Record::Card(c) => {
                    let mut v = json!({"_type": "card", "topic": topic});
                    if let Some(n) = &c.name {
                        v["name"] = n.as_str().into();
                    }
                    if let Some(f) = &c.face {
                        v["face"] = f.as_str().into();
                    }
                    if let Some(tid) = &meta.tid {
                        v["tid"] = tid.as_str().into();
                    }
                    slot.card = Some(v);
                }
                _ => {}
            }
        }
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
