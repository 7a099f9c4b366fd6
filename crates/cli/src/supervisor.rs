//! The one supervisor of every mode (`serve`, `serve --bus kafka`, `run
//! STAGE`): it holds the running stages in pipeline order, says the
//! process is ready once they run, watches all of them, and stops them.
//!
//! - **Start.** The caller builds each stage from the configuration first
//!   (a bad fences file or an unreachable ClickHouse stops the start, not
//!   a running stage) and hands its `run` future to [`Supervisor::spawn`],
//!   in pipeline order. [`Supervisor::run`] waits for the MQTT
//!   subscriptions, then sets `/readyz`.
//! - **Watch.** Every stage reports how it ended. One that ends while
//!   serving, with an error or not, takes readiness down at once and stops
//!   the others; the process then exits non-zero with an error naming the
//!   stage and why.
//! - **Stop.** On SIGINT/SIGTERM (or such an end) the front (ingress, read
//!   API) is cancelled, then each stage in pipeline order is asked to stop
//!   (its own hook: a Kafka consumer stops taking messages; an in-process
//!   stage ends when its input closes) and awaited, then its follow-up
//!   runs (a Kafka producer's flush, the consumer's final commit). Past
//!   `shutdown_timeout_ms` the stages left are stopped hard and named.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;
use otstream_bus::Stage;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::ServeConfig;
use crate::links::End;
use crate::metrics_server;
use crate::runtime::shutdown_signal;

type Ended = (&'static str, String);
pub(crate) type Followup = Pin<Box<dyn Future<Output = ()> + Send>>;

/// When a unit is told to stop: its shutdown signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopBy {
    /// With the front, first: it takes requests (its senders then close
    /// the links behind it).
    Front,
    /// By its input closing (in one process) or its consumer stopping
    /// (over Kafka), in its turn; its signal is the hard stop past the
    /// deadline.
    Input,
    /// Its own signal, in its turn (side jobs).
    Turn,
}

/// One running stage and how to stop it.
pub(crate) struct Supervised {
    name: &'static str,
    /// When it is told to stop, for units added with [`Supervisor::stage`].
    by: Option<StopBy>,
    task: JoinHandle<Result<()>>,
    stop: Option<Box<dyn FnOnce() + Send>>,
    then: Option<Followup>,
}

impl Supervised {
    /// Called when its turn to stop comes; without it the stage ends by
    /// itself once its input closes.
    pub(crate) fn on_stop(&mut self, stop: impl FnOnce() + Send + 'static) -> &mut Self {
        self.stop = Some(Box::new(stop));
        self
    }

    /// Awaited once it has ended (within the shutdown deadline).
    pub(crate) fn then(&mut self, then: impl Future<Output = ()> + Send + 'static) -> &mut Self {
        self.then = Some(Box::pin(then));
        self
    }
}

/// The stages of this process, watched.
pub(crate) struct Supervisor {
    ready: Arc<AtomicBool>,
    front: CancellationToken,
    hard_stop: CancellationToken,
    ended_tx: mpsc::UnboundedSender<Ended>,
    ended: mpsc::UnboundedReceiver<Ended>,
    stages: Vec<Supervised>,
    subscriptions: Vec<watch::Receiver<bool>>,
    timeout: Duration,
    metrics_addr: Option<std::net::SocketAddr>,
}

impl Supervisor {
    /// A supervisor with nothing running yet; `/metrics`, `/healthz` and
    /// `/readyz` (not ready) are served from now on.
    pub(crate) async fn start(config: &ServeConfig) -> Result<Self> {
        let mut sup = Supervisor::new(Duration::from_millis(config.shutdown_timeout_ms));
        sup.metrics_addr =
            Some(metrics_server::start(config.metrics.addr, sup.ready.clone()).await?);
        Ok(sup)
    }

    /// A supervisor whose graceful stop may take `timeout`, without the
    /// metrics endpoint (import: nothing to scrape).
    pub(crate) fn new(timeout: Duration) -> Self {
        let (ended_tx, ended) = mpsc::unbounded_channel();
        Supervisor {
            ready: Arc::new(AtomicBool::new(false)),
            front: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            ended_tx,
            ended,
            stages: Vec::new(),
            subscriptions: Vec::new(),
            timeout,
            metrics_addr: None,
        }
    }

    /// Cancelled first when stopping: what takes requests (the ingress,
    /// the read API, the gauges that hold a sender) stops taking them.
    pub(crate) fn front(&self) -> CancellationToken {
        self.front.clone()
    }

    /// Cancelled only past the shutdown deadline: stages stop where they
    /// are, leaving what is not durable unacknowledged.
    pub(crate) fn hard_stop(&self) -> CancellationToken {
        self.hard_stop.clone()
    }

    /// Readiness waits for this MQTT subscription (at most 10 s).
    pub(crate) fn ready_after(&mut self, subscribed: watch::Receiver<bool>) {
        self.subscriptions.push(subscribed);
    }

    /// Runs the unit `name` with its ends of the links; units stop in the
    /// order they were added, as `stop` says, and then what their links
    /// need done (a producer's flush, then the consumer's last commit).
    pub(crate) fn stage<I, O, S>(
        &mut self,
        name: &'static str,
        stage: S,
        input: End<I>,
        output: End<O>,
        stop: StopBy,
    ) where
        S: Stage<I, O>,
        I: 'static,
        O: 'static,
    {
        let token = match stop {
            StopBy::Front => self.front(),
            StopBy::Input => self.hard_stop(),
            StopBy::Turn => CancellationToken::new(),
        };
        let turn = (stop == StopBy::Turn).then(|| token.clone());
        let input_stop = input.stop;
        let output_stop = output.stop;
        let (out_then, in_then) = (output.then, input.then);
        let s = self.spawn(name, stage.run(input.end, output.end, token));
        s.by = Some(stop);
        s.on_stop(move || {
            for f in [input_stop, output_stop].into_iter().flatten() {
                f();
            }
            if let Some(t) = turn {
                t.cancel();
            }
        });
        s.then(async move {
            for f in [out_then, in_then].into_iter().flatten() {
                f.await;
            }
        });
    }

    /// Runs the stage `name`; stages stop in the order they were spawned.
    /// A fault injected into `name` fails it (tests only:
    /// [`crate::fault`]).
    pub(crate) fn spawn<E: Into<anyhow::Error>>(
        &mut self,
        name: &'static str,
        run: impl Future<Output = Result<(), E>> + Send + 'static,
    ) -> &mut Supervised {
        let ended = self.ended_tx.clone();
        let task = tokio::spawn(async move {
            let result = tokio::select! {
                r = run => r.map_err(Into::into),
                e = crate::fault::injected(name) => Err(e),
            };
            let why = match &result {
                Ok(()) => RETURNED.to_owned(),
                Err(e) => format!("{e:#}"),
            };
            // Nobody listening (the process is stopping anyway) is fine.
            let _ = ended.send((name, why));
            result
        });
        self.stages.push(Supervised {
            name,
            by: None,
            task,
            stop: None,
            then: None,
        });
        let last = self.stages.len() - 1;
        &mut self.stages[last]
    }

    /// Serves until SIGINT/SIGTERM or until a stage ends, then stops
    /// everything in order. Err names the stage that ended while serving,
    /// the ones that failed and the ones that hung.
    pub(crate) async fn run(mut self, what: &str) -> Result<()> {
        for s in std::mem::take(&mut self.subscriptions) {
            await_subscribed(s).await;
        }
        self.ready.store(true, Ordering::Release);
        let names: Vec<&str> = self.stages.iter().map(|s| s.name).collect();
        tracing::info!(stages = ?names, metrics_addr = ?self.metrics_addr, "otstream {what} ready");

        let mut stopped_early = None;
        tokio::select! {
            () = shutdown_signal() => tracing::info!("shutting down: draining in order"),
            Some((stage, why)) = self.ended.recv() => {
                tracing::error!(stage, error = %why, "a stage ended while serving: not ready, stopping the others");
                stopped_early = Some((stage, why));
            }
        }
        self.ready.store(false, Ordering::Release);
        self.front.cancel();
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut ending = Ending::default();
        for s in self.stages {
            if let Some(stop) = s.stop {
                stop();
            }
            ending.record(s.name, tokio::time::timeout_at(deadline, s.task).await);
            if let Some(then) = s.then {
                let _ = tokio::time::timeout_at(deadline, then).await;
            }
        }
        ending.conclude(&self.hard_stop, stopped_early)?;
        tracing::info!("shutdown complete: every acknowledged message is stored");
        Ok(())
    }
}

impl Supervisor {
    /// Runs until every unit has ended by itself (import: the reader ends
    /// at the files' end, each stage once its input is drained); Err names
    /// the first that failed. When a front unit fails (the reader), what it
    /// handed on still drains and is stored; any other failure stops the
    /// rest where they are. Past `shutdown_timeout_ms` after a failure the
    /// units left are stopped hard and named.
    pub(crate) async fn finish(self) -> Result<()> {
        let Supervisor {
            front,
            hard_stop,
            ended_tx,
            mut ended,
            stages,
            timeout,
            ..
        } = self;
        // Every unit holds a clone: the channel ends when the last has.
        drop(ended_tx);
        let by = |name: &str| stages.iter().find(|s| s.name == name).and_then(|s| s.by);
        let mut failed = None;
        let mut deadline = None;
        loop {
            let next = match deadline {
                None => ended.recv().await,
                Some(d) => match tokio::time::timeout_at(d, ended.recv()).await {
                    Ok(next) => next,
                    Err(_) => {
                        hard_stop.cancel();
                        break;
                    }
                },
            };
            let Some((stage, why)) = next else {
                break;
            };
            if why != RETURNED && failed.is_none() {
                failed = Some(format!("stage {stage} failed: {why}"));
                front.cancel();
                if by(stage) != Some(StopBy::Front) {
                    hard_stop.cancel();
                }
                deadline = Some(tokio::time::Instant::now() + timeout);
            }
        }
        let mut ending = Ending::default();
        let deadline = tokio::time::Instant::now() + timeout;
        for s in stages {
            ending.record(s.name, tokio::time::timeout_at(deadline, s.task).await);
            if let Some(then) = s.then {
                let _ = tokio::time::timeout_at(deadline, then).await;
            }
        }
        let concluded = ending.conclude_stages(&hard_stop);
        match (failed, concluded) {
            (Some(f), Err(e)) => Err(anyhow::anyhow!("{f}; {e}")),
            (Some(f), Ok(())) => Err(anyhow::anyhow!(f)),
            (None, done) => done,
        }
    }
}

/// How a unit that ended without an error is reported.
const RETURNED: &str = "it returned";

/// Waits until the MQTT ingress holds its subscriptions, for at most 10 s:
/// until then the broker keeps nothing for it, so a process that said it
/// was ready would lose what phones publish meanwhile. Past 10 s (the
/// broker is down or refuses) it goes on, so that HTTP is served anyway,
/// and says so.
async fn await_subscribed(mut watch: watch::Receiver<bool>) {
    let wait = watch.wait_for(|subscribed| *subscribed);
    if tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .is_err()
    {
        tracing::warn!(
            "not subscribed to the MQTT broker after 10 s; ready for HTTP, MQTT keeps retrying"
        );
    }
}

/// How the stages ended once asked to stop: the ones that failed and the
/// ones still running at the deadline, by name.
#[derive(Default)]
struct Ending {
    hung: Vec<&'static str>,
    failed: Vec<&'static str>,
}

type Joined = Result<Result<Result<()>, tokio::task::JoinError>, tokio::time::error::Elapsed>;

impl Ending {
    /// An error naming the stage that ended while running (`stopped_early`,
    /// and why), and the stages that hung (stopped hard now through
    /// `hard_stop`) or failed; Ok when none did.
    fn conclude(self, hard_stop: &CancellationToken, stopped_early: Option<Ended>) -> Result<()> {
        let concluded = self.conclude_stages(hard_stop);
        if let Some((stage, why)) = stopped_early {
            let also = concluded
                .err()
                .map(|e| format!("; {e}"))
                .unwrap_or_default();
            anyhow::bail!("stage {stage} ended while serving: {why}{also}");
        }
        concluded
    }

    fn conclude_stages(self, hard_stop: &CancellationToken) -> Result<()> {
        if !self.hung.is_empty() {
            hard_stop.cancel();
            anyhow::bail!(
                "shutdown timed out; stages still running: {}",
                self.hung.join(", ")
            );
        }
        if !self.failed.is_empty() {
            anyhow::bail!(
                "stages stopped with an error: {} (see the log)",
                self.failed.join(", ")
            );
        }
        Ok(())
    }

    fn record(&mut self, stage: &'static str, joined: Joined) {
        match joined {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => {
                tracing::error!(stage, error = %format!("{e:#}"), "stage failed");
                self.failed.push(stage);
            }
            Ok(Err(e)) => {
                tracing::error!(stage, error = %e, "stage panicked");
                self.failed.push(stage);
            }
            Err(_) => self.hung.push(stage),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stage_ending_while_serving_stops_the_others_in_order_and_is_named() {
        let mut sup = Supervisor::new(Duration::from_millis(200));
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let front = sup.front();
        let o = order.clone();
        sup.spawn("ingress", async move {
            front.cancelled().await;
            o.lock().expect("lock").push("ingress ended");
            anyhow::Ok(())
        });
        let (o, p) = (order.clone(), order.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        sup.spawn("decode", async move {
            let _ = rx.await;
            o.lock().expect("lock").push("decode ended");
            anyhow::Ok(())
        })
        .on_stop(move || {
            p.lock().expect("lock").push("decode asked");
            let _ = tx.send(());
        });
        sup.spawn("sink", async { anyhow::bail!("disk on fire") });
        let err = sup.run("test").await.expect_err("a stage ended");
        assert_eq!(
            err.to_string(),
            "stage sink ended while serving: disk on fire; stages stopped with an error: sink (see the log)"
        );
        assert_eq!(
            *order.lock().expect("lock"),
            ["ingress ended", "decode asked", "decode ended"]
        );
    }

    #[tokio::test]
    async fn a_stage_that_hangs_past_the_deadline_is_named_and_stopped_hard() {
        let mut sup = Supervisor::new(Duration::from_millis(200));
        let hard = sup.hard_stop();
        let stopped_hard = Arc::new(AtomicBool::new(false));
        let s = stopped_hard.clone();
        sup.spawn("geofence", async move {
            hard.cancelled().await;
            s.store(true, Ordering::Release);
            anyhow::Ok(())
        });
        sup.spawn("decode", async { anyhow::Ok(()) });
        let err = sup.run("test").await.expect_err("it ended");
        assert_eq!(
            err.to_string(),
            "stage decode ended while serving: it returned; shutdown timed out; stages still running: geofence"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(stopped_hard.load(Ordering::Acquire));
    }
}
