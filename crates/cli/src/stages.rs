//! The stages, each built from the configuration before anything starts,
//! the same way in every mode; [`crate::serve`] links them in one process,
//! [`crate::kafka`] over topics, and [`crate::supervisor`] runs them.

use std::sync::Arc;

use anyhow::{Context, Result};
use otstream_bus::{Ack, Message, Receiver};
use otstream_decode::KeyRing;
use otstream_events::config::MQTT_ROUTE;
use otstream_geofence::stage::{GeofenceStage, StageConfig};
use otstream_model::{Record, StateSnapshot, topics};
use otstream_sink::buffer::{BufferedBackend, Shipper};
use otstream_sink::clickhouse::ClickHouseBackend;
use otstream_sink::outbox::{Outbox, Reader};
use otstream_sink::retention::Retention;
use otstream_sink::{Backend, Committed, Events, SqliteBackend, Store};
use tokio_util::sync::CancellationToken;

use crate::config::ServeConfig;
use crate::supervisor::Supervisor;

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

    /// The stage of this name.
    pub fn named(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// The secrets for encrypted payloads, from `keys_file`.
pub(crate) fn keys(config: &ServeConfig) -> Result<Arc<KeyRing>> {
    Ok(Arc::new(match &config.keys_file {
        Some(path) => KeyRing::from_file(path)?,
        None => KeyRing::new(),
    }))
}

/// The geofence stage with its fences loaded: a bad fences file stops the
/// start instead of the running stage. Its devices' state comes as input
/// ([`Sink::stored_state`] in one process, the `state` topic over Kafka).
pub(crate) async fn geofence(config: StageConfig) -> Result<GeofenceStage> {
    Ok(
        tokio::task::spawn_blocking(move || GeofenceStage::new(config))
            .await
            .context("fences loader failed")??,
    )
}

/// The geofence stage's input from restored snapshots: the latest per
/// device and kind, in front of the records (already durable, so their
/// acks settle nothing).
pub(crate) fn state_input(
    snapshots: impl IntoIterator<Item = StateSnapshot>,
    ack: impl Fn() -> Ack,
) -> Vec<Message<Record>> {
    let mut latest = std::collections::HashMap::new();
    for s in snapshots {
        latest.insert((s.key(), s.kind.clone()), s);
    }
    latest
        .into_iter()
        .map(|((key, _), s)| Message::new(key, Record::State(s), ack()))
        .collect()
}

/// The sink, on its backend: ClickHouse when configured (through the
/// local buffer when asked for), else the embedded store in `data_dir`;
/// opened (or ClickHouse migrated) now.
pub(crate) enum Sink {
    Sqlite(SqliteBackend),
    ClickHouse(Box<ClickHouseBackend>),
    Buffered(BufferedBackend),
}

impl Sink {
    /// The sink of `config`; with `buffered` and ClickHouse, the buffer's
    /// [`Shipper`] too, to run as a stage after the sink.
    pub(crate) async fn build(
        config: &ServeConfig,
        buffered: bool,
    ) -> Result<(Sink, Option<Shipper>)> {
        Ok(match config.clickhouse.clone() {
            Some(ch) if buffered => {
                tracing::info!(url = %ch.url, database = %ch.database, data_dir = %config.data_dir.display(), "writing to ClickHouse through the local buffer");
                let (data_dir, sink, buffer) = (
                    config.data_dir.clone(),
                    config.sink.clone(),
                    config.buffer.clone(),
                );
                let (backend, shipper) = tokio::task::spawn_blocking(move || {
                    otstream_sink::buffer::open(&data_dir, sink, &buffer, ch)
                })
                .await
                .context("buffer opener failed")?
                .with_context(|| {
                    format!(
                        "cannot open the ClickHouse buffer in {}",
                        config.data_dir.display()
                    )
                })?;
                (Sink::Buffered(backend), Some(shipper))
            }
            Some(ch) => {
                tracing::info!(url = %ch.url, database = %ch.database, "writing to ClickHouse");
                (
                    Sink::ClickHouse(Box::new(ClickHouseBackend::new(ch).await?)),
                    None,
                )
            }
            None => {
                let store = open_store(config).await?;
                (
                    Sink::Sqlite(SqliteBackend::new(config.sink.clone(), store)),
                    None,
                )
            }
        })
    }

    /// The device state stored with the records, as the geofence stage's
    /// first input.
    pub(crate) async fn stored_state(&self) -> Result<Vec<Message<Record>>> {
        let snapshots = match self {
            Sink::Sqlite(b) => b.stored_state().await?,
            Sink::ClickHouse(b) => b.stored_state().await?,
            Sink::Buffered(b) => b.stored_state().await?,
        };
        let input = state_input(snapshots, Ack::none);
        tracing::info!(snapshots = input.len(), "device state restored");
        Ok(input)
    }

    /// Runs the sink stage on its backend (see [`otstream_sink::run`]).
    pub(crate) async fn run(
        self,
        input: impl Receiver<Record>,
        committed: Option<Committed>,
        events: Events,
        stop: CancellationToken,
    ) -> Result<()> {
        match self {
            Sink::Sqlite(b) => otstream_sink::run(b, input, committed, events, stop).await?,
            Sink::ClickHouse(b) => otstream_sink::run(*b, input, committed, events, stop).await?,
            Sink::Buffered(b) => otstream_sink::run(b, input, committed, events, stop).await?,
        }
        Ok(())
    }
}

/// The events' way out: the sink's part (the outbox it appends to, when
/// any destination is configured) and the deliverers to run after it.
pub(crate) struct EventsOut {
    /// For [`Sink::run`].
    pub(crate) sink: Events,
    deliverers: Vec<(String, Deliverer)>,
}

enum Deliverer {
    Webhook(Reader, Box<otstream_events::Webhook>),
    Mqtt(Reader, Box<otstream_events::mqtt::Mqtt>),
}

impl EventsOut {
    /// Opens `outbox.db` in the data directory when `[events]` names a
    /// destination, and builds each destination.
    pub(crate) async fn build(config: &ServeConfig) -> Result<EventsOut> {
        let ev = &config.events;
        let mut out = EventsOut {
            sink: Events {
                outbox: None,
                device_transitions: ev.enabled,
                retry_initial_ms: config.sink.retry_initial_ms,
                geocoder: geocoder(config).await?,
            },
            deliverers: Vec::new(),
        };
        let routes = ev.routes()?;
        if routes.is_empty() || !ev.enabled {
            return Ok(out);
        }
        let data_dir = config.data_dir.clone();
        let outbox = tokio::task::spawn_blocking(move || Outbox::open(&data_dir, routes))
            .await
            .context("outbox opener failed")?
            .with_context(|| {
                format!(
                    "cannot open the events outbox in {}",
                    config.data_dir.display()
                )
            })?;
        for w in &ev.webhooks {
            let reader = outbox.reader(&w.name())?;
            let hook = otstream_events::Webhook::new(w)?;
            // Labelled, never named by its URL (a hook's URL can be its secret).
            let label = w.label();
            tracing::info!(route = %label, origin = %w.origin(), "events webhook");
            out.deliverers
                .push((label, Deliverer::Webhook(reader, Box::new(hook))));
        }
        if ev.mqtt.enabled {
            let reader = outbox.reader(MQTT_ROUTE)?;
            let mqtt = otstream_events::mqtt::Mqtt::new(&ev.mqtt, config.mqtt.as_ref())?;
            tracing::info!(topic = %ev.mqtt.topic, "events published to MQTT");
            out.deliverers.push((
                MQTT_ROUTE.to_owned(),
                Deliverer::Mqtt(reader, Box::new(mqtt)),
            ));
        }
        out.sink.outbox = Some(outbox);
        Ok(out)
    }

    /// Runs the deliverers as the stage `events`, stopped after the sink
    /// (what the sink appended last is delivered at the next start if not
    /// now).
    pub(crate) fn spawn(self, config: &ServeConfig, sup: &mut Supervisor) {
        if self.deliverers.is_empty() {
            return;
        }
        let max_age = config.events.max_age();
        let stop = CancellationToken::new();
        let each = stop.clone();
        let run = async move {
            let mut set = tokio::task::JoinSet::new();
            for (name, d) in self.deliverers {
                let stop = each.clone();
                match d {
                    Deliverer::Webhook(r, w) => {
                        set.spawn(otstream_events::deliver(name, r, *w, max_age, stop))
                    }
                    Deliverer::Mqtt(r, m) => {
                        set.spawn(otstream_events::deliver(name, r, *m, max_age, stop))
                    }
                };
            }
            while let Some(done) = set.join_next().await {
                done.context("an events deliverer panicked")??;
            }
            Ok::<(), anyhow::Error>(())
        };
        sup.spawn("events", run).on_stop(move || stop.cancel());
    }
}

/// The offline geocoder, when `[geocode]` is on: its index built now, on
/// a blocking thread (a tenth of a second).
async fn geocoder(config: &ServeConfig) -> Result<Option<Arc<otstream_geocode::Geocoder>>> {
    if !config.geocode.enabled {
        return Ok(None);
    }
    let max_km = config.geocode.max_km;
    let g = tokio::task::spawn_blocking(move || otstream_geocode::Geocoder::new(max_km))
        .await
        .context("geocoder index builder failed")?;
    Ok(Some(g))
}

/// Runs retention on the embedded store as a stage of its own, when the
/// sink writes there: `sup` stops it after the sink.
pub(crate) fn retention(config: &ServeConfig, sup: &mut Supervisor) {
    if config.clickhouse.is_some() {
        return;
    }
    let job = Retention::new(config.retention.clone(), &config.data_dir);
    let stop = CancellationToken::new();
    sup.spawn("retention", job.run(stop.clone()))
        .on_stop(move || stop.cancel());
}

/// Fills in street addresses as a stage of its own, when
/// `[geocode.addresses] url` is set, in the store the sink writes to:
/// `sup` stops it after the sink.
pub(crate) fn addresses(config: &ServeConfig, sup: &mut Supervisor) -> Result<()> {
    let a = &config.geocode.addresses;
    let Some(url) = &a.url else {
        return Ok(());
    };
    let rows = match &config.clickhouse {
        Some(ch) => otstream_addresses::Rows::clickhouse(ch.client(), &ch.database),
        None => otstream_addresses::Rows::sqlite(&config.data_dir)?,
    };
    let job = otstream_addresses::Addresses::new(a.clone(), rows)?;
    tracing::info!(%url, provider = ?a.provider, per_second = a.per_second, "street addresses");
    let stop = CancellationToken::new();
    sup.spawn("addresses", job.run(stop.clone()))
        .on_stop(move || stop.cancel());
    Ok(())
}

/// Opens the embedded store in `data_dir`.
pub(crate) async fn open_store(config: &ServeConfig) -> Result<Store> {
    let data_dir = config.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&data_dir))
        .await
        .context("store opener failed")?
        .with_context(|| format!("cannot open the store in {}", config.data_dir.display()))?;
    tracing::info!(path = %store.path().display(), "embedded store open");
    Ok(store)
}
