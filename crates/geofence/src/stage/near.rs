//! The proximity stage: the fixes the geofence stage re-keyed by
//! proximity rule ([`otstream_model::Near`]) in; the events of pairs
//! coming near and parting out, with each rule's new state, all carrying
//! the fixes' acks.
//!
//! Every fix a rule compares comes through one partition (the rule is
//! the key), in order, so one member of the stage's group holds the whole
//! of a rule's state: two devices on different partitions of `positions`
//! meet here. Durability is the geofence stage's: a rule's state is
//! snapshotted at most every `geofence.state_interval_ms` (a rule's state
//! is all its devices, up to some hundred kilobytes: not one a fix),
//! under the acks of every fix for it since the last one (joined), so no
//! fix is acknowledged before the state that accounts for it is stored (a
//! phone's answer waits up to that long); a restarted stage is given the snapshots first (the
//! store in one process, the `state` topic's partitions over Kafka), and a
//! fix delivered again after a crash gives the same events with the same
//! ids. The rules file is reloaded as the geofence stage reloads it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use otstream_bus::{Ack, Message, Receiver, Sender, Stage};
use otstream_model::{Near, Record, StateSnapshot, Text};
use tokio_util::sync::CancellationToken;

use super::clock::{Clock, SystemClock};
use super::{BATCH, INLINE_BATCH, KIND_NEAR, StageConfig, StageError, Watched, load_rules};
use crate::rules::{NearState, Rules};

/// The proximity stage: the rules loaded, built before it runs.
pub struct ProximityStage {
    rules: Rules,
    rules_file: Option<Watched<Rules>>,
    reload_ms: u64,
    state_interval: Duration,
    clock: Arc<dyn Clock>,
}

impl ProximityStage {
    /// Loads the rules named in `config` (the geofence stage's).
    pub fn new(config: &StageConfig) -> Result<Self, StageError> {
        let path: Option<PathBuf> = config.geofence.rules.clone();
        let rules = load_rules(path.as_deref(), &config.groups)?;
        let groups = Arc::new(config.groups.clone());
        let rules_file = path.map(|p| {
            let load = move |p: &std::path::Path| load_rules(Some(p), &groups);
            Watched::new(p, Arc::new(load))
        });
        Ok(ProximityStage {
            rules,
            rules_file,
            reload_ms: config.geofence.reload_ms.max(100),
            state_interval: Duration::from_millis(config.geofence.state_interval_ms.max(10)),
            clock: Arc::new(SystemClock),
        })
    }
}

/// Every rule's state, and what a batch did to it.
#[derive(Default)]
struct Rulebook {
    states: HashMap<Text, NearState>,
    /// The rules whose state changed since their last snapshot, with the
    /// acks of the fixes that changed it.
    pending: BTreeMap<Text, Vec<Ack>>,
    /// The newest `updated_at` written: versions never go back.
    last_updated: i64,
}

impl Rulebook {
    /// Evaluates `batch`, appending the events to `out`; the fixes that
    /// changed a rule's state wait for its next [`Rulebook::snapshot`].
    fn process(
        &mut self,
        rules: &Rules,
        batch: &mut Vec<Message<Record>>,
        out: &mut Vec<Message<Record>>,
    ) {
        for m in batch.drain(..) {
            match m.value {
                Record::State(s) if s.kind == KIND_NEAR && s.user == Near::USER => {
                    match serde_json::from_str::<NearState>(&s.state) {
                        Ok(st) => {
                            self.last_updated = self.last_updated.max(s.updated_at);
                            self.states.insert(s.device, st);
                        }
                        Err(e) => {
                            tracing::warn!(rule = %s.device, error = %e, "stored proximity state unreadable; the rule starts afresh");
                        }
                    }
                    m.ack.delivered();
                }
                Record::Near(n) => {
                    let state = self.states.entry(n.rule.clone()).or_default();
                    let mut events = Vec::new();
                    let moved = rules.near(&n.rule, state, &n.fix, &mut events);
                    for e in events {
                        out.push(Message::new(e.meta.key(), Record::Event(e), m.ack.clone()));
                    }
                    if moved {
                        self.pending.entry(n.rule).or_default().push(m.ack);
                    } else {
                        m.ack.delivered();
                    }
                }
                // A device's own state on the same partition of `state`
                // (the geofence stage's), or anything else: not ours.
                _ => m.ack.delivered(),
            }
        }
    }

    /// Appends to `out` the snapshot of each rule whose state changed,
    /// under the acks of the fixes that changed it.
    fn snapshot(&mut self, rules: &Rules, now_ms: i64, out: &mut Vec<Message<Record>>) {
        for (rule, acks) in std::mem::take(&mut self.pending) {
            let Some(state) = self.states.get(&rule) else {
                continue;
            };
            let ack = Ack::join(acks);
            match serde_json::to_string(state) {
                Ok(json) => {
                    self.last_updated = now_ms.max(self.last_updated + 1);
                    let s = StateSnapshot {
                        user: Text::from(Near::USER),
                        device: rule.clone(),
                        kind: Text::from(KIND_NEAR),
                        state: json,
                        updated_at: self.last_updated,
                    };
                    out.push(Message::new(Near::key(&rule), Record::State(s), ack));
                }
                // Not stored, so not acknowledged: the fixes come again.
                Err(_) => ack.fail(),
            }
        }
        // Rules no longer in the file are forgotten.
        self.states
            .retain(|rule, _| rules.names().any(|n| n == rule.as_str()));
    }
}

impl<R: Receiver<Record>, S: Sender<Record>> Stage<R, S> for ProximityStage {
    /// Runs until the input is closed and drained, or `shutdown` is
    /// cancelled; a closed output or a failed batch ends it with the error.
    type Error = StageError;

    async fn run(
        self,
        mut input: R,
        output: S,
        shutdown: CancellationToken,
    ) -> Result<(), StageError> {
        let ProximityStage {
            mut rules,
            mut rules_file,
            reload_ms,
            state_interval,
            clock,
        } = self;
        let mut flush = tokio::time::interval(state_interval);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let received = metrics::counter!("otstream_received_events_total", "stage" => "proximity");
        let fired = metrics::counter!("otstream_derived_records_total", "type" => "proximity");
        let mut reload = tokio::time::interval(Duration::from_millis(reload_ms));
        reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut book = Rulebook::default();
        let mut batch: Vec<Message<Record>> = Vec::with_capacity(BATCH);
        loop {
            let n = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                _ = flush.tick(), if !book.pending.is_empty() => {
                    let mut out = Vec::new();
                    book.snapshot(&rules, clock.now_ms(), &mut out);
                    if output.send_all(out).await.is_err() {
                        return Err(StageError::OutputClosed);
                    }
                    continue;
                }
                _ = reload.tick(), if rules_file.is_some() => {
                    let reloaded = match rules_file.as_mut() {
                        Some(f) => f.reload().await,
                        None => None,
                    };
                    match reloaded {
                        Some(Ok(new)) => rules = new,
                        Some(Err(e)) => tracing::error!(error = %e, "rules file changed but cannot be used; the proximity stage keeps the rules in use"),
                        None => {}
                    }
                    continue;
                }
                n = input.recv_many(&mut batch, BATCH) => n,
            };
            if n == 0 {
                // Input over: what is pending is durable before the end.
                let mut out = Vec::new();
                book.snapshot(&rules, clock.now_ms(), &mut out);
                return match output.send_all(out).await {
                    Ok(()) => Ok(()),
                    Err(_) => Err(StageError::OutputClosed),
                };
            }
            received.increment(n as u64);
            let mut out = Vec::new();
            if n <= INLINE_BATCH {
                book.process(&rules, &mut batch, &mut out);
            } else {
                // A fix is compared with every device of its rule: a large
                // batch is worth the hand-off to the blocking pool.
                let (r, mut b, mut bk) = (rules, std::mem::take(&mut batch), book);
                let done = tokio::task::spawn_blocking(move || {
                    bk.process(&r, &mut b, &mut out);
                    (r, b, bk, out)
                })
                .await
                .map_err(|e| StageError::Thread(e.to_string()))?;
                (rules, batch, book, out) = done;
            }
            let events = out
                .iter()
                .filter(|m| matches!(m.value, Record::Event(_)))
                .count();
            if output.send_all(out).await.is_err() {
                return Err(StageError::OutputClosed);
            }
            fired.increment(events as u64);
        }
    }
}
