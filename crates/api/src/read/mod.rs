//! The read side: what the tables hold, asked for by device and time, and
//! written out in the formats people's tools read.
//!
//! In: a [`Query`] (whose devices, which time window, how many) against
//! the tables the sink writes, in the embedded SQLite store or in
//! ClickHouse. Out: rows ([`rows`]) as a [`RowStream`] of chunks, and the
//! encoders of [`format`] that turn them into JSON, NDJSON, GeoJSON,
//! GPX, CSV or OwnTracks Recorder's shapes.
//!
//! Guarantees: both backends give the same answer for the same data (the
//! same rows, order and values: ClickHouse's `0`/`''` for a key column the
//! device did not send reads back as absent, as SQLite's NULL does, and
//! duplicates collapse with `FINAL`); answers stream, so memory does not
//! grow with their size: a reader fills a channel of at most
//! [`CHUNKS_IN_FLIGHT`] chunks of [`CHUNK_ROWS`] rows and waits while the
//! consumer (an HTTP response) is slow; reads never block ingest (SQLite:
//! separate read-only connections on the WAL; ClickHouse: its own client).
//!
//! Layout:
//! - [`rows`]: the row types, with units (the schema's).
//! - [`sqlite`] and [`clickhouse`]: the two backends behind [`Reader`].
//! - [`slices`]: one device's long export read in parallel slices, from
//!   ClickHouse in its columnar Native format (`native`).
//! - [`stats`]: figures per device or user per day, week or month from
//!   the rollups (trips, stops, days present), and the daily summary
//!   (pure).
//! - [`places`]: places from their stops, and merged across a user's
//!   devices (pure).
//! - [`format`]: encoders, one per output format, and ISO-8601 times.

pub mod clickhouse;
pub mod format;
mod native;
pub mod places;
pub mod slices;
pub mod sqlite;
pub mod stats;

pub use otstream_schema::rows;
pub use rows::{DaySummary, Device, Place, Position, Stop, Transition, Trip, Waypoint};
use tokio::sync::mpsc;

/// Rows in one chunk of a stream: large enough that the per-chunk cost
/// (a channel hand-over, one HTTP frame) vanishes, small enough that a
/// chunk of positions stays well under a megabyte.
pub const CHUNK_ROWS: usize = 1024;
/// Chunks a reader may be ahead of its consumer: the bound on memory per
/// answer (a few hundred kilobytes), whatever the answer's size.
pub const CHUNKS_IN_FLIGHT: usize = 4;

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// SQLite refused or the store could not be opened.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// ClickHouse refused or could not be reached.
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] ::clickhouse::error::Error),
    /// The reading thread or task died.
    #[error("reader failed: {0}")]
    Thread(String),
    /// ClickHouse answered in a shape other than the one asked for.
    #[error("clickhouse answered an unexpected shape: {0}")]
    Shape(String),
    /// The answer would exceed its bound: the client should ask for less.
    #[error("{0}")]
    TooLarge(String),
}

impl QueryError {
    /// A bounded code for metric labels.
    pub fn code(&self) -> &'static str {
        match self {
            QueryError::Sqlite(_) => "sqlite",
            QueryError::ClickHouse(_) => "clickhouse",
            QueryError::Thread(_) => "thread",
            QueryError::Shape(_) => "clickhouse_shape",
            QueryError::TooLarge(_) => "too_large",
        }
    }
}

pub use otstream_model::Visible;

/// Months [`Reader::months`] lists at most.
pub const MAX_MONTHS: usize = 1200;

/// What to read: whose rows, over which window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Only this user's devices, if set.
    pub user: Option<String>,
    /// Only this device (of `user`), if set.
    pub device: Option<String>,
    /// Start of the window, UNIX seconds, inclusive.
    pub from: i64,
    /// End of the window, UNIX seconds, inclusive.
    pub to: i64,
    /// Only the last `limit` rows of the window (still in time order), as
    /// Recorder's `limit` does.
    pub limit: Option<u64>,
    /// Who is asking: rows of other devices are never read.
    pub visible: Visible,
    /// Stops only: those that are visits of a place, or of this place.
    pub place: Option<Visits>,
}

/// Which stops a read of stops keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visits {
    /// Every stop assigned to a place (not those stored before places).
    Any,
    /// The visits of the place with this id (of the query's device).
    Of(i64),
}

impl Query {
    /// Every visible device over `[from, to]`.
    pub fn window(from: i64, to: i64) -> Self {
        Self {
            user: None,
            device: None,
            from,
            to,
            limit: None,
            visible: Visible::All,
            place: None,
        }
    }

    /// The `WHERE` clause both backends run (their SQL agrees on `?`
    /// parameters, `AND`, `OR` and `IN`), over `time_column`, and its
    /// parameters in order.
    pub(crate) fn predicate(&self, time_column: &str) -> (String, Vec<Param>) {
        let mut sql = format!("{time_column} >= ? AND {time_column} <= ?");
        let mut params = vec![Param::Int(self.from), Param::Int(self.to)];
        if let Some(u) = &self.user {
            sql.push_str(" AND user = ?");
            params.push(Param::Text(u.clone()));
        }
        if let Some(d) = &self.device {
            sql.push_str(" AND device = ?");
            params.push(Param::Text(d.clone()));
        }
        visible_predicate(&self.visible, &mut sql, &mut params);
        (sql, params)
    }

    /// The condition on `place_id` ([`Query::place`]), to be `AND`ed to
    /// [`Query::predicate`]: empty when there is none. ClickHouse applies
    /// it after `FINAL` (18.16 would move it before the dedup).
    pub(crate) fn place_predicate(&self) -> (&'static str, Vec<Param>) {
        match self.place {
            // Ids are UNIX seconds: none is 0, which is ClickHouse's "no
            // place" (and SQLite's NULL compares false).
            Some(Visits::Any) => (" AND place_id > 0", Vec::new()),
            Some(Visits::Of(id)) => (" AND place_id = ?", vec![Param::Int(id)]),
            None => ("", Vec::new()),
        }
    }
}

/// Appends ` AND (...)` restricting rows to `visible`.
pub(crate) fn visible_predicate(visible: &Visible, sql: &mut String, params: &mut Vec<Param>) {
    let Visible::Some { users, devices } = visible else {
        return;
    };
    let mut alternatives = Vec::new();
    for u in users {
        alternatives.push("user = ?".to_owned());
        params.push(Param::Text(u.clone()));
    }
    for (u, d) in devices {
        alternatives.push("(user = ? AND device = ?)".to_owned());
        params.push(Param::Text(u.clone()));
        params.push(Param::Text(d.clone()));
    }
    if alternatives.is_empty() {
        // Nothing is visible: a predicate that is false on both backends.
        sql.push_str(" AND 1 = 0");
    } else {
        sql.push_str(" AND (");
        sql.push_str(&alternatives.join(" OR "));
        sql.push(')');
    }
}

/// A bound parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Param {
    Int(i64),
    Text(String),
}

/// An answer being read: chunks of rows in order, then the end of the
/// channel. An error ends the stream.
pub type RowStream<T> = mpsc::Receiver<Result<Vec<T>, QueryError>>;

/// Where the rows are read from.
#[derive(Clone)]
pub enum Reader {
    /// The embedded store.
    Sqlite(sqlite::SqliteReader),
    /// ClickHouse.
    ClickHouse(clickhouse::ClickHouseReader),
}

impl Reader {
    /// Positions in the window, by device then time.
    pub async fn positions(&self, q: &Query) -> Result<RowStream<Position>, QueryError> {
        match self {
            Reader::Sqlite(r) => r.positions(q).await,
            Reader::ClickHouse(r) => r.positions(q).await,
        }
    }

    /// Trips starting in the window, by device then start.
    pub async fn trips(&self, q: &Query) -> Result<RowStream<Trip>, QueryError> {
        match self {
            Reader::Sqlite(r) => r.trips(q),
            Reader::ClickHouse(r) => r.trips(q).await,
        }
    }

    /// Stops starting in the window, by device then start.
    pub async fn stops(&self, q: &Query) -> Result<RowStream<Stop>, QueryError> {
        match self {
            Reader::Sqlite(r) => r.stops(q),
            Reader::ClickHouse(r) => r.stops(q).await,
        }
    }

    /// Transitions (device-reported and server-evaluated) in the window,
    /// by device then time.
    pub async fn transitions(&self, q: &Query) -> Result<RowStream<Transition>, QueryError> {
        match self {
            Reader::Sqlite(r) => r.transitions(q),
            Reader::ClickHouse(r) => r.transitions(q).await,
        }
    }

    /// Every visible device (of `user`, and that `device`, when set) with
    /// its last position and card name, by user then device.
    pub async fn devices(
        &self,
        user: Option<&str>,
        device: Option<&str>,
        visible: &Visible,
    ) -> Result<Vec<Device>, QueryError> {
        let mut all = match self {
            Reader::Sqlite(r) => r.devices().await?,
            Reader::ClickHouse(r) => r.devices().await?,
        };
        all.retain(|d| {
            visible.allows(&d.last.user, &d.last.device)
                && user.is_none_or(|u| u == d.last.user)
                && device.is_none_or(|x| x == d.last.device)
        });
        Ok(all)
    }

    /// Fills in the pictures of `devices`' cards (read only where an
    /// answer shows them, for the devices it shows: a picture is up to a
    /// payload's size).
    pub async fn faces(&self, devices: &mut [Device]) -> Result<(), QueryError> {
        let keys: Vec<(String, String)> = devices
            .iter()
            .map(|d| (d.last.user.to_string(), d.last.device.to_string()))
            .collect();
        let faces = match self {
            Reader::Sqlite(r) => r.faces(keys).await?,
            Reader::ClickHouse(r) => r.faces(keys).await?,
        };
        for (d, f) in devices.iter_mut().zip(faces) {
            d.face = f;
        }
        Ok(())
    }

    /// The UTC months (`YYYY-MM`) in which `q`'s device has positions in
    /// `q`'s window, in order: what Recorder lists as a device's monthly
    /// `.rec` files. Found by hopping from month to month along the
    /// `(user, device, tst)` key, one lookup a month, so a device with a
    /// million positions costs as much as one with a few.
    pub async fn months(&self, q: &Query) -> Result<Vec<String>, QueryError> {
        let mut months = Vec::new();
        let mut from = q.from;
        // A query per month with data: a century of them at most.
        while months.len() < MAX_MONTHS {
            let window = Query { from, ..q.clone() };
            let first = match self {
                Reader::Sqlite(r) => r.first_tst(&window).await?,
                Reader::ClickHouse(r) => r.first_tst(&window).await?,
            };
            let Some(t) = first else { break };
            let (y, m, _) = format::civil(t.div_euclid(86_400));
            months.push(format!("{y:04}-{m:02}"));
            let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            from = format::days_from_civil(y, m, 1) * 86_400;
            if from > q.to {
                break;
            }
        }
        Ok(months)
    }

    /// The regions visible devices (of `q`'s user and device, when set)
    /// define, each in its last version, by user, device and creation
    /// time; `q`'s window does not apply: a region stays until it is
    /// replaced.
    pub async fn waypoints(&self, q: &Query) -> Result<Vec<Waypoint>, QueryError> {
        // Every creation time a DateTime holds (0: not sent).
        let q = &Query {
            from: 0,
            to: u32::MAX.into(),
            limit: None,
            ..q.clone()
        };
        let rows = match self {
            Reader::Sqlite(r) => r.waypoints(q).await?,
            Reader::ClickHouse(r) => r.waypoints(q).await?,
        };
        Ok(Waypoint::current(rows))
    }

    /// The positions matching `q` (not set aside by the filters) counted
    /// per H3 cell of the stored resolution `res`, by cell: at most
    /// `limit` cells. `None` for a resolution not stored.
    pub async fn heatmap(
        &self,
        q: &Query,
        res: u8,
        limit: usize,
    ) -> Result<Option<Vec<(u64, u64)>>, QueryError> {
        let Some(column) = otstream_schema::h3::column(res) else {
            return Ok(None);
        };
        Ok(Some(match self {
            Reader::Sqlite(r) => r.heatmap(q, column, limit).await?,
            Reader::ClickHouse(r) => r.heatmap(q, column, limit).await?,
        }))
    }

    /// The places of the devices matching `q`, with the figures of their
    /// stops starting in the window ([`places`]), by user, device and id:
    /// at most `limit`.
    pub async fn places(&self, q: &Query, limit: usize) -> Result<Vec<Place>, QueryError> {
        let rows = match self {
            Reader::Sqlite(r) => r.places(q, limit).await?,
            Reader::ClickHouse(r) => r.places(q, limit).await?,
        };
        Ok(rows.into_iter().map(places::Aggregate::place).collect())
    }

    /// Per device per UTC day: distance, driving time, trips, stops and
    /// top speed: the daily view of [`Reader::stats`].
    pub async fn summary(&self, q: &Query) -> Result<Vec<DaySummary>, QueryError> {
        let stats = self.stats(q, stats::Period::Day, false, false).await?;
        Ok(stats.iter().map(DaySummary::from).collect())
    }

    /// Figures per device (per user with `by_user`) per `period` over
    /// `q`'s window ([`stats`]): trips and stops starting in it, and, with
    /// `presence`, the days present in each country and city and the
    /// places most dwelt at. `None` when the days present exceed
    /// [`stats::MAX_PRESENCE`] (ask for fewer devices or a shorter window).
    pub async fn stats(
        &self,
        q: &Query,
        period: stats::Period,
        by_user: bool,
        presence: bool,
    ) -> Result<Vec<stats::Stat>, QueryError> {
        let mut sums = stats::Stats::new(period, by_user);
        // The reads go out together (each is a round trip to ClickHouse,
        // and they are independent): the trips and stops streams start
        // reading as they are asked for.
        let mut trips = self.trips(q).await?;
        let mut stops = self.stops(q).await?;
        // The days the window touches, UNIX s / 86400.
        let days = Query {
            from: q.from.div_euclid(86_400),
            to: q.to.div_euclid(86_400),
            limit: None,
            ..q.clone()
        };
        let limit = stats::MAX_PRESENCE + 1;
        let extra = async {
            if !presence {
                return Ok(Vec::new());
            }
            match self {
                Reader::Sqlite(r) => r.presence(&days, limit).await,
                Reader::ClickHouse(r) => r.presence(&days, limit).await,
            }
        };
        let sum = async {
            while let Some(chunk) = trips.recv().await {
                for t in chunk? {
                    sums.trip(&t);
                }
            }
            while let Some(chunk) = stops.recv().await {
                for s in chunk? {
                    sums.stop(&s);
                }
            }
            Ok::<_, QueryError>(())
        };
        let (rows, ()) = tokio::try_join!(extra, sum)?;
        if rows.len() > stats::MAX_PRESENCE {
            return Err(QueryError::TooLarge(format!(
                "more than {} days present in places: ask for a user, a device or a shorter window",
                stats::MAX_PRESENCE
            )));
        }
        for (user, device, day, cc, place) in &rows {
            sums.present(user, device, *day, cc, place);
        }
        Ok(sums.finish())
    }
}

/// Sends rows in chunks of [`CHUNK_ROWS`] into a stream; what the
/// backends' reading loops share. `push` returns false once the consumer
/// is gone, so a reader stops reading an answer nobody waits for.
pub(crate) struct Chunker<T> {
    tx: mpsc::Sender<Result<Vec<T>, QueryError>>,
    chunk: Vec<T>,
}

impl<T: Send + 'static> Chunker<T> {
    pub(crate) fn channel() -> (Self, RowStream<T>) {
        let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
        (
            Self {
                tx,
                chunk: Vec::with_capacity(CHUNK_ROWS),
            },
            rx,
        )
    }

    /// For a blocking reader (SQLite's thread).
    pub(crate) fn push_blocking(&mut self, row: T) -> bool {
        self.chunk.push(row);
        if self.chunk.len() < CHUNK_ROWS {
            return true;
        }
        let full = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK_ROWS));
        self.tx.blocking_send(Ok(full)).is_ok()
    }

    /// For an async reader (ClickHouse's cursor).
    pub(crate) async fn push(&mut self, row: T) -> bool {
        self.chunk.push(row);
        if self.chunk.len() < CHUNK_ROWS {
            return true;
        }
        let full = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK_ROWS));
        self.tx.send(Ok(full)).await.is_ok()
    }

    /// Sends what is left, or the error that ended the read.
    pub(crate) fn finish_blocking(self, result: Result<(), QueryError>) {
        let _ = match result {
            Ok(()) if self.chunk.is_empty() => Ok(()),
            Ok(()) => self.tx.blocking_send(Ok(self.chunk)),
            Err(e) => self.tx.blocking_send(Err(e)),
        };
    }

    /// Sends what is left, or the error that ended the read.
    pub(crate) async fn finish(self, result: Result<(), QueryError>) {
        let _ = match result {
            Ok(()) if self.chunk.is_empty() => Ok(()),
            Ok(()) => self.tx.send(Ok(self.chunk)).await,
            Err(e) => self.tx.send(Err(e)).await,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predicate_binds_in_order_and_limits_to_what_is_visible() {
        let mut q = Query::window(10, 20);
        q.user = Some("jane".into());
        q.visible = Visible::Some {
            users: vec!["jane".into()],
            devices: vec![("bob".into(), "phone".into())],
        };
        let (sql, params) = q.predicate("tst");
        assert_eq!(
            sql,
            "tst >= ? AND tst <= ? AND user = ? AND (user = ? OR (user = ? AND device = ?))"
        );
        assert_eq!(
            params,
            vec![
                Param::Int(10),
                Param::Int(20),
                Param::Text("jane".into()),
                Param::Text("jane".into()),
                Param::Text("bob".into()),
                Param::Text("phone".into()),
            ]
        );
        q.visible = Visible::Some {
            users: vec![],
            devices: vec![],
        };
        assert!(q.predicate("start").0.ends_with(" AND 1 = 0"));
    }

    #[test]
    fn visibility_of_users_and_single_devices() {
        let v = Visible::Some {
            users: vec!["jane".into()],
            devices: vec![("bob".into(), "phone".into())],
        };
        assert!(v.allows("jane", "anything"));
        assert!(v.allows("bob", "phone"));
        assert!(!v.allows("bob", "car"));
        assert!(v.allows_user("bob"));
        assert!(!v.allows_user("eve"));
        assert!(Visible::All.allows("eve", "x"));
    }
}
