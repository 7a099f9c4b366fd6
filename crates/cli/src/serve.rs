//! `otstream serve`: every stage in one process over bounded in-process
//! channels, OwnTracks HTTP in front, the embedded store behind. (With
//! `--bus kafka` the stages run over Kafka instead: see [`crate::kafka`].)
//!
//! ```text
//! http ingress ------------------------------+
//!                                            v
//! mqtt ingress --[raw]--> decode --[records]--> geofence --[records]--> sink
//! ```
//!
//! The HTTP ingress decodes each body to answer the phone (400 or 200),
//! and that decoding is the only one: its records (or dead letter) go
//! straight onto the records link. The decode stage decodes what MQTT
//! brings. The sink is the embedded store (SQLite) or ClickHouse. The
//! geofence stage adds server-side transitions, trips and stops, and its
//! per-device state, which the sink stores with them and gives back as
//! the geofence stage's first input at the next start.
//!
//! Shutdown (SIGINT or SIGTERM) drains in order ([`crate::supervisor`]):
//! the ingress stops accepting and finishes its in-flight requests (each
//! waits for its message to be stored); its senders close the links, so
//! the decode stage drains and closes its output, and so on, until the
//! sink commits what is left and returns. Past `shutdown_timeout_ms` the
//! remaining stages are stopped hard and the stage that hung is named.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use otstream_bus::kafka::KafkaConfig;
use otstream_bus::{Prepended, Sender, channel};
use otstream_decode_stage::DecodeStage;
use otstream_ingress::MqttConfig;
use otstream_model::{RawMessage, Record};
use otstream_sink::clickhouse::ClickHouseConfig;
use tokio_util::sync::CancellationToken;

use crate::config::{BusKind, ServeConfig};
use crate::runtime::{LogFormat, block_on, init_logging};
use crate::stages::{self, Sink, Stage};
use crate::supervisor::Supervisor;

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

impl Args {
    /// The configuration: file, then environment, then these flags.
    pub fn config(self) -> Result<ServeConfig> {
        init_logging(&self.log, self.log_format)?;
        let mut config = ServeConfig::load(self.config.as_deref())?;
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
        Some(ch) if config.buffer.enabled && config.bus.kind == BusKind::Inprocess => format!(
            "ClickHouse {} database {}, buffered in {}",
            ch.url,
            ch.database,
            config.data_dir.display()
        ),
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
        BusKind::Kafka => block_on(crate::kafka::run(config, &Stage::ALL)),
    }
}

async fn serve(config: ServeConfig) -> Result<()> {
    let mut sup = Supervisor::start(&config).await?;
    let keys = stages::keys(&config)?;
    // Built before anything starts: the sink opens its store (or migrates
    // ClickHouse) and gives back the device state stored with the rows;
    // the geofence stage loads its fences and takes that state as its
    // first input.
    let (sink, shipper) = Sink::build(&config, config.buffer.enabled).await?;
    let restored = sink.stored_state().await?;
    let geofence = stages::geofence(config.geo_stage()).await?;
    let decode = DecodeStage::new(config.decode.clone(), keys.clone());
    let events = stages::EventsOut::build(&config).await?;

    let listener = otstream_http::listen(config.http.addr)
        .with_context(|| format!("cannot listen on {}", config.http.addr))?;
    let http_addr = listener.local_addr()?;
    let (raw_tx, raw_rx) = channel::<RawMessage>(config.bus.capacity);
    let (rec_tx, rec_rx) = channel::<Record>(config.bus.capacity);
    let (geo_tx, geo_rx) = channel::<Record>(config.bus.capacity);
    let (front, hard_stop) = (sup.front(), sup.hard_stop());
    // The read API: the live feed hears what the sink commits.
    let live = otstream_api::live::channel();
    let api = crate::api::start(&config, Some(live.clone()), front.clone()).await?;

    // In pipeline order, the order they stop in: the ingress first (its
    // senders close the raw link), then each stage once its input is
    // drained.
    let send_timeout = Duration::from_millis(config.http.send_timeout_ms);
    sup.spawn(
        "http ingress",
        otstream_ingress::run_http(
            listener,
            config.http.clone(),
            config.decode.clone(),
            keys,
            // Decoded here once: the records go straight to the geofence
            // stage; the decode stage decodes what MQTT brings.
            otstream_ingress::Decoded::new(
                rec_tx.clone().with_send_timeout(send_timeout),
                config.decode.topic_prefix.clone(),
            ),
            api.fallback,
            api.auth.clone(),
            crate::api::friends(&config, &api.auth, front.clone()).await,
            front.clone(),
        ),
    );
    // MQTT waits for room rather than failing: a full bus slows the
    // broker's deliveries (PUBACKs are withheld) and the rest queues there.
    if let Some(m) = config.mqtt.clone() {
        if m.topic_prefix != config.decode.topic_prefix {
            tracing::warn!(mqtt = %m.topic_prefix, decode = %config.decode.topic_prefix, "mqtt.topic_prefix differs from decode.topic_prefix");
        }
        let (subscribed, watch) = tokio::sync::watch::channel(false);
        sup.ready_after(watch);
        let run = otstream_ingress::run_mqtt(m, raw_tx.clone(), subscribed, front.clone());
        sup.spawn("mqtt ingress", run);
    }
    tokio::spawn(report_depth(raw_tx, rec_tx.clone(), geo_tx.clone(), front));
    sup.spawn("decode", decode.run(raw_rx, rec_tx, hard_stop.clone()));
    sup.spawn(
        "geofence",
        geofence.run(Prepended::new(restored, rec_rx), geo_tx, hard_stop.clone()),
    );
    sup.spawn(
        "sink",
        sink.run(geo_rx, Some(live), events.sink.clone(), hard_stop),
    );
    stages::retention(&config, &mut sup);
    stages::addresses(&config, &mut sup)?;
    events.spawn(&config, &mut sup);
    // After the sink: what is buffered when it stops stays for the next
    // start; the shipper stops where it is.
    if let Some(shipper) = shipper {
        let stop = CancellationToken::new();
        sup.spawn("shipper", shipper.run(stop.clone()))
            .on_stop(move || stop.cancel());
    }
    if let Some(task) = api.task {
        sup.spawn("api", task);
    }
    tracing::info!(%http_addr, data_dir = %config.data_dir.display(), "http ingress listening");
    sup.run("serve").await
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
