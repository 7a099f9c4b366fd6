//! Statistics of one device over a year (`/api/v1/stats?per=month`): its
//! 2,190 trips, 2,190 stops (visits of three places) and 730 days present,
//! among those of 100 other devices with as many, from the embedded store
//! and, when `OTSTREAM_BENCH_CLICKHOUSE_URL` names a server, from
//! ClickHouse. The rollups are read, never the positions (none stored).
//!
//! Run: `cargo bench -p otstream-benches --bench stats`

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use otstream_api::read::stats::Period;
use otstream_api::read::{Query, Reader};
use otstream_schema::clickhouse::ClickHouseConfig;

/// 2026-01-01T00:00:00Z.
const YEAR: i64 = 1_767_225_600;
const DEVICES: i64 = 101;
const DAYS: i64 = 365;
/// Trips (and stops after them) a day: two hours apart from 08:00.
const TRIPS: i64 = 6;

/// Trip `j` of day `k`: start, end; the stop after it: start, end, place.
fn day(k: i64, j: i64) -> (i64, i64, i64, i64, i64) {
    let start = YEAR + k * 86_400 + 8 * 3600 + j * 7200;
    let place = YEAR + 8 * 3600 + 1800 + (j % 3) * 7200;
    (start, start + 1800, start + 1800, start + 5400, place)
}

fn sqlite_store(dir: &std::path::Path) {
    let _ = otstream_sink::Store::open(dir).expect("store");
    let mut conn = rusqlite::Connection::open(dir.join(otstream_schema::DB_FILE)).expect("open");
    let tx = conn.transaction().expect("tx");
    {
        let mut trip = tx
            .prepare("INSERT INTO trips (user, device, start, \"end\", start_lat, start_lon, end_lat, end_lon, distance, duration, avg_vel, max_vel, points, received_at) VALUES ('fleet', ?1, ?2, ?3, 48.85, 2.35, 48.86, 2.36, ?4, 1800, 20.0, ?5, 30, 0)")
            .expect("trips");
        let mut stop = tx
            .prepare("INSERT INTO stops (user, device, start, \"end\", lat, lon, duration, points, received_at, place_id) VALUES ('fleet', ?1, ?2, ?3, 48.86, 2.36, 3600, 60, 0, ?4)")
            .expect("stops");
        let mut present = tx
            .prepare("INSERT INTO presence (user, device, day, cc, place) VALUES ('fleet', ?1, ?2, 'FR', ?3)")
            .expect("presence");
        for d in 0..DEVICES {
            let device = format!("van{d:04}");
            for k in 0..DAYS {
                for j in 0..TRIPS {
                    let (start, end, s_start, s_end, place) = day(k, j);
                    trip.execute(rusqlite::params![device, start, end, 10_000 + j, 40 + j])
                        .expect("trip");
                    stop.execute(rusqlite::params![device, s_start, s_end, place])
                        .expect("stop");
                }
                for city in ["Paris, Ile-de-France", "Lyon, Rhone-Alpes"] {
                    present
                        .execute(rusqlite::params![device, YEAR / 86_400 + k, city])
                        .expect("present");
                }
            }
        }
    }
    tx.commit().expect("commit");
    conn.execute_batch("ANALYZE").expect("analyze");
}

async fn clickhouse_store(config: &ClickHouseConfig) {
    otstream_sink::clickhouse::migrate(config)
        .await
        .expect("migrate");
    let client = config.client();
    let rows = DEVICES * DAYS * TRIPS;
    // The same rows as SQLite's, from numbers(): n = (d * DAYS + k) * TRIPS + j.
    let parts = format!(
        "intDiv(number, {per_device}) AS d, intDiv(number % {per_device}, {TRIPS}) AS k, number % {TRIPS} AS j, \
         {YEAR} + k * 86400 + 8 * 3600 + j * 7200 AS s, {YEAR} + 8 * 3600 + 1800 + (j % 3) * 7200 AS p",
        per_device = DAYS * TRIPS
    );
    // 18.16 has no leftPad: van0042 from 10042.
    let device = "concat('van', substring(toString(10000 + d), 2))";
    for sql in [
        format!(
            "INSERT INTO trips (user, device, start, end, start_lat, start_lon, end_lat, end_lon, distance, duration, avg_vel, max_vel, points, received_at) \
                 SELECT 'fleet', {device}, toDateTime(s), toDateTime(s + 1800), 48.85, 2.35, 48.86, 2.36, 10000 + j, 1800, 20.0, 40 + j, 30, 0 FROM (SELECT {parts} FROM numbers({rows}))"
        ),
        format!(
            "INSERT INTO stops (user, device, start, end, lat, lon, duration, points, received_at, place_id) \
                 SELECT 'fleet', {device}, toDateTime(s + 1800), toDateTime(s + 5400), 48.86, 2.36, 3600, 60, 0, p FROM (SELECT {parts} FROM numbers({rows}))"
        ),
        format!(
            "INSERT INTO presence (user, device, day, cc, place) \
                 SELECT 'fleet', concat('van', substring(toString(10000 + intDiv(number, {days2})), 2)), {yday} + intDiv(number % {days2}, 2), 'FR', \
                 if(number % 2 = 0, 'Paris, Ile-de-France', 'Lyon, Rhone-Alpes') FROM numbers({presence})",
            days2 = DAYS * 2,
            yday = YEAR / 86_400,
            presence = DEVICES * DAYS * 2
        ),
        "OPTIMIZE TABLE trips FINAL".to_owned(),
        "OPTIMIZE TABLE stops FINAL".to_owned(),
        "OPTIMIZE TABLE presence FINAL".to_owned(),
    ] {
        client
            .query(&sql)
            .execute()
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

fn stats(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let temp = tempfile::tempdir().expect("temp dir");
    sqlite_store(temp.path());
    let mut readers = vec![(
        "sqlite",
        Reader::Sqlite(otstream_api::read::sqlite::SqliteReader::in_data_dir(
            temp.path(),
        )),
    )];
    if let Ok(url) = std::env::var("OTSTREAM_BENCH_CLICKHOUSE_URL") {
        let mut config = ClickHouseConfig::new(url);
        config.database = format!("bench_stats_{}", std::process::id());
        rt.block_on(clickhouse_store(&config));
        readers.push((
            "clickhouse",
            Reader::ClickHouse(otstream_api::read::clickhouse::ClickHouseReader::new(
                &config,
            )),
        ));
    }
    let q = Query {
        user: Some("fleet".into()),
        device: Some("van0042".into()),
        ..Query::window(YEAR, YEAR + DAYS * 86_400 - 1)
    };
    let mut group = c.benchmark_group("stats");
    group.sample_size(20);
    for (name, reader) in &readers {
        // The answer is the year's: checked before it is timed.
        let months = rt
            .block_on(reader.stats(&q, Period::Month, false, true))
            .expect("stats");
        assert_eq!(months.len(), 12, "{name}");
        let trips: u32 = months.iter().map(|m| m.trips).sum();
        let stops: u32 = months.iter().map(|m| m.stops).sum();
        assert_eq!((trips, stops), (2190, 2190), "{name}");
        assert_eq!(months[0].cities.len(), 2, "{name}");
        assert_eq!(months[0].places.len(), 3, "{name}");
        group.bench_with_input(
            BenchmarkId::new("device_year_by_month", name),
            reader,
            |b, r| {
                b.iter(|| {
                    rt.block_on(r.stats(&q, Period::Month, false, true))
                        .expect("stats")
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, stats);
criterion_main!(benches);
