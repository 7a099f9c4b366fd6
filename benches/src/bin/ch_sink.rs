//! ClickHouse sink throughput: position rows per second written by the
//! sink's insert path (RowBinary, LZ4) in batches of 1k, 10k and 100k rows,
//! next to a baseline measured in the same run: the server generating the
//! same number of equivalent rows itself (`INSERT ... SELECT FROM numbers`),
//! the most it can store with no client at all.
//!
//! Used by benches/clickhouse_sink.sh, which starts a private server, and
//! benches/clickhouse_cluster_sink.sh, which starts that and a cluster of
//! two shards of two replicas (`--cluster`: through the Distributed
//! tables, each insert acknowledged once every shard has it).

use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use otstream_model::record::{Meta, Position};
use otstream_model::{Record, Text, Transport};
use otstream_sink::clickhouse::{ClickHouseConfig, Table, migrate, rows};

#[derive(Parser)]
struct Args {
    /// ClickHouse HTTP interface.
    #[arg(long)]
    url: String,
    /// Rows per batch size measured.
    #[arg(long, default_value_t = 1_000_000)]
    rows: usize,
    /// Write through the Distributed tables of this cluster (`--url` is
    /// one of its servers), as the sink does with `clickhouse.cluster`.
    #[arg(long)]
    cluster: Option<String>,
}

fn position(i: usize) -> Record {
    let device = i % 1000;
    let meta = Meta {
        user: Text::const_new("fleet"),
        device: Text::from(format!("d{device}")),
        tid: Some(Text::const_new("ab")),
        received_at: 1_700_000_000_000 + i as i64,
        transport: Transport::Http,
        topic: None,
    };
    let tst = 1_700_000_000 + (i / 1000) as i64;
    let (lat, lon) = (
        52.5 + (i % 997) as f64 * 1e-4,
        13.4 + (i % 991) as f64 * 1e-4,
    );
    Record::Position(Position {
        acc: Some(10),
        alt: Some(36),
        vac: Some(4),
        vel: Some(30),
        cog: Some(90),
        batt: Some(80),
        bs: Some(1),
        t: Some(Text::const_new("p")),
        conn: Some(Text::const_new("w")),
        p: Some(100.266),
        m: Some(1),
        ..Position::at(meta, tst, lat, lon)
    })
}

async fn query(client: &::clickhouse::Client, sql: &str) -> Result<()> {
    client
        .query(sql)
        .execute()
        .await
        .with_context(|| sql.to_owned())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mut config = ClickHouseConfig::new(&args.url);
    config.database = "bench".into();
    config.cluster = args.cluster.clone();
    migrate(&config).await?;
    let client = config.client();
    // Each run writes rows of its own (later fixes of the same devices):
    // nothing is truncated between runs (18.16's TRUNCATE ON CLUSTER of a
    // replicated table can wait on itself for the DDL timeout), and no
    // block repeats one a replicated table would drop as a duplicate.
    let mut runs = 0usize;
    let mut batches = |rows: usize| {
        runs += 1;
        (0..rows)
            .map(|i| position(i + runs * rows))
            .collect::<Vec<Record>>()
    };
    println!(
        "into {}",
        args.cluster
            .as_deref()
            .map_or("one server".to_owned(), |c| format!("cluster {c}"))
    );
    println!("rows per run: {}", args.rows);
    for batch in [1_000usize, 10_000, 100_000] {
        let records = batches(args.rows);
        let refs: Vec<&Record> = records.iter().collect();
        let started = Instant::now();
        for chunk in refs.chunks(batch) {
            rows::insert(&client, Table::Positions, chunk).await?;
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "sink insert, batches of {batch:>6}: {:>9.0} rows/s ({secs:.2} s)",
            args.rows as f64 / secs
        );
    }
    let offset = (runs + 1) * args.rows;
    let started = Instant::now();
    query(
        &client,
        &format!(
            "INSERT INTO positions (user, device, tid, tst, lat, lon, acc, alt, vac, vel, cog, batt, bs, t, conn, p, m, transport, received_at, extra) \
             SELECT 'fleet', concat('d', toString(number % 1000)), 'ab', toDateTime(1700000000 + intDiv(number, 1000)), 52.5 + (number % 997) * 1e-4, \
             13.4 + (number % 991) * 1e-4, 10, 36, 4, 30, 90, 80, 1, 'p', 'w', 100.266, 1, 'http', 1700000000000 + number, '' FROM numbers({offset}, {})",
            args.rows
        ),
    )
    .await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "baseline: server-side INSERT SELECT: {:>9.0} rows/s ({secs:.2} s)",
        args.rows as f64 / secs
    );
    Ok(())
}
