//! ClickHouse: where it is ([`ClickHouseConfig`]), and the versioned
//! migrations of its tables, rendered for the server they run on.
//!
//! The DDL lives in deploy/clickhouse/migrations/ as templates. `{{LC}}`,
//! `{{TIME_MS}}`, `{{CODEC_FLOAT}}`, `{{RECEIVED_DATETIME}}` and
//! `{{TTL_TST}}` become the best types the detected server offers:
//! LowCardinality, DateTime64 and codecs on current releases, plain types on
//! the Debian 18.16 package. Applied versions are recorded in
//! `schema_migrations`, so `migrate` is idempotent.

use std::fmt;

use clickhouse::Client;
use otstream_model::ConfigError;
use serde::Deserialize;

use crate::cluster::UnknownStatement;
use crate::quote_ident;

/// One migration: its version, name, and DDL template.
pub struct Migration {
    /// Applied in ascending order, recorded once applied.
    pub version: u32,
    /// A short name.
    pub name: &'static str,
    /// Statements, each ending with `;` at the end of a line, with
    /// `{{...}}` placeholders.
    pub template: &'static str,
}

/// Every migration, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "tables",
        template: include_str!("../../../deploy/clickhouse/migrations/0001_tables.sql"),
    },
    Migration {
        version: 2,
        name: "device_state",
        template: include_str!("../../../deploy/clickhouse/migrations/0002_device_state.sql"),
    },
    Migration {
        version: 3,
        name: "stop_place",
        template: include_str!("../../../deploy/clickhouse/migrations/0003_stop_place.sql"),
    },
    Migration {
        version: 4,
        name: "filters_events",
        template: include_str!("../../../deploy/clickhouse/migrations/0004_filters_events.sql"),
    },
    Migration {
        version: 5,
        name: "places",
        template: include_str!("../../../deploy/clickhouse/migrations/0005_places.sql"),
    },
    Migration {
        version: 6,
        name: "addresses",
        template: include_str!("../../../deploy/clickhouse/migrations/0006_addresses.sql"),
    },
    Migration {
        version: 7,
        name: "h3",
        template: include_str!("../../../deploy/clickhouse/migrations/0007_h3.sql"),
    },
    Migration {
        version: 8,
        name: "visits",
        template: include_str!("../../../deploy/clickhouse/migrations/0008_visits.sql"),
    },
    Migration {
        version: 9,
        name: "presence",
        template: include_str!("../../../deploy/clickhouse/migrations/0009_presence.sql"),
    },
];

/// A ClickHouse server version, `major.minor` is all that decides types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion {
    /// Major (18, 19, ..., 25).
    pub major: u32,
    /// Minor.
    pub minor: u32,
}

impl ServerVersion {
    /// Parses `version()` output such as `18.16.1` or `25.8.2.29`.
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.trim().split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(Self { major, minor })
    }

    fn at_least(self, major: u32, minor: u32) -> bool {
        self >= ServerVersion { major, minor }
    }

    /// LowCardinality is allowed without an experimental flag from 19.3.
    pub fn low_cardinality(self) -> bool {
        self.at_least(19, 3)
    }

    /// Column codecs (Gorilla, ZSTD) from 19.10.
    pub fn codecs(self) -> bool {
        self.at_least(19, 10)
    }

    /// DateTime64 from 20.1.
    pub fn datetime64(self) -> bool {
        self.at_least(20, 1)
    }

    /// Table TTL from 19.6.
    pub fn ttl(self) -> bool {
        self.at_least(19, 6)
    }
}

impl fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The statements of `template` for `database` on `version`; a TTL on
/// positions and transitions when `retention_days` is set and the server
/// has TTL.
pub fn render(
    template: &str,
    database: &str,
    version: ServerVersion,
    retention_days: Option<u32>,
) -> Vec<String> {
    let lc = if version.low_cardinality() {
        "LowCardinality(String)"
    } else {
        "String"
    };
    let (time_ms, received_dt) = if version.datetime64() {
        ("DateTime64(3)", "toDateTime(received_at)")
    } else {
        ("UInt64", "toDateTime(intDiv(received_at, 1000))")
    };
    let codec_float = if version.codecs() {
        " CODEC(Gorilla, LZ4)"
    } else {
        ""
    };
    let ttl = match retention_days {
        Some(days) if version.ttl() => format!("\nTTL tst + INTERVAL {days} DAY"),
        _ => String::new(),
    };
    let sql: String = template
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    let sql = sql
        .replace("{{DB}}", &quote_ident(database))
        .replace("{{LC}}", lc)
        .replace("{{TIME_MS}}", time_ms)
        .replace("{{RECEIVED_DATETIME}}", received_dt)
        .replace("{{CODEC_FLOAT}}", codec_float)
        .replace("{{TTL_TST}}", &ttl);
    // A statement ends with `;` at the end of a line, so `;` inside a
    // comment string does not split it.
    sql.split(";\n")
        .map(|s| s.trim().trim_end_matches(';').trim())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The statements of `template` as [`render`] gives them, placed on
/// `cluster` when one is named ([`crate::cluster`]).
pub fn render_on(
    template: &str,
    database: &str,
    version: ServerVersion,
    retention_days: Option<u32>,
    cluster: Option<&str>,
) -> Result<Vec<String>, UnknownStatement> {
    let one = render(template, database, version, retention_days);
    match cluster {
        Some(c) => crate::cluster::on_cluster(&one, database, c, version),
        None => Ok(one),
    }
}

/// Where and how to write to ClickHouse.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseConfig {
    /// HTTP interface, e.g. `http://127.0.0.1:8123`. May come from a flag
    /// applied after the file is read; `validate` requires it.
    #[serde(default)]
    pub url: String,
    /// User (ClickHouse's `default` when unset).
    #[serde(default)]
    pub user: Option<String>,
    /// Password.
    #[serde(default)]
    pub password: Option<String>,
    /// Database holding the tables.
    #[serde(default = "default_database")]
    pub database: String,
    /// Apply pending migrations when the sink starts.
    #[serde(default = "default_true")]
    pub migrate: bool,
    /// Most rows in one batch. ClickHouse recommends thousands to tens of
    /// thousands of rows per insert.
    #[serde(default = "default_max_rows")]
    pub max_rows: usize,
    /// Most bytes (estimated) in one batch.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
    /// Longest a record waits for its batch, ms: about one insert per table
    /// per second, as ClickHouse recommends for MergeTree tables.
    #[serde(default = "default_period_ms")]
    pub period_ms: u64,
    /// First retry delay, ms; doubles (with jitter) up to `retry_max_ms`.
    #[serde(default = "default_retry_initial_ms")]
    pub retry_initial_ms: u64,
    /// Longest retry delay, ms.
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
    /// An insert taking longer than this is abandoned and retried, ms.
    #[serde(default = "default_insert_timeout_ms")]
    pub insert_timeout_ms: u64,
    /// Keep positions and transitions this many days (a TTL, on servers
    /// that have TTL); forever when unset.
    #[serde(default)]
    pub retention_days: Option<u32>,
    /// The cluster (a name in the servers' `remote_servers`) the tables
    /// are spread over, shards and replicas ([`crate::cluster`]); one
    /// server when unset. `url` is any server of it.
    #[serde(default)]
    pub cluster: Option<String>,
}

fn default_database() -> String {
    "otstream".to_owned()
}
fn default_true() -> bool {
    true
}
fn default_max_rows() -> usize {
    50_000
}
fn default_max_bytes() -> usize {
    32 * 1024 * 1024
}
fn default_period_ms() -> u64 {
    1_000
}
fn default_retry_initial_ms() -> u64 {
    100
}
fn default_retry_max_ms() -> u64 {
    10_000
}
fn default_insert_timeout_ms() -> u64 {
    30_000
}

impl ClickHouseConfig {
    /// Defaults for the server at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            user: None,
            password: None,
            database: default_database(),
            migrate: true,
            max_rows: default_max_rows(),
            max_bytes: default_max_bytes(),
            period_ms: default_period_ms(),
            retry_initial_ms: default_retry_initial_ms(),
            retry_max_ms: default_retry_max_ms(),
            insert_timeout_ms: default_insert_timeout_ms(),
            retention_days: None,
            cluster: None,
        }
    }

    /// Checks the values make sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(ConfigError::new(
                "clickhouse.url",
                format!("clickhouse.url must be an http(s) URL, got {:?}", self.url),
            ));
        }
        if self.cluster.as_deref().is_some_and(str::is_empty) {
            return Err(ConfigError::new(
                "clickhouse.cluster",
                "clickhouse.cluster must name a cluster of the servers' remote_servers",
            ));
        }
        // On a cluster the names go into ZooKeeper paths, where `{` starts
        // a macro and `/` a level.
        let plain = |s: &str| s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if self
            .cluster
            .as_deref()
            .is_some_and(|c| !plain(c) || !plain(&self.database))
        {
            return Err(ConfigError::new(
                "clickhouse.cluster",
                "on a cluster, clickhouse.cluster and clickhouse.database must be letters, digits and _",
            ));
        }
        if self.max_rows == 0 || self.max_bytes == 0 || self.database.is_empty() {
            return Err(ConfigError::new(
                "clickhouse.max_rows",
                "clickhouse.max_rows, max_bytes and database must not be empty",
            ));
        }
        Ok(())
    }

    /// A client for the configured database. Validation of column types
    /// is off: 18.16 has no RowBinaryWithNamesAndTypes.
    ///
    /// On a cluster, an insert into a Distributed table returns once every
    /// shard it touched has it (`insert_distributed_sync`: an insert
    /// acknowledged is stored, not queued on the server that took it), and
    /// a read that looks a device's rows up in a second table (`IN`) does
    /// it on each shard (`distributed_product_mode = 'local'`): the tables
    /// are sharded alike, by the device.
    pub fn client(&self) -> Client {
        let mut c = Client::default()
            .with_url(&self.url)
            .with_database(&self.database)
            .with_compression(clickhouse::Compression::Lz4)
            .with_validation(false);
        if self.cluster.is_some() {
            c = c
                .with_setting("insert_distributed_sync", "1")
                .with_setting("distributed_product_mode", "local");
        }
        if let Some(u) = &self.user {
            c = c.with_user(u);
        }
        if let Some(p) = &self.password {
            c = c.with_password(p);
        }
        c
    }
}

/// Why ClickHouse could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClickHouseError {
    /// The server refused or could not be reached.
    #[error("clickhouse: {0}")]
    Client(#[from] clickhouse::error::Error),
    /// `version()` returned something unexpected.
    #[error("cannot read the server version from {0:?}")]
    Version(String),
    /// The configuration is inconsistent.
    #[error("invalid clickhouse configuration: {0}")]
    Config(#[from] ConfigError),
    /// A migration has no form for a cluster.
    #[error(transparent)]
    Cluster(#[from] UnknownStatement),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_choose_types() {
        let old = ServerVersion::parse("18.16.1").unwrap();
        let new = ServerVersion::parse("25.8.2.29").unwrap();
        assert!(!old.low_cardinality() && !old.codecs() && !old.datetime64() && !old.ttl());
        assert!(new.low_cardinality() && new.codecs() && new.datetime64() && new.ttl());
        let old_sql = render(MIGRATIONS[0].template, "ot", old, Some(30)).join(";\n");
        let new_sql = render(MIGRATIONS[0].template, "ot", new, Some(30)).join(";\n");
        assert!(!old_sql.contains("{{") && !new_sql.contains("{{"));
        assert!(
            !old_sql.contains("LowCardinality")
                && !old_sql.contains("DateTime64")
                && !old_sql.contains("TTL")
        );
        assert!(old_sql.contains("received_at UInt64"));
        assert!(
            new_sql.contains("user LowCardinality(String)")
                && new_sql.contains("received_at DateTime64(3)")
        );
        assert!(new_sql.contains("TTL tst + INTERVAL 30 DAY"));
        assert_eq!(render(MIGRATIONS[0].template, "ot", new, None).len(), 13);
    }
}
