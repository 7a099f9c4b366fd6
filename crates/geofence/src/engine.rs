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
    /// How often the fences file is checked for a change, ms.
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
    waypoints: HashMap<String, Regions>,
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
            fences,
            waypoints: HashMap::new(),
        }
    }

    /// Replaces the operator fences (the file changed); device state is kept.
    pub fn set_fences(&mut self, fences: Arc<FenceSet>) {
        self.fences = fences;
    }

    /// Learns a device's own region (a waypoint with a centre and radius).
    pub fn on_waypoint(&mut self, w: &Waypoint) -> Learned {
        let (Some(lat), Some(lon), Some(rad)) = (w.lat, w.lon, w.rad) else {
            return Learned::Nothing;
        };
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
mod tests {
    use otstream_model::Transport;
    use otstream_model::record::Meta;

    use super::*;

    /// Metres per degree on the haversine sphere (R = 6371.0088 km).
    const M: f64 = 111_195.08;

    fn pos(user: &str, tst: i64, lat: f64, lon: f64, acc: Option<i32>) -> Position {
        let meta = Meta {
            user: user.into(),
            device: "phone".into(),
            tid: None,
            received_at: 0,
            transport: Transport::Http,
            topic: None,
        };
        Position {
            acc,
            ..Position::at(meta, tst, lat, lon)
        }
    }

    fn circle(id: &str, lat: f64, lon: f64, r: f64) -> Fence {
        Fence::new(
            id,
            id,
            Shape::Circle {
                lat,
                lon,
                radius_m: r,
            },
        )
    }

    /// A geofencer and the devices' states, kept as the stage's tracker
    /// keeps them.
    struct Engine {
        g: Geofencer,
        states: HashMap<String, DeviceState>,
    }

    impl Engine {
        fn on_position(&mut self, p: &Position) -> Vec<Record> {
            let key = p.meta.key();
            let state = self.states.entry(key.clone()).or_default();
            self.g.evaluate(&key, p, state)
        }
    }

    impl std::ops::Deref for Engine {
        type Target = Geofencer;
        fn deref(&self) -> &Geofencer {
            &self.g
        }
    }

    impl std::ops::DerefMut for Engine {
        fn deref_mut(&mut self) -> &mut Geofencer {
            &mut self.g
        }
    }

    fn engine(fences: Vec<Fence>) -> Engine {
        Engine {
            g: Geofencer::new(GeofenceConfig::default(), Arc::new(FenceSet::new(fences))),
            states: HashMap::new(),
        }
    }

    /// (tst, event, rid) of every transition for a track.
    fn run(
        g: &mut Engine,
        user: &str,
        track: &[(i64, f64, f64, Option<i32>)],
    ) -> Vec<(i64, String, String)> {
        track
            .iter()
            .flat_map(|(t, lat, lon, acc)| g.on_position(&pos(user, *t, *lat, *lon, *acc)))
            .map(|r| match r {
                Record::Transition(t) => {
                    assert_eq!(t.source, "server");
                    (
                        t.tst,
                        t.event.to_string(),
                        t.rid.unwrap_or_default().to_string(),
                    )
                }
                other => panic!("{other:?}"),
            })
            .collect()
    }

    fn ev(t: i64, e: &str, id: &str) -> (i64, String, String) {
        (t, e.to_owned(), id.to_owned())
    }

    #[test]
    fn crossing_gives_one_enter_and_one_leave() {
        let mut g = engine(vec![circle("home", 52.5, 13.4, 100.0)]);
        // Walk north through the centre, 40 m a step, from 300 m south.
        let track: Vec<_> = (0..16)
            .map(|i| {
                (
                    i64::from(i) + 1,
                    52.5 + (f64::from(i) * 40.0 - 300.0) / M,
                    13.4,
                    Some(5),
                )
            })
            .collect();
        // 60 m south (tst 7) is the first fix inside: the one 100 m south
        // is on the edge by the sphere but 5 cm out on the ellipsoid, which
        // decides close calls. 140 m north (tst 12) is 40 m out, beyond the
        // 30 m margin.
        assert_eq!(
            run(&mut g, "jane", &track),
            [ev(7, "enter", "home"), ev(12, "leave", "home")]
        );
    }

    #[test]
    fn jitter_along_the_border_does_not_flap() {
        let mut g = engine(vec![circle("home", 52.5, 13.4, 100.0)]);
        let track: Vec<_> = (0..40)
            .map(|i| {
                (
                    i64::from(i) + 1,
                    52.5 + (if i % 2 == 0 { 95.0 } else { 120.0 }) / M,
                    13.4,
                    Some(10),
                )
            })
            .collect();
        assert_eq!(run(&mut g, "jane", &track), [ev(1, "enter", "home")]);
        // Clearly out (beyond the 30 m margin): one leave.
        assert_eq!(
            run(&mut g, "jane", &[(100, 52.5 + 140.0 / M, 13.4, Some(10))]),
            [ev(100, "leave", "home")]
        );
    }

    #[test]
    fn a_poor_fix_cannot_enter_a_small_fence_nor_leave_on_noise() {
        let mut g = engine(vec![
            circle("desk", 52.5, 13.4, 50.0),
            circle("city", 52.5, 13.4, 5000.0),
        ]);
        let mut got = run(&mut g, "jane", &[(1, 52.5, 13.4, Some(2000))]);
        got.sort();
        assert_eq!(got, [ev(1, "enter", "city")]);
        assert_eq!(
            run(&mut g, "jane", &[(2, 52.5, 13.4, Some(20))]),
            [ev(2, "enter", "desk")]
        );
        // 300 m out, but accurate only to 500 m: not proof of leaving.
        assert_eq!(
            run(&mut g, "jane", &[(3, 52.5 + 300.0 / M, 13.4, Some(500))]),
            []
        );
        assert_eq!(
            run(&mut g, "jane", &[(4, 52.5 + 300.0 / M, 13.4, Some(10))]),
            [ev(4, "leave", "desk")]
        );
    }

    #[test]
    fn overlapping_and_nested_fences() {
        let mut g = engine(vec![
            circle("campus", 52.5, 13.4, 1000.0),
            circle("building", 52.5, 13.4, 100.0),
            circle(
                "east",
                52.5,
                13.4 + 900.0 / (M * 52.5f64.to_radians().cos()),
                500.0,
            ),
        ]);
        let mut first = run(&mut g, "jane", &[(1, 52.5, 13.4, Some(5))]);
        first.sort();
        assert_eq!(
            first,
            [ev(1, "enter", "building"), ev(1, "enter", "campus")]
        );
        // 600 m east: out of the building, inside campus and east.
        let east = 13.4 + 600.0 / (M * 52.5f64.to_radians().cos());
        let mut second = run(&mut g, "jane", &[(2, 52.5, east, Some(5))]);
        second.sort();
        assert_eq!(second, [ev(2, "enter", "east"), ev(2, "leave", "building")]);
    }

    #[test]
    fn fences_across_the_antimeridian_and_near_the_poles() {
        let mut g = engine(vec![
            circle("dateline", 0.0, 179.9995, 300.0),
            circle("pole", 89.9995, 0.0, 500.0),
        ]);
        // 167 m east of the centre, across ±180.
        assert_eq!(
            run(&mut g, "a", &[(1, 0.0, -179.9990, Some(5))]),
            [ev(1, "enter", "dateline")]
        );
        assert_eq!(
            run(&mut g, "a", &[(2, 0.0, -179.99, Some(5))]),
            [ev(2, "leave", "dateline")]
        );
        // Near the pole, every longitude is close: 89.999 N at 120 E is
        // ~147 m from a centre at 89.9995 N, 0 E.
        assert_eq!(
            run(&mut g, "b", &[(1, 89.999, 120.0, Some(5))]),
            [ev(1, "enter", "pole")]
        );
        assert_eq!(
            run(&mut g, "b", &[(2, 89.99, -60.0, Some(5))]),
            [ev(2, "leave", "pole")]
        );
        let set = FenceSet::new(vec![circle("dateline", 0.0, 179.9995, 300.0)]);
        assert_eq!(set.fences()[0].envelopes().len(), 2);
    }

    #[test]
    fn late_and_redelivered_fixes_change_nothing() {
        let mut g = engine(vec![circle("home", 52.5, 13.4, 100.0)]);
        assert_eq!(
            run(&mut g, "jane", &[(10, 52.5, 13.4, Some(5))]),
            [ev(10, "enter", "home")]
        );
        // A late fix from outside, and the same fix redelivered.
        assert_eq!(
            run(
                &mut g,
                "jane",
                &[(5, 52.6, 13.4, Some(5)), (10, 52.5, 13.4, Some(5))]
            ),
            []
        );
        assert_eq!(g.states["jane/phone"].last_tst, 10);
    }

    #[test]
    fn polygons_with_holes_and_geojson() {
        let geojson = r#"{"type":"FeatureCollection","features":[
            {"type":"Feature","properties":{"id":"yard","name":"Yard"},"geometry":{"type":"Polygon","coordinates":[
                [[13.40,52.50],[13.41,52.50],[13.41,52.51],[13.40,52.51],[13.40,52.50]],
                [[13.404,52.504],[13.406,52.504],[13.406,52.506],[13.404,52.506],[13.404,52.504]]]}},
            {"type":"Feature","id":"pt","properties":{"radius":50,"user":"bob"},"geometry":{"type":"Point","coordinates":[13.5,52.5]}},
            {"type":"Feature","properties":{"id":"two"},"geometry":{"type":"MultiPolygon","coordinates":[
                [[[0,0],[1,0],[1,1],[0,1],[0,0]]],[[[2,0],[3,0],[3,1],[2,1],[2,0]]]]}}]}"#;
        let set = FenceSet::from_geojson(geojson).unwrap();
        assert_eq!(
            set.fences()
                .iter()
                .map(|f| f.id.as_str())
                .collect::<Vec<_>>(),
            ["yard", "pt", "two"]
        );
        assert_eq!(set.fences()[0].name, "Yard");
        let mut g = Engine {
            g: Geofencer::new(GeofenceConfig::default(), Arc::new(set)),
            states: HashMap::new(),
        };
        // Into the yard, then to the middle of its hole (the hole's edge
        // is ~70 m away, beyond the 30 m margin): a leave. The hole here is
        // wound like its exterior, against RFC 7946, as real files do.
        assert_eq!(
            run(&mut g, "jane", &[(1, 52.502, 13.402, Some(5))]),
            [ev(1, "enter", "yard")]
        );
        assert_eq!(
            run(&mut g, "jane", &[(2, 52.505, 13.405, Some(5))]),
            [ev(2, "leave", "yard")]
        );
        // The point fence is bob's only.
        assert_eq!(run(&mut g, "jane", &[(3, 52.5, 13.5, Some(5))]), []);
        assert_eq!(
            run(&mut g, "bob", &[(3, 52.5, 13.5, Some(5))]),
            [ev(3, "enter", "pt")]
        );
        assert_eq!(
            run(&mut g, "jane", &[(4, 0.5, 2.5, Some(5))]),
            [ev(4, "enter", "two")]
        );
        let e = FenceSet::from_geojson(r#"{"type":"FeatureCollection","features":[{"type":"Feature","properties":{"id":"x"},"geometry":{"type":"Point","coordinates":[1,2]}}]}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "feature 0: a Point fence needs a numeric `radius` property (metres)"
        );
        assert!(matches!(
            FenceSet::from_geojson("[]"),
            Err(crate::FenceError::NotACollection)
        ));
        // Malformed geometry is an error naming the problem, never a panic.
        let feature = |geometry: &str| {
            format!(
                r#"{{"type":"FeatureCollection","features":[{{"type":"Feature","properties":{{"id":"x","radius":5}},"geometry":{geometry}}}]}}"#
            )
        };
        for (geometry, want) in [
            (
                r#"{"type":"Polygon","coordinates":[[[1],[2],[3],[1]]]}"#,
                "feature 0: invalid Polygon coordinates",
            ),
            (
                r#"{"type":"Polygon","coordinates":[[[0,0],[1,0],[0,0]]]}"#,
                "feature 0: invalid Polygon coordinates",
            ),
            (
                r#"{"type":"LineString","coordinates":[[0,0],[1,1]]}"#,
                "feature 0: unsupported geometry Some(\"LineString\"): use Polygon, MultiPolygon or Point with a radius",
            ),
        ] {
            let e = FenceSet::from_geojson(&feature(geometry)).unwrap_err();
            assert_eq!(e.to_string(), want, "{geometry}");
        }
        let e =
            FenceSet::from_geojson(&feature(r#"{"type":"Point","coordinates":[1]}"#)).unwrap_err();
        assert!(
            e.to_string().starts_with("fences are not valid GeoJSON: "),
            "{e}"
        );
    }

    /// Jane's 100 m region at (52.5, 13.4).
    fn waypoint(desc: &str) -> Waypoint {
        Waypoint {
            meta: pos("jane", 0, 0.0, 0.0, None).meta,
            tst: Some(1690000000),
            lat: Some(52.5),
            lon: Some(13.4),
            rad: Some(100),
            desc: Some(desc.into()),
            rid: None,
            uuid: None,
            major: None,
            minor: None,
            extra: None,
        }
    }

    #[test]
    fn a_place_is_the_smallest_fence_that_applies() {
        let city = circle("city", 52.5, 13.4, 5_000.0);
        let mut depot = circle("depot", 52.5, 13.4, 150.0);
        depot.name = "Depot".into();
        // Bob's yard, smaller still, is not Jane's.
        let mut yard = circle("yard", 52.5, 13.4, 50.0);
        yard.user = Some("bob".into());
        let mut g = engine(vec![city, depot, yard]);
        let place = |g: &Geofencer, lat: f64| g.place("jane/phone", "jane", "phone", lat, 13.4);
        assert_eq!(place(&g, 52.5).as_deref(), Some("Depot"));
        // 1 km north: only the city, named by its id.
        assert_eq!(place(&g, 52.5 + 1000.0 / M).as_deref(), Some("city"));
        assert_eq!(place(&g, 53.5), None);
        assert_eq!(
            g.place("bob/phone", "bob", "phone", 52.5, 13.4).as_deref(),
            Some("yard")
        );
        // Jane's own 100 m region at the depot is smaller than it.
        g.on_waypoint(&waypoint("Loading bay"));
        assert_eq!(place(&g, 52.5).as_deref(), Some("Loading bay"));
    }

    #[test]
    fn a_devices_own_waypoints_are_its_fences() {
        let mut g = engine(Vec::new());
        g.on_waypoint(&waypoint("Home"));
        let got = g.on_position(&pos("jane", 5, 52.5, 13.4, Some(5)));
        let Record::Transition(t) = &got[0] else {
            panic!()
        };
        assert_eq!(
            (
                t.event.as_str(),
                t.desc.as_deref(),
                t.wtst,
                t.rid.as_deref()
            ),
            (
                "enter",
                Some("Home"),
                Some(1690000000),
                Some("wp:1690000000:Home")
            )
        );
        // Another device does not have jane's region.
        let mut other = pos("bob", 5, 52.5, 13.4, Some(5));
        other.meta.user = "bob".into();
        assert!(g.on_position(&other).is_empty());
    }

    #[test]
    fn state_is_small() {
        let mut s = DeviceState::default();
        s.inside.extend([1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(s.bytes() <= 96, "{}", s.bytes());
    }
}
