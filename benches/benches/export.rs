//! The read side's CPU work, per row: encoding positions (GeoJSON, CSV,
//! JSON) against a same-run baseline, serde_json serializing the same rows
//! from a derived `Serialize` struct as a GeoJSON Feature (what a
//! straightforward implementation does); and reading them back from the
//! embedded store through the SQLite reader.
//!
//! Run: `cargo bench -p otstream-benches --bench export`

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use otstream_api::read::Position;
use otstream_api::read::format::{Encoder, Format, PositionEncoder, Shape};
use serde::Serialize;

const ROWS: usize = 100_000;

fn rows() -> Vec<Position> {
    (0..ROWS)
        .map(|i| Position {
            user: "bench".into(),
            device: "phone".into(),
            tid: Some("bp".into()),
            tst: 1_700_000_000 + 10 * i as i64,
            lat: 48.85 + (i % 1000) as f64 * 1e-5,
            lon: 2.35 + (i / 1000) as f64 * 1e-5,
            acc: Some(10),
            alt: Some(35),
            vel: Some(40),
            cog: Some(90),
            batt: Some(80 - (i % 50) as i32),
            bs: Some(1),
            conn: Some("m".into()),
            received_at: (1_700_000_000 + 10 * i as i64) * 1000 + 123,
            ..Position::default()
        })
        .collect()
}

#[derive(Serialize)]
struct Props<'a> {
    user: &'a str,
    device: &'a str,
    tid: Option<&'a str>,
    tst: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    acc: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    alt: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vel: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cog: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    batt: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bs: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    conn: Option<&'a str>,
    received_at: i64,
}

#[derive(Serialize)]
struct Geometry {
    r#type: &'static str,
    coordinates: [f64; 2],
}

#[derive(Serialize)]
struct Feature<'a> {
    r#type: &'static str,
    geometry: Geometry,
    properties: Props<'a>,
}

fn serde_baseline(rows: &[Position], out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"type\":\"FeatureCollection\",\"features\":[");
    for (i, p) in rows.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let f = Feature {
            r#type: "Feature",
            geometry: Geometry {
                r#type: "Point",
                coordinates: [p.lon, p.lat],
            },
            properties: Props {
                user: &p.user,
                device: &p.device,
                tid: p.tid.as_deref(),
                tst: p.tst,
                acc: p.acc,
                alt: p.alt,
                vel: p.vel,
                cog: p.cog,
                batt: p.batt,
                bs: p.bs,
                conn: p.conn.as_deref(),
                received_at: p.received_at,
            },
        };
        let _ = serde_json::to_writer(&mut *out, &f);
    }
    out.extend_from_slice(b"]}");
}

fn encode(c: &mut Criterion) {
    let rows = rows();
    let mut group = c.benchmark_group("export/encode");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.sample_size(20);
    let mut out = Vec::with_capacity(300 * ROWS);
    group.bench_function(BenchmarkId::new("serde_json_geojson_baseline", ROWS), |b| {
        b.iter(|| {
            out.clear();
            serde_baseline(black_box(&rows), &mut out);
        })
    });
    for (name, format) in [
        ("geojson", Format::GeoJson),
        ("csv", Format::Csv),
        ("json", Format::Json),
    ] {
        group.bench_function(BenchmarkId::new(name, ROWS), |b| {
            b.iter(|| {
                out.clear();
                let mut e = PositionEncoder::new(format, Shape::Otstream, None);
                e.begin(&mut out);
                for r in black_box(&rows) {
                    e.row(r, &mut out);
                }
                e.end(&mut out);
            })
        });
    }
    group.finish();
}

fn read_sqlite(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        // The store's own schema, then rows as the sink writes them.
        let _ = otstream_sink::Store::open(dir.path()).expect("store");
        let conn = rusqlite::Connection::open(dir.path().join("otstream.db")).expect("open");
        conn.execute_batch(&format!(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {ROWS} - 1)
             INSERT INTO positions (user, device, tid, tst, lat, lon, acc, alt, vel, cog, batt, bs, conn, transport, received_at)
             SELECT 'bench', 'phone', 'bp', 1700000000 + i * 10, 48.85 + (i % 1000) * 0.00001, 2.35 + (i / 1000) * 0.00001,
                    10, 35, 40, 90, 80 - i % 50, 1, 'm', 'http', (1700000000 + i * 10) * 1000 + 123 FROM n"
        ))
        .expect("rows");
    }
    let reader = otstream_api::read::sqlite::SqliteReader::in_data_dir(dir.path());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut q = otstream_api::read::Query::window(0, i64::MAX / 2);
    q.user = Some("bench".into());
    q.device = Some("phone".into());
    let mut group = c.benchmark_group("export/read");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.sample_size(20);
    group.bench_function(BenchmarkId::new("sqlite_positions", ROWS), |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut s = reader.positions(&q).await.expect("read");
                let mut n = 0;
                while let Some(chunk) = s.recv().await {
                    n += chunk.expect("chunk").len();
                }
                assert_eq!(n, ROWS);
            })
        })
    });
    group.finish();
}

criterion_group!(benches, encode, read_sqlite);
criterion_main!(benches);
