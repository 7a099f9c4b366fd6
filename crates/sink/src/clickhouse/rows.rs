//! One RowBinary row type per table, borrowing from the records, and the
//! insert of a table's records.

use clickhouse::{Client, Row};
use otstream_model::Record;
use otstream_model::record::{Meta, Text};
pub use otstream_schema::Table;
use serde::Serialize;

/// A UNIX time as ClickHouse `DateTime` (UInt32 seconds), clamped to its
/// range; 0 stands for "not sent" in key columns.
fn dt(t: Option<i64>) -> u32 {
    t.map_or(0, |t| u32::try_from(t.max(0)).unwrap_or(u32::MAX))
}

fn s(t: &Option<Text>) -> Option<&str> {
    t.as_deref()
}

#[derive(Row, Serialize)]
struct PositionRow<'a> {
    user: &'a str,
    device: &'a str,
    tid: Option<&'a str>,
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
    t: Option<&'a str>,
    conn: Option<&'a str>,
    p: Option<f64>,
    m: Option<i32>,
    ssid: Option<&'a str>,
    bssid: Option<&'a str>,
    created_at: Option<u32>,
    inregions: &'a [Text],
    inrids: &'a [Text],
    topic: Option<&'a str>,
    transport: &'a str,
    received_at: i64,
    extra: &'a str,
    filtered: &'a str,
    place: &'a str,
    cc: &'a str,
    h3_5: u64,
    h3_7: u64,
    h3_9: u64,
}

#[derive(Row, Serialize)]
struct TransitionRow<'a> {
    user: &'a str,
    device: &'a str,
    tid: Option<&'a str>,
    tst: u32,
    wtst: u32,
    lat: f64,
    lon: f64,
    acc: Option<i32>,
    event: &'a str,
    desc: &'a str,
    rid: Option<&'a str>,
    t: Option<&'a str>,
    source: &'a str,
    topic: Option<&'a str>,
    transport: &'a str,
    received_at: i64,
    extra: &'a str,
}

#[derive(Row, Serialize)]
struct WaypointRow<'a> {
    user: &'a str,
    device: &'a str,
    tid: Option<&'a str>,
    tst: u32,
    lat: Option<f64>,
    lon: Option<f64>,
    rad: Option<i32>,
    desc: &'a str,
    rid: &'a str,
    uuid: Option<&'a str>,
    major: Option<i32>,
    minor: Option<i32>,
    topic: Option<&'a str>,
    transport: &'a str,
    received_at: i64,
    extra: &'a str,
}

#[derive(Row, Serialize)]
struct CardRow<'a> {
    user: &'a str,
    device: &'a str,
    tid: Option<&'a str>,
    name: Option<&'a str>,
    face: Option<&'a str>,
    topic: Option<&'a str>,
    transport: &'a str,
    received_at: i64,
    extra: &'a str,
}

#[derive(Row, Serialize)]
struct DeviceEventRow<'a> {
    user: &'a str,
    device: &'a str,
    tid: Option<&'a str>,
    event: &'a str,
    tst: u32,
    topic: Option<&'a str>,
    transport: &'a str,
    received_at: i64,
    extra: std::borrow::Cow<'a, str>,
}

#[derive(Row, Serialize)]
struct StepsRow<'a> {
    user: &'a str,
    device: &'a str,
    tid: Option<&'a str>,
    tst: u32,
    steps: Option<i64>,
    from: u32,
    to: u32,
    distance: Option<i64>,
    floorsup: Option<i64>,
    floorsdown: Option<i64>,
    topic: Option<&'a str>,
    transport: &'a str,
    received_at: i64,
    extra: &'a str,
}

#[derive(Row, Serialize)]
struct BeaconRow<'a> {
    user: &'a str,
    device: &'a str,
    tid: Option<&'a str>,
    tst: u32,
    uuid: &'a str,
    major: i32,
    minor: i32,
    acc: Option<i32>,
    rssi: Option<i32>,
    prox: Option<i32>,
    desc: Option<&'a str>,
    topic: Option<&'a str>,
    transport: &'a str,
    received_at: i64,
    extra: &'a str,
}

#[derive(Row, Serialize)]
struct ConfigurationRow<'a> {
    user: &'a str,
    device: &'a str,
    tid: Option<&'a str>,
    mode: Option<i32>,
    host: Option<&'a str>,
    port: Option<i32>,
    url: Option<&'a str>,
    username: Option<&'a str>,
    device_id: Option<&'a str>,
    waypoints: u32,
    config: &'a str,
    topic: Option<&'a str>,
    transport: &'a str,
    received_at: i64,
}

#[derive(Row, Serialize)]
struct DeadLetterRow<'a> {
    received_at: i64,
    transport: &'a str,
    topic: Option<&'a str>,
    user: &'a str,
    device: &'a str,
    remote_addr: Option<&'a str>,
    kind: &'a str,
    field: Option<&'a str>,
    message: &'a str,
    #[serde(with = "serde_bytes")]
    payload: &'a [u8],
}

#[derive(Row, Serialize)]
struct TripRow<'a> {
    user: &'a str,
    device: &'a str,
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
    received_at: i64,
    start_place: &'a str,
    start_cc: &'a str,
    end_place: &'a str,
    end_cc: &'a str,
}

#[derive(Row, Serialize)]
struct StopRow<'a> {
    user: &'a str,
    device: &'a str,
    start: u32,
    end: u32,
    lat: f64,
    lon: f64,
    duration: u32,
    points: u32,
    received_at: i64,
    place: &'a str,
    locality: &'a str,
    cc: &'a str,
    place_id: u32,
}

#[derive(Row, Serialize)]
struct EventRow<'a> {
    id: &'a str,
    kind: &'a str,
    user: &'a str,
    device: &'a str,
    tst: u32,
    lat: f64,
    lon: f64,
    fence: &'a str,
    body: String,
    received_at: i64,
}

#[derive(Row, Serialize)]
struct StateRow<'a> {
    kind: &'a str,
    user: &'a str,
    device: &'a str,
    state: &'a str,
    updated_at: i64,
}

/// The common columns.
struct M<'a> {
    user: &'a str,
    device: &'a str,
    tid: Option<&'a str>,
    topic: Option<&'a str>,
    transport: &'a str,
    received_at: i64,
}

fn m(meta: &Meta) -> M<'_> {
    M {
        user: &meta.user,
        device: &meta.device,
        tid: s(&meta.tid),
        topic: s(&meta.topic),
        transport: meta.transport.as_str(),
        received_at: meta.received_at,
    }
}

fn extra(e: &Option<String>) -> &str {
    e.as_deref().unwrap_or("")
}

/// Inserts `records` (all of `table`) in one INSERT.
pub async fn insert(
    client: &Client,
    table: Table,
    records: &[&Record],
) -> clickhouse::error::Result<()> {
    // The conversion is evaluated inline per record (`continue` skips a
    // record of another table), so rows borrow straight from the records.
    macro_rules! write_all {
        ($row:ident, |$r:ident| $conv:expr) => {{
            let mut ins = client.insert::<$row<'_>>(table.name()).await?;
            for $r in records.iter().copied() {
                let row: $row<'_> = $conv;
                ins.write(&row).await?;
            }
            ins.end().await
        }};
    }
    match table {
        Table::Positions => write_all!(PositionRow, |r| match r {
            Record::Position(p) => {
                let c = m(&p.meta);
                let [h3_5, h3_7, h3_9] =
                    otstream_schema::h3::cells(p.lat, p.lon).unwrap_or_default();
                PositionRow {
                    user: c.user,
                    device: c.device,
                    tid: c.tid,
                    tst: dt(Some(p.tst)),
                    lat: p.lat,
                    lon: p.lon,
                    acc: p.acc,
                    alt: p.alt,
                    vac: p.vac,
                    vel: p.vel,
                    cog: p.cog,
                    batt: p.batt,
                    bs: p.bs,
                    t: s(&p.t),
                    conn: s(&p.conn),
                    p: p.p,
                    m: p.m,
                    ssid: s(&p.ssid),
                    bssid: s(&p.bssid),
                    created_at: p.created_at.map(|t| dt(Some(t))),
                    inregions: &p.inregions,
                    inrids: &p.inrids,
                    topic: c.topic,
                    transport: c.transport,
                    received_at: c.received_at,
                    extra: extra(&p.extra),
                    filtered: p.filtered.as_deref().unwrap_or_default(),
                    place: p.place.as_deref().unwrap_or_default(),
                    cc: p.cc.as_deref().unwrap_or_default(),
                    h3_5,
                    h3_7,
                    h3_9,
                }
            }
            _ => continue,
        }),
        Table::Transitions => write_all!(TransitionRow, |r| match r {
            Record::Transition(t) => {
                let c = m(&t.meta);
                TransitionRow {
                    user: c.user,
                    device: c.device,
                    tid: c.tid,
                    tst: dt(Some(t.tst)),
                    wtst: dt(t.wtst),
                    lat: t.lat,
                    lon: t.lon,
                    acc: t.acc,
                    event: &t.event,
                    desc: t.desc.as_deref().unwrap_or(""),
                    rid: s(&t.rid),
                    t: s(&t.t),
                    source: &t.source,
                    topic: c.topic,
                    transport: c.transport,
                    received_at: c.received_at,
                    extra: extra(&t.extra),
                }
            }
            _ => continue,
        }),
        Table::Waypoints => write_all!(WaypointRow, |r| match r {
            Record::Waypoint(w) => {
                let c = m(&w.meta);
                WaypointRow {
                    user: c.user,
                    device: c.device,
                    tid: c.tid,
                    tst: dt(w.tst),
                    lat: w.lat,
                    lon: w.lon,
                    rad: w.rad,
                    desc: w.desc.as_deref().unwrap_or(""),
                    rid: w.rid.as_deref().unwrap_or(""),
                    uuid: s(&w.uuid),
                    major: w.major,
                    minor: w.minor,
                    topic: c.topic,
                    transport: c.transport,
                    received_at: c.received_at,
                    extra: extra(&w.extra),
                }
            }
            _ => continue,
        }),
        Table::Cards => write_all!(CardRow, |r| match r {
            Record::Card(k) => {
                let c = m(&k.meta);
                CardRow {
                    user: c.user,
                    device: c.device,
                    tid: c.tid,
                    name: s(&k.name),
                    face: k.face.as_deref(),
                    topic: c.topic,
                    transport: c.transport,
                    received_at: c.received_at,
                    extra: extra(&k.extra),
                }
            }
            _ => continue,
        }),
        Table::DeviceEvents => write_all!(DeviceEventRow, |r| {
            let (meta, event, tst, body): (&Meta, &str, Option<i64>, std::borrow::Cow<'_, str>) =
                match r {
                    Record::DeviceEvent(e) => (&e.meta, &e.event, e.tst, extra(&e.extra).into()),
                    Record::Command(k) => (
                        &k.meta,
                        "cmd",
                        k.tst,
                        crate::store::command_extra(&k.action, k.extra.as_deref()).into(),
                    ),
                    Record::Unknown(u) => (&u.meta, &u.kind, u.tst, extra(&u.extra).into()),
                    _ => continue,
                };
            let c = m(meta);
            DeviceEventRow {
                user: c.user,
                device: c.device,
                tid: c.tid,
                event,
                tst: dt(tst),
                topic: c.topic,
                transport: c.transport,
                received_at: c.received_at,
                extra: body,
            }
        }),
        Table::Steps => write_all!(StepsRow, |r| match r {
            Record::Steps(x) => {
                let c = m(&x.meta);
                StepsRow {
                    user: c.user,
                    device: c.device,
                    tid: c.tid,
                    tst: dt(x.tst),
                    steps: x.steps,
                    from: dt(x.from),
                    to: dt(x.to),
                    distance: x.distance,
                    floorsup: x.floorsup,
                    floorsdown: x.floorsdown,
                    topic: c.topic,
                    transport: c.transport,
                    received_at: c.received_at,
                    extra: extra(&x.extra),
                }
            }
            _ => continue,
        }),
        Table::Beacons => write_all!(BeaconRow, |r| match r {
            Record::Beacon(b) => {
                let c = m(&b.meta);
                BeaconRow {
                    user: c.user,
                    device: c.device,
                    tid: c.tid,
                    tst: dt(b.tst),
                    uuid: b.uuid.as_deref().unwrap_or(""),
                    major: b.major.unwrap_or(-1),
                    minor: b.minor.unwrap_or(-1),
                    acc: b.acc,
                    rssi: b.rssi,
                    prox: b.prox,
                    desc: s(&b.desc),
                    topic: c.topic,
                    transport: c.transport,
                    received_at: c.received_at,
                    extra: extra(&b.extra),
                }
            }
            _ => continue,
        }),
        Table::Configurations => write_all!(ConfigurationRow, |r| match r {
            Record::Configuration(k) => {
                let c = m(&k.meta);
                ConfigurationRow {
                    user: c.user,
                    device: c.device,
                    tid: c.tid,
                    mode: k.mode,
                    host: s(&k.host),
                    port: k.port,
                    url: s(&k.url),
                    username: s(&k.username),
                    device_id: s(&k.device_id),
                    waypoints: k.waypoints,
                    config: &k.config,
                    topic: c.topic,
                    transport: c.transport,
                    received_at: c.received_at,
                }
            }
            _ => continue,
        }),
        Table::DeadLetters => write_all!(DeadLetterRow, |r| match r {
            Record::DeadLetter(d) => DeadLetterRow {
                user: &d.user,
                device: &d.device,
                received_at: d.received_at,
                transport: d.transport.as_str(),
                topic: s(&d.topic),
                remote_addr: s(&d.remote_addr),
                kind: &d.kind,
                field: s(&d.field),
                message: &d.message,
                payload: &d.payload,
            },
            _ => continue,
        }),
        Table::Trips => write_all!(TripRow, |r| match r {
            Record::Trip(t) => TripRow {
                user: &t.meta.user,
                device: &t.meta.device,
                start: dt(Some(t.start)),
                end: dt(Some(t.end)),
                start_lat: t.start_lat,
                start_lon: t.start_lon,
                end_lat: t.end_lat,
                end_lon: t.end_lon,
                distance: t.distance,
                duration: dt(Some(t.duration)),
                avg_vel: t.avg_vel,
                max_vel: t.max_vel,
                points: t.points,
                received_at: t.meta.received_at,
                start_place: t.start_place.as_deref().unwrap_or_default(),
                start_cc: t.start_cc.as_deref().unwrap_or_default(),
                end_place: t.end_place.as_deref().unwrap_or_default(),
                end_cc: t.end_cc.as_deref().unwrap_or_default(),
            },
            _ => continue,
        }),
        Table::Stops => write_all!(StopRow, |r| match r {
            Record::Stop(t) => StopRow {
                user: &t.meta.user,
                device: &t.meta.device,
                start: dt(Some(t.start)),
                end: dt(Some(t.end)),
                lat: t.lat,
                lon: t.lon,
                duration: dt(Some(t.duration)),
                points: t.points,
                received_at: t.meta.received_at,
                place: t.place.as_deref().unwrap_or_default(),
                locality: t.locality.as_deref().unwrap_or_default(),
                cc: t.cc.as_deref().unwrap_or_default(),
                place_id: dt(t.place_id),
            },
            _ => continue,
        }),
        Table::Events => write_all!(EventRow, |r| match r {
            Record::Event(e) => EventRow {
                id: &e.id,
                kind: e.kind.as_str(),
                user: &e.meta.user,
                device: &e.meta.device,
                tst: dt(Some(e.tst)),
                lat: e.lat,
                lon: e.lon,
                fence: e.fence.as_deref().unwrap_or_default(),
                body: e.to_json(),
                received_at: e.meta.received_at,
            },
            _ => continue,
        }),
        Table::DeviceState => write_all!(StateRow, |r| match r {
            Record::State(st) => StateRow {
                kind: &st.kind,
                user: &st.user,
                device: &st.device,
                state: &st.state,
                updated_at: st.updated_at,
            },
            _ => continue,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row type names the schema's columns, in its order: a field
    /// added here alone, or a column added to the schema alone, fails.
    #[test]
    fn each_row_type_writes_the_columns_of_its_table() {
        let rows: [(Table, &[&str]); 13] = [
            (Table::Positions, PositionRow::COLUMN_NAMES),
            (Table::Transitions, TransitionRow::COLUMN_NAMES),
            (Table::Waypoints, WaypointRow::COLUMN_NAMES),
            (Table::Cards, CardRow::COLUMN_NAMES),
            (Table::DeviceEvents, DeviceEventRow::COLUMN_NAMES),
            (Table::Steps, StepsRow::COLUMN_NAMES),
            (Table::Beacons, BeaconRow::COLUMN_NAMES),
            (Table::Configurations, ConfigurationRow::COLUMN_NAMES),
            (Table::DeadLetters, DeadLetterRow::COLUMN_NAMES),
            (Table::Trips, TripRow::COLUMN_NAMES),
            (Table::Stops, StopRow::COLUMN_NAMES),
            (Table::Events, EventRow::COLUMN_NAMES),
            (Table::DeviceState, StateRow::COLUMN_NAMES),
        ];
        for (table, names) in rows {
            assert_eq!(names, table.columns(), "{}", table.name());
        }
    }
}
