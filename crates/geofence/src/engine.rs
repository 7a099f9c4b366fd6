//! Per-device evaluation of fixes against fences.

use std::collections::HashMap;
use std::sync::Arc;

use otstream_model::record::{Position, Transition, Waypoint};
use otstream_model::{Record, Text};
use smallvec::SmallVec;

use crate::fence::{Fence, FenceSet, Shape, fence_key};

/// The evaluation rules' knobs.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeofenceConfig {
    /// A device inside a fence leaves it only once it is this far outside,
    /// metres. 30 m is above the jitter of a good GPS fix (5-20 m), so a
    /// device standing on the border does not flap.
    #[serde(default = "default_hysteresis_m")]
    pub hysteresis_m: f64,
    /// A fix enters a fence only if its accuracy radius is at most the
    /// fence's size times this: with 1.0, a fix accurate to 2 km cannot
    /// enter a 50 m fence.
    #[serde(default = "default_max_acc_ratio")]
    pub max_acc_ratio: f64,
    /// Operator fences: a GeoJSON FeatureCollection file, reloaded when it
    /// changes. None: only the devices' own regions.
    #[serde(default)]
    pub fences: Option<std::path::PathBuf>,
    /// Rules (dwell, idle, overspeed, built-in events narrowed): a TOML
    /// file of `[[rules]]`, reloaded when it changes; a file that does not
    /// check keeps the rules in use. See [`crate::rules`].
    #[serde(default)]
    pub rules: Option<std::path::PathBuf>,
    /// Send each phone the circular fences that apply to it, as an
    /// OwnTracks `setWaypoints` command in the answer to its next location
    /// over HTTP after they changed (see `otstream_ingress::push`).
    #[serde(default)]
    pub push: bool,
    /// How often the fences and rules files are checked for a change, ms.
    #[serde(default = "default_reload_ms")]
    pub reload_ms: u64,
    /// Over Kafka, a device's state is snapshotted to the `state` topic at
    /// most this often, ms: one snapshot stands for every fix since the
    /// last, and those fixes are committed only once it is durable. In one
    /// process (`serve`) every fix's state is stored with it, because the
    /// phone's 200 waits for it. 0: a snapshot per fix everywhere.
    #[serde(default = "default_state_interval_ms")]
    pub state_interval_ms: u64,
    /// Regions a device may define for itself (its waypoints); one more
    /// with a new id is stored as a waypoint but not evaluated (counted in
    /// `otstream_rejected_total{stage="geofence",reason="too_many_regions"}`).
    /// A replaced region (same id) never counts twice. The apps monitor
    /// 20 (iOS) to a few dozen; 256 leaves room and bounds the state a
    /// device can make the server keep and write.
    #[serde(default = "default_max_regions_per_device")]
    pub max_regions_per_device: usize,
}

fn default_max_regions_per_device() -> usize {
    256
}

fn default_state_interval_ms() -> u64 {
    250
}

fn default_reload_ms() -> u64 {
    2000
}

fn default_hysteresis_m() -> f64 {
    30.0
}
fn default_max_acc_ratio() -> f64 {
    1.0
}

impl Default for GeofenceConfig {
    fn default() -> Self {
        Self {
            hysteresis_m: default_hysteresis_m(),
            max_acc_ratio: default_max_acc_ratio(),
            fences: None,
            rules: None,
            push: false,
            reload_ms: default_reload_ms(),
            state_interval_ms: default_state_interval_ms(),
            max_regions_per_device: default_max_regions_per_device(),
        }
    }
}

/// Entering or leaving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Now inside.
    Enter,
    /// Now outside.
    Leave,
}

impl Event {
    /// `enter` or `leave`, as in OwnTracks.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Enter => "enter",
            Event::Leave => "leave",
        }
    }
}

/// One fix, as the rules need it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fix {
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lon: f64,
    /// Accuracy radius, metres.
    pub acc: Option<i32>,
    /// Time, UNIX seconds.
    pub tst: i64,
}

/// A fence crossed by a fix.
#[derive(Debug, Clone, PartialEq)]
pub struct Crossing {
    /// The fence's id.
    pub fence_id: Text,
    /// The fence's name.
    pub name: Text,
    /// For a device's own waypoint, its creation time.
    pub wtst: Option<i64>,
    /// Enter or leave.
    pub event: Event,
}

/// What is remembered per device: the fences it is inside (stable id
/// hashes) and the time of the last fix evaluated. Eight fences inline: a
/// device is rarely inside more at once, and then it spills to the heap.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceState {
    /// Fences the device is inside.
    pub inside: SmallVec<[u64; 8]>,
    /// Time of the last fix evaluated, UNIX seconds (0 before any).
    pub last_tst: i64,
}

impl DeviceState {
    /// Bytes this state occupies (inline part and any spilled heap).
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + if self.inside.spilled() {
                self.inside.capacity() * 8
            } else {
                0
            }
    }
}

/// Evaluates one fix for one device against `fences` (already filtered to
/// those that may apply, or all: the filter is checked here), appending
/// crossings to `out`. A fix no newer than the state's last changes nothing.
pub fn evaluate<'f>(
    config: &GeofenceConfig,
    fences: impl Iterator<Item = &'f Fence>,
    inside_now_elsewhere: &dyn Fn(u64) -> Option<&'f Fence>,
    (user, device): (&str, &str),
    state: &mut DeviceState,
    fix: Fix,
    out: &mut Vec<Crossing>,
) {
    if fix.tst <= state.last_tst {
        return;
    }
    state.last_tst = fix.tst;
    let acc = f64::from(fix.acc.unwrap_or(0).max(0));
    let mut seen: SmallVec<[u64; 8]> = SmallVec::new();
    for f in fences.filter(|f| f.applies_to(user, device)) {
        seen.push(f.key);
        if state.inside.contains(&f.key) {
            if f.outside_m(fix.lat, fix.lon) > config.hysteresis_m.max(acc) {
                state.inside.retain(|k| *k != f.key);
                out.push(crossing(f, Event::Leave));
            }
        } else if acc <= f.size_m * config.max_acc_ratio && f.contains(fix.lat, fix.lon) {
            state.inside.push(f.key);
            out.push(crossing(f, Event::Enter));
        }
    }
    // Fences the device is inside whose box does not even hold the fix:
    // far outside, unless accuracy says otherwise.
    let far: SmallVec<[u64; 8]> = state
        .inside
        .iter()
        .copied()
        .filter(|k| !seen.contains(k))
        .collect();
    for key in far {
        match inside_now_elsewhere(key) {
            Some(f) => {
                if f.outside_m(fix.lat, fix.lon) > config.hysteresis_m.max(acc) {
                    state.inside.retain(|k| *k != key);
                    out.push(crossing(f, Event::Leave));
                }
            }
            // The fence is gone (file reloaded without it): forget it
            // quietly; a leave for a fence nobody defines would mislead.
            None => state.inside.retain(|k| *k != key),
        }
    }
}

fn crossing(f: &Fence, event: Event) -> Crossing {
    Crossing {
        fence_id: f.id.clone(),
        name: f.name.clone(),
        wtst: f.wtst,
        event,
    }
}

/// A device's own region: a circle from one of its waypoints.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Region {
    /// Fence id, `wp:<rid>` or `wp:<tst>:<desc>`.
    pub id: Text,
    /// The waypoint's description.
    pub name: Text,
    /// Centre latitude, degrees.
    pub lat: f64,
    /// Centre longitude, degrees.
    pub lon: f64,
    /// Radius, metres.
    pub radius_m: f64,
    /// The waypoint's creation time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wtst: Option<i64>,
}

/// The fences a position is evaluated against: the operator's and each
/// device's own regions. The devices' states are the caller's (the stage's
/// tracker keeps them with the trips), passed to [`Geofencer::evaluate`].
#[derive(Debug)]
pub struct Geofencer {
    config: GeofenceConfig,
    fences: Arc<FenceSet>,
    /// The `tst` each circle is pushed to the phones with, to its key.
    pushed: HashMap<i64, u64>,
    waypoints: HashMap<String, Regions>,
}

/// The circles of `fences` by the `tst` they are pushed to the phones with.
fn pushed_tsts(fences: &FenceSet) -> HashMap<i64, u64> {
    fences
        .fences()
        .iter()
        .filter(|f| matches!(f.shape, Shape::Circle { .. }))
        .map(|f| (otstream_model::pushed_tst(&f.id), f.key))
        .collect()
}

/// What a waypoint did to its device's regions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// Not a region (no centre or radius).
    Nothing,
    /// A region added, or one replaced by its id.
    Region,
    /// A new region past `max_regions_per_device`: not kept.
    Full,
}

/// A device's own regions in the order they came, each found by its id's
/// key in O(1): a `waypoints` message of thousands of regions costs
/// thousands of steps, not millions.
#[derive(Debug, Default)]
struct Regions {
    fences: Vec<Fence>,
    by_key: HashMap<u64, usize>,
}

impl Regions {
    fn upsert(&mut self, fence: Fence, max: usize) -> Learned {
        if let Some(&i) = self.by_key.get(&fence.key) {
            self.fences[i] = fence;
            return Learned::Region;
        }
        if self.fences.len() >= max {
            return Learned::Full;
        }
        self.by_key.insert(fence.key, self.fences.len());
        self.fences.push(fence);
        Learned::Region
    }
}

impl Geofencer {
    /// A geofencer over `fences`.
    pub fn new(config: GeofenceConfig, fences: Arc<FenceSet>) -> Self {
        Self {
            config,
            pushed: pushed_tsts(&fences),
            fences,
            waypoints: HashMap::new(),
        }
    }

    /// Replaces the operator fences (the file changed); device state is kept.
    pub fn set_fences(&mut self, fences: Arc<FenceSet>) {
        self.pushed = pushed_tsts(&fences);
        self.fences = fences;
    }

    /// Whether a region or a transition a device reports is its copy of
    /// an operator circle the server pushes to it: its `rid`
    /// (`otstream:<id>`; iOS) or its `tst`/`wtst` (Android sends no rid)
    /// names a circle that applies to that device. The server evaluates
    /// the fence itself: the copy would count everything twice.
    pub fn is_pushed_copy(
        &self,
        (user, device): (&str, &str),
        rid: Option<&str>,
        tst: Option<i64>,
    ) -> bool {
        let by_rid = rid
            .and_then(|r| r.strip_prefix(otstream_model::PUSHED_RID_PREFIX))
            .and_then(|id| self.fences.by_key(fence_key(id)));
        let by_tst = || {
            tst.and_then(|t| self.pushed.get(&t))
                .and_then(|k| self.fences.by_key(*k))
        };
        by_rid
            .or_else(by_tst)
            .is_some_and(|f| matches!(f.shape, Shape::Circle { .. }) && f.applies_to(user, device))
    }

    /// The operator fences in use.
    pub fn fences(&self) -> &FenceSet {
        &self.fences
    }

    /// The name of the fence with key `k`: the device's own region, else
    /// the operator's fence.
    pub fn fence_name(&self, device: &str, k: u64) -> Option<Text> {
        let own = self
            .waypoints
            .get(device)
            .map(|r| r.fences.as_slice())
            .unwrap_or_default();
        own.iter()
            .find(|f| f.key == k)
            .or_else(|| self.fences.by_key(k))
            .map(|f| f.name.clone())
    }

    /// Learns a device's own region (a waypoint with a centre and radius).
    pub fn on_waypoint(&mut self, w: &Waypoint) -> Learned {
        let (Some(lat), Some(lon), Some(rad)) = (w.lat, w.lon, w.rad) else {
            return Learned::Nothing;
        };
        // An operator fence the server pushed: evaluated as the fence
        // already, it would give every transition twice.
        if self.is_pushed_copy((&w.meta.user, &w.meta.device), w.rid.as_deref(), w.tst) {
            return Learned::Nothing;
        }
        if rad <= 0 {
            return Learned::Nothing;
        }
        let name = w.desc.clone().unwrap_or_default();
        let id = match &w.rid {
            Some(rid) => format!("wp:{rid}"),
            None => format!("wp:{}:{name}", w.tst.unwrap_or(0)),
        };
        self.add_region(
            w.meta.key(),
            Region {
                id: id.into(),
                name,
                lat,
                lon,
                radius_m: f64::from(rad),
                wtst: w.tst,
            },
        )
    }

    fn add_region(&mut self, key: String, r: Region) -> Learned {
        let mut fence = Fence::new(
            r.id,
            r.name,
            Shape::Circle {
                lat: r.lat,
                lon: r.lon,
                radius_m: r.radius_m,
            },
        );
        fence.wtst = r.wtst;
        let max = self.config.max_regions_per_device;
        self.waypoints.entry(key).or_default().upsert(fence, max)
    }

    /// A device's own regions, for persistence.
    pub fn regions(&self, key: &str) -> Vec<Region> {
        self.waypoints
            .get(key)
            .into_iter()
            .flat_map(|r| &r.fences)
            .filter_map(|f| match f.shape {
                Shape::Circle { lat, lon, radius_m } => Some(Region {
                    id: f.id.clone(),
                    name: f.name.clone(),
                    lat,
                    lon,
                    radius_m,
                    wtst: f.wtst,
                }),
                Shape::Polygon(_) => None,
            })
            .collect()
    }

    /// Restores a device's own regions (after a restart or rebalance),
    /// replacing any it has.
    pub fn restore_regions(&mut self, key: &str, regions: Vec<Region>) {
        self.waypoints.remove(key);
        for r in regions {
            // A state stored under a higher limit keeps its first regions.
            self.add_region(key.to_owned(), r);
        }
    }

    /// Evaluates a position of device `key` (`user/device`) against
    /// `state` (the device's, kept by the caller); returns the transitions
    /// it causes, as records with `source = "server"`.
    pub fn evaluate(&self, key: &str, p: &Position, state: &mut DeviceState) -> Vec<Record> {
        let own = self
            .waypoints
            .get(key)
            .map(|r| r.fences.as_slice())
            .unwrap_or_default();
        let fix = Fix {
            lat: p.lat,
            lon: p.lon,
            acc: p.acc,
            tst: p.tst,
        };
        let fences = &self.fences;
        let lookup = |k: u64| own.iter().find(|f| f.key == k).or_else(|| fences.by_key(k));
        let mut crossings = Vec::new();
        let candidates = fences.candidates(p.lat, p.lon).chain(own.iter());
        evaluate(
            &self.config,
            candidates,
            &lookup,
            (&p.meta.user, &p.meta.device),
            state,
            fix,
            &mut crossings,
        );
        crossings
            .into_iter()
            .map(|c| {
                Record::Transition(Transition {
                    meta: p.meta.clone(),
                    tst: p.tst,
                    wtst: c.wtst,
                    lat: p.lat,
                    lon: p.lon,
                    acc: p.acc,
                    event: Text::from(c.event.as_str()),
                    desc: Some(c.name),
                    rid: Some(c.fence_id),
                    t: None,
                    source: Text::const_new("server"),
                    extra: None,
                })
            })
            .collect()
    }

    /// The name of the fence `(lat, lon)` lies in, for device `key`
    /// (`user/device`): among the operator fences that apply to it and its
    /// own regions, the smallest, so that a depot inside a city names the
    /// depot. A fence without a name is named by its id.
    pub fn place(&self, key: &str, user: &str, device: &str, lat: f64, lon: f64) -> Option<Text> {
        let own = self
            .waypoints
            .get(key)
            .map(|r| r.fences.as_slice())
            .unwrap_or_default();
        self.fences
            .candidates(lat, lon)
            .filter(|f| f.applies_to(user, device))
            .chain(own.iter())
            .filter(|f| f.contains(lat, lon))
            .min_by(|a, b| a.size_m.total_cmp(&b.size_m))
            .map(|f| {
                if f.name.is_empty() {
                    f.id.clone()
                } else {
                    f.name.clone()
                }
            })
    }
}

/// A key for a fence id, as stored in [`DeviceState::inside`].
pub fn key_of(id: &str) -> u64 {
    fence_key(id)
}

#[cfg(test)]
mod tests;
