//! The embedded store: SQLite, WAL, `synchronous=FULL`, one table per
//! record type, natural keys that collapse duplicates.
//!
//! The tables mirror the ClickHouse schema so that a user can move from one
//! to the other (ClickHouse's `sqlite()` table function reads this file):
//! same table names, same column names, same units (see the model crate).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use metrics::{Counter, Histogram};
use otstream_model::record::Text;
use otstream_model::{Record, StateSnapshot};
use otstream_schema::{Table, sqlite};
use rusqlite::{CachedStatement, Connection, params};
use rusqlite_migration::{M, Migrations};

pub use otstream_schema::file::StoreError;

/// The file name of the store inside the data directory.
pub use otstream_schema::DB_FILE;

/// Per-table metric handles, resolved once.
struct Meters {
    rows: [Counter; Table::ALL.len()],
    commit_seconds: Histogram,
}

/// The embedded store.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    meters: Meters,
}

impl Store {
    /// Opens (creating if needed) the store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        let migrations = Migrations::new(sqlite::MIGRATIONS.iter().map(|&m| M::up(m)).collect());
        let (conn, path) = open_db(data_dir, DB_FILE, &migrations)?;
        let meters = Meters {
            rows: Table::ALL
                .map(|t| metrics::counter!("otstream_stored_rows_total", "table" => t.name())),
            commit_seconds: metrics::histogram!("otstream_store_commit_seconds"),
        };
        Ok(Store { conn, path, meters })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The latest state of every device, every kind: what a stateful
    /// stage resumes from.
    pub fn load_states(&self) -> Result<Vec<StateSnapshot>, StoreError> {
        load_states(&self.conn)
    }

    /// Writes records in one transaction: all of them are committed, or
    /// none is.
    pub fn write<'a>(
        &mut self,
        records: impl Iterator<Item = &'a Record>,
    ) -> Result<(), StoreError> {
        let started = Instant::now();
        let mut counts = [0u64; Table::ALL.len()];
        let tx = self.conn.transaction()?;
        {
            let mut statements = Statements::new(&tx);
            // The days present (the statistics' rollup), once per batch
            // each: a fleet's batch holds a few per device.
            let mut present = HashSet::new();
            let mut last = None;
            for r in records {
                if let Some(t) = Table::of(r) {
                    insert(&mut statements, r)?;
                    counts[t as usize] += 1;
                }
                if let Record::Position(p) = r
                    && p.filtered.is_none()
                    && let Some(cc) = p.cc.as_deref()
                {
                    let place = p.place.as_deref().unwrap_or_default();
                    let key = (
                        &p.meta.user,
                        &p.meta.device,
                        p.tst.div_euclid(86_400),
                        cc,
                        place,
                    );
                    // A device's fixes come in runs at one place: compared
                    // with the last, most are not hashed at all.
                    if last != Some(key) {
                        present.insert(key);
                        last = Some(key);
                    }
                }
            }
            for (user, device, day, cc, place) in present {
                statements.get(sqlite::INSERT_PRESENCE)?.execute(params![
                    user.as_str(),
                    device.as_str(),
                    day,
                    cc,
                    place
                ])?;
            }
        }
        tx.commit()?;
        self.meters
            .commit_seconds
            .record(started.elapsed().as_secs_f64());
        for (c, n) in self.meters.rows.iter().zip(counts) {
            if n > 0 {
                c.increment(n);
            }
        }
        Ok(())
    }
}

pub(crate) use otstream_schema::file::open as open_db;

/// The `device_state` table's rows (the same table in the store and in
/// the ClickHouse buffer).
pub(crate) fn load_states(conn: &Connection) -> Result<Vec<StateSnapshot>, StoreError> {
    let mut stmt =
        conn.prepare("SELECT user, device, kind, state, updated_at FROM device_state")?;
    let rows = stmt.query_map([], |r| {
        Ok(StateSnapshot {
            user: Text::from(r.get_ref(0)?.as_str()?),
            device: Text::from(r.get_ref(1)?.as_str()?),
            kind: Text::from(r.get_ref(2)?.as_str()?),
            state: r.get(3)?,
            updated_at: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A transaction's prepared statements, each looked up in rusqlite's
/// cache once per transaction rather than once per row: the cache hashes
/// and compares the whole SQL text on every lookup, and for the 29-column
/// position insert that was 4 % of an import's CPU, all of it on the
/// writer thread that sets the pace (perf).
pub(crate) struct Statements<'c> {
    conn: &'c Connection,
    // Keyed by the SQL literal's address: each call site passes its own
    // `&'static str`, so a pointer compare finds it.
    prepared: Vec<(*const u8, CachedStatement<'c>)>,
}

impl<'c> Statements<'c> {
    pub(crate) fn new(conn: &'c Connection) -> Self {
        Statements {
            conn,
            prepared: Vec::new(),
        }
    }

    /// The statement for `sql`, prepared (or taken from the cache) the first
    /// time it is asked for.
    pub(crate) fn get(&mut self, sql: &'static str) -> rusqlite::Result<&mut CachedStatement<'c>> {
        let i = match self.prepared.iter().position(|(k, _)| *k == sql.as_ptr()) {
            Some(i) => i,
            None => {
                let stmt = self.conn.prepare_cached(sql)?;
                self.prepared.push((sql.as_ptr(), stmt));
                self.prepared.len() - 1
            }
        };
        Ok(&mut self.prepared[i].1)
    }
}

/// Keeps `st` as its device's latest state of its kind.
pub(crate) fn save_state(stmts: &mut Statements<'_>, st: &StateSnapshot) -> rusqlite::Result<()> {
    stmts
        .get(sqlite::insert(Table::DeviceState))?
        .execute(params![
            st.kind.as_str(),
            st.user.as_str(),
            st.device.as_str(),
            st.state,
            st.updated_at,
        ])?;
    Ok(())
}

fn json_list(v: &[Text]) -> Option<String> {
    (!v.is_empty()).then(|| serde_json::to_string(v).unwrap_or_default())
}

/// A command's action and other fields as one JSON object for `extra`.
pub(crate) fn command_extra(action: &str, extra: Option<&str>) -> String {
    let action = serde_json::to_string(action).unwrap_or_default();
    match extra.and_then(|e| e.strip_prefix('{')) {
        Some(rest) if rest != "}" => format!("{{\"action\":{action},{rest}"),
        _ => format!("{{\"action\":{action}}}"),
    }
}

fn insert(stmts: &mut Statements<'_>, r: &Record) -> rusqlite::Result<()> {
    match r {
        Record::Position(p) => {
            let m = &p.meta;
            // The heatmap's cells (SQLite stores integers signed; an H3
            // index has its top bit clear).
            let h3 = otstream_schema::h3::cells(p.lat, p.lon)
                .map(|c| c.map(|x| i64::try_from(x).unwrap_or_default()));
            let [h3_5, h3_7, h3_9] = h3.map_or([None; 3], |c| c.map(Some));
            stmts
                .get(sqlite::insert(Table::Positions))?
                .execute(params![
                    m.user.as_str(),
                    m.device.as_str(),
                    m.tid.as_deref(),
                    p.tst,
                    p.lat,
                    p.lon,
                    p.acc,
                    p.alt,
                    p.vac,
                    p.vel,
                    p.cog,
                    p.batt,
                    p.bs,
                    p.t.as_deref(),
                    p.conn.as_deref(),
                    p.p,
                    p.m,
                    p.ssid.as_deref(),
                    p.bssid.as_deref(),
                    p.created_at,
                    json_list(&p.inregions),
                    json_list(&p.inrids),
                    m.topic.as_deref(),
                    m.transport.as_str(),
                    m.received_at,
                    p.extra.as_deref(),
                    p.filtered.as_deref(),
                    p.place.as_deref(),
                    p.cc.as_deref(),
                    h3_5,
                    h3_7,
                    h3_9,
                ])?;
        }
        Record::Transition(t) => {
            let m = &t.meta;
            stmts
                .get(sqlite::insert(Table::Transitions))?
                .execute(params![
                    m.user.as_str(),
                    m.device.as_str(),
                    m.tid.as_deref(),
                    t.tst,
                    t.wtst,
                    t.lat,
                    t.lon,
                    t.acc,
                    t.event.as_str(),
                    t.desc.as_deref(),
                    t.rid.as_deref(),
                    t.t.as_deref(),
                    t.source.as_str(),
                    m.topic.as_deref(),
                    m.transport.as_str(),
                    m.received_at,
                    t.extra.as_deref(),
                ])?;
        }
        Record::Waypoint(w) => {
            let m = &w.meta;
            stmts
                .get(sqlite::insert(Table::Waypoints))?
                .execute(params![
                    m.user.as_str(),
                    m.device.as_str(),
                    m.tid.as_deref(),
                    w.tst,
                    w.lat,
                    w.lon,
                    w.rad,
                    w.desc.as_deref(),
                    w.rid.as_deref(),
                    w.uuid.as_deref(),
                    w.major,
                    w.minor,
                    m.topic.as_deref(),
                    m.transport.as_str(),
                    m.received_at,
                    w.extra.as_deref(),
                ])?;
        }
        Record::Card(c) => {
            let m = &c.meta;
            stmts.get(sqlite::insert(Table::Cards))?.execute(params![
                m.user.as_str(),
                m.device.as_str(),
                m.tid.as_deref(),
                c.name.as_deref(),
                c.face.as_deref(),
                m.topic.as_deref(),
                m.transport.as_str(),
                m.received_at,
                c.extra.as_deref(),
            ])?;
        }
        Record::DeviceEvent(e) => {
            device_event(stmts, &e.meta, &e.event, e.tst, e.extra.as_deref())?
        }
        Record::Command(c) => {
            let extra = command_extra(&c.action, c.extra.as_deref());
            device_event(stmts, &c.meta, "cmd", c.tst, Some(&extra))?;
        }
        Record::Unknown(u) => device_event(stmts, &u.meta, &u.kind, u.tst, u.extra.as_deref())?,
        Record::Steps(s) => {
            let m = &s.meta;
            stmts.get(sqlite::insert(Table::Steps))?.execute(params![
                m.user.as_str(),
                m.device.as_str(),
                m.tid.as_deref(),
                s.tst,
                s.steps,
                s.from,
                s.to,
                s.distance,
                s.floorsup,
                s.floorsdown,
                m.topic.as_deref(),
                m.transport.as_str(),
                m.received_at,
                s.extra.as_deref(),
            ])?;
        }
        Record::Beacon(b) => {
            let m = &b.meta;
            stmts.get(sqlite::insert(Table::Beacons))?.execute(params![
                m.user.as_str(),
                m.device.as_str(),
                m.tid.as_deref(),
                b.tst,
                b.uuid.as_deref(),
                b.major,
                b.minor,
                b.acc,
                b.rssi,
                b.prox,
                b.desc.as_deref(),
                m.topic.as_deref(),
                m.transport.as_str(),
                m.received_at,
                b.extra.as_deref(),
            ])?;
        }
        Record::Configuration(c) => {
            let m = &c.meta;
            stmts
                .get(sqlite::insert(Table::Configurations))?
                .execute(params![
                    m.user.as_str(),
                    m.device.as_str(),
                    m.tid.as_deref(),
                    c.mode,
                    c.host.as_deref(),
                    c.port,
                    c.url.as_deref(),
                    c.username.as_deref(),
                    c.device_id.as_deref(),
                    c.waypoints,
                    c.config,
                    m.topic.as_deref(),
                    m.transport.as_str(),
                    m.received_at,
                ])?;
        }
        Record::Trip(t) => {
            let m = &t.meta;
            stmts.get(sqlite::insert(Table::Trips))?.execute(params![
                m.user.as_str(),
                m.device.as_str(),
                t.start,
                t.end,
                t.start_lat,
                t.start_lon,
                t.end_lat,
                t.end_lon,
                t.distance,
                t.duration,
                t.avg_vel,
                t.max_vel,
                t.points,
                m.received_at,
                t.start_place.as_deref(),
                t.start_cc.as_deref(),
                t.end_place.as_deref(),
                t.end_cc.as_deref(),
            ])?;
        }
        Record::Stop(st) => {
            let m = &st.meta;
            stmts.get(sqlite::insert(Table::Stops))?.execute(params![
                m.user.as_str(),
                m.device.as_str(),
                st.start,
                st.end,
                st.lat,
                st.lon,
                st.duration,
                st.points,
                m.received_at,
                st.place.as_deref(),
                st.locality.as_deref(),
                st.cc.as_deref(),
                st.place_id,
            ])?;
        }
        Record::State(st) => save_state(stmts, st)?,
        // Never given: `write` keeps to stored records.
        Record::Near(_) => {}
        Record::Event(e) => {
            let m = &e.meta;
            stmts.get(sqlite::insert(Table::Events))?.execute(params![
                e.id,
                e.kind.as_str(),
                m.user.as_str(),
                m.device.as_str(),
                e.tst,
                e.lat,
                e.lon,
                e.fence.as_deref(),
                e.to_json(),
                m.received_at,
            ])?;
        }
        Record::DeadLetter(d) => {
            stmts
                .get(sqlite::insert(Table::DeadLetters))?
                .execute(params![
                    d.received_at,
                    d.transport.as_str(),
                    d.topic.as_deref(),
                    d.user.as_str(),
                    d.device.as_str(),
                    d.remote_addr.as_deref(),
                    d.kind.as_str(),
                    d.field.as_deref(),
                    d.message,
                    d.payload,
                ])?;
        }
    }
    Ok(())
}

fn device_event(
    stmts: &mut Statements<'_>,
    m: &otstream_model::Meta,
    event: &str,
    tst: Option<i64>,
    extra: Option<&str>,
) -> rusqlite::Result<()> {
    stmts
        .get(sqlite::insert(Table::DeviceEvents))?
        .execute(params![
            m.user.as_str(),
            m.device.as_str(),
            m.tid.as_deref(),
            event,
            tst,
            m.topic.as_deref(),
            m.transport.as_str(),
            m.received_at,
            extra,
        ])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_extra_merges_the_action_first() {
        assert_eq!(command_extra("dump", None), r#"{"action":"dump"}"#);
        assert_eq!(
            command_extra("x", Some(r#"{"a":1}"#)),
            r#"{"action":"x","a":1}"#
        );
    }
}
