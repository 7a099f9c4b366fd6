//! How far behind the consuming stages are: the end-to-end bound.
//!
//! Kafka holds whatever it is given, so a stopped sink would never slow
//! the ingress down by itself: the topics would grow until the disk is
//! full. The ingress therefore watches the lag of the consumer groups
//! after it (messages in their topics not yet committed) and refuses new
//! messages while the total is over `max_lag`. That is how "the sink is
//! down" reaches the phone as a 503 with Kafka in between.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::{KafkaBusError, KafkaConfig};

/// The last measured total lag, shared with the senders that obey it.
#[derive(Clone, Debug)]
pub struct LagWatch {
    lag: Arc<AtomicU64>,
    known: Arc<AtomicBool>,
    max: u64,
}

impl LagWatch {
    /// Messages the watched groups have not committed, as last measured.
    pub fn lag(&self) -> u64 {
        self.lag.load(Ordering::Relaxed)
    }

    /// Whether new messages should be refused: the lag is over the bound,
    /// or it could not be measured yet.
    pub fn over(&self) -> bool {
        !self.known.load(Ordering::Relaxed) || self.lag() > self.max
    }
}

/// Measures, every `every`, the lag of each `(group, topics)` (topic names
/// without prefix) and sums it; a partition the group never committed
/// counts from its low watermark. Runs on its own thread until `stop`.
pub fn watch_lag(
    config: &KafkaConfig,
    groups: &[(String, Vec<&str>)],
    max_lag: u64,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> Result<LagWatch, KafkaBusError> {
    let mut members = Vec::new();
    for (group, topics) in groups {
        let mut client = config.client();
        client
            .set("group.id", group)
            .set("enable.auto.commit", "false");
        let consumer: BaseConsumer = config.finish(&mut client).create()?;
        let names: Vec<String> = topics.iter().map(|t| config.topic(t)).collect();
        let gauge = metrics::gauge!("otstream_kafka_lag", "group" => group.clone());
        members.push((consumer, names, gauge));
    }
    let watch = LagWatch {
        lag: Arc::new(AtomicU64::new(0)),
        known: Arc::new(AtomicBool::new(false)),
        max: max_lag,
    };
    let out = watch.clone();
    std::thread::Builder::new()
        .name("kafka-lag".into())
        .spawn(move || {
            while !stop.load(Ordering::Acquire) {
                // Groups share topics (the sink and the geofence stage
                // both read positions): each end is asked for once a round.
                let mut marks = Watermarks::default();
                let mut total = Some(0u64);
                for (consumer, names, gauge) in &members {
                    match group_lag(consumer, names, &mut marks) {
                        Ok(lag) => {
                            gauge.set(lag as f64);
                            total = total.map(|t| t + lag);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot measure kafka consumer lag");
                            total = None;
                        }
                    }
                }
                // A failed measurement keeps the last one: the broker
                // being briefly slow to answer is no reason to refuse.
                if let Some(t) = total {
                    out.lag.store(t, Ordering::Relaxed);
                    out.known.store(true, Ordering::Relaxed);
                }
                std::thread::sleep(every);
            }
        })
        .map_err(|e| KafkaBusError(rdkafka::error::KafkaError::ClientCreation(e.to_string())))?;
    Ok(watch)
}

/// Each topic's partitions and each partition's (low, high) watermarks,
/// as asked for in one round.
#[derive(Default)]
struct Watermarks {
    partitions: HashMap<String, Vec<i32>>,
    ends: HashMap<(String, i32), (i64, i64)>,
}

fn group_lag(
    consumer: &BaseConsumer,
    topics: &[String],
    marks: &mut Watermarks,
) -> Result<u64, KafkaBusError> {
    let timeout = Duration::from_secs(5);
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        if !marks.partitions.contains_key(t) {
            let meta = consumer.fetch_metadata(Some(t), timeout)?;
            let ids = meta
                .topics()
                .iter()
                .flat_map(|mt| mt.partitions().iter().map(|p| p.id()))
                .collect();
            marks.partitions.insert(t.clone(), ids);
        }
        for &p in &marks.partitions[t] {
            tpl.add_partition(t, p);
        }
    }
    let committed = consumer.committed_offsets(tpl, timeout)?;
    let mut lag = 0u64;
    for e in committed.elements() {
        let key = (e.topic().to_owned(), e.partition());
        let (low, high) = match marks.ends.get(&key) {
            Some(&m) => m,
            None => {
                let m = consumer.fetch_watermarks(e.topic(), e.partition(), timeout)?;
                marks.ends.insert(key, m);
                m
            }
        };
        let from = match e.offset() {
            Offset::Offset(o) => o.max(low),
            _ => low,
        };
        lag += u64::try_from(high - from).unwrap_or(0);
    }
    Ok(lag)
}
