//! The local buffer between `otstream serve` and ClickHouse: a phone's
//! 200 waits for a local fsync, never for ClickHouse.
//!
//! In: the sink stage's batches ([`BufferedBackend`], a [`Backend`]).
//! Out: the same records in ClickHouse, shipped by the [`Shipper`] in
//! ClickHouse-sized batches.
//!
//! Guarantees:
//! - **Durable before the ack.** A batch is appended to `buffer.db` in the
//!   data directory (SQLite, WAL, `synchronous=FULL`) in one transaction
//!   before any of its records is acknowledged: like Vector's disk
//!   buffers, or a write-ahead log.
//! - **At least once into ClickHouse.** The shipper reads the oldest rows,
//!   inserts them with the ClickHouse backend (retrying with backoff for as
//!   long as the server is away, dead-lettering rows it refuses for their
//!   content), and only then deletes them from the buffer. A crash between
//!   the insert and the delete ships them again; the tables are
//!   ReplacingMergeTree on natural keys, so `FINAL` shows each once. A
//!   read or delete SQLite refuses (the file locked by someone else) is
//!   retried with backoff like the insert, never the end of shipping. A
//!   restart resumes from the oldest row still there.
//! - **Bounded.** Past `buffer.max_bytes` of buffered records the backend
//!   stops taking batches until the shipper makes room: the bus fills and
//!   phones get 503 (they keep the fix and retry). Nothing is dropped.
//! - **Resumable without ClickHouse.** Each device's latest state snapshot
//!   is also kept here, so the geofence stage resumes from it even when
//!   ClickHouse is down at start.
//!
//! Metrics: `otstream_buffer_bytes`, `otstream_buffer_rows` and
//! `otstream_buffer_oldest_age_seconds` (of the oldest unshipped row).

use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use otstream_bus::{Ack, Message, Stage};
use otstream_model::raw::now_ms;
use otstream_model::topics::SCHEMA_VERSION;
use otstream_model::{DeadLetter, Record, StateSnapshot, Text, Transport};
use rusqlite::{Connection, params};
use rusqlite_migration::{M, Migrations};
use serde::Deserialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clickhouse::{ClickHouseBackend, ClickHouseConfig};
use crate::store::{Statements, StoreError, load_states, open_db, save_state};
use crate::{Backend, Batching, SinkConfig, SinkError, Unwritten, commit_until_done};

/// The buffer's file in the data directory.
pub use otstream_schema::BUFFER_FILE;

const SCHEMA_V1: &str = r#"
-- Records waiting for ClickHouse, oldest first.
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    appended_at INTEGER NOT NULL,    -- UNIX ms
    schema_version INTEGER NOT NULL, -- of the record's JSON (otstream_model::topics)
    body BLOB NOT NULL               -- the record as JSON
);
-- Each device's latest state, shipped or not: what the geofence stage resumes from.
CREATE TABLE IF NOT EXISTS device_state (
    kind TEXT NOT NULL, user TEXT NOT NULL, device TEXT NOT NULL,
    state TEXT NOT NULL, updated_at INTEGER NOT NULL,
    PRIMARY KEY (kind, user, device)
) WITHOUT ROWID;
"#;

/// The `[buffer]` section: how `serve` buffers for ClickHouse.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BufferConfig {
    /// Acknowledge at local durability and ship to ClickHouse behind
    /// (`serve` with ClickHouse). Off, every acknowledgement waits for
    /// ClickHouse's insert, as the Kafka-mode sink does.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// Most bytes of records held while ClickHouse is away; past it the
    /// ingress answers 503. 10 GiB: a day of 10,000 devices at a fix a
    /// minute is about 3 GB.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
}

fn default_enabled() -> bool {
    true
}
fn default_max_bytes() -> u64 {
    10 << 30
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            enabled: default_enabled(),
            max_bytes: default_max_bytes(),
        }
    }
}

/// The buffer file.
struct Outbox {
    conn: Connection,
}

/// What the buffer holds, kept in step with the file.
#[derive(Default)]
struct Level {
    bytes: AtomicU64,
    rows: AtomicU64,
    /// When the oldest row still there was appended (UNIX ms; 0: none).
    oldest_ms: AtomicI64,
}

/// Shared by the backend (appends) and the shipper (removes).
struct Shared {
    /// The one writing connection: the backend's appends and device
    /// state, the shipper's removals.
    appender: Mutex<Outbox>,
    /// The shipper's own, for reading only: reading 50,000 rows must not
    /// hold up an append (WAL lets it read beside the writer).
    shipping: Mutex<Outbox>,
    level: Level,
    /// Wakes the shipper after an append, the backend after a removal.
    appended: Notify,
    shipped: Notify,
    max_bytes: u64,
}

impl Shared {
    /// One of the two connections. Each use is one SQLite transaction,
    /// left consistent by SQLite itself if a panic cut it short.
    fn lock(outbox: &Mutex<Outbox>) -> MutexGuard<'_, Outbox> {
        outbox.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn gauges(&self) {
        let level = &self.level;
        let rows = level.rows.load(Ordering::Relaxed);
        metrics::gauge!("otstream_buffer_bytes").set(level.bytes.load(Ordering::Relaxed) as f64);
        metrics::gauge!("otstream_buffer_rows").set(rows as f64);
        let oldest = level.oldest_ms.load(Ordering::Relaxed);
        let age = if rows == 0 || oldest == 0 {
            0.0
        } else {
            (now_ms() - oldest).max(0) as f64 / 1000.0
        };
        metrics::gauge!("otstream_buffer_oldest_age_seconds").set(age);
    }
}

impl Outbox {
    fn open(data_dir: &Path) -> Result<Outbox, StoreError> {
        let migrations = Migrations::new(vec![M::up(SCHEMA_V1)]);
        let (conn, _) = open_db(data_dir, BUFFER_FILE, &migrations)?;
        Ok(Outbox { conn })
    }

    /// What the file holds now (a scan of every row: once, at open).
    fn level(&self) -> Result<Level, StoreError> {
        let (rows, bytes): (i64, i64) = self.conn.query_row(
            "SELECT count(*), coalesce(sum(length(body)), 0) FROM outbox",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let unsigned = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(Level {
            bytes: AtomicU64::new(unsigned(bytes)),
            rows: AtomicU64::new(unsigned(rows)),
            oldest_ms: AtomicI64::new(self.oldest_appended()?),
        })
    }

    /// When the oldest row was appended (0: none).
    fn oldest_appended(&self) -> Result<i64, StoreError> {
        let at = self.conn.query_row(
            "SELECT coalesce(min(appended_at), 0) FROM outbox WHERE seq = (SELECT min(seq) FROM outbox)",
            [],
            |r| r.get(0),
        )?;
        Ok(at)
    }

    /// Appends `records` in one transaction; the bytes appended.
    fn append<'a>(&mut self, records: impl Iterator<Item = &'a Record>) -> Result<u64, StoreError> {
        let now = now_ms();
        let tx = self.conn.transaction()?;
        let mut bytes = 0;
        {
            let mut statements = Statements::new(&tx);
            for r in records {
                let body = r.to_json();
                bytes += body.len() as u64;
                statements
                    .get("INSERT INTO outbox (appended_at, schema_version, body) VALUES (?1, ?2, ?3)")?
                    .execute(params![now, SCHEMA_VERSION, body.as_bytes()])?;
                if let Record::State(s) = r {
                    save_state(&mut statements, s)?;
                }
            }
        }
        tx.commit()?;
        Ok(bytes)
    }

    /// The oldest `limit` rows: (seq, bytes, record).
    fn oldest(&self, limit: usize) -> Result<Vec<(i64, u64, Record)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, appended_at, schema_version, body FROM outbox ORDER BY seq LIMIT ?1",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map([limit], |r| {
            let (seq, at, version): (i64, i64, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
            let body = r.get_ref(3)?.as_blob()?;
            Ok((seq, body.len() as u64, readable(version, body, at)))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes the oldest rows up to `seq`, at most 5,000 of them (one
    /// transaction, which appends wait for); true when none is left.
    fn remove_some(&mut self, seq: i64) -> Result<bool, StoreError> {
        const CHUNK: usize = 5_000;
        let removed = self
            .conn
            .prepare_cached(
                "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE seq <= ?1 ORDER BY seq LIMIT ?2)",
            )?
            .execute(params![seq, CHUNK as i64])?;
        Ok(removed < CHUNK)
    }
}

/// A buffered record back; one this build cannot read (written by another
/// schema version) becomes a dead letter holding it, rather than being
/// dropped or stopping the shipping of everything behind it.
fn readable(version: i64, body: &[u8], appended_at: i64) -> Record {
    let parsed = (version == i64::from(SCHEMA_VERSION))
        .then(|| serde_json::from_slice::<Record>(body))
        .transpose();
    match parsed {
        Ok(Some(r)) => r,
        Ok(None) | Err(_) => Record::DeadLetter(DeadLetter {
            user: Text::default(),
            device: Text::default(),
            received_at: appended_at,
            transport: Transport::Http,
            topic: None,
            remote_addr: None,
            kind: Text::from("unreadable_buffer_row"),
            field: None,
            message: format!(
                "a buffered record of schema version {version} this build cannot read"
            ),
            payload: body.to_vec(),
        }),
    }
}

/// Opens the buffer in `data_dir`: the sink's backend, and the shipper
/// that drains it into ClickHouse (run it as a stage of its own).
pub fn open(
    data_dir: &Path,
    sink: SinkConfig,
    buffer: &BufferConfig,
    clickhouse: ClickHouseConfig,
) -> Result<(BufferedBackend, Shipper), StoreError> {
    let outbox = Outbox::open(data_dir)?;
    let level = outbox.level()?;
    let shipping = Outbox::open(data_dir)?;
    let (rows, bytes) = (
        level.rows.load(Ordering::Relaxed),
        level.bytes.load(Ordering::Relaxed),
    );
    let shared = Arc::new(Shared {
        appender: Mutex::new(outbox),
        shipping: Mutex::new(shipping),
        level,
        appended: Notify::new(),
        shipped: Notify::new(),
        max_bytes: buffer.max_bytes,
    });
    shared.gauges();
    tracing::info!(path = %data_dir.join(BUFFER_FILE).display(), rows, bytes, "ClickHouse buffer open");
    Ok((
        BufferedBackend {
            sink,
            shared: shared.clone(),
            clickhouse: clickhouse.clone(),
        },
        Shipper { shared, clickhouse },
    ))
}

/// The sink's backend in `serve` with ClickHouse: batches go to the local
/// buffer; see the module's guarantees.
pub struct BufferedBackend {
    sink: SinkConfig,
    shared: Arc<Shared>,
    clickhouse: ClickHouseConfig,
}

impl BufferedBackend {
    /// Waits while the buffer is over its bound (false: stopped meanwhile).
    async fn room(&self, shutdown: &CancellationToken) -> bool {
        let mut warned = false;
        loop {
            let shipped = self.shared.shipped.notified();
            if self.shared.level.bytes.load(Ordering::Acquire) < self.shared.max_bytes {
                return true;
            }
            if !warned {
                warned = true;
                tracing::warn!(
                    max_bytes = self.shared.max_bytes,
                    "ClickHouse buffer full: holding new records until it ships"
                );
                metrics::counter!("otstream_errors_total", "stage" => "sink", "error_code" => "buffer_full").increment(1);
            }
            tokio::select! {
                () = shutdown.cancelled() => return false,
                () = shipped => {}
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }
}

impl Backend for BufferedBackend {
    fn batching(&self) -> Batching {
        Batching {
            max_rows: self.sink.max_batch_rows,
            max_bytes: usize::MAX,
            linger: Duration::from_millis(self.sink.linger_ms),
        }
    }

    async fn write(
        &mut self,
        batch: &mut Vec<Message<Record>>,
        shutdown: &CancellationToken,
    ) -> Result<Vec<usize>, Unwritten> {
        if !self.room(shutdown).await {
            return Err(Unwritten::Stopped);
        }
        let shared = self.shared.clone();
        let bytes = commit_until_done(
            batch,
            self.sink.retry_initial_ms,
            shutdown,
            "buffer append",
            move |values| Shared::lock(&shared.appender).append(values.iter().map(|m| &m.value)),
        )
        .await?;
        let level = &self.shared.level;
        level.bytes.fetch_add(bytes, Ordering::AcqRel);
        // Into an empty buffer: these are now the oldest.
        let _ = level
            .oldest_ms
            .compare_exchange(0, now_ms(), Ordering::AcqRel, Ordering::Relaxed);
        level.rows.fetch_add(batch.len() as u64, Ordering::AcqRel);
        self.shared.gauges();
        self.shared.appended.notify_one();
        Ok(Vec::new())
    }

    /// The state kept in the buffer, over what ClickHouse holds when it
    /// answers within 10 s (a deployment that buffered nothing yet resumes
    /// from ClickHouse; one whose ClickHouse is down resumes from here).
    async fn stored_state(&self) -> Result<Vec<StateSnapshot>, SinkError> {
        let from_clickhouse = tokio::time::timeout(
            Duration::from_secs(10),
            crate::clickhouse::load_states(&self.clickhouse),
        )
        .await;
        let mut states = match from_clickhouse {
            Ok(Ok(states)) => states,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "ClickHouse's device state unreadable; resuming from the buffer's");
                Vec::new()
            }
            Err(_) => {
                tracing::warn!(
                    "ClickHouse did not answer within 10 s; resuming from the buffer's device state"
                );
                Vec::new()
            }
        };
        let shared = self.shared.clone();
        let local =
            tokio::task::spawn_blocking(move || load_states(&Shared::lock(&shared.appender).conn))
                .await
                .map_err(|e| SinkError::Thread(e.to_string()))??;
        // Later wins, per device and kind: the buffer's is the newest.
        states.extend(local);
        Ok(states)
    }
}

/// Ships the buffer into ClickHouse: a stage of its own, stopped after
/// the sink (what it leaves stays buffered for the next start).
pub struct Shipper {
    shared: Arc<Shared>,
    clickhouse: ClickHouseConfig,
}

impl Shipper {
    /// The ClickHouse backend, once the server answers; `None` if stopped
    /// first.
    async fn connect(&self, shutdown: &CancellationToken) -> Option<ClickHouseBackend> {
        let max = Duration::from_millis(self.clickhouse.retry_max_ms);
        let mut delays = otstream_model::retry::backoff(
            Duration::from_millis(self.clickhouse.retry_initial_ms),
            max,
        );
        loop {
            match ClickHouseBackend::new(self.clickhouse.clone()).await {
                Ok(b) => return Some(b),
                Err(e) => {
                    let delay = delays.next().unwrap_or(max);
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "ClickHouse unreachable; buffering, shipping later");
                    tokio::select! {
                        () = shutdown.cancelled() => return None,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

impl Stage<(), ()> for Shipper {
    /// Runs until `shutdown`: connects (migrating the schema when
    /// configured to), retrying while ClickHouse is away, then ships the
    /// oldest rows in batches of `max_rows`, each at most `period_ms`
    /// after it could start filling.
    type Error = SinkError;

    async fn run(
        self,
        _input: (),
        _output: (),
        shutdown: CancellationToken,
    ) -> Result<(), SinkError> {
        // The gauges move while shipping is stuck (ClickHouse away): the
        // age of the oldest row is what an operator alerts on.
        let (shared, stop) = (self.shared.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => shared.gauges(),
                }
            }
        });
        let Some(mut backend) = self.connect(&shutdown).await else {
            return Ok(());
        };
        let max_rows = self.clickhouse.max_rows;
        let period = Duration::from_millis(self.clickhouse.period_ms);
        let retry_initial_ms = self.clickhouse.retry_initial_ms;
        loop {
            // A batch fills for up to `period` unless there is a full one.
            let deadline = tokio::time::Instant::now() + period;
            while self.shared.level.rows.load(Ordering::Acquire) < max_rows as u64 {
                let appended = self.shared.appended.notified();
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = appended => {}
                    () = tokio::time::sleep_until(deadline) => break,
                }
            }
            // A read or delete SQLite refuses (a lock held too long by
            // someone else, an I/O error) is retried, never the end of
            // shipping: what is buffered stays until it is in ClickHouse.
            let shared = self.shared.clone();
            let oldest = match commit_until_done(
                &mut (),
                retry_initial_ms,
                &shutdown,
                "buffer read",
                move |()| Shared::lock(&shared.shipping).oldest(max_rows),
            )
            .await
            {
                Ok(oldest) => oldest,
                Err(e) => return crate::ended(e),
            };
            let Some(last) = oldest.last().map(|r| r.0) else {
                continue;
            };
            let bytes: u64 = oldest.iter().map(|r| r.1).sum();
            let rows = oldest.len() as u64;
            let mut batch: Vec<Message<Record>> = oldest
                .into_iter()
                .map(|(_, _, r)| Message::new(r.key(), r, Ack::none()))
                .collect();
            if let Err(e) = backend.write(&mut batch, &shutdown).await {
                return crate::ended(e);
            }
            let shared = self.shared.clone();
            let oldest_left = match commit_until_done(
                &mut (),
                retry_initial_ms,
                &shutdown,
                "buffer delete",
                move |()| {
                    // On the appender's connection, a chunk per turn of its
                    // lock: with two writers, a sink committing back to back
                    // left the shipper's own connection no gap before its
                    // 200 ms busy timeout, and the refused delete stopped
                    // serve. A retry after a failure deletes what is left.
                    while !Shared::lock(&shared.appender).remove_some(last)? {}
                    Shared::lock(&shared.shipping).oldest_appended()
                },
            )
            .await
            {
                Ok(left) => left,
                // Shipped but not deleted: shipped again at the next start,
                // one row after ClickHouse's merges.
                Err(e) => return crate::ended(e),
            };
            let level = &self.shared.level;
            level.bytes.fetch_sub(bytes, Ordering::AcqRel);
            level.rows.fetch_sub(rows, Ordering::AcqRel);
            level.oldest_ms.store(oldest_left, Ordering::Release);
            self.shared.gauges();
            self.shared.shipped.notify_waiters();
            metrics::counter!("otstream_buffer_shipped_rows_total").increment(rows);
        }
    }
}
