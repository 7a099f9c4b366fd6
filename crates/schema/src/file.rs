//! The store's SQLite files (the store, the outboxes, the ClickHouse
//! buffer): how each is opened for durable writes, and the one retry loop
//! of their writers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags};
use rusqlite_migration::Migrations;
use tokio_util::sync::CancellationToken;

/// The longest wait between two tries of a commit.
pub const MAX_RETRY: Duration = Duration::from_secs(2);

/// Why the store could not open or commit.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// SQLite refused.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The writer thread died.
    #[error("store writer thread failed: {0}")]
    Thread(String),
    /// The store's schema could not be brought to this version's (or the
    /// store was made by a newer otstream).
    #[error("store schema: {0}")]
    Schema(String),
}

impl StoreError {
    /// A bounded code for metric labels.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::DataDir { .. } => "data_dir",
            StoreError::Sqlite(e) => match e.sqlite_error_code() {
                Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => "busy",
                Some(ErrorCode::DiskFull) => "disk_full",
                _ => "sqlite",
            },
            StoreError::Thread(_) => "thread",
            StoreError::Schema(_) => "schema",
        }
    }
}

/// Why a backend's write did not finish; either way the batch stays
/// unacknowledged, so its senders retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unwritten {
    /// `shutdown` was cancelled.
    Stopped,
    /// The writing thread panicked (a bug).
    Thread(String),
}

/// Opens (creating it and `data_dir` when needed) the SQLite file `file`
/// in `data_dir` for durable writes, its schema brought to the latest of
/// `migrations`.
pub fn open(
    data_dir: &Path,
    file: &str,
    migrations: &Migrations<'_>,
) -> Result<(Connection, PathBuf), StoreError> {
    std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
        path: data_dir.to_owned(),
        source,
    })?;
    let path = data_dir.join(file);
    // NO_MUTEX: the connection is used by one thread at a time (rusqlite's
    // Connection is not Sync); SQLite's own lock around every call, every
    // bound parameter included, was 5 % of an import's CPU (perf).
    let mut conn = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // WAL lets readers (the sqlite3 shell, the friends lookup) work while
    // the sink writes; FULL makes every commit durable before the ack.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // The WAL is copied back into the database every this many pages, on
    // the commit that crosses the mark. SQLite's 1,000 made that copy 7 %
    // of serve's CPU (perf): new rows land on the same few leaf pages, so
    // a WAL ten times longer holds many versions of each page and the
    // copy writes each once.
    conn.pragma_update(None, "wal_autocheckpoint", 10_000)?;
    // A page cache of 32 MiB (SQLite's default is 2): a 20,000-row commit
    // of an import touches more index pages than 2 MiB holds, and SQLite
    // then spilled and re-read them (`pagerStress`, 5 % of an import's
    // CPU): +12 % points/s (BENCHMARKS.md).
    conn.pragma_update(None, "cache_size", -32_768)?;
    // A short busy wait; longer stalls are retried by the sink loop so
    // that shutdown is never stuck inside SQLite.
    conn.busy_timeout(Duration::from_millis(200))?;
    // The schema's versions, applied in order from the file's
    // `user_version`; a file made by a newer otstream is refused rather
    // than written with an older schema.
    migrations
        .to_latest(&mut conn)
        .map_err(|e| StoreError::Schema(e.to_string()))?;
    Ok((conn, path))
}

/// Runs `commit` on `carried` (a batch of records, or nothing) on the
/// blocking pool until it succeeds, retrying with backoff from
/// `retry_initial_ms` (logged as `what`, counted for `stage`) until `shutdown`; `carried` is
/// given back as it came. The one retry loop of the SQLite-backed writers
/// and readers (the store, the outbox, the ClickHouse buffer and its
/// shipper).
pub async fn until_done<S: Default + Send + 'static, T: Send + 'static>(
    carried: &mut S,
    retry_initial_ms: u64,
    shutdown: &CancellationToken,
    stage: &'static str,
    what: &'static str,
    commit: impl Fn(&S) -> Result<T, StoreError> + Clone + Send + 'static,
) -> Result<T, Unwritten> {
    let mut delays =
        otstream_model::retry::backoff(Duration::from_millis(retry_initial_ms), MAX_RETRY);
    loop {
        let values = std::mem::take(carried);
        let attempt = commit.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let result = attempt(&values);
            (values, result)
        })
        .await;
        let result = match joined {
            Ok((values, result)) => {
                *carried = values;
                result
            }
            // The batch (and its acks) went down with the thread.
            Err(e) => return Err(Unwritten::Thread(e.to_string())),
        };
        match result {
            Ok(t) => return Ok(t),
            Err(e) => {
                let delay = delays.next().unwrap_or(MAX_RETRY);
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "{what} failed; retrying");
                metrics::counter!("otstream_errors_total", "stage" => stage, "error_code" => e.code()).increment(1);
                tokio::select! {
                    () = shutdown.cancelled() => return Err(Unwritten::Stopped),
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}
