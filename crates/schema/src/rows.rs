//! The rows a read returns, with the tables' column names and units.
//!
//! Each row type is also the row ClickHouse's RowBinary is decoded into,
//! straight: its fields are the columns a read selects, in order
//! ([`select`] spells them for SQL), and ClickHouse's encodings (a
//! `DateTime` as four bytes, `''` or `0` for a key column the device did
//! not send) are read back as the embedded store has them (`i64`
//! seconds, absent) by the helpers in `de`. A test holds every field to
//! a column of its [`Table`](crate::Table).

use clickhouse::Row;
use serde::Deserialize;

/// The columns of the row type `R`, in its field order, quoted for both
/// SQLite and ClickHouse (`"end"` is a keyword in SQLite).
pub fn select<R: Row>() -> String {
    let mut out = String::new();
    for (i, c) in R::COLUMN_NAMES.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push('"');
        out.push_str(c);
        out.push('"');
    }
    out
}

/// ClickHouse's encodings as the embedded store's values.
mod de {
    use serde::{Deserialize, Deserializer};

    /// A `DateTime` (four bytes, seconds) or a `UInt32` as an `i64`.
    pub fn u32<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        u32::deserialize(d).map(i64::from)
    }

    /// A `Nullable(DateTime)` as UNIX s.
    pub fn opt_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        Option::<u32>::deserialize(d).map(|o| o.map(i64::from))
    }

    /// A key column's `0` (not sent) as absent.
    pub fn zero_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        u32::deserialize(d).map(|v| (v != 0).then_some(i64::from(v)))
    }

    /// A key column's `''` (not sent) as absent.
    pub fn empty_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        String::deserialize(d).map(|s| (!s.is_empty()).then_some(s))
    }
}

/// A short string kept inline (up to 24 bytes) rather than on the heap:
/// an export reads a million positions, each with half a dozen short
/// texts (user, device, tid, trigger, ...), and allocating each was a
/// fifth of an export's time.
pub type Str = compact_str::CompactString;

/// A stored location fix (`positions`). It is also the row ClickHouse's
/// RowBinary is decoded into, straight, in column order (see
/// [`select`]): converting from a row type of its own was a copy of every
/// row of an export.
#[derive(Debug, Clone, PartialEq, Default, Row, Deserialize)]
pub struct Position {
    /// User part of the identity.
    pub user: Str,
    /// Device part of the identity.
    pub device: Str,
    /// Tracker id.
    pub tid: Option<Str>,
    /// Time of the fix, UNIX s.
    #[serde(deserialize_with = "de::u32")]
    pub tst: i64,
    /// Latitude, degrees WGS84.
    pub lat: f64,
    /// Longitude, degrees WGS84.
    pub lon: f64,
    /// Accuracy radius, m.
    pub acc: Option<i32>,
    /// Altitude, m.
    pub alt: Option<i32>,
    /// Vertical accuracy, m.
    pub vac: Option<i32>,
    /// Speed, km/h.
    pub vel: Option<i32>,
    /// Course over ground, degrees.
    pub cog: Option<i32>,
    /// Battery, percent.
    pub batt: Option<i32>,
    /// Battery status (0 unknown, 1 unplugged, 2 charging, 3 full).
    pub bs: Option<i32>,
    /// Trigger.
    pub t: Option<Str>,
    /// Connectivity (w, m, o).
    pub conn: Option<Str>,
    /// Barometric pressure, kPa.
    pub p: Option<f64>,
    /// Monitoring mode.
    pub m: Option<i32>,
    /// Wi-Fi network name.
    pub ssid: Option<Str>,
    /// Wi-Fi access point.
    pub bssid: Option<Str>,
    /// When the app created the message, UNIX s.
    #[serde(deserialize_with = "de::opt_u32")]
    pub created_at: Option<i64>,
    /// Names of the regions the device was in.
    pub inregions: Vec<Str>,
    /// Ids of the regions the device was in.
    pub inrids: Vec<Str>,
    /// MQTT topic, or the payload's `topic`.
    pub topic: Option<Str>,
    /// When otstream received it, UNIX ms.
    pub received_at: i64,
}

/// A device and its last position (`/api/v1/devices`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Device {
    /// Its latest fix; `last.received_at` is when it was last seen.
    pub last: Position,
    /// The name on its card, if it sent one.
    pub name: Option<String>,
    /// The picture on its card (base64 PNG or JPEG, as the apps send it),
    /// where the reader filled it in (the readers' `faces`).
    pub face: Option<String>,
}

/// A transition (`transitions`), reported by the device or evaluated by
/// the server.
#[derive(Debug, Clone, PartialEq, Default, Row, Deserialize)]
pub struct Transition {
    /// User part of the identity.
    pub user: String,
    /// Device part of the identity.
    pub device: String,
    /// Tracker id.
    pub tid: Option<String>,
    /// When it fired, UNIX s.
    #[serde(deserialize_with = "de::u32")]
    pub tst: i64,
    /// The region's creation time (its identity for a device region), UNIX s.
    #[serde(deserialize_with = "de::zero_none")]
    pub wtst: Option<i64>,
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lon: f64,
    /// Accuracy, m.
    pub acc: Option<i32>,
    /// `enter` or `leave`.
    pub event: String,
    /// The region's name.
    #[serde(deserialize_with = "de::empty_none")]
    pub desc: Option<String>,
    /// The region's id.
    pub rid: Option<String>,
    /// Trigger.
    pub t: Option<String>,
    /// `device` or `server`.
    pub source: String,
    /// When otstream received or computed it, UNIX ms.
    pub received_at: i64,
}

/// A trip (`trips`).
#[derive(Debug, Clone, PartialEq, Default, Row, Deserialize)]
pub struct Trip {
    /// User part of the identity.
    pub user: String,
    /// Device part of the identity.
    pub device: String,
    /// Start, UNIX s.
    #[serde(deserialize_with = "de::u32")]
    pub start: i64,
    /// End, UNIX s.
    #[serde(deserialize_with = "de::u32")]
    pub end: i64,
    /// Start latitude, degrees.
    pub start_lat: f64,
    /// Start longitude, degrees.
    pub start_lon: f64,
    /// End latitude, degrees.
    pub end_lat: f64,
    /// End longitude, degrees.
    pub end_lon: f64,
    /// Geodesic length, m.
    pub distance: f64,
    /// End − start, s.
    #[serde(deserialize_with = "de::u32")]
    pub duration: i64,
    /// Average speed, km/h.
    pub avg_vel: f64,
    /// Top speed, km/h.
    pub max_vel: f64,
    /// Positions in the trip.
    #[serde(deserialize_with = "de::u32")]
    pub points: i64,
    /// Nearest populated place to the start (`name, region`), if geocoded.
    #[serde(deserialize_with = "de::empty_none")]
    pub start_place: Option<String>,
    /// Its ISO country code.
    #[serde(deserialize_with = "de::empty_none")]
    pub start_cc: Option<String>,
    /// Nearest populated place to the end.
    #[serde(deserialize_with = "de::empty_none")]
    pub end_place: Option<String>,
    /// Its ISO country code.
    #[serde(deserialize_with = "de::empty_none")]
    pub end_cc: Option<String>,
    /// Street address of the start, once the addresses job has it.
    pub start_address: Option<String>,
    /// Street address of the end.
    pub end_address: Option<String>,
}

/// A stop (`stops`).
#[derive(Debug, Clone, PartialEq, Default, Row, Deserialize)]
pub struct Stop {
    /// User part of the identity.
    pub user: String,
    /// Device part of the identity.
    pub device: String,
    /// Arrival, UNIX s.
    #[serde(deserialize_with = "de::u32")]
    pub start: i64,
    /// Departure, UNIX s.
    #[serde(deserialize_with = "de::u32")]
    pub end: i64,
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lon: f64,
    /// End − start, s.
    #[serde(deserialize_with = "de::u32")]
    pub duration: i64,
    /// Positions during the stop.
    #[serde(deserialize_with = "de::u32")]
    pub points: i64,
    /// The fence it lies in, if any.
    #[serde(deserialize_with = "de::empty_none")]
    pub place: Option<String>,
    /// Nearest populated place (`name, region`), if geocoded.
    #[serde(deserialize_with = "de::empty_none")]
    pub locality: Option<String>,
    /// Its ISO country code.
    #[serde(deserialize_with = "de::empty_none")]
    pub cc: Option<String>,
    /// Street address, once the addresses job has it.
    pub address: Option<String>,
    /// The place it is a visit of (the start of that place's first stop),
    /// absent for stops stored before places.
    #[serde(deserialize_with = "de::zero_none")]
    pub place_id: Option<i64>,
}

/// A place a device keeps returning to: its stops clustered
/// (`stops.place_id`, `otstream_trips::places`), with figures from its
/// stops in the window read; or, merged across a user's devices, the
/// places of several.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Place {
    /// User part of the identity.
    pub user: String,
    /// The device whose stop founded it.
    pub device: String,
    /// Its id: the start of its first stop, UNIX s.
    pub id: i64,
    /// Centre, degrees: the mean of its stops' positions.
    pub lat: f64,
    /// Centre's longitude, degrees.
    pub lon: f64,
    /// No stop of it lies farther from the centre, whole metres.
    pub radius: f64,
    /// The operator's fence (or the device's region) a stop of it lies in.
    pub fence: Option<String>,
    /// Street address of its first stop, once the addresses job has it.
    pub address: Option<String>,
    /// Nearest populated place of its first stop (`name, region`).
    pub locality: Option<String>,
    /// Its ISO country code.
    pub cc: Option<String>,
    /// Arrival of its first stop in the window, UNIX s.
    pub first_seen: i64,
    /// Departure of its last stop in the window, UNIX s.
    pub last_seen: i64,
    /// Stops in the window.
    pub visits: i64,
    /// Their total duration, s.
    pub dwell_s: i64,
    /// Merged across a user's devices: each device with a place in it.
    pub devices: Vec<String>,
}

impl Place {
    /// What to call it: the fence's name, else the street address, else
    /// the locality.
    pub fn name(&self) -> Option<&str> {
        [&self.fence, &self.address, &self.locality]
            .into_iter()
            .find_map(|n| n.as_deref().filter(|n| !n.is_empty()))
    }
}

/// A region a device defined itself (`waypoints`): where the app reports
/// its own enter and leave.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Waypoint {
    /// User part of the identity.
    pub user: String,
    /// Device part of the identity.
    pub device: String,
    /// When the region was created, UNIX s: with `rid`, what names it.
    pub tst: i64,
    /// Centre latitude, degrees.
    pub lat: f64,
    /// Centre longitude, degrees.
    pub lon: f64,
    /// Radius, m.
    pub rad: Option<i32>,
    /// Its name.
    pub desc: Option<String>,
    /// Its region id.
    pub rid: Option<String>,
    /// When otstream received it, UNIX ms.
    pub received_at: i64,
}

impl Waypoint {
    /// Of the versions of each region of each device (a region is named
    /// by its `rid`, else by its creation `tst`: renaming or resizing it
    /// sends it again), the last received, by user, device and creation
    /// time.
    pub fn current(mut rows: Vec<Waypoint>) -> Vec<Waypoint> {
        rows.sort_by(|a, b| {
            (&a.user, &a.device, a.rid.as_deref(), a.tst, a.received_at).cmp(&(
                &b.user,
                &b.device,
                b.rid.as_deref(),
                b.tst,
                b.received_at,
            ))
        });
        let mut out: Vec<Waypoint> = Vec::with_capacity(rows.len());
        for w in rows {
            let same = out.last().is_some_and(|p| {
                p.user == w.user
                    && p.device == w.device
                    && match (&p.rid, &w.rid) {
                        (Some(a), Some(b)) => a == b,
                        (None, None) => p.tst == w.tst,
                        _ => false,
                    }
            });
            if same {
                out.pop();
            }
            out.push(w);
        }
        out.sort_by(|a, b| (&a.user, &a.device, a.tst).cmp(&(&b.user, &b.device, b.tst)));
        out
    }
}

/// One device's day (UTC), as Traccar's summary report gives it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DaySummary {
    /// User part of the identity.
    pub user: String,
    /// Device part of the identity.
    pub device: String,
    /// The UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// Distance of the day's trips, m.
    pub distance: f64,
    /// Time spent in trips, s.
    pub driving_s: i64,
    /// Trips starting that day.
    pub trips: u32,
    /// Stops starting that day.
    pub stops: u32,
    /// Top speed of the day's trips, km/h.
    pub max_vel: f64,
}
