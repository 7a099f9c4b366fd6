//! The schema, in one place: the tables otstream stores, their columns in
//! the order the writer fills them, the files of the embedded store,
//! identifier quoting, the SQLite and ClickHouse DDL (versioned
//! migrations) and where ClickHouse is.
//!
//! In: nothing (facts). Out: what the writer (`otstream-sink`), the
//! readers (`otstream-api`, `otstream-addresses`), the live feed and
//! `otstream migrate` share, so that none of them imports another.
//! Guarantee: a column added in one place only fails this crate's tests
//! (the SQLite DDL, the ClickHouse DDL of every server version and
//! [`Table::columns`] must agree) and the sink's (its ClickHouse row
//! types and SQLite statements are built from [`Table::columns`]).
//!
//! Layout: [`Table`] (names, columns), [`rows`] (the rows a read returns),
//! [`h3`] (the heatmap's cells, stored with each position),
//! [`sqlite`] (migrations, the insert
//! statements), [`file`] (how the store's SQLite files are opened, and the
//! retry loop of their writers), [`clickhouse`] (migrations rendered per server version,
//! [`clickhouse::ClickHouseConfig`]), [`cluster`] (the same migrations on a
//! cluster of shards and replicas).

pub mod clickhouse;
pub mod cluster;
pub mod file;
pub mod h3;
pub mod rows;
pub mod sqlite;

use otstream_model::Record;

/// The file of the embedded store inside the data directory.
pub const DB_FILE: &str = "otstream.db";
/// The events' outboxes, beside it.
pub const OUTBOX_FILE: &str = "outbox.db";
/// The local buffer in front of ClickHouse, beside it.
pub const BUFFER_FILE: &str = "buffer.db";

/// A name as a ClickHouse identifier (a database, a table).
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
}

/// The tables the sink writes, in the order a batch writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// positions
    Positions,
    /// transitions
    Transitions,
    /// waypoints
    Waypoints,
    /// cards
    Cards,
    /// device_events
    DeviceEvents,
    /// steps
    Steps,
    /// beacons
    Beacons,
    /// configurations
    Configurations,
    /// dead_letters
    DeadLetters,
    /// trips
    Trips,
    /// stops
    Stops,
    /// events
    Events,
    /// device_state: last in a batch, so a stage's state is never durable
    /// before the rows derived with it.
    DeviceState,
}

macro_rules! cols {
    ($($c:literal),* $(,)?) => { &[$($c),*] };
}

impl Table {
    /// Every table.
    pub const ALL: [Table; 13] = [
        Table::Positions,
        Table::Transitions,
        Table::Waypoints,
        Table::Cards,
        Table::DeviceEvents,
        Table::Steps,
        Table::Beacons,
        Table::Configurations,
        Table::DeadLetters,
        Table::Trips,
        Table::Stops,
        Table::Events,
        Table::DeviceState,
    ];

    /// The table a record goes to; `None` for one that goes between
    /// stages only (a fix on its way to a proximity rule).
    pub fn of(r: &Record) -> Option<Table> {
        Some(match r {
            Record::Position(_) => Table::Positions,
            Record::Transition(_) => Table::Transitions,
            Record::Waypoint(_) => Table::Waypoints,
            Record::Card(_) => Table::Cards,
            Record::DeviceEvent(_) | Record::Command(_) | Record::Unknown(_) => Table::DeviceEvents,
            Record::Steps(_) => Table::Steps,
            Record::Beacon(_) => Table::Beacons,
            Record::Configuration(_) => Table::Configurations,
            Record::DeadLetter(_) => Table::DeadLetters,
            Record::Trip(_) => Table::Trips,
            Record::Stop(_) => Table::Stops,
            Record::State(_) => Table::DeviceState,
            Record::Event(_) => Table::Events,
            Record::Near(_) => return None,
        })
    }

    /// The table's name.
    pub fn name(self) -> &'static str {
        match self {
            Table::Positions => "positions",
            Table::Transitions => "transitions",
            Table::Waypoints => "waypoints",
            Table::Cards => "cards",
            Table::DeviceEvents => "device_events",
            Table::Steps => "steps",
            Table::Beacons => "beacons",
            Table::Configurations => "configurations",
            Table::DeadLetters => "dead_letters",
            Table::Trips => "trips",
            Table::Stops => "stops",
            Table::Events => "events",
            Table::DeviceState => "device_state",
        }
    }

    /// The columns the sink writes, in the order it writes them: the
    /// ClickHouse row types' fields and the SQLite statements' parameters.
    #[rustfmt::skip]
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            Table::Positions => cols![
                "user", "device", "tid", "tst", "lat", "lon", "acc", "alt", "vac", "vel", "cog",
                "batt", "bs", "t", "conn", "p", "m", "ssid", "bssid", "created_at", "inregions",
                "inrids", "topic", "transport", "received_at", "extra", "filtered", "place", "cc",
                "h3_5", "h3_7", "h3_9",
            ],
            Table::Transitions => cols![
                "user", "device", "tid", "tst", "wtst", "lat", "lon", "acc", "event", "desc", "rid",
                "t", "source", "topic", "transport", "received_at", "extra",
            ],
            Table::Waypoints => cols![
                "user", "device", "tid", "tst", "lat", "lon", "rad", "desc", "rid", "uuid", "major",
                "minor", "topic", "transport", "received_at", "extra",
            ],
            Table::Cards => cols![
                "user", "device", "tid", "name", "face", "topic", "transport", "received_at",
                "extra",
            ],
            Table::DeviceEvents => cols![
                "user", "device", "tid", "event", "tst", "topic", "transport", "received_at",
                "extra",
            ],
            Table::Steps => cols![
                "user", "device", "tid", "tst", "steps", "from", "to", "distance", "floorsup",
                "floorsdown", "topic", "transport", "received_at", "extra",
            ],
            Table::Beacons => cols![
                "user", "device", "tid", "tst", "uuid", "major", "minor", "acc", "rssi", "prox",
                "desc", "topic", "transport", "received_at", "extra",
            ],
            Table::Configurations => cols![
                "user", "device", "tid", "mode", "host", "port", "url", "username", "device_id",
                "waypoints", "config", "topic", "transport", "received_at",
            ],
            Table::DeadLetters => cols![
                "received_at", "transport", "topic", "user", "device", "remote_addr", "kind",
                "field", "message", "payload",
            ],
            Table::Trips => cols![
                "user", "device", "start", "end", "start_lat", "start_lon", "end_lat", "end_lon",
                "distance", "duration", "avg_vel", "max_vel", "points", "received_at",
                "start_place", "start_cc", "end_place", "end_cc",
            ],
            Table::Stops => cols![
                "user", "device", "start", "end", "lat", "lon", "duration", "points", "received_at",
                "place", "locality", "cc", "place_id",
            ],
            Table::Events => cols![
                "id", "kind", "user", "device", "tst", "lat", "lon", "fence", "body", "received_at",
            ],
            Table::DeviceState => cols!["kind", "user", "device", "state", "updated_at"],
        }
    }

    /// Columns the sink leaves for a side job to fill in after the row is
    /// stored (street addresses: `otstream-addresses`).
    pub fn filled_later(self) -> &'static [&'static str] {
        match self {
            Table::Trips => &["start_address", "end_address"],
            Table::Stops => &["address"],
            _ => &[],
        }
    }
}

/// Tables of the store that are not the sink's: the street-address cache.
pub const ADDRESSES: &str = "addresses";
