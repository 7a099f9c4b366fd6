//! The Kafka bus: stages as separate processes, linked by topics.
//!
//! Sending: each message goes to its value's topic (`raw`, `positions`,
//! `events`, `records`, `dead-letters`, `state`, under the configured
//! prefix), keyed by device so one device's messages keep their order in
//! one partition. The producer is idempotent with `acks=all`; a message's
//! [`Ack`] is delivered when the broker confirms it, so the ingress answers
//! 200 only for what every in-sync replica holds. When the producer's
//! queue is full, a send waits for room (an inner stage) or, past the
//! sender's deadline, fails with [`BusError::Overloaded`] (the ingress: 503).
//!
//! Receiving: a consumer in a consumer group. Every received message gets
//! an [`Ack`] which the stage clones into everything it derives; the
//! message's offset is committed only once that ack is delivered and every
//! earlier offset of its partition is too. At most `max_in_flight`
//! messages are received and not yet settled: past that the receiver stops
//! reading, the consumer's prefetch (bounded by
//! `queued.max.messages.kbytes`) fills, and the lag grows on the broker,
//! not in memory. A message that fails downstream is read again: its
//! partition is rewound to it (at-least-once; duplicates collapse on the
//! tables' keys).

pub mod codec;

use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;
use tokio::sync::{Semaphore, mpsc};

pub use codec::KafkaCodec;

use crate::{Ack, AckStatus, BusError, Message, Receiver, Sender};

/// Where the brokers are and how to use them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port...]`. May come from a flag; required.
    #[serde(default)]
    pub brokers: String,
    /// In front of every topic name.
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
    /// Partitions of each topic `otstream topics create` makes: the most
    /// consumers of one group that can share a topic.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replication factor of created topics.
    #[serde(default = "default_replication")]
    pub replication: i32,
    /// Retention of created topics, ms (7 days); `state` is compacted instead.
    #[serde(default = "default_retention_ms")]
    pub retention_ms: i64,
    /// Producer linger, ms: batches form while a message waits this long.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u32,
    /// Messages the producer queues before sends wait (or overload).
    #[serde(default = "default_producer_queue")]
    pub producer_queue_messages: u32,
    /// Messages received and not yet settled downstream, per process.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Prefetch bound of a consumer, KiB.
    #[serde(default = "default_prefetch_kib")]
    pub prefetch_kib: u32,
    /// Further librdkafka properties, passed as they are.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_prefix() -> String {
    otstream_model::topics::DEFAULT_PREFIX.to_owned()
}
fn default_partitions() -> i32 {
    6
}
fn default_replication() -> i32 {
    1
}
fn default_retention_ms() -> i64 {
    7 * 24 * 3600 * 1000
}
fn default_linger_ms() -> u32 {
    5
}
fn default_producer_queue() -> u32 {
    100_000
}
fn default_max_in_flight() -> usize {
    10_000
}
fn default_prefetch_kib() -> u32 {
    8 * 1024
}

impl KafkaConfig {
    /// A configuration for `brokers` with the defaults.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic_prefix: default_prefix(),
            partitions: default_partitions(),
            replication: default_replication(),
            retention_ms: default_retention_ms(),
            linger_ms: default_linger_ms(),
            producer_queue_messages: default_producer_queue(),
            max_in_flight: default_max_in_flight(),
            prefetch_kib: default_prefetch_kib(),
            properties: BTreeMap::new(),
        }
    }

    /// Checks the values make sense.
    pub fn validate(&self) -> Result<(), String> {
        if self.brokers.is_empty() {
            return Err("kafka.brokers (or --brokers) is required".into());
        }
        if self.partitions < 1 || self.max_in_flight == 0 {
            return Err("kafka.partitions and kafka.max_in_flight must be at least 1".into());
        }
        Ok(())
    }

    fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// The full name of topic `name`.
    pub fn topic(&self, name: &str) -> String {
        otstream_model::topics::topic_name(&self.topic_prefix, name)
    }
}

/// Why a Kafka client could not be made or used.
#[derive(Debug, thiserror::Error)]
#[error("kafka: {0}")]
pub struct KafkaBusError(#[from] KafkaError);

/// Every topic the stages use, as (name, compacted).
pub const TOPICS: [(&str, bool); 6] = [
    (otstream_model::topics::RAW, false),
    (otstream_model::topics::POSITIONS, false),
    (otstream_model::topics::EVENTS, false),
    (otstream_model::topics::RECORDS, false),
    (otstream_model::topics::DEAD_LETTERS, false),
    (otstream_model::topics::STATE, true),
];

/// Creates the topics that do not exist yet; returns each topic with
/// whether it was created now (false: it existed).
pub async fn create_topics(config: &KafkaConfig) -> Result<Vec<(String, bool)>, KafkaBusError> {
    let admin: AdminClient<DefaultClientContext> = config.client().create()?;
    let names: Vec<String> = TOPICS.iter().map(|(n, _)| config.topic(n)).collect();
    let retention = config.retention_ms.to_string();
    let new: Vec<NewTopic<'_>> = TOPICS
        .iter()
        .zip(&names)
        .map(|((_, compacted), name)| {
            let t = NewTopic::new(
                name,
                config.partitions,
                TopicReplication::Fixed(config.replication),
            );
            if *compacted {
                t.set("cleanup.policy", "compact")
            } else {
                t.set("retention.ms", &retention)
            }
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics(&new, &opts).await?;
    let mut out = Vec::new();
    for r in results {
        match r {
            Ok(name) => out.push((name, true)),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => out.push((name, false)),
            Err((_, code)) => return Err(KafkaError::AdminOp(code).into()),
        }
    }
    Ok(out)
}

/// Sends stage values to their topics.
pub struct KafkaSender<T> {
    producer: FutureProducer,
    prefix: Arc<str>,
    send_timeout: Option<Duration>,
    _values: PhantomData<fn(T)>,
}

impl<T> Clone for KafkaSender<T> {
    fn clone(&self) -> Self {
        Self {
            producer: self.producer.clone(),
            prefix: self.prefix.clone(),
            send_timeout: self.send_timeout,
            _values: PhantomData,
        }
    }
}

impl<T> KafkaSender<T> {
    /// An idempotent `acks=all` producer.
    pub fn new(config: &KafkaConfig) -> Result<Self, KafkaBusError> {
        let producer: FutureProducer = config
            .client()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", config.linger_ms.to_string())
            .set("compression.type", "lz4")
            .set(
                "queue.buffering.max.messages",
                config.producer_queue_messages.to_string(),
            )
            // A delivery that cannot complete in this time fails its ack
            // (the client retries) instead of hanging it.
            .set("message.timeout.ms", "30000")
            .create()?;
        Ok(Self {
            producer,
            prefix: config.topic_prefix.as_str().into(),
            send_timeout: None,
            _values: PhantomData,
        })
    }

    /// Waits at most `timeout` for room in the producer's queue, then
    /// fails with [`BusError::Overloaded`]. Without it, a send waits.
    pub fn with_send_timeout(mut self, timeout: Duration) -> Self {
        self.send_timeout = Some(timeout);
        self
    }

    /// Waits until everything sent is delivered (or `timeout`): for a
    /// graceful stop.
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(error = %e, "kafka producer flush incomplete");
        }
    }
}

impl<T: KafkaCodec> Sender<T> for KafkaSender<T> {
    async fn send(&self, msg: Message<T>) -> Result<(), BusError> {
        let (payload, headers) = msg.value.encode();
        let topic = otstream_model::topics::topic_name(&self.prefix, msg.value.topic());
        let mut h = OwnedHeaders::new_with_capacity(headers.len());
        for (key, value) in &headers {
            h = h.insert(Header {
                key,
                value: Some(value),
            });
        }
        let deadline = self.send_timeout.map(|t| tokio::time::Instant::now() + t);
        let mut record = FutureRecord::to(&topic)
            .key(msg.key.as_bytes())
            .payload(payload.as_ref())
            .headers(h);
        let delivery = loop {
            match self.producer.send_result(record) {
                Ok(d) => break d,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                        return Err(BusError::Overloaded);
                    }
                    record = r;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((e, _)) => {
                    tracing::error!(error = %e, topic, "kafka produce failed");
                    return Err(BusError::Closed);
                }
            }
        };
        let ack = msg.ack;
        tokio::spawn(async move {
            match delivery.await {
                Ok(Ok(_)) => ack.delivered(),
                Ok(Err((e, _))) => {
                    tracing::warn!(error = %e, "kafka delivery failed");
                    ack.fail();
                }
                Err(_) => ack.fail(),
            }
        });
        Ok(())
    }

    fn depth(&self) -> usize {
        usize::try_from(self.producer.in_flight_count()).unwrap_or(0)
    }
}

/// One received message's place, settled by its ack.
struct Settled {
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    status: AckStatus,
}

/// Receives stage values from topics, in a consumer group.
pub struct KafkaReceiver<T> {
    consumer: Arc<StreamConsumer>,
    permits: Arc<Semaphore>,
    received: mpsc::UnboundedSender<(Arc<str>, i32, i64)>,
    settled: mpsc::UnboundedSender<Settled>,
    topics: Vec<Arc<str>>,
    _values: PhantomData<fn() -> T>,
}

impl<T> KafkaReceiver<T> {
    /// A consumer in `group` reading `topics` (names without prefix), from
    /// the earliest offset when the group has none.
    pub fn new(config: &KafkaConfig, group: &str, topics: &[&str]) -> Result<Self, KafkaBusError> {
        let consumer: StreamConsumer = config
            .client()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set(
                "queued.max.messages.kbytes",
                config.prefetch_kib.to_string(),
            )
            .create()?;
        let names: Vec<String> = topics.iter().map(|t| config.topic(t)).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        consumer.subscribe(&refs)?;
        let consumer = Arc::new(consumer);
        let (received, received_rx) = mpsc::unbounded_channel();
        let (settled, settled_rx) = mpsc::unbounded_channel();
        tokio::spawn(commit_loop(consumer.clone(), received_rx, settled_rx));
        Ok(Self {
            consumer,
            permits: Arc::new(Semaphore::new(config.max_in_flight)),
            received,
            settled,
            topics: names.into_iter().map(Arc::from).collect(),
            _values: PhantomData,
        })
    }

    /// Takes one message off the consumer (waiting for one when `wait`).
    async fn take(&mut self, wait: bool) -> Option<Message<T>>
    where
        T: KafkaCodec,
    {
        let permit = if wait {
            self.permits.clone().acquire_owned().await.ok()?
        } else {
            self.permits.clone().try_acquire_owned().ok()?
        };
        let m = if wait {
            loop {
                match self.consumer.recv().await {
                    Ok(m) => break m,
                    Err(e) => {
                        tracing::warn!(error = %e, "kafka consume error");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        } else {
            match tokio::time::timeout(Duration::ZERO, self.consumer.recv()).await {
                Ok(Ok(m)) => m,
                _ => return None,
            }
        };
        let topic = self
            .topics
            .iter()
            .find(|t| ***t == *m.topic())
            .cloned()
            .unwrap_or_else(|| Arc::from(m.topic()));
        let (partition, offset) = (m.partition(), m.offset());
        let _ = self.received.send((topic.clone(), partition, offset));
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        let headers = m.headers();
        let lookup = |name: &str| -> Option<&[u8]> {
            headers.and_then(|h| h.iter().find(|x| x.key == name).and_then(|x| x.value))
        };
        let value = T::decode(m.payload().unwrap_or_default(), &lookup);
        let (ack, waiter) = Ack::new();
        let settled = self.settled.clone();
        tokio::spawn(async move {
            let status = waiter.await;
            drop(permit);
            let _ = settled.send(Settled {
                topic,
                partition,
                offset,
                status,
            });
        });
        match value {
            Ok(value) => Some(Message::new(key, value, ack)),
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
                ack.delivered();
                None
            }
        }
    }
}

impl<T: KafkaCodec> Receiver<T> for KafkaReceiver<T> {
    async fn recv_many(&mut self, buf: &mut Vec<Message<T>>, limit: usize) -> usize {
        let mut n = 0;
        while n == 0 {
            if let Some(m) = self.take(true).await {
                buf.push(m);
                n += 1;
            }
        }
        while n < limit {
            match self.take(false).await {
                Some(m) => {
                    buf.push(m);
                    n += 1;
                }
                None => break,
            }
        }
        n
    }
}

/// Commits, per partition, the offset after the longest run of settled
/// messages; rewinds a partition to a message that failed downstream.
async fn commit_loop(
    consumer: Arc<StreamConsumer>,
    mut received: mpsc::UnboundedReceiver<(Arc<str>, i32, i64)>,
    mut settled: mpsc::UnboundedReceiver<Settled>,
) {
    #[derive(Default)]
    struct Partition {
        outstanding: BTreeSet<i64>,
        next: i64,
        committed: i64,
        /// Rewound to this offset and not yet read it again: failures at
        /// or after it will be read again anyway.
        rewound_to: Option<i64>,
    }
    let mut parts: BTreeMap<(Arc<str>, i32), Partition> = BTreeMap::new();
    let note_received = |parts: &mut BTreeMap<(Arc<str>, i32), Partition>, (t, p, o)| {
        let part: &mut Partition = parts.entry((t, p)).or_default();
        part.outstanding.insert(o);
        if part.rewound_to == Some(o) {
            part.rewound_to = None;
        }
    };
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            r = received.recv() => match r {
                Some(r) => note_received(&mut parts, r),
                None => return,
            },
            s = settled.recv() => match s {
                Some(s) => {
                    // The received notice of this offset was sent first.
                    while let Ok(r) = received.try_recv() {
                        note_received(&mut parts, r);
                    }
                    let part = parts.entry((s.topic.clone(), s.partition)).or_default();
                    match s.status {
                        AckStatus::Delivered => {
                            part.outstanding.remove(&s.offset);
                            part.next = part.next.max(s.offset + 1);
                        }
                        AckStatus::Failed if part.rewound_to.is_some_and(|r| r <= s.offset) => {
                            part.outstanding.remove(&s.offset);
                        }
                        AckStatus::Failed => {
                            tracing::warn!(topic = %s.topic, partition = s.partition, offset = s.offset, "message not delivered downstream; reading it again");
                            // Everything from here on is read again; what
                            // was delivered past it is delivered twice.
                            part.outstanding.retain(|o| *o < s.offset);
                            part.next = part.next.min(s.offset);
                            part.rewound_to = Some(s.offset);
                            if let Err(e) = consumer.seek(&s.topic, s.partition, Offset::Offset(s.offset), Duration::from_secs(5)) {
                                tracing::error!(error = %e, "kafka seek failed");
                            }
                        }
                    }
                }
                None => return,
            },
            _ = tick.tick() => {
                let mut tpl = TopicPartitionList::new();
                for ((t, p), part) in &mut parts {
                    let point = part.outstanding.first().copied().unwrap_or(part.next);
                    if point > part.committed
                        && tpl.add_partition_offset(t, *p, Offset::Offset(point)).is_ok()
                    {
                        part.committed = point;
                    }
                }
                if tpl.count() > 0 {
                    if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                        tracing::warn!(error = %e, "kafka offset commit failed");
                    }
                }
            }
        }
    }
}
