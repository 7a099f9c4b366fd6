//! The geofence stage: positions and waypoints in; the same records out,
//! followed by the server-side transitions, trips and stops they caused
//! and the device's new state, all carrying the input's ack.
//!
//! Durability of state: the state snapshot of a device is sent after the
//! records derived with it and carries the same ack, so the input is
//! acknowledged only once both are stored, and a sink that stores in
//! order never holds a state newer than the rows it accounts for. After a
//! crash, what was not acknowledged is delivered again and evaluated
//! against the stored state: the same rows come out and collapse on their
//! keys; a restart in the middle of a trip gives the trips an
//! uninterrupted run gives.
//!
//! Over Kafka (`StageConfig::derived_only`) the records given are not
//! sent on: they are in their topics already. A state snapshot given as
//! input is restored, not sent on: that is how a member assigned a
//! partition picks up its devices from the compacted `state` topic. And a
//! device's state is snapshotted at most every `state_interval_ms`: the
//! snapshot carries the acks of every fix since the last one (joined), so
//! none of those fixes is committed before the state that accounts for
//! them is durable, and a crash replays them against the last snapshot as
//! before; at a fix a second per device, this halves what the stage sends.
//!
//! The fences file and the rules file are checked every `reload_ms` and
//! reloaded when they change; a file that does not parse is reported and
//! the fences or rules in use are kept.

//!
//! Layout: [`tracker`] evaluates records for every device (pure but for
//! the clock); [`fences`] reads the fences and rules files and notices
//! them change;
//! [`clock`] is where the stage reads the time; [`near`] is the
//! proximity stage, behind this one; this module is the loop.

mod clock;
mod fences;
mod near;
#[cfg(test)]
mod tests;
mod tracker;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use metrics::Counter;
use otstream_bus::{Message, Receiver, Sender, Stage};
use otstream_model::Record;
use otstream_trips::TripConfig;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

pub use clock::{Clock, SystemClock, TokioClock};
pub use fences::{Load, Watched, load_fences, load_rules};
pub use near::ProximityStage;
pub use tracker::{DeviceGeo, Tracker};

use crate::rules::{RuleError, Rules};
use crate::{FenceError, GeofenceConfig};

/// Most records handled per trip to the blocking pool.
pub const BATCH: usize = 256;

/// Batches up to this size are processed on the async worker (well under
/// 100 µs); larger ones go to the blocking pool.
const INLINE_BATCH: usize = 32;

/// `kind` of the per-device geofence and trip state in `device_state`.
pub const KIND_GEO: &str = "geo";
/// `kind` of a device's own regions in `device_state`.
pub const KIND_REGIONS: &str = "waypoints";
/// `kind` of a proximity rule's state in `device_state` (user
/// [`otstream_model::Near::USER`], device the rule's name).
pub const KIND_NEAR: &str = "proximity";
/// `kind` of a device's places (`otstream_trips::places`) in
/// `device_state`: stored only when a stop is assigned, not with every fix.
pub const KIND_PLACES: &str = "places";

/// Why the stage could not start or went on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StageError {
    /// The fences file could not be read.
    #[error("cannot read fences file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The fences file is not a usable FeatureCollection.
    #[error("fences file {path}: {source}")]
    Fences {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: FenceError,
    },
    /// The rules file cannot be read or used.
    #[error(transparent)]
    Rules(#[from] RuleError),
    /// The processing thread died (a bug).
    #[error("geofence batch failed: {0}")]
    Thread(String),
    /// The next stage stopped taking records.
    #[error("the geofence stage's output is closed")]
    OutputClosed,
}

/// The stage's configuration: the fences, the geofence rules and the trip
/// rules.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    /// Geofence rules and the fences file.
    #[serde(default)]
    pub geofence: GeofenceConfig,
    /// Trip and stop rules.
    #[serde(default)]
    pub trips: TripConfig,
    /// Position filters.
    #[serde(default)]
    pub filters: crate::filter::FilterConfig,
    /// Silence and battery rules, and whether events are derived at all.
    #[serde(default)]
    pub events: crate::events::EventRules,
    /// Send only what the stage derives, not the records it was given:
    /// over Kafka those are in their topics already and the sink reads
    /// them there.
    #[serde(skip)]
    pub derived_only: bool,
    /// Snapshot a device's state at most every `state_interval_ms`, as
    /// over Kafka, though records are passed on: for an import, where
    /// nobody waits on an ack and a snapshot per fix is half the store's
    /// work.
    #[serde(skip)]
    pub coalesce_state: bool,
    /// `[access]` groups, which rules may name.
    #[serde(skip)]
    pub groups: std::collections::BTreeMap<String, Vec<String>>,
}

struct Meters {
    received: Counter,
    sent: Counter,
    derived: [Counter; 4],
    reload_errors: Counter,
    rules_errors: Counter,
}

impl Meters {
    fn new() -> Self {
        let stage = "geofence";
        Meters {
            received: metrics::counter!("otstream_received_events_total", "stage" => stage),
            sent: metrics::counter!("otstream_sent_events_total", "stage" => stage),
            derived: ["transition", "trip", "stop", "event"]
                .map(|t| metrics::counter!("otstream_derived_records_total", "type" => t)),
            reload_errors: metrics::counter!("otstream_errors_total", "stage" => stage, "error_code" => "fences_invalid"),
            rules_errors: metrics::counter!("otstream_errors_total", "stage" => stage, "error_code" => "rules_invalid"),
        }
    }
}

impl Meters {
    /// Sends `out` in order, counting what is derived and what is sent;
    /// false once the output is closed.
    async fn send(&self, out: Vec<Message<Record>>, output: &impl Sender<Record>) -> bool {
        let mut derived = [0u64; 4];
        for m in &out {
            match &m.value {
                Record::Transition(_) => derived[0] += 1,
                Record::Trip(_) => derived[1] += 1,
                Record::Stop(_) => derived[2] += 1,
                Record::Event(_) => derived[3] += 1,
                _ => {}
            }
        }
        let sent = out.len() as u64;
        if output.send_all(out).await.is_err() {
            return false;
        }
        for (c, n) in self.derived.iter().zip(derived) {
            if n > 0 {
                c.increment(n);
            }
        }
        self.sent.increment(sent);
        true
    }
}

/// The geofence stage: the fences loaded, built before it runs.
pub struct GeofenceStage {
    config: StageConfig,
    tracker: Tracker,
    fences_file: Option<Watched<crate::FenceSet>>,
    rules_file: Option<Watched<Rules>>,
}

impl GeofenceStage {
    /// Loads the fences and rules named in `config`. The devices' stored state is
    /// given as input, ahead of their records, in every mode (see
    /// [`Tracker::process`]): in one process through
    /// `otstream_bus::Prepended`, over Kafka from the `state` topic.
    pub fn new(config: StageConfig) -> Result<Self, StageError> {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    /// [`GeofenceStage::new`] reading the time from `clock`: tests give it
    /// a [`TokioClock`] and run on paused time.
    pub fn with_clock(config: StageConfig, clock: Arc<dyn Clock>) -> Result<Self, StageError> {
        let path = config.geofence.fences.clone();
        let fences_file = path
            .clone()
            .map(|p| Watched::new(p, Arc::new(|p: &std::path::Path| load_fences(Some(p)))));
        let fences = load_fences(path.as_deref())?;
        metrics::gauge!("otstream_geofence_fences").set(fences.fences().len() as f64);
        let rules_path = config.geofence.rules.clone();
        let rules = load_rules(rules_path.as_deref(), &config.groups)?;
        let groups = Arc::new(config.groups.clone());
        let rules_file = rules_path.clone().map(|p| {
            let load = move |p: &std::path::Path| load_rules(Some(p), &groups);
            Watched::new(p, Arc::new(load))
        });
        let mut tracker = Tracker::with_clock(&config, Arc::new(fences), clock);
        let names: Vec<&str> = rules.names().collect();
        tracing::info!(fences = ?path, rules = ?names, "geofence stage ready");
        tracker.set_rules(rules);
        Ok(GeofenceStage {
            config,
            tracker,
            fences_file,
            rules_file,
        })
    }
}

impl<R: Receiver<Record>, S: Sender<Record>> Stage<R, S> for GeofenceStage {
    /// Runs until the input is closed and drained, or `shutdown` is
    /// cancelled, evaluating every record; a closed output or a failed
    /// batch ends it with the error.
    type Error = StageError;

    async fn run(
        self,
        mut input: R,
        output: S,
        shutdown: CancellationToken,
    ) -> Result<(), StageError> {
        let GeofenceStage {
            config,
            mut tracker,
            mut fences_file,
            mut rules_file,
        } = self;
        let meters = Meters::new();
        let fence_gauge = metrics::gauge!("otstream_geofence_fences");
        let device_gauge = metrics::gauge!("otstream_geofence_devices");
        let mut reload =
            tokio::time::interval(Duration::from_millis(config.geofence.reload_ms.max(100)));
        reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let coalescing = tracker.coalescing();
        // Snapshots of devices that went quiet are sent when due, whether or
        // not more input comes.
        let mut flush = tokio::time::interval(Duration::from_millis(
            (config.geofence.state_interval_ms / 4).max(10),
        ));
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Silence is noticed within a tenth of its limit (at most a
        // minute late); each sweep is a pass over the devices in memory.
        let silent_after = config.events.silent_after_s;
        let mut sweep = tokio::time::interval(Duration::from_millis(
            (silent_after * 100).clamp(1000, 60_000),
        ));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let sweeping = config.events.enabled && silent_after > 0;
        let mut batch: Vec<Message<Record>> = Vec::with_capacity(BATCH);
        loop {
            let n = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                _ = flush.tick(), if coalescing => {
                    let mut out = Vec::new();
                    tracker.flush(false, &mut out);
                    if !meters.send(out, &output).await {
                        return Err(StageError::OutputClosed);
                    }
                    continue;
                }
                _ = sweep.tick(), if sweeping => {
                    let mut out = Vec::new();
                    tracker.sweep_silent(&mut out);
                    if !meters.send(out, &output).await {
                        return Err(StageError::OutputClosed);
                    }
                    continue;
                }
                _ = reload.tick(), if fences_file.is_some() || rules_file.is_some() => {
                    let reloaded = match &mut fences_file {
                        Some(f) => f.reload().await,
                        None => None,
                    };
                    match reloaded {
                        Some(Ok(set)) => {
                            tracing::info!(fences = set.fences().len(), "fences file changed; reloaded");
                            fence_gauge.set(set.fences().len() as f64);
                            tracker.set_fences(Arc::new(set));
                        }
                        Some(Err(e)) => {
                            meters.reload_errors.increment(1);
                            tracing::error!(error = %e, "fences file changed but cannot be used; keeping the fences in use");
                        }
                        None => {}
                    }
                    let reloaded = match &mut rules_file {
                        Some(f) => f.reload().await,
                        None => None,
                    };
                    match reloaded {
                        Some(Ok(rules)) => {
                            let names: Vec<&str> = rules.names().collect();
                            tracing::info!(rules = ?names, "rules file changed; reloaded");
                            tracker.set_rules(rules);
                        }
                        Some(Err(e)) => {
                            meters.rules_errors.increment(1);
                            tracing::error!(error = %e, "rules file changed but cannot be used; keeping the rules in use");
                        }
                        None => {}
                    }
                    continue;
                }
                n = input.recv_many(&mut batch, BATCH) => n,
            };
            if n == 0 {
                // Input over: what is pending is durable before the end.
                let mut out = Vec::new();
                tracker.flush(true, &mut out);
                meters.send(out, &output).await;
                return Ok(());
            }
            meters.received.increment(n as u64);
            let mut inputs = std::mem::take(&mut batch);
            // The tracker goes with its batch and comes back with the
            // results (and the emptied batch, to fill again).
            let work = move || {
                let mut out = Vec::with_capacity(inputs.len() * 2);
                for m in inputs.drain(..) {
                    tracker.process(m, &mut out);
                }
                tracker.flush(false, &mut out);
                (tracker, inputs, out)
            };
            // A few microseconds a record: a small batch costs less here than
            // the hand-off to the blocking pool (measured: -10% end to end at
            // 256 clients when every batch went there).
            let (t, emptied, out) = if n <= INLINE_BATCH {
                work()
            } else {
                tokio::task::spawn_blocking(work)
                    .await
                    .map_err(|e| StageError::Thread(e.to_string()))?
            };
            tracker = t;
            batch = emptied;
            device_gauge.set(tracker.devices() as f64);
            if !meters.send(out, &output).await {
                return Err(StageError::OutputClosed);
            }
        }
    }
}
