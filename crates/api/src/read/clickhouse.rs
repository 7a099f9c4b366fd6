//! Reading ClickHouse: RowBinary over HTTP with LZ4, rows decoded as they
//! arrive. Every table is read with `FINAL`, so redelivered rows that no
//! merge has collapsed yet are still counted once; key columns the device
//! did not send (`0`, `''` there) are given back as absent, as SQLite has
//! them.

use clickhouse::{Client, Row};
use otstream_schema::clickhouse::ClickHouseConfig;
use serde::Deserialize;

use crate::read::places::Aggregate;
use crate::read::rows::{Device, Position, Stop, Str, Transition, Trip, Waypoint};
use crate::read::slices::{self, SLICE_ROWS, Span};
use crate::read::sqlite::{POSITION_COLUMNS, STOP_COLUMNS, TRANSITION_COLUMNS, TRIP_COLUMNS};
use crate::read::stats::Presence;
use crate::read::{Chunker, Param, Query, QueryError, RowStream};

/// Reads the tables of one ClickHouse database.
#[derive(Clone)]
pub struct ClickHouseReader {
    // Boxed: a client is a few hundred bytes, a reader is cloned per read.
    client: Box<Client>,
}

impl ClickHouseReader {
    /// A reader of the database `config` names (its own client: reads and
    /// the sink's inserts do not share connections).
    pub fn new(config: &ClickHouseConfig) -> Self {
        Self {
            client: Box::new(config.client()),
        }
    }

    /// `sql` with `params` bound to its `?`s, in order.
    fn bound(&self, sql: &str, params: Vec<Param>) -> clickhouse::query::Query {
        let mut query = self.client.query(sql);
        for p in params {
            query = match p {
                Param::Int(i) => query.bind(i),
                Param::Text(s) => query.bind(s),
            };
        }
        query
    }

    /// `q`'s `WHERE` clause over the DateTime column `time`, and its
    /// parameters.
    fn predicate(q: &Query, time: &str) -> (String, Vec<Param>) {
        let (predicate, params) = q.predicate(time);
        // ClickHouse compares DateTime columns with numbers once told to.
        let predicate = predicate.replacen(
            &format!("{time} >= ? AND {time} <= ?"),
            &format!("{time} >= toDateTime(?) AND {time} <= toDateTime(?)"),
            1,
        );
        (predicate, params)
    }

    /// Streams the rows of `table` matching `q`, each converted by `into`.
    /// With `dedupe`, rows are read without `FINAL`, in key order and then
    /// by `received_at`, and of rows with the same key (`dedupe` says
    /// whether two are) only the last, the newest, is kept: what
    /// ReplacingMergeTree's merges keep, without the cost of `FINAL`
    /// (on 18.16, a third of an export's time).
    async fn stream<R, T>(
        &self,
        table: &'static str,
        columns: &str,
        time: &'static str,
        q: &Query,
        into: fn(R) -> T,
        dedupe: Option<fn(&T, &T) -> bool>,
    ) -> Result<RowStream<T>, QueryError>
    where
        R: Row + for<'b> Row<Value<'b> = R> + for<'de> Deserialize<'de> + Send + 'static,
        T: Send + 'static,
    {
        let (predicate, mut params) = Self::predicate(q, time);
        let (place, place_params) = q.place_predicate();
        params.extend(place_params);
        // A condition on a stop's place applies to the version FINAL kept.
        let source = if place.is_empty() {
            format!("{table} FINAL WHERE {predicate}")
        } else {
            format!("(SELECT * FROM {table} FINAL WHERE {predicate}) WHERE 1 = 1{place}")
        };
        let (dedupe, sql) = match (q.limit, dedupe) {
            // The last N: duplicates must not count, so FINAL.
            (Some(n), _) => (
                None,
                format!(
                    "SELECT * FROM (SELECT {columns} FROM {source} ORDER BY user DESC, device DESC, {time} DESC LIMIT {n}) ORDER BY user, device, {time}"
                ),
            ),
            (None, Some(same)) => (
                Some(same),
                format!(
                    "SELECT {columns} FROM {table} WHERE {predicate}{place} ORDER BY user, device, {time}, received_at"
                ),
            ),
            (None, None) => (
                None,
                format!("SELECT {columns} FROM {source} ORDER BY user, device, {time}"),
            ),
        };
        let mut cursor = self.bound(&sql, params).fetch::<R>()?;
        let (mut out, rx) = Chunker::channel();
        tokio::spawn(async move {
            let result = async {
                let mut held: Option<T> = None;
                while let Some(row) = cursor.next().await? {
                    let row = into(row);
                    let Some(same) = dedupe else {
                        if !out.push(row).await {
                            return Ok(());
                        }
                        continue;
                    };
                    if let Some(prev) = held.take() {
                        if !same(&prev, &row) && !out.push(prev).await {
                            return Ok(());
                        }
                    }
                    held = Some(row);
                }
                if let Some(last) = held {
                    out.push(last).await;
                }
                Ok(())
            }
            .await;
            out.finish(result).await;
        });
        Ok(rx)
    }

    /// See [`Reader::positions`](crate::read::Reader::positions). One device's
    /// window is read in slices ([`crate::read::slices`]), each unsorted (on
    /// 18.16, ClickHouse's CPU for a million rows: 1.3 s sorted, 0.3 s
    /// unsorted) and sorted here, where a slice takes a millisecond.
    pub async fn positions(&self, q: &Query) -> Result<RowStream<Position>, QueryError> {
        let (Some(_), Some(_), None) = (&q.user, &q.device, q.limit) else {
            return self.positions_at_once(q).await;
        };
        let windows = self.slices(q).await?;
        let this = self.clone();
        Ok(slices::stream(q, windows, move |slice| {
            let this = this.clone();
            async move { this.slice(&slice).await }
        }))
    }

    /// The earliest `tst` of a position matching `q`, if any.
    pub async fn first_tst(&self, q: &Query) -> Result<Option<i64>, QueryError> {
        let (predicate, params) = Self::predicate(q, "tst");
        let (rows, first): (u64, u32) = self
            .bound(
                &format!("SELECT count(), toUInt32(min(tst)) FROM positions WHERE {predicate}"),
                params,
            )
            .fetch_one()
            .await?;
        Ok((rows > 0).then_some(first.into()))
    }

    /// See [`Reader::heatmap`](crate::read::Reader::heatmap): `column` is
    /// one of the cells' columns. `FINAL`: a fix delivered twice counts
    /// once. At most a minute of the server's time.
    pub async fn heatmap(
        &self,
        q: &Query,
        column: &'static str,
        limit: usize,
    ) -> Result<Vec<(u64, u64)>, QueryError> {
        let (predicate, params) = Self::predicate(q, "tst");
        Ok(self
            .bound(
                // The filters' verdict is read after FINAL picked each fix's
                // newest version (in the outer query: 18.16 would move a
                // condition on it to PREWHERE, before the dedup); the key's
                // columns may be filtered before.
                &format!(
                    "SELECT {column}, count() FROM (SELECT {column}, filtered FROM positions FINAL WHERE {predicate}) WHERE filtered = '' AND {column} != 0 GROUP BY {column} ORDER BY {column} LIMIT {limit} SETTINGS max_execution_time = 60"
                ),
                params,
            )
            .fetch_all::<(u64, u64)>()
            .await?)
    }

    /// See [`Reader::places`](crate::read::Reader::places): each place's
    /// stops in the window summed up after `FINAL`, joined with its first
    /// stop (the one whose start is its id) for the names.
    pub(crate) async fn places(
        &self,
        q: &Query,
        limit: usize,
    ) -> Result<Vec<Aggregate>, QueryError> {
        #[derive(Row, Deserialize)]
        struct ChPlace {
            user: String,
            device: String,
            place_id: u32,
            c_lat: f64,
            c_lon: f64,
            min_lat: f64,
            max_lat: f64,
            min_lon: f64,
            max_lon: f64,
            fence: String,
            address: Option<String>,
            locality: String,
            cc: String,
            first_seen: u32,
            last_seen: u32,
            visits: u64,
            dwell: u64,
        }
        let visits = Query {
            place: None,
            limit: None,
            ..q.clone()
        };
        let (predicate, mut params) = Self::predicate(&visits, "start");
        // The first stops may lie before the window.
        let first = Query {
            from: 0,
            to: u32::MAX.into(),
            ..visits
        };
        let (first_predicate, first_params) = Self::predicate(&first, "start");
        params.extend(first_params);
        // Aliases differ from the columns: ClickHouse resolves an alias
        // anywhere in the query, so `avg(lat) AS lat` would feed `min(lat)`.
        let sql = format!(
            "SELECT user, device, place_id, c_lat, c_lon, min_lat, max_lat, min_lon, max_lon, fence, address, locality, cc, first_seen, last_seen, visits, dwell FROM (\
             SELECT user, device, place_id, avg(lat) AS c_lat, avg(lon) AS c_lon, min(lat) AS min_lat, max(lat) AS max_lat, \
             min(lon) AS min_lon, max(lon) AS max_lon, max(place) AS fence, toUInt32(min(start)) AS first_seen, \
             toUInt32(max(end)) AS last_seen, count() AS visits, toUInt64(sum(duration)) AS dwell \
             FROM (SELECT user, device, place_id, lat, lon, place, start, end, duration FROM stops FINAL WHERE {predicate}) \
             WHERE place_id > 0 GROUP BY user, device, place_id\
             ) ANY LEFT JOIN (\
             SELECT user, device, place_id, address, locality, cc FROM (\
             SELECT user, device, place_id, start, address, locality, cc FROM stops FINAL WHERE {first_predicate}\
             ) WHERE place_id = toUInt32(start)\
             ) USING (user, device, place_id) ORDER BY user, device, place_id LIMIT {limit} \
             SETTINGS max_execution_time = 60"
        );
        let rows: Vec<ChPlace> = self.bound(&sql, params).fetch_all().await?;
        let text = |s: String| (!s.is_empty()).then_some(s);
        Ok(rows
            .into_iter()
            .map(|r| Aggregate {
                user: r.user,
                device: r.device,
                id: r.place_id.into(),
                lat: r.c_lat,
                lon: r.c_lon,
                bbox: (r.min_lat, r.max_lat, r.min_lon, r.max_lon),
                fence: text(r.fence),
                address: r.address,
                locality: text(r.locality),
                cc: text(r.cc),
                first: r.first_seen.into(),
                last: r.last_seen.into(),
                visits: i64::try_from(r.visits).unwrap_or(i64::MAX),
                dwell: i64::try_from(r.dwell).unwrap_or(i64::MAX),
            })
            .collect())
    }

    /// The days present (`presence`) matching `q`, whose window is in UTC
    /// days, once each (`DISTINCT`: the set's copies not merged yet).
    pub(crate) async fn presence(
        &self,
        q: &Query,
        limit: usize,
    ) -> Result<Vec<Presence>, QueryError> {
        // A plain number column: no DateTime conversion of the window.
        let (predicate, params) = q.predicate("day");
        let rows: Vec<(String, String, u32, String, String)> = self
            .bound(
                &format!("SELECT DISTINCT user, device, day, cc, place FROM presence WHERE {predicate} LIMIT {limit}"),
                params,
            )
            .fetch_all()
            .await?;
        Ok(rows
            .into_iter()
            .map(|(u, d, day, cc, place)| (u, d, i64::from(day), cc, place))
            .collect())
    }

    /// Every stored version of the regions matching `q` that have a
    /// centre (no `FINAL`: [`Waypoint::current`] keeps the last).
    pub async fn waypoints(&self, q: &Query) -> Result<Vec<Waypoint>, QueryError> {
        #[derive(Row, Deserialize)]
        struct ChWaypoint {
            user: String,
            device: String,
            tst: u32,
            lat: Option<f64>,
            lon: Option<f64>,
            rad: Option<i32>,
            desc: String,
            rid: String,
            received_at: i64,
        }
        let (predicate, params) = Self::predicate(q, "tst");
        let rows: Vec<ChWaypoint> = self
            .bound(
                &format!("SELECT user, device, tst, lat, lon, rad, desc, rid, received_at FROM waypoints WHERE isNotNull(lat) AND isNotNull(lon) AND {predicate}"),
                params,
            )
            .fetch_all()
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                Some(Waypoint {
                    user: r.user,
                    device: r.device,
                    tst: r.tst.into(),
                    lat: r.lat?,
                    lon: r.lon?,
                    rad: r.rad,
                    desc: (!r.desc.is_empty()).then_some(r.desc),
                    rid: (!r.rid.is_empty()).then_some(r.rid),
                    received_at: r.received_at,
                })
            })
            .collect())
    }

    /// The time windows of `q`'s slices, in order.
    async fn slices(&self, q: &Query) -> Result<Vec<(i64, i64)>, QueryError> {
        #[derive(Row, Deserialize)]
        struct ChSpan {
            rows: u64,
            first: u32,
            last: u32,
        }
        #[derive(Row, Deserialize)]
        struct Bucket {
            bucket: u64,
            rows: u64,
        }
        let (predicate, params) = Self::predicate(q, "tst");
        let span: ChSpan = self
            .bound(
                &format!("SELECT count() AS rows, toUInt32(min(tst)) AS first, toUInt32(max(tst)) AS last FROM positions WHERE {predicate}"),
                params.clone(),
            )
            .fetch_one()
            .await?;
        let span = Span {
            rows: span.rows,
            first: span.first.into(),
            last: span.last.into(),
        };
        let (first, last) = (span.first, span.last);
        if span.rows == 0 {
            return Ok(Vec::new());
        }
        if span.rows <= SLICE_ROWS {
            return Ok(vec![(first, last)]);
        }
        let width = span.bucket_width();
        let buckets: Vec<Bucket> = self
            .bound(
                &format!("SELECT intDiv(toUInt32(tst) - {first}, {width}) AS bucket, count() AS rows FROM positions WHERE {predicate} GROUP BY bucket ORDER BY bucket"),
                params,
            )
            .fetch_all()
            .await?;
        Ok(slices::group(
            buckets.iter().map(|b| (b.bucket as i64, b.rows)),
            first,
            last,
            width,
        ))
    }

    /// One slice: read unsorted, in Native format ([`crate::read::native`]),
    /// sorted by time, and of rows with the same `tst` only the newest
    /// (`received_at`) kept, as ReplacingMergeTree keeps it.
    async fn slice(&self, q: &Query) -> Result<Vec<Vec<Position>>, QueryError> {
        let (predicate, params) = Self::predicate(q, "tst");
        let columns = crate::read::native::POSITION_COLUMNS;
        let answer = self
            .bound(
                &format!("SELECT {columns} FROM positions WHERE {predicate}"),
                params,
            )
            .fetch_bytes("Native")?
            .collect()
            .await?;
        crate::read::native::positions(&answer)
    }

    async fn positions_at_once(&self, q: &Query) -> Result<RowStream<Position>, QueryError> {
        self.stream(
            "positions",
            &POSITION_COLUMNS,
            "tst",
            q,
            |p: Position| p,
            Some(|a: &Position, b: &Position| {
                a.tst == b.tst && a.device == b.device && a.user == b.user
            }),
        )
        .await
    }

    /// See [`Reader::trips`](crate::read::Reader::trips).
    pub async fn trips(&self, q: &Query) -> Result<RowStream<Trip>, QueryError> {
        self.stream("trips", &TRIP_COLUMNS, "start", q, |r: Trip| r, None)
            .await
    }

    /// See [`Reader::stops`](crate::read::Reader::stops).
    pub async fn stops(&self, q: &Query) -> Result<RowStream<Stop>, QueryError> {
        self.stream("stops", &STOP_COLUMNS, "start", q, |r: Stop| r, None)
            .await
    }

    /// See [`Reader::transitions`](crate::read::Reader::transitions).
    pub async fn transitions(&self, q: &Query) -> Result<RowStream<Transition>, QueryError> {
        self.stream(
            "transitions",
            &TRANSITION_COLUMNS,
            "tst",
            q,
            |r: Transition| r,
            None,
        )
        .await
    }

    /// Every device with its last position and card name: the latest
    /// `tst` of each device from `last_positions` (one row per device
    /// once merged; it takes only fixes the position filters took), then
    /// those rows of `positions` by their key.
    pub async fn devices(&self) -> Result<Vec<Device>, QueryError> {
        let sql = format!(
            "SELECT {} FROM positions FINAL WHERE filtered = '' AND (user, device, tst) IN (SELECT user, device, max(tst) FROM last_positions GROUP BY user, device) ORDER BY user, device",
            *POSITION_COLUMNS
        );
        let rows: Vec<Position> = self.client.query(&sql).fetch_all().await?;
        #[derive(Row, Deserialize)]
        struct Card {
            user: String,
            device: String,
            name: Option<String>,
        }
        let cards: Vec<Card> = self
            .client
            .query("SELECT user, device, name FROM cards FINAL")
            .fetch_all()
            .await?;
        let mut names: std::collections::HashMap<(Str, Str), Option<String>> = cards
            .into_iter()
            .map(|c| ((c.user.into(), c.device.into()), c.name))
            .collect();
        Ok(rows
            .into_iter()
            .map(|last| {
                let name = names
                    .remove(&(last.user.clone(), last.device.clone()))
                    .flatten();
                Device {
                    last,
                    name,
                    face: None,
                }
            })
            .collect())
    }

    /// The pictures on the cards of `keys` (user, device), in order: one
    /// query over their users, pictures of other devices dropped.
    pub async fn faces(
        &self,
        keys: Vec<(String, String)>,
    ) -> Result<Vec<Option<String>>, QueryError> {
        #[derive(Row, Deserialize)]
        struct Face {
            user: String,
            device: String,
            face: Option<String>,
        }
        let mut users: Vec<&str> = keys.iter().map(|(u, _)| u.as_str()).collect();
        users.sort_unstable();
        users.dedup();
        let rows: Vec<Face> = self
            .client
            .query("SELECT user, device, face FROM cards FINAL WHERE has(?, user) AND face IS NOT NULL")
            .bind(users)
            .fetch_all()
            .await?;
        let mut faces: std::collections::HashMap<(String, String), String> = rows
            .into_iter()
            .filter_map(|f| Some(((f.user, f.device), f.face?)))
            .collect();
        Ok(keys.into_iter().map(|k| faces.remove(&k)).collect())
    }
}
