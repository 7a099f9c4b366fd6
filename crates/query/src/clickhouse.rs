//! Reading ClickHouse: RowBinary over HTTP with LZ4, rows decoded as they
//! arrive. Every table is read with `FINAL`, so redelivered rows that no
//! merge has collapsed yet are still counted once; key columns the device
//! did not send (`0`, `''` there) are given back as absent, as SQLite has
//! them.

use clickhouse::{Client, Row};
use otstream_sink::clickhouse::ClickHouseConfig;
use serde::Deserialize;

use crate::rows::{Device, Position, Stop, Transition, Trip};
use crate::sqlite::{POSITION_COLUMNS, STOP_COLUMNS, TRANSITION_COLUMNS, TRIP_COLUMNS};
use crate::{Chunker, Param, Query, QueryError, RowStream};

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

    /// Streams the rows of `table` matching `q`, each converted by `into`.
    async fn stream<R, T>(
        &self,
        table: &'static str,
        columns: &'static str,
        time: &'static str,
        q: &Query,
        into: fn(R) -> T,
    ) -> Result<RowStream<T>, QueryError>
    where
        R: Row + for<'b> Row<Value<'b> = R> + for<'de> Deserialize<'de> + Send + 'static,
        T: Send + 'static,
    {
        let (predicate, params) = q.predicate(time);
        // ClickHouse compares DateTime columns with numbers once told to.
        let predicate = predicate.replacen(
            &format!("{time} >= ? AND {time} <= ?"),
            &format!("{time} >= toDateTime(?) AND {time} <= toDateTime(?)"),
            1,
        );
        let select = format!("SELECT {columns} FROM {table} FINAL WHERE {predicate}");
        let sql = match q.limit {
            Some(n) => format!(
                "SELECT * FROM ({select} ORDER BY user DESC, device DESC, {time} DESC LIMIT {n}) ORDER BY user, device, {time}"
            ),
            None => format!("{select} ORDER BY user, device, {time}"),
        };
        let mut query = self.client.query(&sql);
        for p in params {
            query = match p {
                Param::Int(i) => query.bind(i),
                Param::Text(s) => query.bind(s),
            };
        }
        let mut cursor = query.fetch::<R>()?;
        let (mut out, rx) = Chunker::channel();
        tokio::spawn(async move {
            let result = async {
                while let Some(row) = cursor.next().await? {
                    if !out.push(into(row)).await {
                        return Ok(());
                    }
                }
                Ok(())
            }
            .await;
            out.finish(result).await;
        });
        Ok(rx)
    }

    /// See [`Reader::positions`](crate::Reader::positions).
    pub async fn positions(&self, q: &Query) -> Result<RowStream<Position>, QueryError> {
        self.stream(
            "positions",
            POSITION_COLUMNS,
            "tst",
            q,
            ChPosition::into_row,
        )
        .await
    }

    /// See [`Reader::trips`](crate::Reader::trips).
    pub async fn trips(&self, q: &Query) -> Result<RowStream<Trip>, QueryError> {
        self.stream("trips", TRIP_COLUMNS, "start", q, |r: ChTrip| Trip {
            user: r.user,
            device: r.device,
            start: r.start.into(),
            end: r.end.into(),
            start_lat: r.start_lat,
            start_lon: r.start_lon,
            end_lat: r.end_lat,
            end_lon: r.end_lon,
            distance: r.distance,
            duration: r.duration.into(),
            avg_vel: r.avg_vel,
            max_vel: r.max_vel,
            points: r.points.into(),
        })
        .await
    }

    /// See [`Reader::stops`](crate::Reader::stops).
    pub async fn stops(&self, q: &Query) -> Result<RowStream<Stop>, QueryError> {
        self.stream("stops", STOP_COLUMNS, "start", q, |r: ChStop| Stop {
            user: r.user,
            device: r.device,
            start: r.start.into(),
            end: r.end.into(),
            lat: r.lat,
            lon: r.lon,
            duration: r.duration.into(),
            points: r.points.into(),
        })
        .await
    }

    /// See [`Reader::transitions`](crate::Reader::transitions).
    pub async fn transitions(&self, q: &Query) -> Result<RowStream<Transition>, QueryError> {
        self.stream(
            "transitions",
            TRANSITION_COLUMNS,
            "tst",
            q,
            |r: ChTransition| Transition {
                user: r.user,
                device: r.device,
                tid: r.tid,
                tst: r.tst.into(),
                wtst: (r.wtst != 0).then_some(r.wtst.into()),
                lat: r.lat,
                lon: r.lon,
                acc: r.acc,
                event: r.event,
                desc: (!r.desc.is_empty()).then_some(r.desc),
                rid: r.rid,
                t: r.t,
                source: r.source,
                received_at: r.received_at,
            },
        )
        .await
    }

    /// Every device with its last position and card name: the latest
    /// `tst` of each device from `last_positions` (one row per device
    /// once merged), then those rows of `positions` by their key.
    pub async fn devices(&self) -> Result<Vec<Device>, QueryError> {
        let sql = format!(
            "SELECT {POSITION_COLUMNS} FROM positions FINAL WHERE (user, device, tst) IN (SELECT user, device, max(tst) FROM last_positions GROUP BY user, device) ORDER BY user, device"
        );
        let rows: Vec<ChPosition> = self.client.query(&sql).fetch_all().await?;
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
        let names: std::collections::HashMap<(String, String), Option<String>> = cards
            .into_iter()
            .map(|c| ((c.user, c.device), c.name))
            .collect();
        Ok(rows
            .into_iter()
            .map(|r| {
                let last = r.into_row();
                let name = names
                    .get(&(last.user.clone(), last.device.clone()))
                    .cloned()
                    .flatten();
                Device { last, name }
            })
            .collect())
    }
}

#[derive(Row, Deserialize)]
struct ChPosition {
    user: String,
    device: String,
    tid: Option<String>,
    tst: u32,
    lat: f64,
    lon: f64,
    acc: Option<i32>,
    alt: Option<i32>,
    vac: Option<i32>,
    vel: Option<i32>,
    cog: Option<i32>,
    batt: Option<i32>,
    bs: Option<i32>,
    t: Option<String>,
    conn: Option<String>,
    p: Option<f64>,
    m: Option<i32>,
    ssid: Option<String>,
    bssid: Option<String>,
    created_at: Option<u32>,
    inregions: Vec<String>,
    inrids: Vec<String>,
    topic: Option<String>,
    // UInt64 ms on old servers, DateTime64(3) (Int64 ms) on current ones:
    // eight bytes either way.
    received_at: i64,
}

impl ChPosition {
    fn into_row(self) -> Position {
        Position {
            user: self.user,
            device: self.device,
            tid: self.tid,
            tst: self.tst.into(),
            lat: self.lat,
            lon: self.lon,
            acc: self.acc,
            alt: self.alt,
            vac: self.vac,
            vel: self.vel,
            cog: self.cog,
            batt: self.batt,
            bs: self.bs,
            t: self.t,
            conn: self.conn,
            p: self.p,
            m: self.m,
            ssid: self.ssid,
            bssid: self.bssid,
            created_at: self.created_at.map(i64::from),
            inregions: self.inregions,
            inrids: self.inrids,
            topic: self.topic,
            received_at: self.received_at,
        }
    }
}

#[derive(Row, Deserialize)]
struct ChTransition {
    user: String,
    device: String,
    tid: Option<String>,
    tst: u32,
    wtst: u32,
    lat: f64,
    lon: f64,
    acc: Option<i32>,
    event: String,
    desc: String,
    rid: Option<String>,
    t: Option<String>,
    source: String,
    received_at: i64,
}

#[derive(Row, Deserialize)]
struct ChTrip {
    user: String,
    device: String,
    start: u32,
    end: u32,
    start_lat: f64,
    start_lon: f64,
    end_lat: f64,
    end_lon: f64,
    distance: f64,
    duration: u32,
    avg_vel: f64,
    max_vel: f64,
    points: u32,
}

#[derive(Row, Deserialize)]
struct ChStop {
    user: String,
    device: String,
    start: u32,
    end: u32,
    lat: f64,
    lon: f64,
    duration: u32,
    points: u32,
}
