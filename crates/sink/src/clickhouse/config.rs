//! Where and how to write to ClickHouse, and what can go wrong.

use super::*;
use otstream_model::ConfigError;

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
    pub fn client(&self) -> Client {
        let mut c = Client::default()
            .with_url(&self.url)
            .with_database(&self.database)
            .with_compression(clickhouse::Compression::Lz4)
            .with_validation(false);
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
}
