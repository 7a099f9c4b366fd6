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
//! messages are received and not yet settled: past that the receiver
//! stops taking messages, and the lag grows on the broker, not in memory.
//! A message that fails downstream is read again: its partition is rewound
//! to it (at-least-once; duplicates collapse on the tables' keys). A member
//! losing partitions in a rebalance first lets their messages in flight
//! settle and commits them, so per-device order survives scaling out.
//!
//! End to end: the ingress watches the lag of the groups after it
//! ([`watch_lag`]) and refuses new messages while it is over `max_lag`.

pub mod codec;
mod lag;
mod offsets;
mod receiver;

use otstream_model::ConfigError;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use serde::Deserialize;

pub use codec::KafkaCodec;
pub use lag::{LagWatch, watch_lag};
pub use receiver::{AssignHook, KafkaReceiver, ReceiverClosed};

use crate::{Ack, BusError, Message, Sender};

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
    /// In front of each stage's consumer group name (`otstream-decode`, ...).
    #[serde(default = "default_group_prefix")]
    pub group_prefix: String,
    /// Static group membership (`group.instance.id`): a member restarted
    /// with the same id takes its partitions straight back instead of
    /// waiting for the broker to notice the old one is gone. Give each
    /// replica a stable, unique id (a StatefulSet pod name); a member with
    /// one does not leave its group when it stops, so scaling down waits
    /// for the session timeout.
    #[serde(default)]
    pub instance_id: Option<String>,
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
    /// How long a consumer losing partitions waits for their messages in
    /// flight to settle before letting them go, ms.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// The ingress refuses (HTTP 503, MQTT unacked) while the stages after
    /// it are this many messages behind; 0: no bound.
    #[serde(default = "default_max_lag")]
    pub max_lag: u64,
    /// The stages whose lag the ingress watches (their groups must exist:
    /// a stage not deployed counts as never having read anything).
    #[serde(default = "default_lag_stages")]
    pub lag_stages: Vec<String>,
    /// Further librdkafka properties, passed as they are.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_prefix() -> String {
    otstream_model::topics::DEFAULT_PREFIX.to_owned()
}
fn default_group_prefix() -> String {
    "otstream-".to_owned()
}
fn default_lag_stages() -> Vec<String> {
    ["decode", "geofence", "sink"].map(String::from).to_vec()
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
fn default_drain_timeout_ms() -> u64 {
    30_000
}
fn default_max_lag() -> u64 {
    1_000_000
}

impl KafkaConfig {
    /// A configuration for `brokers` with the defaults.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic_prefix: default_prefix(),
            group_prefix: default_group_prefix(),
            instance_id: None,
            partitions: default_partitions(),
            replication: default_replication(),
            retention_ms: default_retention_ms(),
            linger_ms: default_linger_ms(),
            producer_queue_messages: default_producer_queue(),
            max_in_flight: default_max_in_flight(),
            prefetch_kib: default_prefetch_kib(),
            drain_timeout_ms: default_drain_timeout_ms(),
            max_lag: default_max_lag(),
            lag_stages: default_lag_stages(),
            properties: BTreeMap::new(),
        }
    }

    /// Checks the values make sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.brokers.is_empty() {
            return Err(ConfigError::new(
                "kafka.brokers",
                "kafka.brokers (or --brokers) is required",
            ));
        }
        if self.partitions < 1 || self.max_in_flight == 0 {
            return Err(ConfigError::new(
                "kafka.partitions",
                "kafka.partitions and kafka.max_in_flight must be at least 1",
            ));
        }
        Ok(())
    }

    fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        c
    }

    /// `properties` on top of what a client sets for itself: the user's
    /// word is the last (e.g. `compression.type = "none"` on loopback).
    fn finish<'c>(&self, c: &'c mut ClientConfig) -> &'c mut ClientConfig {
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// The consumer group of `stage`.
    pub fn group(&self, stage: &str) -> String {
        format!("{}{stage}", self.group_prefix)
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
pub const TOPICS: [(&str, bool); 7] = [
    (otstream_model::topics::RAW, false),
    (otstream_model::topics::POSITIONS, false),
    (otstream_model::topics::EVENTS, false),
    (otstream_model::topics::RECORDS, false),
    (otstream_model::topics::DEAD_LETTERS, false),
    (otstream_model::topics::STATE, true),
    (otstream_model::topics::NEAR, false),
];

/// Creates the topics that do not exist yet; returns each topic with
/// whether it was created now (false: it existed).
pub async fn create_topics(config: &KafkaConfig) -> Result<Vec<(String, bool)>, KafkaBusError> {
    let admin: AdminClient<DefaultClientContext> = config.finish(&mut config.client()).create()?;
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

/// Settles each sent message's ack from librdkafka's delivery report, on
/// the producer's polling thread. A task and a oneshot channel per message
/// (rdkafka's `FutureProducer`) cost more than the report itself at tens of
/// thousands of messages a second.
struct AckOnDelivery;

impl rdkafka::ClientContext for AckOnDelivery {}

impl ProducerContext for AckOnDelivery {
    type DeliveryOpaque = Box<Ack>;

    fn delivery(&self, result: &DeliveryResult<'_>, ack: Box<Ack>) {
        match result {
            Ok(_) => ack.delivered(),
            Err((e, _)) => {
                tracing::warn!(error = %e, "kafka delivery failed");
                ack.fail();
            }
        }
    }
}

/// Sends stage values to their topics.
pub struct KafkaSender<T> {
    // Dropping the last sender drops the producer, and with it the acks of
    // messages not yet delivered: their senders hear "not delivered".
    producer: Arc<ThreadedProducer<AckOnDelivery>>,
    prefix: Arc<str>,
    send_timeout: Option<Duration>,
    lag: Option<LagWatch>,
    _values: PhantomData<fn(T)>,
}

impl<T> Clone for KafkaSender<T> {
    fn clone(&self) -> Self {
        Self {
            producer: self.producer.clone(),
            prefix: self.prefix.clone(),
            send_timeout: self.send_timeout,
            lag: self.lag.clone(),
            _values: PhantomData,
        }
    }
}

impl<T> KafkaSender<T> {
    /// An idempotent `acks=all` producer.
    pub fn new(config: &KafkaConfig) -> Result<Self, KafkaBusError> {
        let mut client = config.client();
        client
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
            .set("message.timeout.ms", "30000");
        let producer = config
            .finish(&mut client)
            .create_with_context(AckOnDelivery)?;
        Ok(Self {
            producer: Arc::new(producer),
            prefix: config.topic_prefix.as_str().into(),
            send_timeout: None,
            lag: None,
            _values: PhantomData,
        })
    }

    /// Waits at most `timeout` for room in the producer's queue, then
    /// fails with [`BusError::Overloaded`]. Without it, a send waits.
    pub fn with_send_timeout(mut self, timeout: Duration) -> Self {
        self.send_timeout = Some(timeout);
        self
    }

    /// Treats `lag` over its bound like a full queue (sends wait, or fail
    /// past the deadline): the end-to-end backpressure of the ingress.
    pub fn with_lag_limit(mut self, lag: LagWatch) -> Self {
        self.lag = Some(lag);
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
                value: Some(value.as_ref()),
            });
        }
        let deadline = self.send_timeout.map(|t| tokio::time::Instant::now() + t);
        // Over the lag bound is "full" too: wait for the stages after this
        // one to catch up, or give up at the deadline.
        while self.lag.as_ref().is_some_and(LagWatch::over) {
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                return Err(BusError::Overloaded);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The ack travels with the message as its delivery opaque and is
        // settled by the delivery report (`AckOnDelivery`); a send that
        // fails hands it back and drops it, which fails it.
        let mut record = BaseRecord::with_opaque_to(&topic, Box::new(msg.ack))
            .key(msg.key.as_bytes())
            .payload(payload.as_ref())
            .headers(h);
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
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
        }
    }

    fn depth(&self) -> usize {
        usize::try_from(self.producer.in_flight_count()).unwrap_or(0)
    }
}

/// A consumed message's key and value, its headers looked up by name.
fn decode_message<T: KafkaCodec>(
    m: &rdkafka::message::BorrowedMessage<'_>,
) -> Result<(String, T), String> {
    use rdkafka::message::{Headers, Message as _};
    let headers = m.headers();
    let lookup = |name: &str| -> Option<&[u8]> {
        headers.and_then(|h| h.iter().find(|x| x.key == name).and_then(|x| x.value))
    };
    let value = T::decode(m.payload().unwrap_or_default(), &lookup)?;
    let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
    Ok((key, value))
}

/// Reads `partitions` of `topic` (name without prefix) from their start to
/// their end as of now: for a compacted topic, the latest value of every
/// key in them, in order. Blocking; fails past `timeout`.
pub fn read_to_end<T: KafkaCodec>(
    config: &KafkaConfig,
    topic: &str,
    partitions: &[i32],
    timeout: Duration,
) -> Result<Vec<Message<T>>, KafkaBusError> {
    let mut out = Vec::new();
    read_partitions(config, topic, Some(partitions), None, timeout, |m| {
        out.push(m)
    })?;
    Ok(out)
}

/// Reads every partition of `topic` (name without prefix) from the first
/// message stamped at or after `from_ms` (milliseconds since the UNIX
/// epoch; `None` for the start) to its end as of now, handing each message
/// to `each` in partition order. Blocking; fails past `timeout`.
pub fn read_since<T: KafkaCodec>(
    config: &KafkaConfig,
    topic: &str,
    from_ms: Option<i64>,
    timeout: Duration,
    each: impl FnMut(Message<T>),
) -> Result<(), KafkaBusError> {
    read_partitions(config, topic, None, from_ms, timeout, each)
}

fn read_partitions<T: KafkaCodec>(
    config: &KafkaConfig,
    topic: &str,
    partitions: Option<&[i32]>,
    from_ms: Option<i64>,
    timeout: Duration,
    mut each: impl FnMut(Message<T>),
) -> Result<(), KafkaBusError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message as _;
    use rdkafka::{Offset, TopicPartitionList};

    let deadline = std::time::Instant::now() + timeout;
    let name = config.topic(topic);
    let mut client = config.client();
    client
        .set("group.id", "otstream-reader")
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer = config.finish(&mut client).create()?;
    let partitions: Vec<i32> = match partitions {
        Some(p) => p.to_vec(),
        None => consumer
            .fetch_metadata(Some(&name), timeout)?
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect(),
    };
    let mut starts = TopicPartitionList::new();
    for &p in &partitions {
        let start = from_ms.map_or(Offset::Beginning, Offset::Offset);
        starts.add_partition_offset(&name, p, start)?;
    }
    if from_ms.is_some() {
        // Timestamps to offsets; a partition with nothing that late maps
        // to its end.
        starts = consumer.offsets_for_times(starts, timeout)?;
    }
    let mut ends = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        let (low, high) = consumer.fetch_watermarks(&name, p, timeout)?;
        let start = match starts.find_partition(&name, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o.max(low),
            Some(Offset::End) => high,
            _ => low,
        };
        if high > start {
            ends.insert(p, high);
            tpl.add_partition_offset(&name, p, Offset::Offset(start))?;
        }
    }
    if ends.is_empty() {
        return Ok(());
    }
    consumer.assign(&tpl)?;
    while !ends.is_empty() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(KafkaError::MessageConsumption(RDKafkaErrorCode::OperationTimedOut).into());
        }
        let Some(m) = consumer.poll(left.min(Duration::from_millis(200))) else {
            continue;
        };
        let m = m?;
        if ends
            .get(&m.partition())
            .is_some_and(|&end| m.offset() + 1 >= end)
        {
            ends.remove(&m.partition());
        }
        match decode_message::<T>(&m) {
            Ok((key, v)) => each(Message::new(key, v, crate::Ack::none())),
            Err(why) => {
                tracing::warn!(topic = %name, partition = m.partition(), offset = m.offset(), why, "unreadable message skipped");
            }
        }
    }
    Ok(())
}
