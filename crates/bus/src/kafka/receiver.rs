//! The consuming side: a consumer-group member on its own thread.
//!
//! librdkafka runs rebalances inside `poll`, and a member that stops
//! polling for `max.poll.interval.ms` is thrown out of its group. So one
//! thread per receiver polls all the time, whatever the stage is doing:
//! - it hands each message to the stage with a fresh [`Ack`] and counts it
//!   in flight; at `max_in_flight` it stops taking messages until some
//!   settle, so the lag grows on the broker, not in memory (librdkafka
//!   heartbeats on its own thread; a stall longer than
//!   `max.poll.interval.ms` costs a rejoin, never a message);
//! - every 100 ms it commits each partition's settled run (see
//!   [`super::offsets`]) and rewinds partitions whose messages failed;
//! - when partitions are taken away it first waits (up to
//!   `drain_timeout_ms`) for their messages in flight to settle, then
//!   commits them: the next owner starts where this one really ended, so
//!   one device's records never come out of two members at once and stay
//!   in order;
//! - when partitions are given, the optional [`AssignHook`] puts messages
//!   in front of theirs (the geofence stage restores its device state).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message as _;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};

use super::offsets::{Offsets, Tp};
use super::{KafkaBusError, KafkaCodec, KafkaConfig, decode_message};
use crate::{Ack, AckStatus, Message, Receiver};

/// Called with the partitions just assigned (full topic names); what it
/// returns is received before any message of theirs. Runs on the polling
/// thread, so it may block.
pub type AssignHook<T> = Box<dyn Fn(&[(String, i32)]) -> Vec<Message<T>> + Send + Sync>;

struct Shared {
    offsets: Mutex<Offsets>,
    settled: Condvar,
    seeks: Mutex<Vec<(Tp, i64)>>,
}

impl Shared {
    fn offsets(&self) -> MutexGuard<'_, Offsets> {
        // The bookkeeping stays consistent across a panic elsewhere:
        // every update is a few field writes.
        self.offsets.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn settle(&self, tp: &Tp, offset: i64, status: AckStatus) {
        let rewind = self.offsets().settled(tp, offset, status);
        if let Some(to) = rewind {
            tracing::warn!(topic = %tp.0, partition = tp.1, offset = to, "message not delivered downstream; reading it again");
            self.seeks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((tp.clone(), to));
        }
        self.settled.notify_all();
    }
}

struct Ctx<T> {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Message<T>>,
    on_assign: Option<AssignHook<T>>,
    drain_timeout: Duration,
}

fn partitions(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

fn commit_list(points: &[(Tp, i64)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for ((t, p), o) in points {
        // Only fails for an invalid offset kind, which these are not.
        let _ = tpl.add_partition_offset(t, *p, Offset::Offset(*o));
    }
    tpl
}

impl<T: Send + 'static> Ctx<T> {
    /// Waits for the messages in flight of `parts` to settle, or the
    /// timeout (then they are read again by whoever gets the partitions).
    fn drain(&self, parts: &[(String, i32)], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut offsets = self.shared.offsets();
        loop {
            let left: usize = parts.iter().map(|(t, p)| offsets.pending(t, *p)).sum();
            if left == 0 {
                return;
            }
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!(
                    left,
                    "partitions given up with messages still in flight: they will be read again"
                );
                return;
            }
            offsets = self
                .shared
                .settled
                .wait_timeout(offsets, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl<T: Send + 'static> ClientContext for Ctx<T> {}

impl<T: Send + 'static> ConsumerContext for Ctx<T> {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let parts = partitions(tpl);
        let lost = consumer.assignment_lost();
        if !lost {
            self.drain(&parts, self.drain_timeout);
        }
        let points = self.shared.offsets().revoke(&parts);
        if !lost && !points.is_empty() {
            if let Err(e) = consumer.commit(&commit_list(&points), CommitMode::Sync) {
                tracing::warn!(error = %e, "kafka commit of revoked partitions failed");
            }
        }
        tracing::info!(partitions = parts.len(), lost, "kafka partitions revoked");
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(tpl) = rebalance else {
            return;
        };
        let parts = partitions(tpl);
        tracing::info!(partitions = parts.len(), "kafka partitions assigned");
        if let Some(hook) = &self.on_assign {
            for m in hook(&parts) {
                let _ = self.tx.send(m);
            }
        }
    }
}

/// Resolves once a receiver's polling thread has committed what settled
/// and left its group.
#[derive(Clone)]
pub struct ReceiverClosed(watch::Receiver<bool>);

impl ReceiverClosed {
    /// Waits for it.
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|done| *done).await;
    }
}

/// Receives stage values from topics, in a consumer group.
pub struct KafkaReceiver<T> {
    rx: mpsc::UnboundedReceiver<Message<T>>,
    stop: Arc<AtomicBool>,
    closed: watch::Receiver<bool>,
}

impl<T: KafkaCodec> KafkaReceiver<T> {
    /// A member of `group` reading `topics` (names without prefix), from
    /// the earliest offset when the group has none.
    pub fn new(config: &KafkaConfig, group: &str, topics: &[&str]) -> Result<Self, KafkaBusError> {
        Self::with_assign_hook(config, group, topics, None)
    }

    /// As [`KafkaReceiver::new`], with `on_assign` run on every assignment.
    pub fn with_assign_hook(
        config: &KafkaConfig,
        group: &str,
        topics: &[&str],
        on_assign: Option<AssignHook<T>>,
    ) -> Result<Self, KafkaBusError> {
        let shared = Arc::new(Shared {
            offsets: Mutex::new(Offsets::default()),
            settled: Condvar::new(),
            seeks: Mutex::new(Vec::new()),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let ctx = Ctx {
            shared: shared.clone(),
            tx: tx.clone(),
            on_assign,
            drain_timeout: Duration::from_millis(config.drain_timeout_ms),
        };
        let mut client = config.client();
        if let Some(id) = &config.instance_id {
            client.set("group.instance.id", id);
        }
        client
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set(
                "queued.max.messages.kbytes",
                config.prefetch_kib.to_string(),
            );
        let consumer: BaseConsumer<Ctx<T>> = config.finish(&mut client).create_with_context(ctx)?;
        let names: Vec<String> = topics.iter().map(|t| config.topic(t)).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        consumer.subscribe(&refs)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (closed_tx, closed) = watch::channel(false);
        let poller = Poller {
            consumer,
            shared,
            tx,
            stop: stop.clone(),
            max_in_flight: config.max_in_flight,
            topics: names.into_iter().map(Arc::from).collect(),
        };
        std::thread::Builder::new()
            .name(format!("kafka-{group}"))
            .spawn(move || {
                poller.run();
                let _ = closed_tx.send(true);
            })
            .map_err(|e| {
                KafkaBusError(rdkafka::error::KafkaError::ClientCreation(e.to_string()))
            })?;
        Ok(Self { rx, stop, closed })
    }

    /// Setting this flag stops the receiver taking messages: it lets those
    /// handed out settle, commits, leaves its group and then reports the
    /// end of input (`recv_many` returns 0), so the stage drains and ends.
    pub fn stop_handle(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Resolves once this receiver, stopped or dropped, has committed and
    /// left.
    pub fn closed(&self) -> ReceiverClosed {
        ReceiverClosed(self.closed.clone())
    }
}

impl<T> Drop for KafkaReceiver<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

impl<T: KafkaCodec> Receiver<T> for KafkaReceiver<T> {
    async fn recv_many(&mut self, buf: &mut Vec<Message<T>>, limit: usize) -> usize {
        self.rx.recv_many(buf, limit).await
    }
}

struct Poller<T: Send + 'static> {
    consumer: BaseConsumer<Ctx<T>>,
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Message<T>>,
    stop: Arc<AtomicBool>,
    max_in_flight: usize,
    topics: Vec<Arc<str>>,
}

impl<T: KafkaCodec> Poller<T> {
    fn run(self) {
        let mut last_commit = Instant::now();
        while !self.stop.load(Ordering::Acquire) && !self.tx.is_closed() {
            if self.shared.offsets().in_flight() >= self.max_in_flight {
                // Not polling leaves the messages on the broker; the
                // group heartbeat goes on in librdkafka's own thread.
                // (Pausing the partitions instead lost messages at the
                // resume in librdkafka 2.12: measured.)
                self.wait_for_room();
            } else {
                match self.consumer.poll(Duration::from_millis(50)) {
                    None => {}
                    Some(Ok(m)) => self.hand_over(&m),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "kafka consume error");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
            self.seek_failed();
            self.commit_every(&mut last_commit);
        }
        // Closing: what the stage still holds settles (delivered or,
        // dropped, failed), then the run is committed and the group left.
        let parts = self
            .consumer
            .assignment()
            .map(|tpl| partitions(&tpl))
            .unwrap_or_default();
        self.consumer
            .context()
            .drain(&parts, Duration::from_secs(5));
        self.commit(CommitMode::Sync);
        self.consumer.unsubscribe();
    }

    fn wait_for_room(&self) {
        let offsets = self.shared.offsets();
        if offsets.in_flight() >= self.max_in_flight {
            let _ = self
                .shared
                .settled
                .wait_timeout(offsets, Duration::from_millis(50));
        }
    }

    fn commit_every(&self, last: &mut Instant) {
        if last.elapsed() >= Duration::from_millis(100) {
            self.commit(CommitMode::Async);
            *last = Instant::now();
        }
    }

    fn commit(&self, mode: CommitMode) {
        let points = self.shared.offsets().take_commits();
        if points.is_empty() {
            return;
        }
        if let Err(e) = self.consumer.commit(&commit_list(&points), mode) {
            tracing::warn!(error = %e, "kafka offset commit failed");
        }
    }

    fn seek_failed(&self) {
        let seeks =
            std::mem::take(&mut *self.shared.seeks.lock().unwrap_or_else(|e| e.into_inner()));
        for ((t, p), o) in seeks {
            if let Err(e) = self
                .consumer
                .seek(&t, p, Offset::Offset(o), Duration::from_secs(5))
            {
                tracing::error!(error = %e, topic = %t, partition = p, offset = o, "kafka seek failed");
            }
        }
    }

    fn hand_over(&self, m: &rdkafka::message::BorrowedMessage<'_>) {
        let topic = self
            .topics
            .iter()
            .find(|t| ***t == *m.topic())
            .cloned()
            .unwrap_or_else(|| Arc::from(m.topic()));
        let (partition, offset) = (m.partition(), m.offset());
        let tp: Tp = (topic, partition);
        self.shared.offsets().received(tp.clone(), offset);
        let (key, value) = match decode_message::<T>(m) {
            Ok(kv) => kv,
            Err(why) => {
                // Not something a stage of this build wrote: skipping it
                // loudly beats stopping every message behind it.
                tracing::error!(
                    topic = m.topic(),
                    partition,
                    offset,
                    why,
                    "unreadable bus message skipped"
                );
                metrics::counter!("otstream_errors_total", "stage" => "bus", "error_code" => "unreadable").increment(1);
                self.shared.settle(&tp, offset, AckStatus::Delivered);
                return;
            }
        };
        // Booked where the last holder settles it (a sink's writer thread,
        // a producer's delivery report): no task or channel per message.
        let shared = self.shared.clone();
        let ack = Ack::on_settle(move |status| shared.settle(&tp, offset, status));
        // The stage is gone: the ack drops with the message, as failed.
        let _ = self.tx.send(Message::new(key, value, ack));
    }
}
