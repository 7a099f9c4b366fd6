//! The ClickHouse sink: batched RowBinary inserts (LZ4), retried until they
//! succeed, acknowledged only after.
//!
//! [`ClickHouseBackend`] is the sink stage's backend ([`crate::run`]): a
//! batch is written when it reaches `max_rows` or `max_bytes`, or
//! `period_ms` after its first record. The
//! defaults follow ClickHouse's advice for MergeTree: tens of thousands of
//! rows and about one insert per table per second. Each table's rows are
//! one INSERT. An insert that fails for a reason that can pass (the server
//! is down, overloaded, a network error, or anything not known to be about
//! the data) is retried with exponential backoff and jitter, holding the
//! batch: nothing more is read, the bus fills, and the ingress answers 503.
//! An insert ClickHouse rejects for the content of its rows is split in
//! halves until the rejected rows are found; those become dead letters and
//! the rest is stored, so one bad row never blocks the stream. If every row
//! is rejected, the problem is the schema, not the data: it is retried, not
//! dead-lettered.

pub mod rows;
pub mod schema;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clickhouse::Client;
use metrics::{Counter, Histogram};
use otstream_bus::Message;
use otstream_model::{DeadLetter, Record, Text};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

pub use rows::Table;
pub use schema::{MIGRATIONS, ServerVersion};

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
    pub fn validate(&self) -> Result<(), String> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(format!(
                "clickhouse.url must be an http(s) URL, got {:?}",
                self.url
            ));
        }
        if self.max_rows == 0 || self.max_bytes == 0 || self.database.is_empty() {
            return Err("clickhouse.max_rows, max_bytes and database must not be empty".into());
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
    Config(String),
}

/// What `migrate` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateReport {
    /// The server's version, which chose the types.
    pub server: ServerVersion,
    /// Migrations applied now (empty when all were applied before).
    pub applied: Vec<u32>,
}

/// The server's version.
pub async fn server_version(client: &Client) -> Result<ServerVersion, ClickHouseError> {
    let v: String = client.query("SELECT version()").fetch_one().await?;
    ServerVersion::parse(&v).ok_or(ClickHouseError::Version(v))
}

/// Creates the database and applies pending migrations, recording each in
/// `schema_migrations`. Safe to run any number of times.
pub async fn migrate(config: &ClickHouseConfig) -> Result<MigrateReport, ClickHouseError> {
    config.validate().map_err(ClickHouseError::Config)?;
    // The database may not exist yet: talk to `default` until it does.
    let root = config.client().with_database("default");
    let server = server_version(&root).await?;
    let db = schema::quote_ident(&config.database);
    root.query(&format!("CREATE DATABASE IF NOT EXISTS {db}"))
        .execute()
        .await?;
    root.query(&format!(
        "CREATE TABLE IF NOT EXISTS {db}.schema_migrations (version UInt32 COMMENT 'migration number', name String COMMENT 'migration name', applied_at DateTime COMMENT 'when it was applied (UTC)', server_version String COMMENT 'server it was rendered for') ENGINE = MergeTree ORDER BY version"
    ))
    .execute()
    .await?;
    let done: Vec<u32> = root
        .query(&format!("SELECT version FROM {db}.schema_migrations"))
        .fetch_all()
        .await?;
    let mut applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| !done.contains(&m.version)) {
        for stmt in schema::render(m.template, &config.database, server, config.retention_days) {
            root.query(&stmt).execute().await?;
        }
        root.query(&format!(
            "INSERT INTO {db}.schema_migrations (version, name, applied_at, server_version) SELECT {}, '{}', now(), '{server}'",
            m.version, m.name
        ))
        .execute()
        .await?;
        tracing::info!(version = m.version, name = m.name, %server, "clickhouse migration applied");
        applied.push(m.version);
    }
    Ok(MigrateReport { server, applied })
}

/// The latest state of every device for `kind` (see the `device_state`
/// table): what a stateful stage resumes from. Migrates first when
/// configured to, so a first start on an empty server finds the table.
pub async fn load_states(
    config: &ClickHouseConfig,
    kind: &str,
) -> Result<Vec<otstream_model::StateSnapshot>, ClickHouseError> {
    #[derive(clickhouse::Row, Deserialize)]
    struct StateRow {
        user: String,
        device: String,
        state: String,
    }
    config.validate().map_err(ClickHouseError::Config)?;
    if config.migrate {
        migrate(config).await?;
    }
    let db = schema::quote_ident(&config.database);
    let rows: Vec<StateRow> = config
        .client()
        .query(&format!(
            "SELECT user, device, state FROM {db}.device_state FINAL WHERE kind = ?"
        ))
        .bind(kind)
        .fetch_all()
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| otstream_model::StateSnapshot {
            user: r.user.into(),
            device: r.device.into(),
            kind: kind.into(),
            state: r.state,
            updated_at: 0,
        })
        .collect())
}

/// ClickHouse exception codes that mean "this data cannot be stored", as
/// opposed to "the server cannot take it now": parse and conversion
/// failures, values out of range, violated constraints, and `throwIf` in a
/// materialized view used as a data check.
const CONTENT_ERRORS: [u32; 14] = [6, 26, 27, 38, 41, 53, 69, 70, 72, 117, 131, 321, 395, 469];

fn error_code(e: &clickhouse::error::Error) -> Option<u32> {
    let text = e.to_string();
    let rest = &text[text.find("Code: ")? + 6..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn is_content_error(e: &clickhouse::error::Error) -> bool {
    error_code(e).is_some_and(|c| CONTENT_ERRORS.contains(&c))
}

struct Meters {
    rows: BTreeMap<Table, Counter>,
    insert_seconds: Histogram,
    retries: Counter,
    rejected: Counter,
}

impl Meters {
    fn new() -> Self {
        Self {
            rows: Table::ALL
                .iter()
                .map(|t| {
                    (
                        *t,
                        metrics::counter!("otstream_stored_rows_total", "table" => t.name()),
                    )
                })
                .collect(),
            insert_seconds: metrics::histogram!("otstream_clickhouse_insert_seconds"),
            retries: metrics::counter!("otstream_errors_total", "stage" => "sink", "error_code" => "clickhouse_retry"),
            rejected: metrics::counter!("otstream_errors_total", "stage" => "sink", "error_code" => "clickhouse_rejected"),
        }
    }
}

/// Rows ClickHouse refused, by position, with its reason.
type Rejected = Vec<(usize, String)>;

/// The recursive bisection's future.
type Isolating<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Rejected, clickhouse::error::Error>> + Send + 'a>,
>;

/// The sink stopped before its batch was written (shutdown).
struct Stopped;

/// ClickHouse as the sink's backend: each table's rows one INSERT, retried
/// until it succeeds, rows refused for their content found by halving and
/// stored as dead letters.
pub struct ClickHouseBackend {
    client: Client,
    config: ClickHouseConfig,
    meters: Meters,
}

impl ClickHouseBackend {
    /// A backend writing where `config` says; applies pending migrations
    /// first when configured to.
    pub async fn new(config: ClickHouseConfig) -> Result<Self, ClickHouseError> {
        config.validate().map_err(ClickHouseError::Config)?;
        if config.migrate {
            let report = migrate(&config).await?;
            tracing::info!(server = %report.server, applied = ?report.applied, "clickhouse schema ready");
        }
        Ok(ClickHouseBackend {
            client: config.client(),
            config,
            meters: Meters::new(),
        })
    }
}

impl crate::Backend for ClickHouseBackend {
    fn batching(&self) -> crate::Batching {
        crate::Batching {
            max_rows: self.config.max_rows,
            max_bytes: self.config.max_bytes,
            linger: Duration::from_millis(self.config.period_ms),
        }
    }

    async fn write(
        &mut self,
        batch: &mut Vec<Message<Record>>,
        shutdown: &CancellationToken,
    ) -> Result<Vec<usize>, crate::Unwritten> {
        let w = Writer {
            backend: self,
            shutdown,
        };
        w.flush(batch)
            .await
            .map_err(|Stopped| crate::Unwritten::Stopped)
    }
}

/// One batch being written.
struct Writer<'a> {
    backend: &'a ClickHouseBackend,
    shutdown: &'a CancellationToken,
}

impl Writer<'_> {
    /// Writes every record of `batch`; returns the positions of those
    /// refused and stored as dead letters.
    async fn flush(&self, batch: &[Message<Record>]) -> Result<Vec<usize>, Stopped> {
        let mut by_table: BTreeMap<Table, Vec<usize>> = BTreeMap::new();
        for (i, m) in batch.iter().enumerate() {
            by_table.entry(Table::of(&m.value)).or_default().push(i);
        }
        // A stage writes its state with every input; only the latest per
        // device matters, and the rest would be merged away anyway.
        if let Some(idx) = by_table.get_mut(&Table::DeviceState) {
            let mut seen = std::collections::HashSet::new();
            let mut latest: Vec<usize> = idx
                .iter()
                .rev()
                .copied()
                .filter(|i| match &batch[*i].value {
                    Record::State(s) => seen.insert((&s.kind, &s.user, &s.device)),
                    _ => true,
                })
                .collect();
            latest.reverse();
            *idx = latest;
        }
        let mut rejected: Vec<(usize, String)> = Vec::new();
        for (table, idx) in &by_table {
            let recs: Vec<&Record> = idx.iter().map(|i| &batch[*i].value).collect();
            for (j, why) in self.write_table(*table, &recs).await? {
                rejected.push((idx[j], why));
            }
        }
        if !rejected.is_empty() {
            let dead: Vec<Record> = rejected
                .iter()
                .map(|(i, why)| Record::DeadLetter(rejection(&batch[*i].value, why)))
                .collect();
            let dead_refs: Vec<&Record> = dead.iter().collect();
            // Dead letters are not bisected: if ClickHouse refuses even
            // those, that is a schema problem and is retried.
            self.retry(Table::DeadLetters, &dead_refs, false).await?;
            self.backend.meters.rejected.increment(dead.len() as u64);
        }
        Ok(rejected.into_iter().map(|(i, _)| i).collect())
    }

    /// Inserts one table's rows; returns the positions (in `recs`) of rows
    /// ClickHouse rejected for their content, with its reason.
    async fn write_table(
        &self,
        table: Table,
        recs: &[&Record],
    ) -> Result<Vec<(usize, String)>, Stopped> {
        self.retry(table, recs, true).await
    }

    async fn retry(
        &self,
        table: Table,
        recs: &[&Record],
        bisect: bool,
    ) -> Result<Vec<(usize, String)>, Stopped> {
        let max = Duration::from_millis(self.backend.config.retry_max_ms);
        let mut delays = otstream_model::retry::backoff(
            Duration::from_millis(self.backend.config.retry_initial_ms),
            max,
        );
        loop {
            let err = match self.insert(table, recs).await {
                Ok(()) => return Ok(Vec::new()),
                Err(e) => e,
            };
            if bisect && is_content_error(&err) && recs.len() > 1 {
                match self.isolate(table, recs, 0).await {
                    Ok(bad) if bad.len() < recs.len() => return Ok(bad),
                    // Every row refused: not the data's fault.
                    Ok(_) => {}
                    Err(_) => {}
                }
            } else if bisect && is_content_error(&err) {
                return Ok(vec![(0, err.to_string())]);
            }
            self.backend.meters.retries.increment(1);
            let wait = delays.next().unwrap_or(max);
            tracing::warn!(table = table.name(), rows = recs.len(), error = %err, retry_in_ms = wait.as_millis() as u64, "clickhouse insert failed; retrying");
            tokio::select! {
                () = self.shutdown.cancelled() => return Err(Stopped),
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Finds the rejected rows by halving; `offset` maps back to the caller.
    fn isolate<'a>(&'a self, table: Table, recs: &'a [&'a Record], offset: usize) -> Isolating<'a> {
        Box::pin(async move {
            match self.insert(table, recs).await {
                Ok(()) => Ok(Vec::new()),
                Err(e) if is_content_error(&e) && recs.len() == 1 => {
                    Ok(vec![(offset, e.to_string())])
                }
                Err(e) if is_content_error(&e) => {
                    let mid = recs.len() / 2;
                    let mut bad = self.isolate(table, &recs[..mid], offset).await?;
                    bad.extend(self.isolate(table, &recs[mid..], offset + mid).await?);
                    Ok(bad)
                }
                Err(e) => Err(e),
            }
        })
    }

    async fn insert(&self, table: Table, recs: &[&Record]) -> Result<(), clickhouse::error::Error> {
        let started = Instant::now();
        let b = self.backend;
        let timeout = Duration::from_millis(b.config.insert_timeout_ms);
        match tokio::time::timeout(timeout, rows::insert(&b.client, table, recs)).await {
            Ok(Ok(())) => {
                b.meters
                    .insert_seconds
                    .record(started.elapsed().as_secs_f64());
                if let Some(c) = b.meters.rows.get(&table) {
                    c.increment(recs.len() as u64);
                }
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(clickhouse::error::Error::TimedOut),
        }
    }
}

/// The dead letter for a record ClickHouse refused: the record itself, as
/// JSON, is the payload (the raw body is in the raw capture).
fn rejection(r: &Record, why: &str) -> DeadLetter {
    let (user, device, received_at, transport, topic) = match r.meta() {
        Some(m) => (
            m.user.clone(),
            m.device.clone(),
            m.received_at,
            m.transport,
            m.topic.clone(),
        ),
        None => (
            Text::default(),
            Text::default(),
            0,
            otstream_model::Transport::Http,
            None,
        ),
    };
    DeadLetter {
        user,
        device,
        received_at,
        transport,
        topic,
        remote_addr: None,
        kind: Text::const_new("rejected"),
        field: None,
        message: format!("clickhouse refused the row: {why}"),
        payload: r.to_json().into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_read_from_messages() {
        let e = clickhouse::error::Error::BadResponse("Code: 395, e.displayText() = DB::Exception: Value passed to 'throwIf' function is non zero".into());
        assert_eq!(error_code(&e), Some(395));
        assert!(is_content_error(&e));
        let e = clickhouse::error::Error::BadResponse(
            "Code: 60, e.displayText() = DB::Exception: Table x doesn't exist".into(),
        );
        assert!(!is_content_error(&e));
        assert!(!is_content_error(&clickhouse::error::Error::TimedOut));
    }
}
