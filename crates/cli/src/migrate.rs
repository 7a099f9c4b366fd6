//! `otstream migrate`: creates or upgrades the ClickHouse schema.

use anyhow::{Context, Result};
use otstream_schema::clickhouse::{ClickHouseConfig, MIGRATIONS, ServerVersion, render};
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
}

pub fn run(args: Args) -> Result<()> {
    if args.print_ddl {
        let raw = args.server_version.unwrap_or_default();
        let version = ServerVersion::parse(&format!("{raw}.0"))
            .or_else(|| ServerVersion::parse(&raw))
            .with_context(|| format!("--server-version {raw:?} is not MAJOR.MINOR"))?;
        for m in MIGRATIONS {
            for stmt in render(m.template, &args.database, version, args.retention_days) {
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
    let report = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(clickhouse::migrate(&config))
        .with_context(|| format!("migrating {}", config.url))?;
    if report.applied.is_empty() {
        println!(
            "ClickHouse {}: schema up to date in database {}",
            report.server, config.database
        );
    } else {
        println!(
            "ClickHouse {}: applied migrations {:?} in database {}",
            report.server, report.applied, config.database
        );
    }
    Ok(())
}
