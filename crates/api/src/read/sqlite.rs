//! Reading the embedded store. Every read opens its own read-only
//! connection on a blocking thread: with WAL, readers see the last commit
//! and never wait for the sink, nor it for them.

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, Row, ToSql};

use crate::read::places::Aggregate;
use crate::read::rows::{Device, Position, Stop, Str, Transition, Trip, Waypoint, select};
use crate::read::stats::Presence;
use crate::read::{Chunker, Param, Query, QueryError, RowStream, Visits};

// The columns a read selects: the row types' fields, in the order the
// functions below read them.
pub(crate) static POSITION_COLUMNS: LazyLock<String> = LazyLock::new(select::<Position>);
pub(crate) static TRANSITION_COLUMNS: LazyLock<String> = LazyLock::new(select::<Transition>);
pub(crate) static TRIP_COLUMNS: LazyLock<String> = LazyLock::new(select::<Trip>);
pub(crate) static STOP_COLUMNS: LazyLock<String> = LazyLock::new(select::<Stop>);

/// Reads the store at a path.
#[derive(Debug, Clone)]
pub struct SqliteReader {
    path: PathBuf,
}

impl SqliteReader {
    /// A reader of the store file `path` (`DATA_DIR/otstream.db`). Nothing
    /// is opened until a read.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// A reader of the store in `data_dir`.
    pub fn in_data_dir(data_dir: &Path) -> Self {
        Self::new(data_dir.join(otstream_schema::DB_FILE))
    }

    fn open(&self) -> Result<Connection, QueryError> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // A reader never waits long for a lock: WAL readers only wait
        // while a checkpoint restarts the log.
        conn.busy_timeout(std::time::Duration::from_millis(2000))?;
        Ok(conn)
    }

    /// Runs `read` on a connection of its own on a blocking thread: a
    /// whole, small answer (a device list, a first time, the regions).
    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Connection) -> Result<T, QueryError> + Send + 'static,
    ) -> Result<T, QueryError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || read(&this.open()?))
            .await
            .map_err(|e| QueryError::Thread(e.to_string()))?
    }

    /// Streams `SELECT {columns} FROM {table} WHERE predicate ORDER BY
    /// user, device, {time}`, each row read by `read`.
    fn stream<T: Send + 'static>(
        &self,
        table: &'static str,
        columns: &'static str,
        time: &'static str,
        q: &Query,
        read: fn(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<RowStream<T>, QueryError> {
        let (mut predicate, mut params) = q.predicate(time);
        let (place, place_params) = q.place_predicate();
        predicate.push_str(place);
        params.extend(place_params);
        let select = format!("SELECT {columns} FROM {table} WHERE {predicate}");
        let sql = match q.limit {
            // The last `limit` of the window, still handed out in order.
            Some(n) => format!(
                "SELECT * FROM ({select} ORDER BY user DESC, device DESC, {time} DESC LIMIT {n}) ORDER BY user, device, {time}"
            ),
            None => format!("{select} ORDER BY user, device, {time}"),
        };
        let this = self.clone();
        let (mut out, rx) = Chunker::channel();
        tokio::task::spawn_blocking(move || {
            let result = (|| {
                let conn = this.open()?;
                let mut stmt = conn.prepare(&sql)?;
                let mut rows = stmt.query(rusqlite::params_from_iter(params.iter()))?;
                while let Some(row) = rows.next()? {
                    if !out.push_blocking(read(row)?) {
                        return Ok(());
                    }
                }
                Ok(())
            })();
            out.finish_blocking(result);
        });
        Ok(rx)
    }

    /// See [`Reader::positions`](crate::read::Reader::positions). Streamed as
    /// read: one thread steps SQLite while the consumer encodes. (Reading
    /// one device's slices on two threads, as ClickHouse's reader does,
    /// gained nothing measurable here: an export already keeps both cores
    /// busy, reading on one and encoding and sending on the other.)
    pub async fn positions(&self, q: &Query) -> Result<RowStream<Position>, QueryError> {
        self.stream("positions", &POSITION_COLUMNS, "tst", q, position)
    }

    /// The earliest `tst` of a position matching `q`, if any.
    pub async fn first_tst(&self, q: &Query) -> Result<Option<i64>, QueryError> {
        let (predicate, params) = q.predicate("tst");
        let sql = format!("SELECT min(tst) FROM positions WHERE {predicate}");
        self.read(move |conn| {
            let mut stmt = conn.prepare(&sql)?;
            Ok(stmt.query_row(rusqlite::params_from_iter(params.iter()), |r| r.get(0))?)
        })
        .await
    }

    /// See [`Reader::heatmap`](crate::read::Reader::heatmap): `column` is
    /// one of the cells' columns. Counted here, not by `GROUP BY`: SQLite
    /// sorts ten million cells into a temporary B-tree (3.5 s) where a hash
    /// map counts them as the covering index `positions_heat` is read.
    pub async fn heatmap(
        &self,
        q: &Query,
        column: &'static str,
        limit: usize,
    ) -> Result<Vec<(u64, u64)>, QueryError> {
        let (predicate, params) = q.predicate("tst");
        let sql = format!(
            "SELECT {column} FROM positions WHERE {predicate} AND filtered IS NULL AND {column} IS NOT NULL"
        );
        self.read(move |conn| {
            let mut stmt = conn.prepare(&sql)?;
            let mut rows = stmt.query(rusqlite::params_from_iter(params.iter()))?;
            let mut counts: std::collections::HashMap<i64, u64> = std::collections::HashMap::new();
            while let Some(row) = rows.next()? {
                *counts.entry(row.get::<_, i64>(0)?).or_default() += 1;
                // More cells than asked for: the caller refuses the answer.
                if counts.len() > limit {
                    break;
                }
            }
            let mut out: Vec<(u64, u64)> = counts
                .into_iter()
                .map(|(cell, n)| (cell as u64, n))
                .collect();
            out.sort_unstable();
            out.truncate(limit);
            Ok(out)
        })
        .await
    }

    /// See [`Reader::places`](crate::read::Reader::places): each place's
    /// stops in the window, summed up by the partial index `stops_place`,
    /// with the names of its first stop (whose start is its id).
    pub(crate) async fn places(
        &self,
        q: &Query,
        limit: usize,
    ) -> Result<Vec<Aggregate>, QueryError> {
        let q = Query {
            place: Some(Visits::Any),
            limit: None,
            ..q.clone()
        };
        let (mut predicate, mut params) = q.predicate("start");
        let (place, place_params) = q.place_predicate();
        predicate.push_str(place);
        params.extend(place_params);
        let sql = format!(
            "SELECT s.user, s.device, s.place_id, avg(s.lat), avg(s.lon), min(s.lat), max(s.lat), \
             min(s.lon), max(s.lon), max(s.place), f.address, f.locality, f.cc, min(s.start), \
             max(s.\"end\"), count(*), sum(s.duration) \
             FROM (SELECT * FROM stops WHERE {predicate}) s \
             LEFT JOIN stops f ON f.user = s.user AND f.device = s.device AND f.start = s.place_id \
             AND f.place_id = f.start \
             GROUP BY s.user, s.device, s.place_id ORDER BY s.user, s.device, s.place_id LIMIT {limit}"
        );
        self.read(move |conn| {
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(params.iter()), |r| {
                Ok(Aggregate {
                    user: r.get(0)?,
                    device: r.get(1)?,
                    id: r.get(2)?,
                    lat: r.get(3)?,
                    lon: r.get(4)?,
                    bbox: (r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?),
                    fence: r.get(9)?,
                    address: r.get(10)?,
                    locality: r.get(11)?,
                    cc: r.get(12)?,
                    first: r.get(13)?,
                    last: r.get(14)?,
                    visits: r.get(15)?,
                    dwell: r.get(16)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// The days present (`presence`) matching `q`, whose window is in UTC
    /// days: user, device, day, country, place; at most `limit`.
    pub(crate) async fn presence(
        &self,
        q: &Query,
        limit: usize,
    ) -> Result<Vec<Presence>, QueryError> {
        let (predicate, params) = q.predicate("day");
        let sql = format!(
            "SELECT user, device, day, cc, place FROM presence WHERE {predicate} LIMIT {limit}"
        );
        self.read(move |conn| {
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(params.iter()), |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Every stored version of the regions matching `q` that have a centre.
    pub async fn waypoints(&self, q: &Query) -> Result<Vec<Waypoint>, QueryError> {
        let (predicate, params) = q.predicate("coalesce(tst, 0)");
        let sql = format!(
            "SELECT user, device, coalesce(tst, 0), lat, lon, rad, desc, rid, received_at FROM waypoints WHERE lat IS NOT NULL AND lon IS NOT NULL AND {predicate}"
        );
        self.read(move |conn| {
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(params.iter()), |r| {
                Ok(Waypoint {
                    user: r.get(0)?,
                    device: r.get(1)?,
                    tst: r.get(2)?,
                    lat: r.get(3)?,
                    lon: r.get(4)?,
                    rad: r.get(5)?,
                    desc: r.get(6)?,
                    rid: r.get(7)?,
                    received_at: r.get(8)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// See [`Reader::trips`](crate::read::Reader::trips).
    pub fn trips(&self, q: &Query) -> Result<RowStream<Trip>, QueryError> {
        self.stream("trips", &TRIP_COLUMNS, "start", q, |r| {
            Ok(Trip {
                user: r.get(0)?,
                device: r.get(1)?,
                start: r.get(2)?,
                end: r.get(3)?,
                start_lat: r.get(4)?,
                start_lon: r.get(5)?,
                end_lat: r.get(6)?,
                end_lon: r.get(7)?,
                distance: r.get(8)?,
                duration: r.get(9)?,
                avg_vel: r.get(10)?,
                max_vel: r.get(11)?,
                points: r.get(12)?,
                start_place: r.get(13)?,
                start_cc: r.get(14)?,
                end_place: r.get(15)?,
                end_cc: r.get(16)?,
                start_address: r.get(17)?,
                end_address: r.get(18)?,
            })
        })
    }

    /// See [`Reader::stops`](crate::read::Reader::stops).
    pub fn stops(&self, q: &Query) -> Result<RowStream<Stop>, QueryError> {
        self.stream("stops", &STOP_COLUMNS, "start", q, |r| {
            Ok(Stop {
                user: r.get(0)?,
                device: r.get(1)?,
                start: r.get(2)?,
                end: r.get(3)?,
                lat: r.get(4)?,
                lon: r.get(5)?,
                duration: r.get(6)?,
                points: r.get(7)?,
                place: r.get(8)?,
                locality: r.get(9)?,
                cc: r.get(10)?,
                address: r.get(11)?,
                place_id: r.get(12)?,
            })
        })
    }

    /// See [`Reader::transitions`](crate::read::Reader::transitions).
    pub fn transitions(&self, q: &Query) -> Result<RowStream<Transition>, QueryError> {
        self.stream("transitions", &TRANSITION_COLUMNS, "tst", q, |r| {
            Ok(Transition {
                user: r.get(0)?,
                device: r.get(1)?,
                tid: r.get(2)?,
                tst: r.get(3)?,
                wtst: r.get(4)?,
                lat: r.get(5)?,
                lon: r.get(6)?,
                acc: r.get(7)?,
                event: r.get(8)?,
                desc: r.get(9)?,
                rid: r.get(10)?,
                t: r.get(11)?,
                source: r.get(12)?,
                received_at: r.get(13)?,
            })
        })
    }

    /// The pictures on the cards of `keys` (user, device), in order.
    pub async fn faces(
        &self,
        keys: Vec<(String, String)>,
    ) -> Result<Vec<Option<String>>, QueryError> {
        self.read(move |conn| {
            let mut face =
                conn.prepare_cached("SELECT face FROM cards WHERE user = ?1 AND device = ?2")?;
            keys.iter()
                .map(|(u, d)| {
                    Ok(face
                        .query_row([u, d], |r| r.get::<_, Option<String>>(0))
                        .optional()?
                        .flatten())
                })
                .collect()
        })
        .await
    }

    /// Every device with its last position and card name. The devices are
    /// found by hopping along the `(user, device, tst)` key from one device
    /// to the next (two index seeks per device), so the cost grows with
    /// the number of devices, not of positions. A fix the position filters
    /// set aside is not where the device is: the last one taken is.
    pub async fn devices(&self) -> Result<Vec<Device>, QueryError> {
        self.read(|conn| {
            let mut first = conn.prepare_cached(
                "SELECT user, device FROM positions ORDER BY user, device LIMIT 1",
            )?;
            let mut next = conn.prepare_cached(
                "SELECT user, device FROM positions WHERE (user, device) > (?1, ?2) ORDER BY user, device LIMIT 1",
            )?;
            let mut last = conn.prepare_cached(&format!(
                "SELECT {} FROM positions WHERE user = ?1 AND device = ?2 AND filtered IS NULL ORDER BY tst DESC LIMIT 1",
                *POSITION_COLUMNS
            ))?;
            let mut card =
                conn.prepare_cached("SELECT name FROM cards WHERE user = ?1 AND device = ?2")?;
            let pair = |r: &Row<'_>| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?));
            let mut out = Vec::new();
            let mut at = first.query_row([], pair).optional()?;
            while let Some((user, device)) = at {
                if let Some(p) = last.query_row([&user, &device], position).optional()? {
                    let name = card
                        .query_row([&user, &device], |r| r.get::<_, Option<String>>(0))
                        .optional()?
                        .flatten();
                    out.push(Device {
                        last: p,
                        name,
                        face: None,
                    });
                }
                at = next.query_row([&user, &device], pair).optional()?;
            }
            Ok(out)
        })
        .await
    }
}

use rusqlite::OptionalExtension as _;

impl ToSql for Param {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            Param::Int(i) => i.to_sql(),
            Param::Text(s) => s.to_sql(),
        }
    }
}

/// A JSON array of strings as the store keeps `inregions`; absent is empty.
fn list(v: ValueRef<'_>) -> Vec<Str> {
    match v {
        ValueRef::Text(t) => serde_json::from_slice(t).unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// A text column, read without an intermediate `String`.
fn text(r: &Row<'_>, i: usize) -> rusqlite::Result<Option<Str>> {
    Ok(match r.get_ref(i)? {
        ValueRef::Null => None,
        v => Some(Str::from(v.as_str()?)),
    })
}

fn position(r: &Row<'_>) -> rusqlite::Result<Position> {
    Ok(Position {
        user: text(r, 0)?.unwrap_or_default(),
        device: text(r, 1)?.unwrap_or_default(),
        tid: text(r, 2)?,
        tst: r.get(3)?,
        lat: r.get(4)?,
        lon: r.get(5)?,
        acc: r.get(6)?,
        alt: r.get(7)?,
        vac: r.get(8)?,
        vel: r.get(9)?,
        cog: r.get(10)?,
        batt: r.get(11)?,
        bs: r.get(12)?,
        t: text(r, 13)?,
        conn: text(r, 14)?,
        p: r.get(15)?,
        m: r.get(16)?,
        ssid: text(r, 17)?,
        bssid: text(r, 18)?,
        created_at: r.get(19)?,
        inregions: list(r.get_ref(20)?),
        inrids: list(r.get_ref(21)?),
        topic: text(r, 22)?,
        received_at: r.get(23)?,
    })
}
