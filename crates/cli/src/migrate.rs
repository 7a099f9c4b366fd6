//! `otstream migrate`: creates or upgrades the ClickHouse schema.

use anyhow::{Context, Result};
use otstream_schema::clickhouse::{ClickHouseConfig, MIGRATIONS, ServerVersion, render_on};
use otstream_sink::clickhouse;

/// Flags of `otstream migrate`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// ClickHouse HTTP interface, e.g. http://127.0.0.1:8123.
    #[arg(
        long,
        env = "OTSTREAM_CLICKHOUSE_URL",
        required_unless_present = "print_ddl"
    )]
    clickhouse_url: Option<String>,
    /// Database to create the tables in.
    #[arg(long, env = "OTSTREAM_CLICKHOUSE_DATABASE", default_value = "otstream")]
    database: String,
    /// ClickHouse user.
    #[arg(long, env = "OTSTREAM_CLICKHOUSE_USER")]
    user: Option<String>,
    /// ClickHouse password.
    #[arg(long, env = "OTSTREAM_CLICKHOUSE_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Keep positions and transitions this many days (TTL, on servers with TTL).
    #[arg(long)]
    retention_days: Option<u32>,
    /// Print the DDL rendered for --server-version instead of applying it.
    #[arg(long, requires = "server_version")]
    print_ddl: bool,
    /// Server version to render for with --print-ddl, e.g. 18.16 or 25.8.
    #[arg(long)]
    server_version: Option<String>,
    /// Spread the tables over this cluster of the servers' remote_servers:
    /// replicated tables on every server, Distributed tables sharded by
    /// the device (deploy/clickhouse/README.md).
    #[arg(long, env = "OTSTREAM_CLICKHOUSE_CLUSTER")]
    cluster: Option<String>,
}

pub fn run(args: Args) -> Result<()> {
    if args.print_ddl {
        let raw = args.server_version.unwrap_or_default();
        let version = ServerVersion::parse(&format!("{raw}.0"))
            .or_else(|| ServerVersion::parse(&raw))
            .with_context(|| format!("--server-version {raw:?} is not MAJOR.MINOR"))?;
        let cluster = args.cluster.as_deref();
        if let Some(c) = cluster {
            println!(
                "{};\n\n{};\n",
                otstream_schema::cluster::create_database(&args.database, c),
                otstream_schema::cluster::schema_migrations(&args.database, c, version)
            );
        }
        for m in MIGRATIONS {
            let statements = render_on(
                m.template,
                &args.database,
                version,
                args.retention_days,
                cluster,
            )?;
            for stmt in statements {
                println!("{stmt};\n");
            }
        }
        return Ok(());
    }
    let mut config = ClickHouseConfig::new(args.clickhouse_url.unwrap_or_default());
    config.database = args.database;
    config.user = args.user;
    config.password = args.password;
    config.retention_days = args.retention_days;
    config.cluster = args.cluster;
    let report = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(clickhouse::migrate(&config))
        .with_context(|| format!("migrating {}", config.url))?;
    let on = config
        .cluster
        .as_deref()
        .map(|c| format!(" on cluster {c}"))
        .unwrap_or_default();
    if report.applied.is_empty() {
        println!(
            "ClickHouse {}: schema up to date in database {}{on}",
            report.server, config.database
        );
    } else {
        println!(
            "ClickHouse {}: applied migrations {:?} in database {}{on}",
            report.server, report.applied, config.database
        );
    }
    Ok(())
}
