//! The units' builders: each unit of the topology built from the
//! configuration before anything starts, the same way in every mode
//! ([`crate::topology`] links and runs them).

use std::sync::Arc;

use anyhow::{Context, Result};
use otstream_bus::{Ack, Message, Receiver, Stage};
use otstream_decode::KeyRing;
use otstream_events::outbox::Outbox;
use otstream_events::{Deliverers, Outgoing};
use otstream_geofence::stage::{GeofenceStage, StageConfig};
use otstream_model::{Record, StateSnapshot};
use otstream_sink::clickhouse::ClickHouseBackend;
use otstream_sink::clickhouse::buffer::{BufferedBackend, Shipper};
use otstream_sink::retention::Retention;
use otstream_sink::{Backend, Committed, SinkStage, SqliteBackend, Store};
use tokio_util::sync::CancellationToken;

use crate::config::ServeConfig;

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
    // Oldest first: a device's state of one kind may hold what another
    // kind held before (over Kafka, its places and regions ride in its
    // `geo` snapshot), and the newer must win.
    let mut latest: Vec<_> = latest.into_iter().collect();
    latest.sort_by_key(|(_, s)| s.updated_at);
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
                    otstream_sink::clickhouse::buffer::open(&data_dir, sink, &buffer, ch)
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
}

/// The sink stage on whichever backend the configuration chose.
pub(crate) struct SinkUnit {
    sink: Sink,
    step: Outgoing,
    live: Option<Committed>,
}

impl SinkUnit {
    /// `sink`, running the outgoing `step` on each batch before writing it.
    pub(crate) fn new(sink: Sink, step: Outgoing, live: Option<Committed>) -> Self {
        SinkUnit { sink, step, live }
    }
}

impl<R: Receiver<Record>> Stage<R, ()> for SinkUnit {
    type Error = otstream_sink::SinkError;

    async fn run(self, input: R, _: (), shutdown: CancellationToken) -> Result<(), Self::Error> {
        let SinkUnit { sink, step, live } = self;
        match sink {
            Sink::Sqlite(b) => {
                SinkStage::new(b)
                    .with_step(step)
                    .announcing(live)
                    .run(input, (), shutdown)
                    .await
            }
            Sink::ClickHouse(b) => {
                SinkStage::new(*b)
                    .with_step(step)
                    .announcing(live)
                    .run(input, (), shutdown)
                    .await
            }
            Sink::Buffered(b) => {
                SinkStage::new(b)
                    .with_step(step)
                    .announcing(live)
                    .run(input, (), shutdown)
                    .await
            }
        }
    }
}

/// The events' way out: the step before the sink (places, device
/// transitions' events, the outbox appends) and the deliverers to run
/// after it.
pub(crate) struct EventsOut {
    pub(crate) outgoing: Outgoing,
    pub(crate) deliverers: Option<Deliverers>,
}

impl EventsOut {
    /// Opens `outbox.db` in the data directory when `[events]` names a
    /// destination, and builds each destination.
    pub(crate) async fn build(config: &ServeConfig) -> Result<EventsOut> {
        let ev = &config.events;
        let geocoder = geocoder(config).await?;
        let retry = config.sink.retry_initial_ms;
        let routes = ev.routes()?;
        if routes.is_empty() || !ev.enabled {
            return Ok(EventsOut {
                outgoing: Outgoing::new(geocoder, ev.enabled, None, retry),
                deliverers: None,
            });
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
        let deliverers = Deliverers::new(ev, config.mqtt.as_ref(), &outbox)?;
        Ok(EventsOut {
            outgoing: Outgoing::new(geocoder, ev.enabled, Some(outbox), retry),
            deliverers: (!deliverers.is_empty()).then_some(deliverers),
        })
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

/// Retention on the embedded store, when the sink writes there.
pub(crate) fn retention(config: &ServeConfig) -> Option<Retention> {
    config
        .clickhouse
        .is_none()
        .then(|| Retention::new(config.retention.clone(), &config.data_dir))
}

/// Fills in street addresses, when `[geocode.addresses] url` is set, in
/// the store the sink writes to.
pub(crate) fn addresses(config: &ServeConfig) -> Result<Option<otstream_addresses::Addresses>> {
    let a = &config.geocode.addresses;
    let Some(url) = &a.url else {
        return Ok(None);
    };
    let rows = match &config.clickhouse {
        Some(ch) => otstream_addresses::Rows::clickhouse(ch.client(), &ch.database),
        None => otstream_addresses::Rows::sqlite(&config.data_dir)?,
    };
    let job = otstream_addresses::Addresses::new(a.clone(), rows)?;
    tracing::info!(%url, provider = ?a.provider, per_second = a.per_second, "street addresses");
    Ok(Some(job))
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
