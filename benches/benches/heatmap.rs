//! The heatmap over ten million positions (1,000 phones, 10,000 fixes
//! each over a week, about a city): `/api/v1/heatmap`'s read, fleet-wide,
//! the whole week, at resolutions 5, 7 and 9, from the embedded store and,
//! when `OTSTREAM_BENCH_CLICKHOUSE_URL` names a server, from ClickHouse.
//! Building the stores takes a minute or two before the first sample.
//!
//! Run: `cargo bench -p otstream-benches --bench heatmap`
//! (`OTSTREAM_BENCH_POSITIONS=N` for another size).

use std::time::Instant;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use otstream_api::read::{Query, Reader};
use otstream_schema::clickhouse::ClickHouseConfig;
use otstream_schema::h3;

const WEEK_START: i64 = 1_796_000_000;

fn positions() -> usize {
    std::env::var("OTSTREAM_BENCH_POSITIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000_000)
}

/// The `i`-th fix: phone `i % 1000`, its `i / 1000`-th fix, on a random
/// walk from its own start about Berlin (a fixed LCG: every run the same).
struct Fleet {
    at: Vec<(f64, f64)>,
    seed: u64,
}

impl Fleet {
    fn new() -> Self {
        let at = (0..1000)
            .map(|d| {
                (
                    52.40 + (d % 40) as f64 * 0.005,
                    13.20 + (d / 40) as f64 * 0.01,
                )
            })
            .collect();
        Fleet { at, seed: 7 }
    }

    fn noise(&mut self) -> f64 {
        self.seed = self
            .seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.seed >> 33) as f64 / f64::from(1u32 << 31)) - 0.5
    }

    /// `(device, tst, lat, lon)` of fix `i`.
    fn fix(&mut self, i: usize) -> (usize, i64, f64, f64) {
        let d = i % 1000;
        let (dlat, dlon) = (self.noise() * 4e-4, self.noise() * 6e-4);
        let p = &mut self.at[d];
        p.0 += dlat;
        p.1 += dlon;
        let tst = WEEK_START + (i / 1000) as i64 * 60;
        (d, tst, p.0, p.1)
    }
}

fn sqlite_store(dir: &std::path::Path, n: usize) {
    let _ = otstream_sink::Store::open(dir).expect("store");
    let mut conn = rusqlite::Connection::open(dir.join(otstream_schema::DB_FILE)).expect("open");
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = OFF;")
        .expect("pragmas");
    let tx = conn.transaction().expect("tx");
    {
        let mut stmt = tx
            .prepare(
                "INSERT INTO positions (user, device, tst, lat, lon, transport, received_at, h3_5, h3_7, h3_9)
                 VALUES ('fleet', ?1, ?2, ?3, ?4, 'http', ?5, ?6, ?7, ?8)",
            )
            .expect("insert");
        let mut fleet = Fleet::new();
        for i in 0..n {
            let (d, tst, lat, lon) = fleet.fix(i);
            let c = h3::cells(lat, lon).expect("cells").map(|x| x as i64);
            stmt.execute(rusqlite::params![
                format!("van{d:04}"),
                tst,
                lat,
                lon,
                tst * 1000,
                c[0],
                c[1],
                c[2]
            ])
            .expect("row");
        }
    }
    tx.commit().expect("commit");
    conn.execute_batch("ANALYZE").expect("analyze");
}

#[derive(clickhouse::Row, serde::Serialize)]
struct Row {
    user: &'static str,
    device: String,
    tst: u32,
    lat: f64,
    lon: f64,
    transport: &'static str,
    received_at: i64,
    h3_5: u64,
    h3_7: u64,
    h3_9: u64,
}

async fn clickhouse_store(config: &ClickHouseConfig, n: usize) {
    otstream_sink::clickhouse::migrate(config)
        .await
        .expect("migrate");
    let client = config.client();
    let mut insert = client.insert::<Row>("positions").await.expect("insert");
    let mut fleet = Fleet::new();
    for i in 0..n {
        let (d, tst, lat, lon) = fleet.fix(i);
        let [h3_5, h3_7, h3_9] = h3::cells(lat, lon).expect("cells");
        insert
            .write(&Row {
                user: "fleet",
                device: format!("van{d:04}"),
                tst: tst as u32,
                lat,
                lon,
                transport: "http",
                received_at: tst * 1000,
                h3_5,
                h3_7,
                h3_9,
            })
            .await
            .expect("row");
    }
    insert.end().await.expect("end");
    // The bench reads merged parts, as a store that has settled.
    client
        .query("OPTIMIZE TABLE positions FINAL")
        .execute()
        .await
        .expect("optimize");
}

fn heatmap(c: &mut Criterion) {
    let n = positions();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut readers = Vec::new();
    // OTSTREAM_BENCH_DIR keeps the store for the next run (and for a look
    // with the sqlite3 shell).
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = std::env::var_os("OTSTREAM_BENCH_DIR")
        .map_or_else(|| temp.path().to_owned(), std::path::PathBuf::from);
    if !dir.join(otstream_schema::DB_FILE).exists() {
        std::fs::create_dir_all(&dir).expect("bench dir");
        let started = Instant::now();
        sqlite_store(&dir, n);
        eprintln!(
            "heatmap: {n} positions into SQLite in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    readers.push((
        "sqlite",
        Reader::Sqlite(otstream_api::read::sqlite::SqliteReader::in_data_dir(&dir)),
    ));
    if let Ok(url) = std::env::var("OTSTREAM_BENCH_CLICKHOUSE_URL") {
        let mut config = ClickHouseConfig::new(url);
        config.database = format!("bench_heatmap_{}", std::process::id());
        let started = Instant::now();
        rt.block_on(clickhouse_store(&config, n));
        eprintln!(
            "heatmap: {n} positions into ClickHouse in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        readers.push((
            "clickhouse",
            Reader::ClickHouse(otstream_api::read::clickhouse::ClickHouseReader::new(
                &config,
            )),
        ));
    }
    let q = Query::window(WEEK_START, WEEK_START + 7 * 86_400);
    let mut group = c.benchmark_group("heatmap");
    group.sample_size(10);
    for (name, reader) in &readers {
        for res in h3::RESOLUTIONS {
            let cells = rt
                .block_on(reader.heatmap(&q, res, 1_000_000))
                .expect("heatmap")
                .expect("a stored resolution");
            let counted: u64 = cells.iter().map(|(_, n)| n).sum();
            assert_eq!(
                counted, n as u64,
                "{name} res {res}: every position counted once"
            );
            eprintln!("heatmap: {name} res {res}: {} cells", cells.len());
            group.bench_function(BenchmarkId::new(*name, format!("{n}/res{res}")), |b| {
                b.iter(|| {
                    rt.block_on(reader.heatmap(&q, res, 1_000_000))
                        .expect("heatmap")
                })
            });
        }
    }
    group.finish();
}

/// What the sink pays per position written: its three cells.
fn cells(c: &mut Criterion) {
    let mut fleet = Fleet::new();
    let fixes: Vec<(f64, f64)> = (0..10_000)
        .map(|i| {
            let (_, _, lat, lon) = fleet.fix(i);
            (lat, lon)
        })
        .collect();
    let mut group = c.benchmark_group("heatmap/cells");
    group.throughput(criterion::Throughput::Elements(fixes.len() as u64));
    group.bench_function("three_resolutions", |b| {
        b.iter(|| {
            fixes
                .iter()
                .map(|(lat, lon)| h3::cells(*lat, *lon).map_or(0, |c| c[2]))
                .fold(0u64, u64::wrapping_add)
        })
    });
    group.finish();
}

criterion_group!(benches, cells, heatmap);
criterion_main!(benches);
