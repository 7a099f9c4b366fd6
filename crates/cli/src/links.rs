//! The typed ends of the topology's links: [`InProcess`] hands out
//! bounded in-process channels, [`Kafka`] consumers and producers of the
//! topics. The topology ([`crate::topology`]) asks for an end by link and
//! gets it with what its bus needs done when the stage holding it stops
//! (a consumer stops taking messages; a producer flushes, a consumer
//! commits and leaves its group).
//!
//! The links, by name:
//! - `raw`: payloads as received (MQTT; over Kafka the HTTP ingress's too).
//! - `records`: decoded records, the geofence stage's input. In one
//!   process the HTTP ingress puts its decoded records here (decoded once,
//!   at the door); over Kafka they are the `positions` and `records`
//!   topics.
//! - `stored`: everything the sink stores, one merged input. In one
//!   process the geofence stage forwards what it reads onto it with what it
//!   derives; over Kafka the records are in their topics already, the
//!   geofence stage sends only what it derives (`events`, `state`), and
//!   the sink consumes all five topics.
//! - `near`: the fixes proximity rules compare, keyed by the rule, from
//!   the geofence stage to the proximity stage (in one process the
//!   geofence stage's output sends them there and the rest on `stored`;
//!   over Kafka the `near` topic, read by the group `proximity`). The
//!   proximity stage writes onto `stored`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use otstream_bus::kafka::{
    AssignHook, KafkaCodec, KafkaConfig, KafkaReceiver, KafkaSender, read_to_end, watch_lag,
};
use otstream_bus::{Ack, InProcReceiver, InProcSender, Message, Receiver, Sender, channel};
use otstream_ingress::{Decoded, Raw};
use otstream_model::{RawMessage, Record, topics};

use crate::config::ServeConfig;
use crate::supervisor::Followup;
use crate::topology::Part;

pub(crate) type StopHook = Box<dyn FnOnce() + Send>;

/// One end of a link, and what its bus needs done when its stage stops.
pub(crate) struct End<T> {
    pub(crate) end: T,
    /// Asks the stage holding it to stop taking input.
    pub(crate) stop: Option<StopHook>,
    /// Awaited once the stage has ended.
    pub(crate) then: Option<Followup>,
}

impl<T> End<T> {
    /// An end with nothing to do at the stop.
    pub(crate) fn bare(end: T) -> Self {
        End {
            end,
            stop: None,
            then: None,
        }
    }
}

/// No link: a side job's input and output.
pub(crate) fn none() -> End<()> {
    End::bare(())
}

/// The ends of every link, in one process or over Kafka.
pub(crate) trait Links {
    type RawTx: Sender<RawMessage>;
    type RawRx: Receiver<RawMessage>;
    type RecTx: Sender<Record>;
    type RecRx: Receiver<Record>;
    /// The geofence stage's output: `stored`, and `near` for the fixes
    /// proximity rules compare.
    type GeoTx: Sender<Record>;
    type Intake: otstream_ingress::Intake;

    /// Whether the geofence stage forwards what it reads onto `stored`
    /// (in one process) or sends only what it derives (the rest is in its
    /// topics already).
    fn forwards(&self) -> bool;
    /// Whether the device state comes from the store the sink opens (in
    /// one process), rather than from the `state` topic per partition.
    fn state_from_store(&self) -> bool;
    /// The HTTP ingress's output: `records` in one process (decoded at
    /// the door), `raw` over Kafka; with a send deadline (503 past it).
    fn intake(&mut self) -> Result<End<Self::Intake>>;
    fn raw_tx(&mut self) -> Result<End<Self::RawTx>>;
    fn raw_rx(&mut self) -> Result<End<Self::RawRx>>;
    fn records_tx(&mut self) -> Result<End<Self::RecTx>>;
    /// `restored` (the stored device state) comes first, in one process.
    fn records_rx(&mut self, restored: Vec<Message<Record>>) -> Result<End<Self::RecRx>>;
    fn stored_tx(&mut self) -> Result<End<Self::RecTx>>;
    fn stored_rx(&mut self) -> Result<End<Self::RecRx>>;
    fn geofenced_tx(&mut self) -> Result<End<Self::GeoTx>>;
    /// `restored` (the proximity rules' stored state) comes first, in one
    /// process.
    fn near_rx(&mut self, restored: Vec<Message<Record>>) -> Result<End<Self::RecRx>>;
    /// What reports the links' depth, when they have one to report.
    fn depth(&self) -> Option<crate::topology::Depth>;
}

/// Sees each batch the sink takes (import's tally).
pub(crate) type Observer = Arc<dyn Fn(&[Message<Record>]) + Send + Sync>;

/// Bounded in-process channels of `capacity` messages each.
pub(crate) struct InProcess {
    send_timeout: Duration,
    topic_prefix: String,
    raw: (InProcSender<RawMessage>, Option<InProcReceiver<RawMessage>>),
    records: (InProcSender<Record>, Option<InProcReceiver<Record>>),
    stored: (InProcSender<Record>, Option<InProcReceiver<Record>>),
    near: (InProcSender<Record>, Option<InProcReceiver<Record>>),
    observe: Option<Observer>,
}

impl InProcess {
    pub(crate) fn new(config: &ServeConfig) -> Self {
        let capacity = config.bus.capacity;
        let (raw_tx, raw_rx) = channel(capacity);
        let (rec_tx, rec_rx) = channel(capacity);
        let (sto_tx, sto_rx) = channel(capacity);
        let (near_tx, near_rx) = channel(capacity);
        InProcess {
            send_timeout: Duration::from_millis(config.http.send_timeout_ms),
            topic_prefix: config.decode.topic_prefix.clone(),
            raw: (raw_tx, Some(raw_rx)),
            records: (rec_tx, Some(rec_rx)),
            stored: (sto_tx, Some(sto_rx)),
            near: (near_tx, Some(near_rx)),
            observe: None,
        }
    }

    /// `observe` sees every batch the sink takes.
    pub(crate) fn observed(mut self, observe: Observer) -> Self {
        self.observe = Some(observe);
        self
    }
}

/// An in-process receiving end: what must come first, then the channel,
/// each batch shown to the observer.
pub(crate) struct InRx {
    first: std::vec::IntoIter<Message<Record>>,
    rest: InProcReceiver<Record>,
    observe: Option<Observer>,
}

impl Receiver<Record> for InRx {
    async fn recv_many(&mut self, buf: &mut Vec<Message<Record>>, limit: usize) -> usize {
        let from = buf.len();
        let n = if self.first.len() == 0 {
            self.rest.recv_many(buf, limit).await
        } else {
            buf.extend(self.first.by_ref().take(limit.max(1)));
            buf.len() - from
        };
        if let Some(o) = &self.observe {
            o(&buf[from..]);
        }
        n
    }
}

fn taken<T>(rx: &mut Option<T>, link: &str) -> Result<T> {
    rx.take()
        .with_context(|| format!("the {link} link has one receiving stage"))
}

impl Links for InProcess {
    type RawTx = InProcSender<RawMessage>;
    type RawRx = InProcReceiver<RawMessage>;
    type RecTx = InProcSender<Record>;
    type RecRx = InRx;
    type GeoTx = Geofenced;
    type Intake = Decoded<InProcSender<Record>>;

    fn forwards(&self) -> bool {
        true
    }

    fn state_from_store(&self) -> bool {
        true
    }

    fn intake(&mut self) -> Result<End<Self::Intake>> {
        let tx = self.records.0.clone().with_send_timeout(self.send_timeout);
        Ok(End::bare(Decoded::new(tx, self.topic_prefix.clone())))
    }

    fn raw_tx(&mut self) -> Result<End<Self::RawTx>> {
        // MQTT waits for room rather than failing: a full bus slows the
        // broker's deliveries (PUBACKs are withheld) and the rest queues there.
        Ok(End::bare(self.raw.0.clone()))
    }

    fn raw_rx(&mut self) -> Result<End<Self::RawRx>> {
        Ok(End::bare(taken(&mut self.raw.1, "raw")?))
    }

    fn records_tx(&mut self) -> Result<End<Self::RecTx>> {
        Ok(End::bare(self.records.0.clone()))
    }

    fn records_rx(&mut self, restored: Vec<Message<Record>>) -> Result<End<Self::RecRx>> {
        Ok(End::bare(InRx {
            first: restored.into_iter(),
            rest: taken(&mut self.records.1, "records")?,
            observe: None,
        }))
    }

    fn stored_tx(&mut self) -> Result<End<Self::RecTx>> {
        Ok(End::bare(self.stored.0.clone()))
    }

    fn stored_rx(&mut self) -> Result<End<Self::RecRx>> {
        Ok(End::bare(InRx {
            first: Vec::new().into_iter(),
            rest: taken(&mut self.stored.1, "stored")?,
            observe: self.observe.clone(),
        }))
    }

    fn geofenced_tx(&mut self) -> Result<End<Self::GeoTx>> {
        Ok(End::bare(Geofenced {
            stored: self.stored.0.clone(),
            near: self.near.0.clone(),
        }))
    }

    fn near_rx(&mut self, restored: Vec<Message<Record>>) -> Result<End<Self::RecRx>> {
        Ok(End::bare(InRx {
            first: restored.into_iter(),
            rest: taken(&mut self.near.1, "near")?,
            observe: None,
        }))
    }

    fn depth(&self) -> Option<crate::topology::Depth> {
        let (raw, records, stored, near) = (
            self.raw.0.clone(),
            self.records.0.clone(),
            self.stored.0.clone(),
            self.near.0.clone(),
        );
        Some(crate::topology::Depth::new(vec![
            ("raw", Box::new(move || raw.depth())),
            ("records", Box::new(move || records.depth())),
            ("geofenced", Box::new(move || stored.depth())),
            ("near", Box::new(move || near.depth())),
        ]))
    }
}

/// The geofence stage's output in one process: the fixes proximity rules
/// compare to the proximity stage, the rest to the sink, each in order.
#[derive(Clone)]
pub(crate) struct Geofenced {
    stored: InProcSender<Record>,
    near: InProcSender<Record>,
}

impl Sender<Record> for Geofenced {
    async fn send(&self, msg: Message<Record>) -> Result<(), otstream_bus::BusError> {
        match msg.value {
            Record::Near(_) => self.near.send(msg).await,
            _ => self.stored.send(msg).await,
        }
    }

    async fn send_all(&self, msgs: Vec<Message<Record>>) -> Result<(), otstream_bus::BusError> {
        let (near, stored): (Vec<_>, Vec<_>) = msgs
            .into_iter()
            .partition(|m| matches!(m.value, Record::Near(_)));
        if !near.is_empty() {
            self.near.send_all(near).await?;
        }
        self.stored.send_all(stored).await
    }

    fn depth(&self) -> usize {
        self.stored.depth()
    }
}

/// Topics on Kafka brokers: each consuming stage is a member of the group
/// `{group_prefix}{stage}`.
pub(crate) struct Kafka {
    kafka: KafkaConfig,
    send_timeout: Duration,
    /// The sink's consumer may hold more unsettled messages (below).
    sink_in_flight: usize,
    /// The one producer of `raw` (both ingresses), and what stops its lag
    /// watcher: made when first asked for.
    raw: Option<KafkaSender<RawMessage>>,
    lag_stop: Option<StopHook>,
}

impl Kafka {
    pub(crate) fn new(config: &ServeConfig) -> Result<Self> {
        let kafka = config.kafka()?.clone();
        // A ClickHouse batch fills for up to `period_ms` while the one
        // before it is inserted: unless the consumer may hold two batches
        // unsettled, it stops reading at max_in_flight and the sink does
        // max_in_flight rows a period, whatever ClickHouse could take
        // (measured: 10,000 a second at the defaults, with 20,000
        // acknowledged a second).
        let sink_in_flight = match &config.clickhouse {
            Some(ch) => kafka.max_in_flight.max(2 * ch.max_rows),
            None => kafka.max_in_flight,
        };
        Ok(Kafka {
            kafka,
            send_timeout: Duration::from_millis(config.http.send_timeout_ms),
            sink_in_flight,
            raw: None,
            lag_stop: None,
        })
    }

    /// The producer of `raw`, held back while the consuming stages lag
    /// more than `kafka.max_lag`: one for both ingresses, so that MQTT
    /// (no PUBACK) and HTTP (503) are held back alike.
    fn raw(&mut self) -> Result<KafkaSender<RawMessage>> {
        if let Some(tx) = &self.raw {
            return Ok(tx.clone());
        }
        let kafka = &self.kafka;
        let mut tx = KafkaSender::<RawMessage>::new(kafka)?;
        if kafka.max_lag > 0 {
            let mut groups = Vec::new();
            for name in &kafka.lag_stages {
                let part = Part::named(name)
                    .filter(|s| !s.inputs().is_empty())
                    .with_context(|| format!("kafka.lag_stages: {name:?} is not a consuming stage (decode, geofence, sink)"))?;
                groups.push((kafka.group(name), part.inputs().to_vec()));
            }
            let lag_stop = Arc::new(AtomicBool::new(false));
            let lag = watch_lag(
                kafka,
                &groups,
                kafka.max_lag,
                Duration::from_millis(500),
                lag_stop.clone(),
            )?;
            self.lag_stop = Some(Box::new(move || lag_stop.store(true, Ordering::Release)));
            tx = tx.with_lag_limit(lag);
        }
        self.raw = Some(tx.clone());
        Ok(tx)
    }

    /// The brokers, for the log.
    pub(crate) fn brokers(&self) -> &str {
        &self.kafka.brokers
    }

    fn consumer<T: KafkaCodec>(
        &self,
        kafka: &KafkaConfig,
        name: &str,
        inputs: &[&str],
        hook: Option<AssignHook<T>>,
    ) -> Result<End<KafkaReceiver<T>>> {
        let group = kafka.group(name);
        let rx = KafkaReceiver::with_assign_hook(kafka, &group, inputs, hook)
            .with_context(|| format!("cannot join consumer group {group}"))?;
        let flag = rx.stop_handle();
        let closed = rx.closed();
        Ok(End {
            end: rx,
            stop: Some(Box::new(move || flag.store(true, Ordering::Release))),
            then: Some(Box::pin(async move { closed.wait().await })),
        })
    }

    /// The consumer of `part`'s group.
    fn part<T: KafkaCodec>(
        &self,
        kafka: &KafkaConfig,
        part: Part,
        hook: Option<AssignHook<T>>,
    ) -> Result<End<KafkaReceiver<T>>> {
        self.consumer(kafka, part.name(), part.inputs(), hook)
    }

    fn producer<T: Send + 'static>(&self) -> Result<End<KafkaSender<T>>>
    where
        KafkaSender<T>: Sender<T>,
    {
        let out = KafkaSender::<T>::new(&self.kafka)?;
        let flushing = out.clone();
        Ok(End {
            end: out,
            stop: None,
            then: Some(Box::pin(flushed(flushing))),
        })
    }
}

/// Once its stage has ended, what it produced reaches the brokers.
async fn flushed<T: Send + 'static>(out: KafkaSender<T>) {
    tokio::task::block_in_place(|| out.flush(Duration::from_secs(10)));
}

impl Links for Kafka {
    type RawTx = KafkaSender<RawMessage>;
    type RawRx = KafkaReceiver<RawMessage>;
    type RecTx = KafkaSender<Record>;
    type RecRx = KafkaReceiver<Record>;
    type GeoTx = KafkaSender<Record>;
    type Intake = Raw<KafkaSender<RawMessage>>;

    fn forwards(&self) -> bool {
        false
    }

    fn state_from_store(&self) -> bool {
        false
    }

    /// The payload as received goes to `raw` (see otstream_ingress::intake).
    fn intake(&mut self) -> Result<End<Self::Intake>> {
        let tx = self.raw()?;
        // Flushed once the HTTP ingress (stopped after MQTT's) has ended:
        // then what every ingress sent reaches the brokers.
        let flushing = tx.clone();
        Ok(End {
            end: Raw(tx.with_send_timeout(self.send_timeout)),
            stop: self.lag_stop.take(),
            then: Some(Box::pin(flushed(flushing))),
        })
    }

    /// MQTT waits for room rather than failing (no PUBACK meanwhile); its
    /// messages are flushed with the HTTP ingress's (see `intake`).
    fn raw_tx(&mut self) -> Result<End<Self::RawTx>> {
        Ok(End::bare(self.raw()?))
    }

    fn raw_rx(&mut self) -> Result<End<Self::RawRx>> {
        self.part(&self.kafka, Part::Decode, None)
    }

    fn records_tx(&mut self) -> Result<End<Self::RecTx>> {
        self.producer()
    }

    /// The state comes per partition, through the consumer's hook.
    fn records_rx(&mut self, _restored: Vec<Message<Record>>) -> Result<End<Self::RecRx>> {
        let hook = state_restorer(self.kafka.clone());
        self.part(&self.kafka, Part::Geofence, Some(hook))
    }

    fn stored_tx(&mut self) -> Result<End<Self::RecTx>> {
        self.producer()
    }

    /// Kafka is the sink's buffer: it commits its offsets only once the
    /// store has the rows.
    fn stored_rx(&mut self) -> Result<End<Self::RecRx>> {
        let mut kafka = self.kafka.clone();
        kafka.max_in_flight = self.sink_in_flight;
        self.part(&kafka, Part::Sink, None)
    }

    /// Each record to its topic: the fixes proximity rules compare to
    /// `near`, keyed by the rule.
    fn geofenced_tx(&mut self) -> Result<End<Self::GeoTx>> {
        self.producer()
    }

    /// The group `proximity` on `near`: a rule's fixes and its state (the
    /// `state` topic, keyed alike) come through the same partition.
    fn near_rx(&mut self, _restored: Vec<Message<Record>>) -> Result<End<Self::RecRx>> {
        let hook = state_restorer(self.kafka.clone());
        self.consumer(&self.kafka, "proximity", &[topics::NEAR], Some(hook))
    }

    fn depth(&self) -> Option<crate::topology::Depth> {
        // Consumer lag is the depth here (the brokers' own metrics).
        None
    }
}

/// Reads the device state of newly assigned partitions from the `state`
/// topic, the latest snapshot per device and kind, so the geofence stage
/// carries on where the previous owner stopped.
fn state_restorer(kafka: KafkaConfig) -> AssignHook<Record> {
    Box::new(move |parts| {
        let mut partitions: Vec<i32> = parts.iter().map(|(_, p)| *p).collect();
        partitions.sort_unstable();
        partitions.dedup();
        let mut delays =
            otstream_model::retry::backoff(Duration::from_millis(500), Duration::from_secs(4))
                .take(5);
        let read = loop {
            match read_to_end::<Record>(&kafka, topics::STATE, &partitions, Duration::from_secs(60))
            {
                Ok(m) => break m,
                Err(e) => {
                    if let Some(delay) = delays.next() {
                        tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot read device state; retrying");
                        std::thread::sleep(delay);
                        continue;
                    }
                    // Going on without it beats stopping the stage: the
                    // devices of these partitions start afresh (reported).
                    tracing::error!(error = %e, "cannot read device state; these devices start afresh");
                    metrics::counter!("otstream_errors_total", "stage" => "geofence", "error_code" => "state_unreadable").increment(1);
                    break Vec::new();
                }
            }
        };
        let snapshots = read.into_iter().filter_map(|m| match m.value {
            Record::State(s) => Some(s),
            _ => None,
        });
        let input = crate::stages::state_input(snapshots, Ack::none);
        tracing::info!(partitions = ?partitions, snapshots = input.len(), "device state restored");
        input
    })
}
