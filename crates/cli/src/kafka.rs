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

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use otstream_bus::Message;
use otstream_bus::kafka::{
    AssignHook, KafkaConfig, KafkaReceiver, KafkaSender, ReceiverClosed, read_to_end, watch_lag,
};
use otstream_decode::KeyRing;
use otstream_decode::stage::DecodeStage;
use otstream_model::{RawMessage, Record, topics};
use otstream_sink::SqliteBackend;
use otstream_sink::clickhouse::ClickHouseBackend;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::ServeConfig;
use crate::metrics_server;
use crate::serve::{
    Ending, await_subscribed, geofence_stage, load_keys, open_store, shutdown_signal,
};

/// A stage that runs as its own process over Kafka.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// OwnTracks HTTP (and MQTT, when configured) into `raw`.
    Ingress,
    /// `raw` into `positions`, `records`, `events`, `dead-letters`.
    Decode,
    /// `positions` and `records` into server transitions, trips and stops
    /// (`events`) and device state (`state`).
    Geofence,
    /// Every topic into ClickHouse or the embedded store.
    Sink,
    /// The read API and the map, reading ClickHouse (no Kafka needed).
    Api,
}

impl Stage {
    /// In pipeline order, the order they stop in.
    pub const ALL: [Stage; 4] = [Stage::Ingress, Stage::Decode, Stage::Geofence, Stage::Sink];

    /// The stage's name: its consumer group is `{group_prefix}{name}`.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Ingress => "ingress",
            Stage::Decode => "decode",
            Stage::Geofence => "geofence",
            Stage::Sink => "sink",
            Stage::Api => "api",
        }
    }

    /// The topics its group reads.
    pub fn inputs(self) -> &'static [&'static str] {
        match self {
            Stage::Ingress | Stage::Api => &[],
            Stage::Decode => &[topics::RAW],
            Stage::Geofence => &[topics::POSITIONS, topics::RECORDS],
            Stage::Sink => &[
                topics::POSITIONS,
                topics::EVENTS,
                topics::RECORDS,
                topics::DEAD_LETTERS,
                topics::STATE,
            ],
        }
    }

    fn named(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// One running stage: its task, and how to stop and wait for its consumer.
struct Running {
    name: &'static str,
    task: JoinHandle<Result<()>>,
    receiver: Option<(Arc<AtomicBool>, ReceiverClosed)>,
    flush: Option<Box<dyn Fn() + Send>>,
}

/// Runs `stages` over Kafka until SIGINT/SIGTERM or until one fails.
pub async fn run_stages(config: ServeConfig, stages: &[Stage]) -> Result<()> {
    let kafka = config.kafka()?.clone();
    let ready = Arc::new(AtomicBool::new(false));
    let metrics = metrics_server::start(config.metrics.addr, ready.clone()).await?;
    let keys = load_keys(&config)?;
    let stop_ingress = CancellationToken::new();
    let hard_stop = CancellationToken::new();
    let lag_stop = Arc::new(AtomicBool::new(false));
    let (ended_tx, mut ended) = tokio::sync::mpsc::unbounded_channel();
    let mut running: Vec<Running> = Vec::new();
    let mut subscriptions = Vec::new();
    // With the sink in this process, the read API's live feed hears it.
    let live = stages
        .contains(&Stage::Sink)
        .then(otstream_api::live::channel);
    for &stage in stages {
        let started = match stage {
            Stage::Ingress => {
                start_ingress(
                    &config,
                    &kafka,
                    keys.clone(),
                    live.clone(),
                    &stop_ingress,
                    &lag_stop,
                    &mut subscriptions,
                )
                .await?
            }
            Stage::Api => {
                anyhow::bail!("the api runs alone (otstream run api), not among Kafka stages")
            }
            Stage::Decode => {
                let (rx, stop, closed) = receiver::<RawMessage>(&kafka, stage, None)?;
                let tx = KafkaSender::<Record>::new(&kafka)?;
                let out = tx.clone();
                let decode = DecodeStage::new(config.decode.clone(), keys.clone());
                let stop_hard = hard_stop.clone();
                let task = tokio::spawn(async move {
                    decode
                        .run(rx, out, stop_hard)
                        .await
                        .map_err(anyhow::Error::from)
                });
                vec![Running {
                    name: "decode",
                    task,
                    receiver: Some((stop, closed)),
                    flush: Some(flusher(tx)),
                }]
            }
            Stage::Geofence => {
                let mut geo = config.geo_stage();
                geo.derived_only = true;
                // The state comes per partition, through the hook.
                let geo_stage = geofence_stage(geo, Vec::new()).await?;
                let hook = state_restorer(kafka.clone());
                let (rx, stop, closed) = receiver::<Record>(&kafka, stage, Some(hook))?;
                let tx = KafkaSender::<Record>::new(&kafka)?;
                let out = tx.clone();
                let stop_hard = hard_stop.clone();
                let task = tokio::spawn(async move {
                    geo_stage
                        .run(rx, out, stop_hard)
                        .await
                        .map_err(anyhow::Error::from)
                });
                vec![Running {
                    name: "geofence",
                    task,
                    receiver: Some((stop, closed)),
                    flush: Some(flusher(tx)),
                }]
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
                let (rx, stop, closed) = receiver::<Record>(&sink_kafka, stage, None)?;
                let stop_hard = hard_stop.clone();
                let committed = live.clone();
                fn spawn_sink<B: otstream_sink::Backend>(
                    backend: B,
                    rx: impl otstream_bus::Receiver<Record> + 'static,
                    committed: Option<otstream_sink::Committed>,
                    stop: CancellationToken,
                ) -> tokio::task::JoinHandle<Result<()>> {
                    tokio::spawn(async move {
                        otstream_sink::run(backend, rx, committed, stop)
                            .await
                            .map_err(anyhow::Error::from)
                    })
                }
                let task = match config.clickhouse.clone() {
                    Some(ch) => {
                        tracing::info!(url = %ch.url, database = %ch.database, "writing to ClickHouse");
                        let backend = ClickHouseBackend::new(ch).await?;
                        spawn_sink(backend, rx, committed, stop_hard)
                    }
                    None => {
                        let backend =
                            SqliteBackend::new(config.sink.clone(), open_store(&config).await?);
                        spawn_sink(backend, rx, committed, stop_hard)
                    }
                };
                vec![Running {
                    name: "sink",
                    task,
                    receiver: Some((stop, closed)),
                    flush: None,
                }]
            }
        };
        for mut r in started {
            // Report the end of every stage, so that one failing stops
            // the process instead of leaving it half alive.
            let task = tokio_util::task::AbortOnDropHandle::new(r.task);
            r.task = crate::serve::watched(r.name, ended_tx.clone(), async move {
                task.await.unwrap_or_else(|e| Err(anyhow::anyhow!("{e}")))
            });
            running.push(r);
        }
    }
    for s in subscriptions {
        await_subscribed(s).await;
    }
    ready.store(true, Ordering::Release);
    let names: Vec<&str> = running.iter().map(|r| r.name).collect();
    tracing::info!(stages = ?names, brokers = %kafka.brokers, metrics_addr = %metrics, "otstream ready (kafka)");

    let mut stopped_early = None;
    tokio::select! {
        () = shutdown_signal() => tracing::info!("shutting down"),
        Some((stage, why)) = ended.recv() => {
            tracing::error!(stage, error = %why, "a stage ended while serving: not ready, stopping the others");
            stopped_early = Some((stage, why));
        }
    }
    ready.store(false, Ordering::Release);
    stop_ingress.cancel();
    lag_stop.store(true, Ordering::Release);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(config.shutdown_timeout_ms);
    let mut ending = Ending::default();
    for r in running {
        if let Some((stop, _)) = &r.receiver {
            stop.store(true, Ordering::Release);
        }
        let joined = tokio::time::timeout_at(deadline, r.task).await;
        ending.record(r.name, joined);
        if let Some(flush) = r.flush {
            tokio::task::block_in_place(flush);
        }
        if let Some((_, closed)) = r.receiver {
            let _ = tokio::time::timeout_at(deadline, closed.wait()).await;
        }
    }
    ending.conclude(&hard_stop, stopped_early)?;
    tracing::info!("shutdown complete");
    Ok(())
}

fn flusher<T: 'static>(tx: KafkaSender<T>) -> Box<dyn Fn() + Send> {
    Box::new(move || tx.flush(Duration::from_secs(10)))
}

/// The stage's consumer, with its stop flag and the signal it has left.
fn receiver<T: otstream_bus::kafka::KafkaCodec>(
    kafka: &KafkaConfig,
    stage: Stage,
    hook: Option<AssignHook<T>>,
) -> Result<(KafkaReceiver<T>, Arc<AtomicBool>, ReceiverClosed)> {
    let group = kafka.group(stage.name());
    let rx = KafkaReceiver::with_assign_hook(kafka, &group, stage.inputs(), hook)
        .with_context(|| format!("cannot join consumer group {group}"))?;
    let (stop, closed) = (rx.stop_handle(), rx.closed());
    Ok((rx, stop, closed))
}

async fn start_ingress(
    config: &ServeConfig,
    kafka: &KafkaConfig,
    keys: Arc<KeyRing>,
    live: Option<otstream_sink::Committed>,
    stop: &CancellationToken,
    lag_stop: &Arc<AtomicBool>,
    subscriptions: &mut Vec<tokio::sync::watch::Receiver<bool>>,
) -> Result<Vec<Running>> {
    let listener = tokio::net::TcpListener::bind(config.http.addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.http.addr))?;
    tracing::info!(http_addr = %listener.local_addr()?, "http ingress listening");
    let mut tx = KafkaSender::<RawMessage>::new(kafka)?;
    if kafka.max_lag > 0 {
        let mut groups = Vec::new();
        for name in &kafka.lag_stages {
            let stage = Stage::named(name)
                .filter(|s| !s.inputs().is_empty())
                .with_context(|| format!("kafka.lag_stages: {name:?} is not a consuming stage (decode, geofence, sink)"))?;
            groups.push((kafka.group(name), stage.inputs().to_vec()));
        }
        let lag = watch_lag(
            kafka,
            &groups,
            kafka.max_lag,
            Duration::from_millis(500),
            lag_stop.clone(),
        )?;
        tx = tx.with_lag_limit(lag);
    }
    let mut out = Vec::new();
    if let Some(m) = config.mqtt.clone() {
        let (sender, stop) = (tx.clone(), stop.clone());
        let (subscribed, watch) = tokio::sync::watch::channel(false);
        subscriptions.push(watch);
        out.push(Running {
            name: "mqtt ingress",
            task: tokio::spawn(async move {
                otstream_ingress::run_mqtt(m, sender, subscribed, stop)
                    .await
                    .map_err(anyhow::Error::from)
            }),
            receiver: None,
            flush: None,
        });
    }
    // The read API, on this listener or its own; its live streams end
    // with the ingress.
    let api = crate::api::start(config, live, stop.clone()).await?;
    if let Some(task) = api.task {
        out.push(Running {
            name: "api",
            task: tokio::spawn(async move { task.await?.map_err(anyhow::Error::from) }),
            receiver: None,
            flush: None,
        });
    }
    let send_timeout = Duration::from_millis(config.http.send_timeout_ms);
    let http = otstream_ingress::run_http(
        listener,
        config.http.clone(),
        config.decode.clone(),
        keys,
        tx.clone().with_send_timeout(send_timeout),
        api.fallback,
        api.auth,
        stop.clone(),
    );
    out.push(Running {
        name: "http ingress",
        task: tokio::spawn(async move { http.await.map_err(anyhow::Error::from) }),
        receiver: None,
        flush: Some(flusher(tx)),
    });
    Ok(out)
}

/// Reads the device state of newly assigned partitions from the `state`
/// topic, the latest snapshot per device and kind, so the geofence stage
/// carries on where the previous owner stopped.
fn state_restorer(kafka: KafkaConfig) -> AssignHook<Record> {
    Box::new(move |parts| {
        let mut partitions: Vec<i32> = parts.iter().map(|(_, p)| *p).collect();
        partitions.sort_unstable();
        partitions.dedup();
        let mut attempt = 0;
        let read = loop {
            match read_to_end::<Record>(&kafka, topics::STATE, &partitions, Duration::from_secs(60))
            {
                Ok(m) => break m,
                Err(e) if attempt < 5 => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "cannot read device state; retrying");
                    std::thread::sleep(Duration::from_secs(1));
                }
                Err(e) => {
                    // Going on without it beats stopping the stage: the
                    // devices of these partitions start afresh (reported).
                    tracing::error!(error = %e, "cannot read device state; these devices start afresh");
                    metrics::counter!("otstream_errors_total", "stage" => "geofence", "error_code" => "state_unreadable").increment(1);
                    break Vec::new();
                }
            }
        };
        let mut latest: HashMap<(String, String), Message<Record>> = HashMap::new();
        for m in read {
            if let Record::State(s) = &m.value {
                latest.insert((m.key.clone(), s.kind.to_string()), m);
            }
        }
        tracing::info!(partitions = ?partitions, snapshots = latest.len(), "device state restored");
        latest.into_values().collect()
    })
}
