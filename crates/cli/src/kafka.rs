//! The stages over Kafka: `otstream run STAGE` runs one per process,
//! `otstream serve --bus kafka` runs them all in one process, each stage a
//! member of its own consumer group, exactly as separate processes would.
//!
//! ingress --[raw]--> decode --[positions, records, events, dead-letters]-->
//!     geofence (reads positions, records) --[events, state]-->
//!     sink (reads positions, events, records, dead-letters, state)
//!
//! Over Kafka the geofence stage sends only what it derives: the records it
//! reads are in their topics already, and the sink reads them there. Its
//! device state lives in the compacted `state` topic, keyed by device like
//! everything else, so a member assigned partition N of `positions` reads
//! partition N of `state` before any position (topics need the same
//! partition count, which `otstream topics create` gives them).
//!
//! Shutdown (SIGINT or SIGTERM): the ingress stops accepting and finishes
//! its requests (each waits for its broker ack), then each consuming stage
//! in pipeline order stops taking messages, finishes what it holds,
//! commits and leaves its group.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use otstream_bus::Ack;
use otstream_bus::kafka::{
    AssignHook, KafkaCodec, KafkaConfig, KafkaReceiver, KafkaSender, read_to_end, watch_lag,
};
use otstream_decode::KeyRing;
use otstream_decode_stage::DecodeStage;
use otstream_model::{RawMessage, Record, topics};

use crate::config::ServeConfig;
use crate::stages::{self, Sink, Stage};
use crate::supervisor::Supervisor;

/// Runs `stages` over Kafka until SIGINT/SIGTERM or until one ends.
pub async fn run(config: ServeConfig, stages: &[Stage]) -> Result<()> {
    let kafka = config.kafka()?.clone();
    let mut sup = Supervisor::start(&config).await?;
    let keys = stages::keys(&config)?;
    // With the sink in this process, the read API's live feed hears it.
    let live = stages
        .contains(&Stage::Sink)
        .then(otstream_api::live::channel);
    for &stage in stages {
        match stage {
            Stage::Ingress => {
                ingress(&mut sup, &config, &kafka, keys.clone(), live.clone()).await?
            }
            Stage::Api => {
                anyhow::bail!("the api runs alone (otstream run api), not among Kafka stages")
            }
            Stage::Decode => {
                let decode = DecodeStage::new(config.decode.clone(), keys.clone());
                let Consumer { rx, stop, closed } = consumer(&kafka, stage, None)?;
                let out = KafkaSender::new(&kafka)?;
                let run = decode.run(rx, out.clone(), sup.hard_stop());
                sup.spawn("decode", run)
                    .on_stop(stop)
                    .then(flushed(out, Some(closed)));
            }
            Stage::Geofence => {
                let mut geo = config.geo_stage();
                geo.derived_only = true;
                let geofence = stages::geofence(geo).await?;
                // The state comes per partition, through the hook.
                let hook = state_restorer(kafka.clone());
                let Consumer { rx, stop, closed } = consumer(&kafka, stage, Some(hook))?;
                let out = KafkaSender::new(&kafka)?;
                let run = geofence.run(rx, out.clone(), sup.hard_stop());
                sup.spawn("geofence", run)
                    .on_stop(stop)
                    .then(flushed(out, Some(closed)));
            }
            Stage::Sink => {
                // A ClickHouse batch fills for up to `period_ms` while the
                // one before it is inserted: unless the consumer may hold
                // two batches unsettled, it stops reading at max_in_flight
                // and the sink does max_in_flight rows a period, whatever
                // ClickHouse could take (measured: 10,000 a second at the
                // defaults, with 20,000 acknowledged a second).
                let mut sink_kafka = kafka.clone();
                if let Some(ch) = &config.clickhouse {
                    sink_kafka.max_in_flight = sink_kafka.max_in_flight.max(2 * ch.max_rows);
                }
                // Kafka is the buffer here: the sink commits its offsets
                // only once ClickHouse has the rows.
                let (sink, _) = Sink::build(&config, false).await?;
                let events = stages::EventsOut::build(&config).await?;
                let Consumer { rx, stop, closed } = consumer(&sink_kafka, stage, None)?;
                let run = sink.run(rx, live.clone(), events.sink.clone(), sup.hard_stop());
                sup.spawn("sink", run)
                    .on_stop(stop)
                    .then(async move { closed.wait().await });
                stages::retention(&config, &mut sup);
                stages::addresses(&config, &mut sup)?;
                events.spawn(&config, &mut sup);
            }
        }
    }
    tracing::info!(brokers = %kafka.brokers, "stages joined their groups");
    sup.run("over kafka").await
}

/// A stage's consumer, with what stops it and what says it has left its
/// group.
struct Consumer<T> {
    rx: KafkaReceiver<T>,
    stop: Box<dyn FnOnce() + Send>,
    closed: otstream_bus::kafka::ReceiverClosed,
}

fn consumer<T: KafkaCodec>(
    kafka: &KafkaConfig,
    stage: Stage,
    hook: Option<AssignHook<T>>,
) -> Result<Consumer<T>> {
    let group = kafka.group(stage.name());
    let rx = KafkaReceiver::with_assign_hook(kafka, &group, stage.inputs(), hook)
        .with_context(|| format!("cannot join consumer group {group}"))?;
    let flag = rx.stop_handle();
    let closed = rx.closed();
    Ok(Consumer {
        rx,
        stop: Box::new(move || flag.store(true, Ordering::Release)),
        closed,
    })
}

/// After a stage has ended: what it produced is flushed to the brokers,
/// then its consumer (if any) has committed and left.
async fn flushed<T: Send + 'static>(
    out: KafkaSender<T>,
    closed: Option<otstream_bus::kafka::ReceiverClosed>,
) {
    tokio::task::block_in_place(|| out.flush(Duration::from_secs(10)));
    if let Some(closed) = closed {
        closed.wait().await;
    }
}

/// The ingress over Kafka: HTTP and MQTT into `raw`, the read API on the
/// same listener (or its own), and producers held back while the
/// consuming stages lag more than `kafka.max_lag`.
async fn ingress(
    sup: &mut Supervisor,
    config: &ServeConfig,
    kafka: &KafkaConfig,
    keys: Arc<KeyRing>,
    live: Option<otstream_sink::Committed>,
) -> Result<()> {
    let listener = otstream_http::listen(config.http.addr)
        .with_context(|| format!("cannot listen on {}", config.http.addr))?;
    tracing::info!(http_addr = %listener.local_addr()?, "http ingress listening");
    let front = sup.front();
    let mut tx = KafkaSender::<RawMessage>::new(kafka)?;
    if kafka.max_lag > 0 {
        let mut groups = Vec::new();
        for name in &kafka.lag_stages {
            let stage = Stage::named(name)
                .filter(|s| !s.inputs().is_empty())
                .with_context(|| format!("kafka.lag_stages: {name:?} is not a consuming stage (decode, geofence, sink)"))?;
            groups.push((kafka.group(name), stage.inputs().to_vec()));
        }
        let lag_stop = Arc::new(AtomicBool::new(false));
        let lag = watch_lag(
            kafka,
            &groups,
            kafka.max_lag,
            Duration::from_millis(500),
            lag_stop.clone(),
        )?;
        tokio::spawn({
            let front = front.clone();
            async move {
                front.cancelled().await;
                lag_stop.store(true, Ordering::Release);
            }
        });
        tx = tx.with_lag_limit(lag);
    }
    // The read API, on this listener or its own; its live streams end
    // with the ingress.
    let api = crate::api::start(config, live, front.clone()).await?;
    let send_timeout = Duration::from_millis(config.http.send_timeout_ms);
    let http = otstream_ingress::run_http(
        listener,
        config.http.clone(),
        config.decode.clone(),
        keys,
        // The payload as received goes to `raw`, see otstream_ingress::intake.
        otstream_ingress::Raw(tx.clone().with_send_timeout(send_timeout)),
        api.fallback,
        api.auth.clone(),
        crate::api::friends(config, &api.auth, front.clone()).await,
        front.clone(),
    );
    if let Some(m) = config.mqtt.clone() {
        let (subscribed, watch) = tokio::sync::watch::channel(false);
        sup.ready_after(watch);
        let run = otstream_ingress::run_mqtt(m, tx.clone(), subscribed, front);
        sup.spawn("mqtt ingress", run);
    }
    if let Some(task) = api.task {
        sup.spawn("api", task);
    }
    // Stopped last of the three: once it has ended, what every ingress
    // sent reaches the brokers.
    sup.spawn("http ingress", http).then(flushed(tx, None));
    Ok(())
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
        let input = stages::state_input(snapshots, Ack::none);
        tracing::info!(partitions = ?partitions, snapshots = input.len(), "device state restored");
        input
    })
}
