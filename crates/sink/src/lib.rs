//! The end of the pipeline: normalized records into tables.
//!
//! In: [`Record`](otstream_model::Record)s from the bus, each with the
//! [`Ack`](otstream_bus::Ack) of the payload it came from. Out: rows in the
//! tables (positions, transitions, waypoints, cards, device_events, steps,
//! trips, stops, device_state,
//! beacons, configurations, dead_letters), and acks settled as delivered
//! only once the rows are committed.
//!
//! The embedded store ([`store`]) is SQLite in WAL mode with
//! `synchronous=FULL`: a commit is on disk before anything is acknowledged.
//! Records are written in group commits: one transaction takes everything
//! waiting (up to `max_batch_rows`, optionally lingering `linger_ms` for
//! more), so under load the fsync is shared by every message that arrived
//! during the previous commit. A commit that fails (the
//! database is locked by someone else, the disk is full) is retried with
//! backoff; meanwhile nothing more is read, the bus fills, and the ingress
//! answers 503: backpressure, not loss. Duplicates (a retried POST, a
//! redelivered MQTT message) collapse on each table's natural key.
//!
//! What was committed is announced on an optional broadcast channel
//! ([`Committed`]): positions and transitions, after their commit and only
//! while someone listens, for the read API's live feed.
//!
//! Layout:
//! - [`store`]: the SQLite schema and batch writer.
//! - [`clickhouse`]: the ClickHouse schema, migrations and batch writer.
//! - [`run`]: the sink stage loop.

pub mod clickhouse;
pub mod store;

use std::time::Duration;

use otstream_bus::{Message, Receiver};
use otstream_model::Record;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

pub use store::{Store, StoreError};

/// How the sink batches and where the embedded store lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Most rows in one transaction. 5,000 keeps a commit under a few
    /// milliseconds of CPU while amortizing the fsync over many messages.
    #[serde(default = "default_max_batch_rows")]
    pub max_batch_rows: usize,
    /// Longest a record waits for others to share its commit, ms. The
    /// default, 0, is plain group commit: whatever arrives while a commit
    /// is on disk forms the next batch, so batches grow with load by
    /// themselves and an idle store commits at once. Measured with 64
    /// keep-alive clients (BENCHMARKS.md): 20 ms of linger cut throughput
    /// from 20,000 to 2,600 messages/s, every client waiting out the window.
    /// Raise it only to trade latency for fewer, larger commits.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// First retry delay after a failed commit, ms; doubles up to 2 s.
    #[serde(default = "default_retry_initial_ms")]
    pub retry_initial_ms: u64,
}

fn default_max_batch_rows() -> usize {
    5000
}
fn default_linger_ms() -> u64 {
    0
}
fn default_retry_initial_ms() -> u64 {
    50
}

impl Default for SinkConfig {
    fn default() -> Self {
        Self {
            max_batch_rows: default_max_batch_rows(),
            linger_ms: default_linger_ms(),
            retry_initial_ms: default_retry_initial_ms(),
        }
    }
}

impl SinkConfig {
    /// Checks the values make sense.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_batch_rows == 0 {
            return Err("sink.max_batch_rows must be at least 1".into());
        }
        Ok(())
    }
}

const MAX_RETRY: Duration = Duration::from_secs(2);

/// Where a sink announces the positions and transitions it committed (the
/// live feed). A broadcast: a slow listener skips ahead, the sink never
/// waits for it.
pub type Committed = tokio::sync::broadcast::Sender<Record>;

/// Announces committed positions and transitions, if anyone listens.
pub(crate) fn announce<'a>(
    committed: Option<&Committed>,
    records: impl Iterator<Item = &'a Record>,
) {
    let Some(tx) = committed else { return };
    if tx.receiver_count() == 0 {
        return;
    }
    for r in records {
        if matches!(r, Record::Position(_) | Record::Transition(_)) {
            let _ = tx.send(r.clone());
        }
    }
}

/// Runs the sink stage: reads records, writes them in group commits to
/// `store`, settles their acks once committed and announces them on
/// `committed`. Returns when the input is
/// closed and drained (graceful), or when `shutdown` is cancelled (hard
/// stop: whatever is not committed stays unacknowledged, so its senders
/// retry).
pub async fn run(
    config: SinkConfig,
    mut input: impl Receiver<Record>,
    store: Store,
    committed: Option<Committed>,
    shutdown: CancellationToken,
) -> Result<(), StoreError> {
    let mut store = Some(store);
    let mut batch: Vec<Message<Record>> = Vec::with_capacity(config.max_batch_rows);
    let linger = Duration::from_millis(config.linger_ms);
    loop {
        let n = tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(()),
            n = input.recv_many(&mut batch, config.max_batch_rows) => n,
        };
        if n == 0 {
            return Ok(());
        }
        // Let the commit gather company for at most `linger`.
        let deadline = tokio::time::Instant::now() + linger;
        while batch.len() < config.max_batch_rows {
            let room = config.max_batch_rows - batch.len();
            match tokio::time::timeout_at(deadline, input.recv_many(&mut batch, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let mut delay = Duration::from_millis(config.retry_initial_ms);
        loop {
            let Some(s) = store.take() else { return Ok(()) };
            let (s, values, result) = tokio::task::spawn_blocking(move || {
                let mut s = s;
                let values = batch;
                let result = s.write(values.iter().map(|m| &m.value));
                (s, values, result)
            })
            .await
            .map_err(|e| StoreError::Thread(e.to_string()))?;
            store = Some(s);
            batch = values;
            match result {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, rows = batch.len(), retry_in_ms = delay.as_millis() as u64, "store commit failed; retrying");
                    metrics::counter!("otstream_errors_total", "stage" => "sink", "error_code" => e.code()).increment(1);
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(MAX_RETRY);
                }
            }
        }
        announce(committed.as_ref(), batch.iter().map(|m| &m.value));
        for m in batch.drain(..) {
            m.ack.delivered();
        }
    }
}
