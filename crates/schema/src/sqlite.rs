//! The embedded store's schema: its versioned migrations (applied by
//! `rusqlite_migration` from the file's `user_version`) and the sink's
//! statements, built from [`Table::columns`].

use std::sync::LazyLock;

use crate::Table;

/// Version 1: what the apps send.
pub const SCHEMA_V1: &str = r#"
CREATE TABLE IF NOT EXISTS positions (
    user TEXT NOT NULL, device TEXT NOT NULL, tid TEXT,
    tst INTEGER NOT NULL,            -- UNIX s
    lat REAL NOT NULL, lon REAL NOT NULL,  -- degrees WGS84
    acc INTEGER, alt INTEGER, vac INTEGER, -- metres
    vel INTEGER,                     -- km/h
    cog INTEGER,                     -- degrees
    batt INTEGER,                    -- percent
    bs INTEGER, t TEXT, conn TEXT,
    p REAL,                          -- kPa
    m INTEGER, ssid TEXT, bssid TEXT,
    created_at INTEGER,              -- UNIX s
    inregions TEXT, inrids TEXT,     -- JSON arrays
    topic TEXT, transport TEXT NOT NULL,
    received_at INTEGER NOT NULL,    -- UNIX ms
    extra TEXT                       -- JSON object of unknown fields
);
CREATE UNIQUE INDEX IF NOT EXISTS positions_key ON positions (user, device, tst);

CREATE TABLE IF NOT EXISTS transitions (
    user TEXT NOT NULL, device TEXT NOT NULL, tid TEXT,
    tst INTEGER NOT NULL, wtst INTEGER,
    lat REAL NOT NULL, lon REAL NOT NULL, acc INTEGER,
    event TEXT NOT NULL, desc TEXT, rid TEXT, t TEXT,
    source TEXT NOT NULL,            -- device | server
    topic TEXT, transport TEXT NOT NULL, received_at INTEGER NOT NULL, extra TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS transitions_key ON transitions
    (user, device, tst, event, coalesce(wtst, -1), coalesce(desc, ''), source);

CREATE TABLE IF NOT EXISTS waypoints (
    user TEXT NOT NULL, device TEXT NOT NULL, tid TEXT,
    tst INTEGER, lat REAL, lon REAL, rad INTEGER,
    desc TEXT, rid TEXT, uuid TEXT, major INTEGER, minor INTEGER,
    topic TEXT, transport TEXT NOT NULL, received_at INTEGER NOT NULL, extra TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS waypoints_key ON waypoints
    (user, device, coalesce(tst, -1), coalesce(desc, ''), coalesce(rid, ''));

CREATE TABLE IF NOT EXISTS cards (
    user TEXT NOT NULL, device TEXT NOT NULL, tid TEXT,
    name TEXT, face TEXT,
    topic TEXT, transport TEXT NOT NULL, received_at INTEGER NOT NULL, extra TEXT
);
-- One card per device: the latest, as the apps treat a retained card.
CREATE UNIQUE INDEX IF NOT EXISTS cards_key ON cards (user, device);

CREATE TABLE IF NOT EXISTS device_events (
    user TEXT NOT NULL, device TEXT NOT NULL, tid TEXT,
    event TEXT NOT NULL,             -- lwt | status | cmd | the _type of an unknown message
    tst INTEGER,
    topic TEXT, transport TEXT NOT NULL, received_at INTEGER NOT NULL, extra TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS device_events_key ON device_events
    (user, device, event, coalesce(tst, -1), coalesce(extra, ''));

CREATE TABLE IF NOT EXISTS steps (
    user TEXT NOT NULL, device TEXT NOT NULL, tid TEXT,
    tst INTEGER, steps INTEGER, "from" INTEGER, "to" INTEGER,
    distance INTEGER, floorsup INTEGER, floorsdown INTEGER,
    topic TEXT, transport TEXT NOT NULL, received_at INTEGER NOT NULL, extra TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS steps_key ON steps
    (user, device, coalesce(tst, -1), coalesce("from", -1), coalesce("to", -1));

CREATE TABLE IF NOT EXISTS beacons (
    user TEXT NOT NULL, device TEXT NOT NULL, tid TEXT,
    tst INTEGER, uuid TEXT, major INTEGER, minor INTEGER,
    acc INTEGER, rssi INTEGER, prox INTEGER, desc TEXT,
    topic TEXT, transport TEXT NOT NULL, received_at INTEGER NOT NULL, extra TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS beacons_key ON beacons
    (user, device, coalesce(tst, -1), coalesce(uuid, ''), coalesce(major, -1), coalesce(minor, -1));

CREATE TABLE IF NOT EXISTS configurations (
    user TEXT NOT NULL, device TEXT NOT NULL, tid TEXT,
    mode INTEGER, host TEXT, port INTEGER, url TEXT, username TEXT, device_id TEXT,
    waypoints INTEGER NOT NULL,
    config TEXT NOT NULL,            -- JSON, secrets removed
    topic TEXT, transport TEXT NOT NULL, received_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS configurations_key ON configurations (user, device, config);

CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    received_at INTEGER NOT NULL, transport TEXT NOT NULL, topic TEXT,
    user TEXT NOT NULL, device TEXT NOT NULL, remote_addr TEXT,
    kind TEXT NOT NULL, field TEXT, message TEXT NOT NULL,
    payload BLOB NOT NULL            -- the body exactly as received
);
"#;

/// Version 2: what the geofence stage derives, and its state.
pub const SCHEMA_V2: &str = r#"
CREATE TABLE IF NOT EXISTS trips (
    user TEXT NOT NULL, device TEXT NOT NULL,
    start INTEGER NOT NULL, "end" INTEGER NOT NULL,   -- UNIX s
    start_lat REAL NOT NULL, start_lon REAL NOT NULL,
    end_lat REAL NOT NULL, end_lon REAL NOT NULL,     -- degrees WGS84
    distance REAL NOT NULL,          -- metres, geodesic
    duration INTEGER NOT NULL,       -- s
    avg_vel REAL NOT NULL, max_vel REAL NOT NULL,     -- km/h
    points INTEGER NOT NULL,
    received_at INTEGER NOT NULL     -- UNIX ms
);
CREATE UNIQUE INDEX IF NOT EXISTS trips_key ON trips (user, device, start);

CREATE TABLE IF NOT EXISTS stops (
    user TEXT NOT NULL, device TEXT NOT NULL,
    start INTEGER NOT NULL, "end" INTEGER NOT NULL,   -- UNIX s
    lat REAL NOT NULL, lon REAL NOT NULL,             -- degrees WGS84
    duration INTEGER NOT NULL,       -- s
    points INTEGER NOT NULL,
    received_at INTEGER NOT NULL     -- UNIX ms
);
CREATE UNIQUE INDEX IF NOT EXISTS stops_key ON stops (user, device, start);

-- The latest state of each stateful stage per device (geofence and trips),
-- committed with the rows it derived: what a restarted stage resumes from.
CREATE TABLE IF NOT EXISTS device_state (
    kind TEXT NOT NULL, user TEXT NOT NULL, device TEXT NOT NULL,
    state TEXT NOT NULL,             -- JSON, the stage's own format
    updated_at INTEGER NOT NULL,     -- UNIX ms
    PRIMARY KEY (kind, user, device)
) WITHOUT ROWID;
"#;

/// Version 3: a stop names its place.
pub const SCHEMA_V3: &str =
    "ALTER TABLE stops ADD COLUMN place TEXT; -- the fence it lies in, if any";

/// Version 4: the position filters' verdict, and the events told.
pub const SCHEMA_V4: &str = r#"
ALTER TABLE positions ADD COLUMN filtered TEXT; -- why the filters set the fix aside; NULL when taken
CREATE TABLE IF NOT EXISTS events (
    id TEXT NOT NULL PRIMARY KEY,    -- stable: kind:user/device:tst[:fence]
    kind TEXT NOT NULL,
    user TEXT NOT NULL, device TEXT NOT NULL,
    tst INTEGER NOT NULL,            -- UNIX s
    lat REAL NOT NULL, lon REAL NOT NULL,
    fence TEXT,
    body TEXT NOT NULL,              -- the event as delivered (JSON)
    received_at INTEGER NOT NULL     -- UNIX ms
);
CREATE INDEX IF NOT EXISTS events_device ON events (user, device, tst);
"#;

/// Version 5: places, from the offline geocoder.
pub const SCHEMA_V5: &str = r#"
ALTER TABLE positions ADD COLUMN place TEXT;      -- nearest place: name, region
ALTER TABLE positions ADD COLUMN cc TEXT;         -- its ISO country code
ALTER TABLE trips ADD COLUMN start_place TEXT;
ALTER TABLE trips ADD COLUMN start_cc TEXT;
ALTER TABLE trips ADD COLUMN end_place TEXT;
ALTER TABLE trips ADD COLUMN end_cc TEXT;
ALTER TABLE stops ADD COLUMN locality TEXT;       -- nearest place (place is the fence)
ALTER TABLE stops ADD COLUMN cc TEXT;
"#;

/// Version 6: street addresses, filled in after the fact by the addresses
/// job (`[geocode.addresses]`) from its cache of geohash cells.
pub const SCHEMA_V6: &str = r#"
ALTER TABLE stops ADD COLUMN address TEXT;        -- NULL: not asked yet; '': none found
ALTER TABLE trips ADD COLUMN start_address TEXT;
ALTER TABLE trips ADD COLUMN end_address TEXT;
-- What the job looks for, newest first: only the rows still lacking one.
CREATE INDEX IF NOT EXISTS stops_unaddressed ON stops (start) WHERE address IS NULL;
CREATE INDEX IF NOT EXISTS trips_unaddressed_start ON trips (start) WHERE start_address IS NULL;
CREATE INDEX IF NOT EXISTS trips_unaddressed_end ON trips (start) WHERE end_address IS NULL;
CREATE TABLE IF NOT EXISTS addresses (
    cell TEXT NOT NULL PRIMARY KEY,  -- geohash
    address TEXT NOT NULL,           -- '' when the geocoder found nothing
    fetched_at INTEGER NOT NULL      -- UNIX ms
) WITHOUT ROWID;
"#;

/// Version 7: the heatmap's cells, the H3 index of each position at
/// resolutions 5, 7 and 9 (NULL for positions stored before), and the
/// index a heatmap reads them by.
pub const SCHEMA_V7: &str = r#"
ALTER TABLE positions ADD COLUMN h3_5 INTEGER;
ALTER TABLE positions ADD COLUMN h3_7 INTEGER;
ALTER TABLE positions ADD COLUMN h3_9 INTEGER;
-- Covering: a heatmap reads the index alone, never the rows.
CREATE INDEX IF NOT EXISTS positions_heat ON positions (tst, h3_5, h3_7, h3_9, filtered)
    WHERE filtered IS NULL;
"#;

/// Version 8: places. Each stop names the place it is a visit of (the
/// start of the place's first stop, `otstream_trips::places`; NULL for
/// stops stored before); a place's figures are read from its stops by
/// this index.
pub const SCHEMA_V8: &str = r#"
ALTER TABLE stops ADD COLUMN place_id INTEGER;   -- UNIX s: the start of the place's first stop
CREATE INDEX IF NOT EXISTS stops_place ON stops (user, device, place_id) WHERE place_id IS NOT NULL;
"#;

/// Version 9: where each device was on each UTC day (the geocoded place
/// and country of its fixes taken): the statistics' rollup, kept by the
/// sink as it writes positions, so that a year's countries and cities
/// never scan a year's positions. Filled from the positions stored before.
pub const SCHEMA_V9: &str = r#"
CREATE TABLE IF NOT EXISTS presence (
    user TEXT NOT NULL, device TEXT NOT NULL,
    day INTEGER NOT NULL,            -- UTC day: UNIX s / 86400
    cc TEXT NOT NULL,                -- ISO country code
    place TEXT NOT NULL,             -- nearest populated place: name, region
    PRIMARY KEY (user, device, day, cc, place)
) WITHOUT ROWID;
INSERT OR IGNORE INTO presence (user, device, day, cc, place)
    SELECT DISTINCT user, device, tst / 86400, cc, coalesce(place, '') FROM positions
    WHERE cc IS NOT NULL AND filtered IS NULL AND tst >= 0;
"#;

/// The sink's statement of a day present, its parameters user, device,
/// day, cc and place: a set, so a batch delivered twice adds nothing.
pub const INSERT_PRESENCE: &str =
    "INSERT OR IGNORE INTO presence (user, device, day, cc, place) VALUES (?1, ?2, ?3, ?4, ?5)";

/// Every version, in order.
pub const MIGRATIONS: [&str; 9] = [
    SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4, SCHEMA_V5, SCHEMA_V6, SCHEMA_V7, SCHEMA_V8,
    SCHEMA_V9,
];

/// The statement that writes one row of `table`, its parameters
/// [`Table::columns`] in order.
pub fn insert(table: Table) -> &'static str {
    static INSERTS: LazyLock<Vec<String>> =
        LazyLock::new(|| Table::ALL.iter().map(|&t| statement(t)).collect());
    // `ALL` lists the tables in their declaration order.
    &INSERTS[table as usize]
}

fn statement(table: Table) -> String {
    let cols = table.columns();
    let names: Vec<String> = cols.iter().map(|c| format!("\"{c}\"")).collect();
    let params: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
    let (verb, tail) = match table {
        // The latest received version of a fix wins, as in ClickHouse's
        // ReplacingMergeTree(received_at): over Kafka, the filters'
        // flagged copy (received a millisecond later) wins over the copy
        // from `positions`, whichever comes first.
        Table::Positions => {
            let key = ["user", "device", "tst"];
            let set: Vec<String> = cols
                .iter()
                .filter(|c| !key.contains(c))
                .map(|c| format!("\"{c}\" = excluded.\"{c}\""))
                .collect();
            (
                "INSERT",
                format!(
                    " ON CONFLICT (user, device, tst) DO UPDATE SET {} WHERE excluded.received_at >= positions.received_at",
                    set.join(", ")
                ),
            )
        }
        // An event's id is stable: the first stored is the one delivered.
        Table::Events => ("INSERT OR IGNORE", String::new()),
        // Every refusal is kept, duplicates too (its own row id).
        Table::DeadLetters => ("INSERT", String::new()),
        _ => ("INSERT OR REPLACE", String::new()),
    };
    format!(
        "{verb} INTO {} ({}) VALUES ({}){tail}",
        table.name(),
        names.join(", "),
        params.join(", ")
    )
}
