//! The end of the pipeline: normalized records into tables.
//!
//! In: [`Record`](otstream_model::Record)s from the bus, each with the
//! [`Ack`](otstream_bus::Ack) of the payload it came from. Out: rows in the
//! tables (positions, transitions, waypoints, cards, device_events, steps,
//! trips, stops, events, device_state,
//! beacons, configurations, dead_letters), and acks settled as delivered
//! only once all of it is committed. It only writes: places are named and
//! events queued for delivery by a [`Step`] it runs on each batch before
//! writing it, defined elsewhere (`otstream-events`'s outgoing step).
//!
//! The embedded store ([`store`]) is SQLite in WAL mode with
//! `synchronous=FULL`: a commit is on disk before anything is acknowledged.
//! Its schema versions are migrations (`rusqlite_migration`, from the
//! store's `user_version`); a store made by a newer otstream is refused.
//! Records are written in group commits: one transaction takes everything
//! waiting (up to `max_batch_rows`, optionally lingering `linger_ms` for
//! more), so under load the fsync is shared by every message that arrived
//! during the previous commit. A commit that fails (the
//! database is locked by someone else, the disk is full) is retried with
//! backoff; meanwhile nothing more is read, the bus fills, and the ingress
//! answers 503: backpressure, not loss. Duplicates (a retried POST, a
//! redelivered MQTT message) collapse on each table's natural key.
//!
//! ClickHouse ([`clickhouse::ClickHouseBackend`]) takes the same records in
//! large batches (`max_rows`, `max_bytes`, or `period_ms` after the first):
//! one RowBinary INSERT per table, acknowledged only once ClickHouse has
//! answered the INSERT, retried with backoff while the server is away
//! (the bus fills behind it, and the ingress answers 503). Rows it refuses
//! for their content become dead letters, found by splitting the batch.
//! Its tables are ReplacingMergeTree on the same natural keys, so a
//! redelivered record is one row after merges (`FINAL`).
//!
//! Both backends store each device's state snapshot in the batch of the
//! rows it accounts for (SQLite in the same transaction; ClickHouse in the
//! same round of INSERTs, acknowledged only when all of them are), and
//! give it back ([`Backend::stored_state`]) for the geofence stage to
//! resume from.
//!
//! What was committed is announced on an optional broadcast channel
//! ([`Committed`]): positions, transitions and events, after their commit and only
//! while someone listens, for the read API's live feed.
//!
//! Layout:
//! - [`store`]: the SQLite schema and batch writer.
//! - [`clickhouse`]: the ClickHouse migrations and batch writer, and the
//!   local buffer `serve` puts in front of it ([`clickhouse::buffer`]).
//! - [`retention`]: the embedded store's background deletion of old rows.
//! - [`SinkStage`]: the sink stage loop, over a [`Backend`]: [`SqliteBackend`],
//!   [`clickhouse::ClickHouseBackend`] or [`clickhouse::buffer::BufferedBackend`].

pub mod clickhouse;
pub mod retention;
pub mod store;

use otstream_model::ConfigError;
use std::time::Duration;

use otstream_bus::{Message, NoStep, Receiver, Stage, Step, StepEnd};
use otstream_model::{Record, StateSnapshot};
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
    /// First retry delay after a failed commit, ms; doubles (with jitter)
    /// up to 2 s.
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
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_batch_rows == 0 {
            return Err(ConfigError::new(
                "sink.max_batch_rows",
                "sink.max_batch_rows must be at least 1",
            ));
        }
        Ok(())
    }
}

/// Where a sink announces the positions, transitions and events it
/// committed (the live feed). A broadcast: a slow listener skips ahead, the sink never
/// waits for it.
pub type Committed = tokio::sync::broadcast::Sender<Record>;

/// Announces committed positions, transitions and events, if anyone
/// listens.
pub(crate) fn announce<'a>(
    committed: Option<&Committed>,
    records: impl Iterator<Item = &'a Record>,
) {
    let Some(tx) = committed else { return };
    if tx.receiver_count() == 0 {
        return;
    }
    for r in records {
        if matches!(
            r,
            Record::Position(_) | Record::Transition(_) | Record::Event(_)
        ) {
            let _ = tx.send(r.clone());
        }
    }
}

/// How the stage gathers a batch for a backend: up to `max_rows` records
/// or `max_bytes` (estimated), waiting at most `linger` after the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Most records in a batch.
    pub max_rows: usize,
    /// Most bytes (estimated) in a batch.
    pub max_bytes: usize,
    /// Longest the first record waits for company.
    pub linger: Duration,
}

pub use otstream_schema::file::Unwritten;

/// How a stage that met `u` ends: cleanly when stopped, with the
/// thread's failure otherwise.
pub(crate) fn ended(u: Unwritten) -> Result<(), SinkError> {
    match u {
        Unwritten::Stopped => Ok(()),
        Unwritten::Thread(why) => Err(SinkError::Thread(why)),
    }
}

/// Where the sink stage writes: the embedded store ([`SqliteBackend`]) or
/// ClickHouse ([`clickhouse::ClickHouseBackend`]).
pub trait Backend: Send + 'static {
    /// How batches are gathered for it.
    fn batching(&self) -> Batching;

    /// Makes every record of `batch` durable, retrying as long as it takes
    /// (the stage reads nothing meanwhile: backpressure), until `shutdown`.
    /// Returns the positions of the records refused for their content and
    /// stored as dead letters in their place: they are acknowledged but
    /// not announced. `batch` is given back as it came.
    fn write(
        &mut self,
        batch: &mut Vec<Message<Record>>,
        shutdown: &CancellationToken,
    ) -> impl std::future::Future<Output = Result<Vec<usize>, Unwritten>> + Send;

    /// The device state stored with the records, the latest per device
    /// and kind: what the geofence stage resumes from when this sink runs
    /// in its process.
    fn stored_state(
        &self,
    ) -> impl std::future::Future<Output = Result<Vec<StateSnapshot>, SinkError>> + Send;
}

/// The one retry loop of the sink's SQLite-backed writers (the store,
/// the ClickHouse buffer and its shipper), counted as the sink's.
pub(crate) async fn commit_until_done<S: Default + Send + 'static, T: Send + 'static>(
    carried: &mut S,
    retry_initial_ms: u64,
    shutdown: &CancellationToken,
    what: &'static str,
    commit: impl Fn(&S) -> Result<T, StoreError> + Clone + Send + 'static,
) -> Result<T, Unwritten> {
    otstream_schema::file::until_done(carried, retry_initial_ms, shutdown, "sink", what, commit)
        .await
}

/// Why the sink stage ended before its input.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// A write thread panicked (a bug); its batch is not acknowledged.
    #[error("sink write failed: {0}")]
    Thread(String),
    /// The stored device state could not be read from the embedded store.
    #[error("cannot read the stored device state: {0}")]
    Store(#[from] StoreError),
    /// The stored device state could not be read from ClickHouse.
    #[error("cannot read the stored device state: {0}")]
    ClickHouse(#[from] clickhouse::ClickHouseError),
}

/// The sink stage on `backend`: its input is every record to store, one
/// merged link (the geofence stage's output in one process, a consumer of
/// every topic over Kafka); it has no output but the store.
pub struct SinkStage<B, S = NoStep> {
    backend: B,
    committed: Option<Committed>,
    step: S,
}

impl<B: Backend> SinkStage<B> {
    /// Writes to `backend`.
    pub fn new(backend: B) -> Self {
        SinkStage {
            backend,
            committed: None,
            step: NoStep,
        }
    }
}

impl<B: Backend, S: Step<Record>> SinkStage<B, S> {
    /// Runs `step` on every batch before writing it (the outgoing step:
    /// places named, events queued for delivery, defined elsewhere).
    pub fn with_step<T: Step<Record>>(self, step: T) -> SinkStage<B, T> {
        SinkStage {
            backend: self.backend,
            committed: self.committed,
            step,
        }
    }

    /// Announces what it commits on `committed` (the live feed).
    pub fn announcing(mut self, committed: Option<Committed>) -> Self {
        self.committed = committed;
        self
    }
}

impl<B: Backend, S: Step<Record>, R: Receiver<Record>> Stage<R, ()> for SinkStage<B, S> {
    type Error = SinkError;

    /// Reads records, writes them in batches, settles their acks once
    /// durable and announces them. Returns when the input is closed and
    /// drained (graceful), or when `shutdown` is cancelled (hard stop:
    /// whatever is not durable stays unacknowledged, so its senders retry).
    async fn run(
        self,
        input: R,
        _output: (),
        shutdown: CancellationToken,
    ) -> Result<(), SinkError> {
        write(self.backend, input, self.committed, self.step, shutdown).await
    }
}

async fn write<B: Backend, S: Step<Record>>(
    mut backend: B,
    mut input: impl Receiver<Record>,
    committed: Option<Committed>,
    step: S,
    shutdown: CancellationToken,
) -> Result<(), SinkError> {
    let Batching {
        max_rows,
        max_bytes,
        linger,
    } = backend.batching();
    let mut batch: Vec<Message<Record>> = Vec::new();
    // What arrives while `batch` is written: the next batch's start, the
    // step's CPU work done on it. Receiving (and preparing) beside the
    // write, rather than after it, keeps the stages upstream moving during
    // a commit and takes that work off the commit's critical path.
    let mut next: Vec<Message<Record>> = Vec::new();
    let mut closed = false;
    // The last batch committed, its acks settled while the next is written.
    let mut durable = Durable(Vec::new());
    loop {
        std::mem::swap(&mut batch, &mut next);
        // Records that came during the last write were prepared then.
        let prepared = batch.len();
        if batch.is_empty() {
            // Nothing to write next: nobody waits for a write to start.
            durable.settle();
            if closed {
                return Ok(());
            }
            let n = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                n = input.recv_many(&mut batch, max_rows) => n,
            };
            if n == 0 {
                return Ok(());
            }
        }
        // Let the batch gather company for at most `linger`.
        let deadline = tokio::time::Instant::now() + linger;
        let (mut bytes, mut counted) = (0usize, 0);
        while !closed {
            bytes += batch[counted..]
                .iter()
                .map(|m| estimate(&m.value))
                .sum::<usize>();
            counted = batch.len();
            if batch.len() >= max_rows || bytes >= max_bytes {
                break;
            }
            let room = max_rows - batch.len();
            if linger.is_zero() {
                // What is waiting now, without a timer: an elapsed deadline
                // still waits for the time driver's next tick, measured at
                // about a millisecond per commit, a quarter of serve's
                // commit cycle at 256 clients.
                match waiting(&mut input, &mut batch, room).await {
                    Some(0) => closed = true,
                    Some(_) => continue,
                    None => {}
                }
                break;
            }
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                r = tokio::time::timeout_at(deadline, input.recv_many(&mut batch, room)) => match r {
                    Ok(0) => { closed = true; break }
                    Ok(_) => {}
                    Err(_) => break,
                },
            }
        }
        step.arrived(&mut batch[prepared..]);
        // What the step owes before the rows (events durable in their
        // queues: a crash between the two delivers one again, never loses
        // one); the last batch's acks settled first when that may take a
        // while (else they are settled beside the write).
        if step.waits() {
            durable.settle();
        }
        match step.before(&mut batch, &shutdown).await {
            Ok(()) => {}
            Err(StepEnd::Stopped) => return Ok(()),
            Err(StepEnd::Failed(why)) => return Err(SinkError::Thread(why)),
        }
        let written = {
            let write = backend.write(&mut batch, &shutdown);
            tokio::pin!(write);
            loop {
                let room = max_rows.saturating_sub(next.len());
                tokio::select! {
                    biased;
                    r = &mut write => break r,
                    // Once the write is under way (the first poll started it).
                    () = std::future::ready(()), if !durable.0.is_empty() => durable.settle(),
                    n = input.recv_many(&mut next, room), if room > 0 && !closed => {
                        if n == 0 {
                            closed = true;
                        } else {
                            let from = next.len() - n;
                            step.arrived(&mut next[from..]);
                        }
                    }
                }
            }
        };
        let refused = match written {
            Ok(refused) => refused,
            Err(e) => return crate::ended(e),
        };
        let refused: std::collections::HashSet<usize> = refused.into_iter().collect();
        announce(
            committed.as_ref(),
            batch
                .iter()
                .enumerate()
                .filter(|(i, _)| !refused.contains(i))
                .map(|(_, m)| &m.value),
        );
        durable.settle();
        std::mem::swap(&mut durable.0, &mut batch);
    }
}

/// A committed batch. Its acks are settled while the next batch is
/// written: delivering a hundred acks, each waking a waiting request,
/// took 8 % of serve's commit cycle when it came between two commits
/// (measured). Settled when dropped too, so that no way out of the loop
/// leaves a durable message unacknowledged.
struct Durable(Vec<Message<Record>>);

impl Durable {
    fn settle(&mut self) {
        for m in self.0.drain(..) {
            m.ack.delivered();
        }
    }
}

impl Drop for Durable {
    fn drop(&mut self) {
        self.settle();
    }
}

/// Up to `limit` records that are waiting in `input` now, appended to
/// `buf`: `Some(n)` (0 when the input is closed), `None` when nothing is
/// waiting. Never waits.
async fn waiting<T, R: Receiver<T>>(
    input: &mut R,
    buf: &mut Vec<Message<T>>,
    limit: usize,
) -> Option<usize> {
    let mut recv = std::pin::pin!(input.recv_many(buf, limit));
    std::future::poll_fn(|cx| match recv.as_mut().poll(cx) {
        std::task::Poll::Ready(n) => std::task::Poll::Ready(Some(n)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await
}

/// A cheap estimate of a record's size on the wire, for `max_bytes`.
pub(crate) fn estimate(r: &Record) -> usize {
    match r {
        Record::Card(c) => 128 + c.face.as_ref().map_or(0, String::len),
        Record::Configuration(c) => 128 + c.config.len(),
        Record::DeadLetter(d) => 128 + d.payload.len() + d.message.len(),
        Record::Position(p) => 160 + p.extra.as_ref().map_or(0, String::len),
        _ => 192,
    }
}

/// The embedded store as the sink's backend: group commits, each retried
/// with backoff until it succeeds.
pub struct SqliteBackend {
    config: SinkConfig,
    // Shared with the blocking thread that commits; only one commit runs
    // at a time, so the lock is never contended.
    store: std::sync::Arc<std::sync::Mutex<Store>>,
}

impl SqliteBackend {
    /// Writes to `store`, batching as `config` says.
    pub fn new(config: SinkConfig, store: Store) -> Self {
        SqliteBackend {
            config,
            store: std::sync::Arc::new(std::sync::Mutex::new(store)),
        }
    }
}

impl Backend for SqliteBackend {
    fn batching(&self) -> Batching {
        Batching {
            max_rows: self.config.max_batch_rows,
            max_bytes: usize::MAX,
            linger: Duration::from_millis(self.config.linger_ms),
        }
    }

    async fn write(
        &mut self,
        batch: &mut Vec<Message<Record>>,
        shutdown: &CancellationToken,
    ) -> Result<Vec<usize>, Unwritten> {
        let store = self.store.clone();
        commit_until_done(
            batch,
            self.config.retry_initial_ms,
            shutdown,
            "store commit",
            move |values| {
                // A commit that panicked ends the stage; its lock is not taken
                // again.
                store
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .write(values.iter().map(|m| &m.value))
            },
        )
        .await?;
        Ok(Vec::new())
    }

    async fn stored_state(&self) -> Result<Vec<StateSnapshot>, SinkError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            store
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .load_states()
        })
        .await
        .map_err(|e| SinkError::Thread(e.to_string()))?
        .map_err(SinkError::from)
    }
}
