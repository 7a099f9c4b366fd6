//! `otstream serve`: every stage in one process over bounded in-process
//! channels, OwnTracks HTTP in front, the embedded store behind. (With
//! `--bus kafka` the stages run over Kafka instead: see [`crate::kafka`].)
//!
//! ingress (HTTP, MQTT) --[raw]--> decode --[records]--> geofence --[records]--> sink
//!
//! The sink is the embedded store (SQLite) or ClickHouse. The geofence
//! stage adds server-side transitions, trips and stops, and its per-device
//! state, which the sink stores with them and which is read back here at
//! start.
//!
//! Shutdown (SIGINT or SIGTERM) drains in order: the ingress stops
//! accepting and finishes its in-flight requests (each waits for its
//! message to be stored); its sender closes the raw link, so the decode
//! stage drains and closes the records link, and so on, until the sink commits what is
//! left and returns. Past `shutdown_timeout_ms` the remaining stages are
//! stopped hard and the stage that hung is named.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use otstream_bus::kafka::KafkaConfig;
use otstream_bus::{Sender, channel};
use otstream_decode::KeyRing;
use otstream_decode::stage::DecodeStage;
use otstream_geofence::stage::GeofenceStage;
use otstream_ingress::MqttConfig;
use otstream_model::{RawMessage, Record};
use otstream_sink::SqliteBackend;
use otstream_sink::Store;
use otstream_sink::clickhouse::ClickHouseBackend;
use otstream_sink::clickhouse::ClickHouseConfig;
use tokio_util::sync::CancellationToken;

use crate::config::{BusKind, ServeConfig};
use crate::kafka::Stage;
use crate::metrics_server;

/// Flags of `otstream serve`. Each overrides the config file and the
/// environment; each also reads the environment variable named with it.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// TOML config file (see README, "Configuration").
    #[arg(long, env = "OTSTREAM_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// OwnTracks HTTP listen address [default: 0.0.0.0:5144].
    #[arg(long, env = "OTSTREAM_HTTP_ADDR", value_name = "ADDR:PORT")]
    http_addr: Option<std::net::SocketAddr>,
    /// Directory of the embedded store [default: ./data].
    #[arg(long, env = "OTSTREAM_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// A listener of its own for the read API and the map [default: the --http-addr listener].
    #[arg(long, env = "OTSTREAM_API_ADDR", value_name = "ADDR:PORT")]
    api_addr: Option<std::net::SocketAddr>,
    /// Prometheus /metrics, /healthz and /readyz address [default: 0.0.0.0:9145].
    #[arg(long, env = "OTSTREAM_METRICS_ADDR", value_name = "ADDR:PORT")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// TOML file of secrets for encrypted payloads ([keys] table).
    #[arg(long, env = "OTSTREAM_KEYS", value_name = "FILE")]
    keys: Option<PathBuf>,
    /// htpasswd file (bcrypt): require HTTP Basic authentication.
    #[arg(long, env = "OTSTREAM_HTPASSWD", value_name = "FILE")]
    htpasswd: Option<PathBuf>,
    /// Also take OwnTracks MQTT traffic from this broker (mqtt[s]://[user:pass@]host[:port]).
    #[arg(long, env = "OTSTREAM_MQTT_URL", value_name = "URL")]
    mqtt_url: Option<String>,
    /// Operator geofences: a GeoJSON FeatureCollection, reloaded when it changes.
    #[arg(long, env = "OTSTREAM_FENCES", value_name = "FILE")]
    fences: Option<PathBuf>,
    /// Write to this ClickHouse (HTTP interface) instead of the embedded store.
    #[arg(long, env = "OTSTREAM_CLICKHOUSE_URL", value_name = "URL")]
    clickhouse_url: Option<String>,
    /// Messages each in-process link holds before senders wait [default: 10000].
    #[arg(long, env = "OTSTREAM_BUS_CAPACITY", value_name = "N")]
    bus_capacity: Option<usize>,
    /// The bus between the stages [default: inprocess].
    #[arg(long, env = "OTSTREAM_BUS", value_enum)]
    bus: Option<BusKind>,
    /// Kafka bootstrap servers, `host:port[,host:port...]`.
    #[arg(long, env = "OTSTREAM_KAFKA_BROKERS", value_name = "HOST:PORT")]
    brokers: Option<String>,
    /// Log filter, e.g. `info` or `otstream_sink=debug` [default: info].
    #[arg(long, env = "OTSTREAM_LOG", default_value = "info")]
    log: String,
    /// Log format.
    #[arg(long, env = "OTSTREAM_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub(crate) enum LogFormat {
    /// Human-readable lines with key=value fields.
    Text,
    /// One JSON object per line.
    Json,
}

pub(crate) fn init_logging(filter: &str, format: LogFormat) -> Result<()> {
    let mut filter =
        tracing_subscriber::EnvFilter::try_new(filter).context("invalid --log filter")?;
    // The ClickHouse client enters its query's info span for every row it
    // reads: 7 % of a large export's CPU (perf). Its spans are off unless
    // the filter names the crate.
    if !filter.to_string().contains("clickhouse") {
        filter = filter.add_directive("clickhouse=warn".parse().context("clickhouse directive")?);
    }
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot start logging: {e}"))
}

impl Args {
    /// The configuration: file, then environment, then these flags.
    pub fn config(self) -> Result<ServeConfig> {
        init_logging(&self.log, self.log_format)?;
        let mut config = ServeConfig::load(self.config.as_deref(), std::env::vars())?;
        if let Some(a) = self.http_addr {
            config.http.addr = a;
        }
        if let Some(a) = self.api_addr {
            config.api.addr = Some(a);
        }
        if let Some(d) = self.data_dir {
            config.data_dir = d;
        }
        if let Some(a) = self.metrics_addr {
            config.metrics.addr = a;
        }
        if let Some(k) = self.keys {
            config.keys_file = Some(k);
        }
        if let Some(h) = self.htpasswd {
            config.http.htpasswd = Some(h);
        }
        if let Some(url) = self.mqtt_url {
            match &mut config.mqtt {
                Some(m) => m.url = url,
                None => config.mqtt = Some(MqttConfig::new(url)),
            }
        }
        if let Some(url) = self.clickhouse_url {
            match &mut config.clickhouse {
                Some(ch) => ch.url = url,
                None => config.clickhouse = Some(ClickHouseConfig::new(url)),
            }
        }
        if let Some(f) = self.fences {
            config.geofence.fences = Some(f);
        }
        if let Some(c) = self.bus_capacity {
            config.bus.capacity = c;
        }
        if let Some(b) = self.bus {
            config.bus.kind = b;
        }
        if let Some(b) = self.brokers {
            match &mut config.kafka {
                Some(k) => k.brokers = b,
                None => config.kafka = Some(KafkaConfig::new(b)),
            }
        }
        config.validate()?;
        Ok(config)
    }
}

/// Starts the async runtime and runs `main` on it.
pub fn block_on<T, F: std::future::Future<Output = Result<T>>>(main: F) -> Result<T> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("otstream")
        .build()
        .context("cannot start the async runtime")?
        .block_on(main)
}

/// Waits until the MQTT ingress holds its subscriptions, for at most 10 s:
/// until then the broker keeps nothing for it, so a process that said it
/// was ready would lose what phones publish meanwhile. Past 10 s (the
/// broker is down or refuses) it goes on, so that HTTP is served anyway,
/// and says so.
pub(crate) async fn await_subscribed(mut watch: tokio::sync::watch::Receiver<bool>) {
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

/// Runs `otstream check-config`: loads the configuration as `serve` and
/// `run` would (file, environment, flags; loading checks every section,
/// Kafka's included), and says
/// what it would run, without starting anything. Deployments run it to
/// catch a misspelt key before a pod crash-loops on it.
pub fn check(args: Args) -> Result<()> {
    let config = args.config()?;
    let bus = match config.bus.kind {
        BusKind::Inprocess => "in-process".to_owned(),
        BusKind::Kafka => format!("kafka at {}", config.kafka()?.brokers),
    };
    let sink = match &config.clickhouse {
        Some(ch) => format!("ClickHouse {} database {}", ch.url, ch.database),
        None => format!("embedded store in {}", config.data_dir.display()),
    };
    let mqtt = config
        .mqtt
        .as_ref()
        .map_or("off".to_owned(), |m| m.url.clone());
    println!(
        "configuration ok: http {}, mqtt {mqtt}, bus {bus}, sink {sink}, metrics {}",
        config.http.addr, config.metrics.addr
    );
    Ok(())
}

/// Runs `otstream serve` to completion.
pub fn run(args: Args) -> Result<()> {
    let config = args.config()?;
    match config.bus.kind {
        BusKind::Inprocess => block_on(serve(config)),
        BusKind::Kafka => block_on(crate::kafka::run_stages(config, &Stage::ALL)),
    }
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

async fn serve(config: ServeConfig) -> Result<()> {
    let ready = Arc::new(AtomicBool::new(false));
    let metrics = metrics_server::start(config.metrics.addr, ready.clone()).await?;

    let keys = load_keys(&config)?;
    // The sink: ClickHouse when configured, else the embedded store.
    let store = match &config.clickhouse {
        Some(ch) => {
            tracing::info!(url = %ch.url, database = %ch.database, "writing to ClickHouse");
            None
        }
        None => Some(open_store(&config).await?),
    };

    // The geofence stage resumes from the state stored with its last
    // output; the fences file is checked now so that a bad one stops the
    // start instead of the stage.
    let geo_state = stored_state(store.as_ref(), config.clickhouse.as_ref()).await?;
    let geo_stage = geofence_stage(config.geo_stage(), geo_state).await?;

    let listener = tokio::net::TcpListener::bind(config.http.addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.http.addr))?;
    let http_addr = listener.local_addr()?;

    let (raw_tx, raw_rx) = channel::<RawMessage>(config.bus.capacity);
    let (rec_tx, rec_rx) = channel::<Record>(config.bus.capacity);
    let (geo_tx, geo_rx) = channel::<Record>(config.bus.capacity);
    let hard_stop = CancellationToken::new();
    let stop_ingress = CancellationToken::new();
    let (config_sink, stop) = (config.sink.clone(), hard_stop.clone());
    // The read API: the live feed hears what the sink commits.
    let live = otstream_api::live::channel();
    let stop_api = CancellationToken::new();
    let api = crate::api::start(&config, Some(live.clone()), stop_api.clone()).await?;

    // Every stage says when it ends: one that ends while serving stops
    // the process, rather than leaving it ready with every request a 503.
    let (ended, mut stage_ended) = tokio::sync::mpsc::unbounded_channel();
    let sink = match (store, config.clickhouse.clone()) {
        (Some(store), _) => watched("sink", ended.clone(), async move {
            let backend = SqliteBackend::new(config_sink, store);
            otstream_sink::run(backend, geo_rx, Some(live), stop)
                .await
                .map_err(anyhow::Error::from)
        }),
        (None, Some(ch)) => watched("sink", ended.clone(), async move {
            let backend = ClickHouseBackend::new(ch).await?;
            otstream_sink::run(backend, geo_rx, Some(live), stop)
                .await
                .map_err(anyhow::Error::from)
        }),
        (None, None) => anyhow::bail!("no sink configured"),
    };
    let geofence = watched("geofence", ended.clone(), {
        let (output, stop) = (geo_tx.clone(), hard_stop.clone());
        async move {
            geo_stage
                .run(rec_rx, output, stop)
                .await
                .map_err(anyhow::Error::from)
        }
    });
    let decode = watched("decode", ended, {
        let stage = DecodeStage::new(config.decode.clone(), keys.clone());
        let (output, stop) = (rec_tx.clone(), hard_stop.clone());
        async move {
            stage
                .run(raw_rx, output, stop)
                .await
                .map_err(anyhow::Error::from)
        }
    });
    let depth = tokio::spawn(report_depth(
        raw_tx.clone(),
        rec_tx,
        geo_tx,
        stop_ingress.clone(),
    ));
    // MQTT waits for room rather than failing: a full bus slows the
    // broker's deliveries (PUBACKs are withheld) and the rest queues there.
    let mqtt = config.mqtt.clone().map(|m| {
        if m.topic_prefix != config.decode.topic_prefix {
            tracing::warn!(mqtt = %m.topic_prefix, decode = %config.decode.topic_prefix, "mqtt.topic_prefix differs from decode.topic_prefix");
        }
        let (subscribed, watch) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(otstream_ingress::run_mqtt(
            m,
            raw_tx.clone(),
            subscribed,
            stop_ingress.clone(),
        ));
        (task, watch)
    });
    let send_timeout = Duration::from_millis(config.http.send_timeout_ms);
    let mut ingress = tokio::spawn(otstream_ingress::run_http(
        listener,
        config.http.clone(),
        config.decode.clone(),
        keys,
        raw_tx.with_send_timeout(send_timeout),
        api.fallback,
        api.auth,
        stop_ingress.clone(),
    ));
    let mqtt = match mqtt {
        Some((task, watch)) => {
            await_subscribed(watch).await;
            Some(task)
        }
        None => None,
    };
    ready.store(true, Ordering::Release);
    tracing::info!(%http_addr, metrics_addr = %metrics, data_dir = %config.data_dir.display(), "otstream serve ready");

    let mut stopped_early = None;
    let ingress_done = tokio::select! {
        () = shutdown_signal() => {
            tracing::info!("shutting down: draining in-flight requests");
            None
        }
        r = &mut ingress => Some(r),
        Some((stage, why)) = stage_ended.recv() => {
            tracing::error!(stage, error = %why, "a stage ended while serving: not ready, stopping");
            stopped_early = Some((stage, why));
            None
        }
    };
    ready.store(false, Ordering::Release);
    stop_ingress.cancel();
    // Live streams never end by themselves; reads in progress finish.
    stop_api.cancel();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(config.shutdown_timeout_ms);
    let mut ending = Ending::default();
    let ingress_result = match ingress_done {
        Some(r) => Ok(r),
        None => tokio::time::timeout_at(deadline, ingress).await,
    };
    ending.record("http ingress", ingress_result);
    if let Some(m) = mqtt {
        ending.record("mqtt ingress", tokio::time::timeout_at(deadline, m).await);
    }
    let _ = depth.await;
    ending.record("decode", tokio::time::timeout_at(deadline, decode).await);
    ending.record(
        "geofence",
        tokio::time::timeout_at(deadline, geofence).await,
    );
    ending.record("sink", tokio::time::timeout_at(deadline, sink).await);
    if let Some(task) = api.task {
        ending.record("api", tokio::time::timeout_at(deadline, task).await);
    }
    ending.conclude(&hard_stop, stopped_early)?;
    tracing::info!("shutdown complete: every acknowledged message is stored");
    Ok(())
}

/// Spawns a stage that tells `ended` its name and how it ended, and fails
/// when a fault is injected into it (tests only: [`crate::fault`]).
pub(crate) fn watched(
    stage: &'static str,
    ended: tokio::sync::mpsc::UnboundedSender<(&'static str, String)>,
    run: impl Future<Output = Result<()>> + Send + 'static,
) -> tokio::task::JoinHandle<Result<()>> {
    tokio::spawn(async move {
        let result = tokio::select! {
            r = run => r,
            e = crate::fault::injected(stage) => Err(e),
        };
        let why = match &result {
            Ok(()) => "it returned".to_owned(),
            Err(e) => format!("{e:#}"),
        };
        // Nobody listening (the process is stopping anyway) is fine.
        let _ = ended.send((stage, why));
        result
    })
}

/// The secrets for encrypted payloads, from `keys_file`.
pub(crate) fn load_keys(config: &ServeConfig) -> Result<Arc<KeyRing>> {
    Ok(Arc::new(match &config.keys_file {
        Some(path) => KeyRing::from_file(path)?,
        None => KeyRing::new(),
    }))
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

/// The geofence stage, built before anything starts: a bad fences file
/// stops the start instead of the running stage.
pub(crate) async fn geofence_stage(
    geo: otstream_geofence::stage::StageConfig,
    state: Vec<otstream_model::StateSnapshot>,
) -> Result<GeofenceStage> {
    Ok(
        tokio::task::spawn_blocking(move || GeofenceStage::new(geo, state))
            .await
            .context("fences loader failed")??,
    )
}

/// The geofence stage's stored state (both kinds), from wherever the sink
/// writes.
pub(crate) async fn stored_state(
    store: Option<&Store>,
    clickhouse: Option<&ClickHouseConfig>,
) -> Result<Vec<otstream_model::StateSnapshot>> {
    use otstream_geofence::stage::{KIND_GEO, KIND_REGIONS};
    let mut all = Vec::new();
    for kind in [KIND_GEO, KIND_REGIONS] {
        all.extend(match (store, clickhouse) {
            (Some(store), _) => store.load_states(kind)?,
            (None, Some(ch)) => otstream_sink::clickhouse::load_states(ch, kind)
                .await
                .with_context(|| format!("cannot read the {kind} state from ClickHouse"))?,
            (None, None) => Vec::new(),
        });
    }
    Ok(all)
}

/// How the stages ended once asked to stop: the ones that failed and the
/// ones still running at the deadline, by name.
#[derive(Default)]
pub(crate) struct Ending {
    hung: Vec<&'static str>,
    failed: Vec<&'static str>,
}

pub(crate) type Joined<E> =
    Result<Result<Result<(), E>, tokio::task::JoinError>, tokio::time::error::Elapsed>;

impl Ending {
    /// An error naming the stage that ended while running (`stopped_early`,
    /// and why), and the stages that hung (stopped hard now through
    /// `hard_stop`) or failed; Ok when none did.
    pub(crate) fn conclude(
        self,
        hard_stop: &CancellationToken,
        stopped_early: Option<(&'static str, String)>,
    ) -> Result<()> {
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

    pub(crate) fn record<E: std::fmt::Display>(&mut self, stage: &'static str, joined: Joined<E>) {
        match joined {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => {
                tracing::error!(stage, error = %e, "stage failed");
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

/// Publishes the depth of each link every second until `stop`.
async fn report_depth(
    raw: impl Sender<RawMessage>,
    records: impl Sender<Record>,
    derived: impl Sender<Record>,
    stop: CancellationToken,
) {
    let raw_gauge = metrics::gauge!("otstream_bus_depth", "topic" => "raw");
    let rec_gauge = metrics::gauge!("otstream_bus_depth", "topic" => "records");
    let geo_gauge = metrics::gauge!("otstream_bus_depth", "topic" => "geofenced");
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {
                raw_gauge.set(raw.depth() as f64);
                rec_gauge.set(records.depth() as f64);
                geo_gauge.set(derived.depth() as f64);
            }
        }
    }
}
