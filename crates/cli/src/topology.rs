//! The pipeline, described once: every unit (stage or side job), the link
//! it reads and the link it writes, in the order they stop in
//! ([`UNITS`]). Every mode is a selection of it run under the one
//! [`Supervisor`]: `serve` runs all of it over in-process links, `serve
//! --bus kafka` all of it over Kafka (each consuming stage in its own
//! group, as separate processes would be), `run STAGE` one [`Part`] over
//! Kafka, and `import` the file reader and the stages behind it.
//!
//! ```text
//! mqtt ingress --raw--> decode --records--> geofence --stored--> sink (its outgoing step first)
//! http ingress ---------(records in one process, raw over Kafka)
//!                                  geofence --near--> proximity --stored--> sink
//! side jobs: depth, friends, retention, addresses, events, shipper, api
//! ```
//!
//! Each unit implements [`otstream_bus::Stage`]: built from the
//! configuration before anything starts (a bad fences file or an
//! unreachable ClickHouse stops the start, not a running stage), then run
//! with its input, its output and its shutdown signal. Adding a stage is
//! a unit, a row in [`UNITS`] and its arm in [`build`].

use std::time::Duration;

use anyhow::{Context, Result};
use otstream_bus::Stage;
use otstream_decode_stage::DecodeStage;
use otstream_geofence::stage::{KIND_NEAR, ProximityStage};
use otstream_ingress::HttpIngress;
use otstream_ingress::MqttIngress;
use otstream_model::topics;
use otstream_sink::clickhouse::buffer::Shipper;
use tokio_util::sync::CancellationToken;

use crate::config::ServeConfig;
use crate::links::{End, Links, none};
use crate::stages::{self, Sink};
use crate::supervisor::{StopBy, Supervisor};

/// A part of the topology a process runs alone (`otstream run PART`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// OwnTracks HTTP (and MQTT, when configured) into `raw`.
    Ingress,
    /// `raw` into `positions`, `records`, `events`, `dead-letters`.
    Decode,
    /// `positions` and `records` into server transitions, trips and stops
    /// (`events`) and device state (`state`); and `near` (the fixes
    /// proximity rules compare) into their events, in a group of its own.
    Geofence,
    /// Every topic into ClickHouse or the embedded store.
    Sink,
    /// The read API and the map, reading ClickHouse (no Kafka needed).
    Api,
}

impl Part {
    /// The parts a pipeline over Kafka runs, in pipeline order.
    pub const PIPELINE: [Part; 4] = [Part::Ingress, Part::Decode, Part::Geofence, Part::Sink];

    /// The part's name: its consumer group is `{group_prefix}{name}`.
    pub fn name(self) -> &'static str {
        match self {
            Part::Ingress => "ingress",
            Part::Decode => "decode",
            Part::Geofence => "geofence",
            Part::Sink => "sink",
            Part::Api => "api",
        }
    }

    /// The topics its group reads.
    pub fn inputs(self) -> &'static [&'static str] {
        match self {
            Part::Ingress | Part::Api => &[],
            Part::Decode => &[topics::RAW],
            Part::Geofence => &[topics::POSITIONS, topics::RECORDS],
            Part::Sink => &[
                topics::POSITIONS,
                topics::EVENTS,
                topics::RECORDS,
                topics::DEAD_LETTERS,
                topics::STATE,
            ],
        }
    }

    /// The consuming part of this name.
    pub fn named(name: &str) -> Option<Part> {
        Part::PIPELINE.into_iter().find(|s| s.name() == name)
    }
}

/// The links between units (see [`crate::links`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Payloads as received.
    Raw,
    /// What the HTTP ingress hands on: `records` in one process, `raw`
    /// over Kafka.
    Intake,
    /// Decoded records.
    Records,
    /// Everything the sink stores.
    Stored,
    /// Fixes keyed by the proximity rule that compares them
    /// ([`otstream_model::Near`]).
    Near,
}

/// A unit of the topology: a stage or a side job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    MqttIngress,
    HttpIngress,
    /// import's file reader, in place of the ingress.
    Files,
    /// The in-process links' depth gauges.
    Depth,
    /// The friends lists' last fixes, from the store.
    Friends,
    /// The fences pushed to the phones, from the fences file.
    Push,
    Decode,
    Geofence,
    /// Proximity rules, over the fixes the geofence stage re-keys.
    Proximity,
    Sink,
    Retention,
    Addresses,
    Events,
    Shipper,
    /// The read API on a listener of its own.
    Api,
}

/// One row of the description.
pub struct Row {
    pub unit: Unit,
    /// Its name in logs, metrics and `/readyz`.
    pub name: &'static str,
    /// Whose process runs it.
    pub part: Part,
    pub reads: Option<Link>,
    pub writes: Option<Link>,
    /// When it is told to stop.
    pub stop: StopBy,
}

const fn row(
    unit: Unit,
    name: &'static str,
    part: Part,
    reads: Option<Link>,
    writes: Option<Link>,
    stop: StopBy,
) -> Row {
    Row {
        unit,
        name,
        part,
        reads,
        writes,
        stop,
    }
}

use Link::{Intake, Near, Raw, Records, Stored};
use StopBy::{Front, Input, Turn};

/// The topology, in the order its units stop in: what takes requests
/// first (its senders close the links), then each stage once its input
/// is drained, then the side jobs, which the sink's last commit may
/// still feed.
pub const UNITS: [Row; 15] = [
    row(
        Unit::MqttIngress,
        "mqtt ingress",
        Part::Ingress,
        None,
        Some(Raw),
        Front,
    ),
    row(
        Unit::HttpIngress,
        "http ingress",
        Part::Ingress,
        None,
        Some(Intake),
        Front,
    ),
    row(Unit::Files, "files", Part::Ingress, None, Some(Raw), Front),
    row(Unit::Depth, "depth", Part::Ingress, None, None, Front),
    row(Unit::Friends, "friends", Part::Ingress, None, None, Front),
    row(Unit::Push, "push", Part::Ingress, None, None, Front),
    row(
        Unit::Decode,
        "decode",
        Part::Decode,
        Some(Raw),
        Some(Records),
        Input,
    ),
    row(
        Unit::Geofence,
        "geofence",
        Part::Geofence,
        Some(Records),
        Some(Stored),
        Input,
    ),
    row(
        Unit::Proximity,
        "proximity",
        Part::Geofence,
        Some(Near),
        Some(Stored),
        Input,
    ),
    row(Unit::Sink, "sink", Part::Sink, Some(Stored), None, Input),
    row(Unit::Retention, "retention", Part::Sink, None, None, Turn),
    row(Unit::Addresses, "addresses", Part::Sink, None, None, Turn),
    row(Unit::Events, "events", Part::Sink, None, None, Turn),
    row(Unit::Shipper, "shipper", Part::Sink, None, None, Turn),
    row(Unit::Api, "api", Part::Api, None, None, Front),
];

/// What a process runs of the topology.
pub(crate) struct Selection {
    units: Vec<Unit>,
    /// Through the local buffer when ClickHouse is the store (`serve`).
    buffered: bool,
    /// import's reader, when [`Unit::Files`] is selected.
    pub(crate) files: Option<crate::import::Files>,
}

impl Selection {
    /// The units of `parts` this configuration runs: not import's reader,
    /// and each side job only when configured. The API runs on a listener
    /// of its own beside the ingress only when `api.addr` is set (else it
    /// answers on the ingress's listener).
    pub(crate) fn parts(config: &ServeConfig, parts: &[Part]) -> Selection {
        let in_process = config.bus.kind == crate::config::BusKind::Inprocess;
        let buffered = in_process && config.buffer.enabled && config.clickhouse.is_some();
        let events = &config.events;
        let units = UNITS
            .iter()
            .filter(|r| match r.unit {
                Unit::Files => false,
                Unit::Api => {
                    config.api.enabled
                        && (parts.contains(&Part::Api)
                            || (parts.contains(&Part::Ingress) && config.api.addr.is_some()))
                }
                _ => parts.contains(&r.part),
            })
            .filter(|r| match r.unit {
                Unit::MqttIngress => config.mqtt.is_some(),
                Unit::Depth => in_process,
                Unit::Friends => config.http.friends.enabled,
                Unit::Push => config.geofence.push,
                Unit::Retention => config.clickhouse.is_none(),
                Unit::Addresses => config.geocode.addresses.url.is_some(),
                Unit::Events => {
                    events.enabled && (events.mqtt.enabled || !events.webhooks.is_empty())
                }
                Unit::Shipper => buffered,
                Unit::Proximity => config.geofence.rules.is_some(),
                _ => true,
            })
            .map(|r| r.unit)
            .collect();
        Selection {
            units,
            buffered,
            files: None,
        }
    }

    /// What it runs, one unit a line: its name, what it reads and writes.
    pub(crate) fn describe(&self) -> String {
        let link = |l: Option<Link>| l.map_or("-".to_owned(), |l| format!("{l:?}").to_lowercase());
        UNITS
            .iter()
            .filter(|r| self.has(r.unit))
            .map(|r| {
                format!(
                    "  {:<13} {:>8} -> {}",
                    r.name,
                    link(r.reads),
                    link(r.writes)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `files` read into the stages behind the ingress; no side job.
    pub(crate) fn import(config: &ServeConfig, files: crate::import::Files) -> Selection {
        let mut units = vec![Unit::Files, Unit::Decode, Unit::Geofence, Unit::Sink];
        if config.geofence.rules.is_some() {
            units.insert(3, Unit::Proximity);
        }
        Selection {
            units,
            buffered: false,
            files: Some(files),
        }
    }

    fn has(&self, unit: Unit) -> bool {
        self.units.contains(&unit)
    }
}

/// Builds the units of `select` from `config`, then hands each its ends of
/// `links` and runs it under `sup`, in [`UNITS`] order.
pub(crate) async fn build<L: Links>(
    config: &ServeConfig,
    mut select: Selection,
    links: &mut L,
    sup: &mut Supervisor,
) -> Result<()> {
    let keys = stages::keys(config)?;
    // The sink opens its store (or migrates ClickHouse) first: in one
    // process it gives back the device state stored with the rows, the
    // geofence stage's first input.
    let (mut sink, mut shipper, mut restored) = (None, None, Vec::new());
    let mut near_restored = Vec::new();
    if select.has(Unit::Sink) {
        let (s, ship) = Sink::build(config, select.buffered).await?;
        if links.state_from_store() {
            // The proximity rules' state is the proximity stage's.
            (near_restored, restored) = s.stored_state().await?.into_iter().partition(
                |m| matches!(&m.value, otstream_model::Record::State(s) if s.kind == KIND_NEAR),
            );
        }
        sink = Some(s);
        shipper = ship;
    }
    // With the sink in this process, the read API's live feed hears it.
    let ingress = select.has(Unit::HttpIngress);
    let live =
        (sink.is_some() && (ingress || select.has(Unit::Api))).then(otstream_api::live::channel);
    let mut api = if ingress || select.has(Unit::Api) {
        Some(crate::api::start(config, live.clone(), sup.front()).await?)
    } else {
        None
    };
    let events = if sink.is_some() {
        Some(stages::EventsOut::build(config).await?)
    } else {
        None
    };
    let (mut outgoing, mut deliverers) = match events {
        Some(e) => (Some(e.outgoing), e.deliverers),
        None => (None, None),
    };

    // Every unit is built before any runs: a bad fences file or an
    // unreachable ClickHouse stops the start, not a running stage.
    let mut start = Start::default();
    // The fences pushed to the phones: one for both ingresses.
    let mut push = if select.units.contains(&Unit::Push) {
        Some(crate::push::FencePush::new(&config.geofence)?)
    } else {
        None
    };
    for row in &UNITS {
        if !select.has(row.unit) {
            continue;
        }
        let (name, stop) = (row.name, row.stop);
        match row.unit {
            Unit::MqttIngress => {
                let Some(m) = config.mqtt.clone() else {
                    continue;
                };
                if links.forwards() && m.topic_prefix != config.decode.topic_prefix {
                    tracing::warn!(mqtt = %m.topic_prefix, decode = %config.decode.topic_prefix, "mqtt.topic_prefix differs from decode.topic_prefix");
                }
                let (subscribed, watch) = tokio::sync::watch::channel(false);
                start.ready_after.push(watch);
                let ingress = MqttIngress::new(m, subscribed)
                    .with_push(push.as_ref().map(|(_, p)| p.clone()));
                start.unit(name, ingress, none(), links.raw_tx()?, stop);
            }
            Unit::HttpIngress => {
                let api = api.as_ref().context("the ingress has its access rules")?;
                let listener = otstream_http::listen(config.http.addr)
                    .with_context(|| format!("cannot listen on {}", config.http.addr))?;
                tracing::info!(http_addr = %listener.local_addr()?, data_dir = %config.data_dir.display(), "http ingress listening");
                let friends = crate::api::friends(config, &api.auth).await;
                let ingress = HttpIngress::new(
                    listener,
                    config.http.clone(),
                    config.decode.clone(),
                    keys.clone(),
                    api.auth.clone(),
                )
                .with_fallback(api.fallback.clone())
                .with_friends(friends.as_ref().map(|f| f.friends()));
                let ingress = ingress.with_push(push.as_ref().map(|(_, p)| p.clone()));
                start.unit(name, ingress, none(), links.intake()?, stop);
                if let Some(f) = friends {
                    start.unit("friends", f, none(), none(), Front);
                }
                if let Some((unit, _)) = push.take() {
                    start.unit("push", unit, none(), none(), Front);
                }
            }
            Unit::Files => {
                let files = select.files.take().context("import names its files")?;
                start.unit(name, files, none(), links.raw_tx()?, stop);
            }
            Unit::Depth => {
                if let Some(depth) = links.depth() {
                    start.unit(name, depth, none(), none(), stop);
                }
            }
            // Built with the ingress, which they feed.
            Unit::Friends | Unit::Push => {}
            Unit::Decode => {
                let decode = DecodeStage::new(config.decode.clone(), keys.clone());
                let (input, output) = (links.raw_rx()?, links.records_tx()?);
                start.unit(name, decode, input, output, stop);
            }
            Unit::Geofence => {
                let mut geo = config.geo_stage();
                geo.derived_only = !links.forwards();
                if select.has(Unit::Files) {
                    // One state snapshot per device a second, not one per
                    // fix: nobody waits on an ack here, and the last is
                    // written at the end.
                    geo.coalesce_state = true;
                    geo.geofence.state_interval_ms = geo.geofence.state_interval_ms.max(1000);
                }
                let geofence = stages::geofence(geo).await?;
                let input = links.records_rx(std::mem::take(&mut restored))?;
                start.unit(name, geofence, input, links.geofenced_tx()?, stop);
            }
            Unit::Proximity => {
                let proximity = ProximityStage::new(&config.geo_stage())?;
                let input = links.near_rx(std::mem::take(&mut near_restored))?;
                start.unit(name, proximity, input, links.stored_tx()?, stop);
            }
            Unit::Sink => {
                let sink = sink.take().context("the sink was built")?;
                let step = outgoing.take().context("the outgoing step was built")?;
                let stage = stages::SinkUnit::new(sink, step, live.clone());
                start.unit(name, stage, links.stored_rx()?, none(), stop);
            }
            Unit::Retention => {
                if let Some(job) = stages::retention(config) {
                    start.unit(name, job, none(), none(), stop);
                }
            }
            Unit::Addresses => {
                if let Some(job) = stages::addresses(config)? {
                    start.unit(name, job, none(), none(), stop);
                }
            }
            Unit::Events => {
                if let Some(job) = deliverers.take() {
                    start.unit(name, job, none(), none(), stop);
                }
            }
            // After the sink: what is buffered when it stops stays for the
            // next start; the shipper stops where it is.
            Unit::Shipper => {
                if let Some(job) = shipper.take() {
                    start.unit::<(), (), Shipper>(name, job, none(), none(), stop);
                }
            }
            Unit::Api => {
                if let Some(listener) = api.as_mut().and_then(|a| a.own.take()) {
                    start.unit(name, listener, none(), none(), stop);
                }
            }
        }
    }
    start.run(sup);
    Ok(())
}

/// Runs one built unit.
type Spawn = Box<dyn FnOnce(&mut Supervisor) + Send>;

/// The units built, each with its ends, to run once all are built.
#[derive(Default)]
struct Start {
    units: Vec<Spawn>,
    ready_after: Vec<tokio::sync::watch::Receiver<bool>>,
}

impl Start {
    fn unit<I, O, S>(
        &mut self,
        name: &'static str,
        stage: S,
        input: End<I>,
        output: End<O>,
        stop: StopBy,
    ) where
        S: Stage<I, O>,
        I: Send + 'static,
        O: Send + 'static,
    {
        self.units.push(Box::new(move |sup| {
            sup.stage(name, stage, input, output, stop)
        }));
    }

    /// Runs them under `sup`, in [`UNITS`] order.
    fn run(self, sup: &mut Supervisor) {
        for watch in self.ready_after {
            sup.ready_after(watch);
        }
        for run in self.units {
            run(sup);
        }
    }
}

/// Publishes the depth of each in-process link every second until the
/// front stops (it holds senders: the links close only once it has).
pub(crate) struct Depth {
    gauges: Vec<(metrics::Gauge, Probe)>,
}

/// How many messages wait on one link.
pub(crate) type Probe = Box<dyn Fn() -> usize + Send>;

impl Depth {
    pub(crate) fn new(links: Vec<(&'static str, Probe)>) -> Self {
        Depth {
            gauges: links
                .into_iter()
                .map(|(topic, depth)| {
                    (
                        metrics::gauge!("otstream_bus_depth", "topic" => topic),
                        depth,
                    )
                })
                .collect(),
        }
    }
}

impl Stage<(), ()> for Depth {
    type Error = std::convert::Infallible;

    async fn run(self, _: (), _: (), shutdown: CancellationToken) -> Result<(), Self::Error> {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                _ = tick.tick() => {
                    for (gauge, depth) in &self.gauges {
                        gauge.set(depth() as f64);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/ARCHITECTURE.md draws the topology for newcomers: its table
    /// is this one, row for row.
    #[test]
    fn the_architecture_page_shows_the_topology_as_built() {
        let page = include_str!("../../../docs/ARCHITECTURE.md");
        let link = |l: Option<Link>| l.map_or("-".to_owned(), |l| format!("{l:?}").to_lowercase());
        let rows: Vec<String> = UNITS
            .iter()
            .map(|r| {
                format!(
                    "| {} | {} | {} | {} | {} |",
                    r.name,
                    r.part.name(),
                    link(r.reads),
                    link(r.writes),
                    format!("{:?}", r.stop).to_lowercase()
                )
            })
            .collect();
        let drawn: Vec<&str> = page
            .lines()
            .skip_while(|l| !l.starts_with("| unit | part |"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .collect();
        assert_eq!(drawn, rows);
    }

    /// The crates' table on the architecture page is what each crate's
    /// Cargo.toml says it depends on, and no stage crate uses another:
    /// stages share only model, schema and bus, the shared auth, HTTP and
    /// MQTT crates and the pure domain libraries.
    #[test]
    fn stage_crates_depend_on_no_other_stage_as_the_architecture_page_says() {
        const STAGES: [&str; 8] = [
            "ingress",
            "decode-stage",
            "geofence",
            "sink",
            "api",
            "events",
            "addresses",
            "import",
        ];
        const SHARED: [&str; 9] = [
            "model", "schema", "bus", "auth", "http", "mqtt", "decode", "trips", "geocode",
        ];
        let page = include_str!("../../../docs/ARCHITECTURE.md");
        let drawn: Vec<(&str, &str)> = page
            .lines()
            .skip_while(|l| !l.starts_with("| crate | role |"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                Some((*cells.get(1)?, *cells.get(3)?))
            })
            .collect();
        let crates = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let mut on_disk: Vec<String> = std::fs::read_dir(crates)
            .expect("crates/")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        on_disk.sort();
        let mut named: Vec<String> = drawn.iter().map(|(c, _)| (*c).to_owned()).collect();
        named.sort();
        assert_eq!(named, on_disk, "every crate has its row");
        for (name, deps) in drawn {
            let manifest =
                std::fs::read_to_string(format!("{crates}/{name}/Cargo.toml")).expect("manifest");
            // [dependencies] only: what the crate's code runs with, not its tests.
            let mut uses: Vec<&str> = manifest
                .lines()
                .skip_while(|l| *l != "[dependencies]")
                .skip(1)
                .take_while(|l| !l.starts_with('['))
                .filter_map(|l| l.strip_prefix("otstream-")?.split(['.', ' ']).next())
                .collect();
            uses.sort_unstable();
            if name == "cli" {
                continue;
            }
            let said: Vec<&str> = if deps == "-" {
                vec![]
            } else {
                deps.split(", ").collect()
            };
            assert_eq!(uses, said, "{name}: Cargo.toml and the page disagree");
            if STAGES.contains(&name) {
                let stray: Vec<&&str> = uses.iter().filter(|d| !SHARED.contains(d)).collect();
                assert!(stray.is_empty(), "stage crate {name} uses {stray:?}");
            }
        }
    }

    #[test]
    fn serve_runs_the_configured_side_jobs_only() {
        let config = ServeConfig::load(None).expect("defaults");
        assert_eq!(
            Selection::parts(&config, &Part::PIPELINE).units,
            [
                Unit::HttpIngress,
                Unit::Depth,
                Unit::Decode,
                Unit::Geofence,
                Unit::Sink,
                Unit::Retention
            ]
        );
        assert_eq!(Selection::parts(&config, &[Part::Api]).units, [Unit::Api]);
        assert_eq!(
            Selection::parts(&config, &[Part::Sink]).units,
            [Unit::Sink, Unit::Retention]
        );
    }
}
