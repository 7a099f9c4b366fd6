//! Normalized records: the rows of the tables.
//!
//! Every record keeps OwnTracks' own field names and units wherever the field
//! exists in the protocol, and adds who sent it and how ([`Meta`]). Fields a
//! device did not send are `None` (and absent from the JSON form). Whatever a
//! device sent that has no column here is kept, verbatim, as a JSON object in
//! `extra`: nothing the device sent is thrown away.
//!
//! Short text columns (identity, tid, triggers, Wi-Fi names) are [`Text`],
//! stored inline up to 24 bytes: decoding a position allocates for `extra`
//! at most, which measurably matters at a million messages per second.
//!
//! Conventions, applied by the decoder and relied on by the tables:
//! - times are UNIX seconds (`tst`, `wtst`, `created_at`, `from`, `to`), except
//!   `received_at`, which is milliseconds; a device time sent in milliseconds
//!   (some Android builds do) is converted to seconds;
//! - integer fields sent as floats are truncated toward zero, as the Android
//!   app does (`vel` 5.6 is 5); numbers sent as strings are parsed;
//! - the `-1` the apps send for an unknown speed, course, altitude, vertical
//!   accuracy, accuracy or battery level is `None`, not a value.

use serde::{Deserialize, Serialize};

pub use compact_str::CompactString as Text;

use crate::raw::Transport;

/// Who sent a record and how it arrived; common to every record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// The user part of the device identity.
    pub user: Text,
    /// The device part of the device identity.
    pub device: Text,
    /// Tracker id: the short label the apps show (usually two characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tid: Option<Text>,
    /// When otstream received the message, milliseconds since the UNIX epoch.
    pub received_at: i64,
    /// How the message arrived.
    pub transport: Transport,
    /// The MQTT topic, or the `topic` field of an HTTP payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<Text>,
}

impl Meta {
    /// The device's bus key, `user/device` (as [`DeviceId::key`](crate::DeviceId::key)).
    pub fn key(&self) -> String {
        format!("{}/{}", self.user, self.device)
    }
}

/// `_type=location`: where a device was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// Sender and transport.
    #[serde(flatten)]
    pub meta: Meta,
    /// Time of the fix, UNIX seconds.
    pub tst: i64,
    /// Latitude, decimal degrees (WGS84), -90..=90.
    pub lat: f64,
    /// Longitude, decimal degrees (WGS84), -180..=180.
    pub lon: f64,
    /// Horizontal accuracy radius, metres.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acc: Option<i32>,
    /// Altitude above sea level, metres.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alt: Option<i32>,
    /// Vertical accuracy of `alt`, metres.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vac: Option<i32>,
    /// Speed, km/h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vel: Option<i32>,
    /// Course over ground, degrees, 0 = north, clockwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cog: Option<i32>,
    /// Battery level, percent (0..=100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batt: Option<i32>,
    /// Battery status: 0 unknown, 1 unplugged, 2 charging, 3 full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bs: Option<i32>,
    /// Trigger: p ping, c circular region, b beacon, r report request, u user,
    /// t timer, v monitoring change; absent means automatic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t: Option<Text>,
    /// Connectivity when the fix was taken: w wifi, m mobile, o offline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conn: Option<Text>,
    /// Barometric pressure, kPa.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p: Option<f64>,
    /// Monitoring mode: -1 quiet, 0 manual, 1 significant, 2 move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub m: Option<i32>,
    /// Wi-Fi network name (`SSID` or `ssid` on the wire).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssid: Option<Text>,
    /// Wi-Fi access point MAC (`BSSID` or `bssid`), as sent (iOS does not
    /// zero-pad octets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bssid: Option<Text>,
    /// When the app created the message, UNIX seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<i64>,
    /// Names of the regions the device is in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inregions: Vec<Text>,
    /// Ids of the regions the device is in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inrids: Vec<Text>,
    /// Unknown fields, verbatim, as a JSON object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<String>,
    /// Why the position filters set this fix aside (`zero`, `future`,
    /// `speed`, ...); `None` for a fix taken into fences, trips, last
    /// positions and events. Set by the geofence stage, never decoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filtered: Option<Text>,
    /// The nearest place (`Lyon, Rhone-Alpes`), from the offline
    /// geocoder; set by the sink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub place: Option<Text>,
    /// Its ISO country code (`FR`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cc: Option<Text>,
}

impl Position {
    /// A fix with only its required fields; every optional one is absent.
    /// Set others with struct update syntax: `Position { acc: Some(5), ..Position::at(..) }`.
    // Inline: the decoder calls this per message, and without it the ~400
    // byte record is built out of line and copied, which measured +100 to
    // +200 ns per location (BENCHMARKS.md).
    #[inline]
    pub fn at(meta: Meta, tst: i64, lat: f64, lon: f64) -> Self {
        Position {
            meta,
            tst,
            lat,
            lon,
            acc: None,
            alt: None,
            vac: None,
            vel: None,
            cog: None,
            batt: None,
            bs: None,
            t: None,
            conn: None,
            p: None,
            m: None,
            ssid: None,
            bssid: None,
            created_at: None,
            inregions: Vec::new(),
            inrids: Vec::new(),
            extra: None,
            filtered: None,
            place: None,
            cc: None,
        }
    }
}

/// `_type=transition`: a device entered or left a region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    /// Sender and transport.
    #[serde(flatten)]
    pub meta: Meta,
    /// Time of the transition, UNIX seconds.
    pub tst: i64,
    /// Time the region (waypoint) was created, UNIX seconds; identifies it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wtst: Option<i64>,
    /// Latitude where the transition fired, decimal degrees.
    pub lat: f64,
    /// Longitude where the transition fired, decimal degrees.
    pub lon: f64,
    /// Accuracy of lat/lon, metres.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acc: Option<i32>,
    /// `enter` or `leave`.
    pub event: Text,
    /// The region's description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desc: Option<Text>,
    /// Region id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rid: Option<Text>,
    /// Trigger: c circular region, b beacon, w wifi, l location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t: Option<Text>,
    /// Who decided it: `device` (reported by the app) or `server`.
    pub source: Text,
    /// Unknown fields, verbatim, as a JSON object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<String>,
}

/// `_type=waypoint` (and each entry of `waypoints` and of a configuration's
/// `waypoints`): a region defined on the device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Waypoint {
    /// Sender and transport.
    #[serde(flatten)]
    pub meta: Meta,
    /// Creation time of the waypoint, UNIX seconds; identifies it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tst: Option<i64>,
    /// Centre latitude, decimal degrees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lat: Option<f64>,
    /// Centre longitude, decimal degrees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lon: Option<f64>,
    /// Radius, metres.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rad: Option<i32>,
    /// Description (the region's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desc: Option<Text>,
    /// Region id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rid: Option<Text>,
    /// Beacon UUID, for beacon regions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Text>,
    /// Beacon major number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major: Option<i32>,
    /// Beacon minor number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor: Option<i32>,
    /// Unknown fields, verbatim, as a JSON object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<String>,
}

/// `_type=card`: the name and face the apps show for a user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Card {
    /// Sender and transport.
    #[serde(flatten)]
    pub meta: Meta,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Text>,
    /// Base64 PNG or JPEG image, 40x40 px by convention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub face: Option<String>,
    /// Unknown fields, verbatim, as a JSON object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<String>,
}

/// `_type=lwt` and `_type=status`: what happened to the device rather than
/// where it was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceEvent {
    /// Sender and transport.
    #[serde(flatten)]
    pub meta: Meta,
    /// `lwt` (the broker lost the connection) or `status` (app status report).
    pub event: Text,
    /// For an lwt: when the app first connected, UNIX seconds (the apps'
    /// will message often has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tst: Option<i64>,
    /// Unknown fields, and a status report's `android`/`iOS` objects,
    /// verbatim, as a JSON object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<String>,
}

/// `_type=steps`: the pedometer over a period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Steps {
    /// Sender and transport.
    #[serde(flatten)]
    pub meta: Meta,
    /// Time of the report, UNIX seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tst: Option<i64>,
    /// Steps walked in the period; `None` when the device could not count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<i64>,
    /// Start of the period, UNIX seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<i64>,
    /// End of the period, UNIX seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<i64>,
    /// Distance walked, metres.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distance: Option<i64>,
    /// Floors climbed up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floorsup: Option<i64>,
    /// Floors climbed down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floorsdown: Option<i64>,
    /// Unknown fields, verbatim, as a JSON object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<String>,
}

/// `_type=beacon`: an iBeacon seen while ranging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Beacon {
    /// Sender and transport.
    #[serde(flatten)]
    pub meta: Meta,
    /// Time of the observation, UNIX seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tst: Option<i64>,
    /// Beacon UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Text>,
    /// Beacon major number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major: Option<i32>,
    /// Beacon minor number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor: Option<i32>,
    /// Accuracy of the proximity, metres from the beacon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acc: Option<i32>,
    /// Received signal strength, dBm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rssi: Option<i32>,
    /// Proximity: 0 unknown, 1 immediate, 2 near, 3 far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prox: Option<i32>,
    /// Description of the beacon region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desc: Option<Text>,
    /// Unknown fields, verbatim, as a JSON object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<String>,
}

/// `_type=configuration`: a dump of the app's settings, secrets removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Configuration {
    /// Sender and transport.
    #[serde(flatten)]
    pub meta: Meta,
    /// Connection mode: 0 MQTT, 3 HTTP (others are historical).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<i32>,
    /// Broker host (MQTT mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<Text>,
    /// Broker port (MQTT mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    /// Endpoint URL (HTTP mode), credentials removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<Text>,
    /// User name the app authenticates with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<Text>,
    /// Device id configured in the app (`deviceId`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<Text>,
    /// Number of waypoints in the dump (each is also a waypoint record).
    pub waypoints: u32,
    /// The whole configuration as a JSON object, with every secret
    /// (`password`, `passphrase`, `encryptionKey`, ...) removed.
    pub config: String,
}

/// `_type=cmd`: a remote command (usually sent to a device; stored when seen).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// Sender and transport.
    #[serde(flatten)]
    pub meta: Meta,
    /// The action (`reportLocation`, `setWaypoints`, `setConfiguration`, ...).
    pub action: Text,
    /// Time, UNIX seconds, when the command carries one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tst: Option<i64>,
    /// Every other field of the command as a JSON object, secrets removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<String>,
}

/// A well-formed message whose `_type` otstream does not model (`request`,
/// future types): stored, never rejected, because iOS drops a message the
/// server answers with 4xx.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unknown {
    /// Sender and transport.
    #[serde(flatten)]
    pub meta: Meta,
    /// The message's `_type`.
    pub kind: Text,
    /// Time, UNIX seconds, when the message carries a `tst`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tst: Option<i64>,
    /// The message's fields other than `_type`, `tid`, `tst` and `topic`, as
    /// a JSON object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<String>,
}

/// A payload that could not be decoded, kept with the reason so that it can
/// be read, fixed and replayed: bad input never stops the stream, and it is
/// never silently lost either.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The user, when the transport named one (empty when unknown).
    pub user: Text,
    /// The device, when the transport named one (empty when unknown).
    pub device: Text,
    /// When otstream received the payload, milliseconds since the UNIX epoch.
    pub received_at: i64,
    /// How the payload arrived.
    pub transport: Transport,
    /// The MQTT topic, when it came over MQTT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<Text>,
    /// The peer's address, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_addr: Option<Text>,
    /// The error kind (a bounded code such as `invalid_json`).
    pub kind: Text,
    /// The field at fault, when one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<Text>,
    /// What is wrong, in a sentence.
    pub message: String,
    /// The payload exactly as received (lossy UTF-8 in the JSON form).
    #[serde(with = "lossy_bytes")]
    pub payload: Vec<u8>,
}

mod lossy_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&String::from_utf8_lossy(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Ok(String::deserialize(d)?.into_bytes())
    }
}

/// A trip computed from a device's positions: it moved more than the
/// configured distance from where it stayed, and ended once it stayed
/// within that distance for the configured time (or data stopped coming).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trip {
    /// The device; `received_at` is that of the position that closed the
    /// trip, so a recomputation writes the same row.
    #[serde(flatten)]
    pub meta: Meta,
    /// Start: the last fix of the stop before, UNIX seconds.
    pub start: i64,
    /// End: the first fix of the stop after (or the last fix before a data gap), UNIX seconds.
    pub end: i64,
    /// Start latitude, degrees.
    pub start_lat: f64,
    /// Start longitude, degrees.
    pub start_lon: f64,
    /// End latitude, degrees.
    pub end_lat: f64,
    /// End longitude, degrees.
    pub end_lon: f64,
    /// Sum of the geodesic (WGS84) distances between consecutive fixes, metres.
    pub distance: f64,
    /// `end - start`, seconds.
    pub duration: i64,
    /// Average speed, `distance / duration`, km/h (0 for a zero duration).
    pub avg_vel: f64,
    /// Highest speed: reported `vel` where the fix has one, else the speed
    /// over the segment leading to it, km/h.
    pub max_vel: f64,
    /// Fixes in the trip, both ends included.
    pub points: u32,
    /// The nearest place to the start, and its country code (the offline
    /// geocoder; set by the sink).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_place: Option<Text>,
    /// See `start_place`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_cc: Option<Text>,
    /// The nearest place to the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_place: Option<Text>,
    /// See `end_place`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_cc: Option<Text>,
}

/// A stop computed from a device's positions: it was at rest in one place
/// for at least the configured time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stop {
    /// The device; `received_at` as for [`Trip`].
    #[serde(flatten)]
    pub meta: Meta,
    /// Arrival (estimated from the fixes around it), UNIX seconds.
    pub start: i64,
    /// Departure (estimated likewise), UNIX seconds.
    pub end: i64,
    /// Latitude of the place, degrees: the centre of its fixes.
    pub lat: f64,
    /// Longitude of the place, degrees.
    pub lon: f64,
    /// `end - start`, seconds.
    pub duration: i64,
    /// Fixes during the stop.
    pub points: u32,
    /// The fence it lies in (a server fence or the device's own region),
    /// the smallest if several; `None` outside every fence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub place: Option<Text>,
    /// The nearest populated place (`place` is the fence), from the offline
    /// geocoder; set by the sink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<Text>,
    /// Its ISO country code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cc: Option<Text>,
    /// The place it is a visit of: the start of that place's first stop
    /// (`otstream_trips::places`); `None` for stops stored before places.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub place_id: Option<i64>,
}

/// A stage's remembered state for one device, written beside the records
/// it derived from the same input so that both are durable together; a
/// restarted stage reads the latest back and carries on without missing or
/// repeating a transition, trip or stop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateSnapshot {
    /// User part of the device identity.
    pub user: Text,
    /// Device part of the device identity.
    pub device: Text,
    /// Whose state: `geo` (fences inside, trip in progress) or `waypoints`
    /// (the device's own regions).
    pub kind: Text,
    /// The state, JSON, in the owning stage's format.
    pub state: String,
    /// When it was written, milliseconds since the UNIX epoch.
    pub updated_at: i64,
}

impl StateSnapshot {
    /// The device's bus key, `user/device` (as [`Meta::key`]).
    pub fn key(&self) -> String {
        format!("{}/{}", self.user, self.device)
    }
}

/// A fix on its way to a rule that compares devices (`proximity`):
/// keyed by the rule ([`Near::key`]) rather than by the device, so that
/// every device the rule compares meets in one partition, whatever
/// partitions their own fixes are on. Never stored: it goes from the
/// geofence stage to the proximity stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Near {
    /// The rule's name.
    pub rule: Text,
    /// The fix, as the geofence stage took it.
    pub fix: Position,
}

impl Near {
    /// The user part of the bus key of a rule's fixes and of its state
    /// snapshots (`~near/<rule>`): `~` is never in a device's own key
    /// that the rules could confuse with it, and the state's `kind`
    /// (`proximity`) keeps the two apart in `device_state` anyway.
    pub const USER: &'static str = "~near";

    /// The bus key of the rule `rule`'s fixes and state.
    pub fn key(rule: &str) -> String {
        format!("{}/{rule}", Near::USER)
    }
}

/// Any normalized record. The JSON form carries the variant in `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)] // records are moved, not stored in bulk; boxing costs an allocation each
pub enum Record {
    /// A location fix.
    Position(Position),
    /// A region transition.
    Transition(Transition),
    /// A region definition.
    Waypoint(Waypoint),
    /// A user's card.
    Card(Card),
    /// An lwt or status report.
    DeviceEvent(DeviceEvent),
    /// A pedometer report.
    Steps(Steps),
    /// A beacon observation.
    Beacon(Beacon),
    /// A configuration dump.
    Configuration(Configuration),
    /// A remote command.
    Command(Command),
    /// A message of a `_type` otstream does not model.
    Unknown(Unknown),
    /// A payload that could not be decoded.
    DeadLetter(DeadLetter),
    /// A trip, computed on the server.
    Trip(Trip),
    /// A stop, computed on the server.
    Stop(Stop),
    /// A stage's state for one device.
    State(StateSnapshot),
    /// Something to tell an operator about (see [`crate::event`]).
    Event(crate::event::Event),
    /// A fix on its way to a proximity rule (not stored).
    Near(Near),
}

impl Record {
    /// The common sender and transport facts; `None` for a dead letter,
    /// which may not know its sender.
    pub fn meta(&self) -> Option<&Meta> {
        Some(match self {
            Record::Position(r) => &r.meta,
            Record::Transition(r) => &r.meta,
            Record::Waypoint(r) => &r.meta,
            Record::Card(r) => &r.meta,
            Record::DeviceEvent(r) => &r.meta,
            Record::Steps(r) => &r.meta,
            Record::Beacon(r) => &r.meta,
            Record::Configuration(r) => &r.meta,
            Record::Command(r) => &r.meta,
            Record::Unknown(r) => &r.meta,
            Record::Trip(r) => &r.meta,
            Record::Stop(r) => &r.meta,
            Record::Event(r) => &r.meta,
            Record::Near(n) => &n.fix.meta,
            Record::DeadLetter(_) | Record::State(_) => return None,
        })
    }

    /// The bus key: the device identity `user/device` (empty parts for a
    /// dead letter whose sender is unknown).
    pub fn key(&self) -> String {
        let (user, device) = self.device();
        format!("{user}/{device}")
    }

    /// Whether `key` is this record's [`Record::key`], found without
    /// building the key.
    pub fn has_key(&self, key: &str) -> bool {
        let (user, device) = self.device();
        key.len() == user.len() + 1 + device.len()
            && key.starts_with(user)
            && key.ends_with(device)
            && key.as_bytes()[user.len()] == b'/'
    }

    /// The record's user and device (a dead letter's may be empty).
    fn device(&self) -> (&str, &str) {
        match self {
            Record::DeadLetter(d) => (&d.user, &d.device),
            Record::State(s) => (&s.user, &s.device),
            Record::Near(n) => (Near::USER, &n.rule),
            r => r.meta().map_or(("", ""), |m| (&m.user, &m.device)),
        }
    }

    /// The common sender and transport facts, for the decoder to complete.
    pub fn meta_mut(&mut self) -> Option<&mut Meta> {
        Some(match self {
            Record::Position(r) => &mut r.meta,
            Record::Transition(r) => &mut r.meta,
            Record::Waypoint(r) => &mut r.meta,
            Record::Card(r) => &mut r.meta,
            Record::DeviceEvent(r) => &mut r.meta,
            Record::Steps(r) => &mut r.meta,
            Record::Beacon(r) => &mut r.meta,
            Record::Configuration(r) => &mut r.meta,
            Record::Command(r) => &mut r.meta,
            Record::Unknown(r) => &mut r.meta,
            Record::Trip(r) => &mut r.meta,
            Record::Stop(r) => &mut r.meta,
            Record::Event(r) => &mut r.meta,
            Record::Near(n) => &mut n.fix.meta,
            Record::DeadLetter(_) | Record::State(_) => return None,
        })
    }

    /// The record's type name, as written in the JSON `type` field.
    pub fn type_name(&self) -> &'static str {
        match self {
            Record::Position(_) => "position",
            Record::Transition(_) => "transition",
            Record::Waypoint(_) => "waypoint",
            Record::Card(_) => "card",
            Record::DeviceEvent(_) => "device_event",
            Record::Steps(_) => "steps",
            Record::Beacon(_) => "beacon",
            Record::Configuration(_) => "configuration",
            Record::Command(_) => "command",
            Record::Unknown(_) => "unknown",
            Record::DeadLetter(_) => "dead_letter",
            Record::Trip(_) => "trip",
            Record::Stop(_) => "stop",
            Record::State(_) => "state",
            Record::Event(_) => "event",
            Record::Near(_) => "near",
        }
    }

    /// The record as one line of JSON.
    pub fn to_json(&self) -> String {
        // Records hold only strings, numbers and finite floats (the decoder
        // rejects NaN and infinities), so serialization cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests;
