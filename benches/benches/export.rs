//! The read side's CPU work, per row: encoding positions (GeoJSON, CSV,
//! JSON) against a same-run baseline, serde_json serializing the same rows
//! from a derived `Serialize` struct as a GeoJSON Feature (what a
//! straightforward implementation does); and reading them back from the
//! embedded store through the SQLite reader.
//!
//! Parquet against CSV on a million positions of a simulated fleet (100
//! phones, a fix every 10 s, GPS noise in the last digits): time, and
//! the two files' sizes (printed).
//!
//! Run: `cargo bench -p otstream-benches --bench export`

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use otstream_api::read::Position;
use otstream_api::read::format::parquet::ParquetEncoder;
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

/// A million fixes of 100 phones walking and driving about a city, by
/// device and time as an export reads them; the noise comes from a fixed
/// linear congruential sequence, so every run encodes the same rows.
fn fleet_rows() -> Vec<Position> {
    const PHONES: usize = 100;
    const EACH: usize = 10_000;
    let mut seed: u64 = 0x5eed;
    let mut noise = move || {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((seed >> 33) as f64 / f64::from(1u32 << 31)) - 0.5
    };
    let mut rows = Vec::with_capacity(PHONES * EACH);
    for d in 0..PHONES {
        let (mut lat, mut lon) = (52.45 + d as f64 * 0.002, 13.30 + d as f64 * 0.003);
        let (mut dlat, mut dlon) = (0.0, 0.0);
        for i in 0..EACH {
            if i % 60 == 0 {
                // A new leg every ten minutes: parked or on the move.
                (dlat, dlon) = (noise() * 2e-3, noise() * 3e-3);
            }
            lat += dlat + noise() * 2e-5;
            lon += dlon + noise() * 3e-5;
            let tst = 1_796_000_000 + 10 * i as i64;
            rows.push(Position {
                user: "fleet".into(),
                device: format!("van{d:03}").into(),
                tid: Some("vn".into()),
                tst,
                lat: (lat * 1e7).round() / 1e7,
                lon: (lon * 1e7).round() / 1e7,
                acc: Some(5 + (noise().abs() * 20.0) as i32),
                alt: Some(35 + (noise() * 10.0) as i32),
                vel: Some(((dlat.abs() + dlon.abs()) * 4e4) as i32),
                cog: Some(((noise() + 0.5) * 359.0) as i32),
                batt: Some(100 - (i / 100) as i32 % 100),
                bs: Some(1),
                t: Some("p".into()),
                conn: Some(if i % 7 == 0 { "w" } else { "m" }.into()),
                received_at: tst * 1000 + 200 + (noise().abs() * 800.0) as i64,
                ..Position::default()
            });
        }
    }
    rows
}

fn encoded<E: Encoder<Position>>(mut e: E, rows: &[Position], out: &mut Vec<u8>) {
    out.clear();
    e.begin(out);
    for r in rows {
        e.row(r, out);
    }
    e.end(out);
}

fn parquet(c: &mut Criterion) {
    let rows = fleet_rows();
    let n = rows.len();
    let mut out = Vec::with_capacity(150 * n);
    encoded(
        PositionEncoder::new(Format::Csv, Shape::Otstream, None),
        &rows,
        &mut out,
    );
    let csv = out.len();
    encoded(ParquetEncoder::<Position>::new(), &rows, &mut out);
    let parquet = out.len();
    eprintln!(
        "export/parquet: {n} positions: CSV {csv} bytes, Parquet {parquet} bytes ({:.1}x smaller)",
        csv as f64 / parquet as f64
    );
    let mut group = c.benchmark_group("export/fleet");
    group.throughput(Throughput::Elements(n as u64));
    group.sample_size(10);
    group.bench_function(BenchmarkId::new("csv", n), |b| {
        b.iter(|| {
            encoded(
                PositionEncoder::new(Format::Csv, Shape::Otstream, None),
                black_box(&rows),
                &mut out,
            )
        })
    });
    group.bench_function(BenchmarkId::new("parquet", n), |b| {
        b.iter(|| {
            encoded(
                ParquetEncoder::<Position>::new(),
                black_box(&rows),
                &mut out,
            )
        })
    });
    group.finish();
}

criterion_group!(benches, encode, read_sqlite, parquet);
criterion_main!(benches);
