//! `otstream serve`: the whole topology ([`crate::topology`]) in one
//! process over bounded in-process channels, OwnTracks HTTP in front, the
//! embedded store behind. (With `--bus kafka` the stages run over Kafka
//! instead, each in its own consumer group: see [`crate::links`].)
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

use anyhow::Result;
use otstream_bus::kafka::KafkaConfig;
use otstream_ingress::MqttConfig;
use otstream_schema::clickhouse::ClickHouseConfig;

use crate::config::{BusKind, ServeConfig};
use crate::links::{InProcess, Kafka};
use crate::runtime::{LogFormat, block_on, init_logging};
use crate::supervisor::Supervisor;
use crate::topology::{self, Part, Selection};

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
    /// Operator rules (dwell, idle, overspeed, events narrowed): a TOML file of [[rules]], reloaded when it changes.
    #[arg(long, env = "OTSTREAM_RULES", value_name = "FILE")]
    rules: Option<PathBuf>,
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
        if let Some(r) = self.rules {
            config.geofence.rules = Some(r);
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
    let stage = config.geo_stage();
    let fences = otstream_geofence::stage::load_fences(stage.geofence.fences.as_deref())?;
    let mut rules =
        otstream_geofence::stage::load_rules(stage.geofence.rules.as_deref(), &stage.groups)?;
    for (rule, fence) in rules.bind(&fences) {
        println!(
            "warning: rule {rule:?} names the fence {fence:?}, which the fences file does not have (a region a device defines may have that name)"
        );
    }
    let names: Vec<&str> = rules.names().collect();
    println!(
        "fences: {}, rules: {}",
        fences.fences().len(),
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    );
    println!("runs (unit, reads -> writes):");
    println!("{}", Selection::parts(&config, &Part::PIPELINE).describe());
    Ok(())
}

/// Runs `otstream serve` to completion.
pub fn run(args: Args) -> Result<()> {
    let config = args.config()?;
    block_on(pipeline(config, &Part::PIPELINE))
}

/// Runs `parts` of the topology over the bus `config` names until
/// SIGINT/SIGTERM or until a unit ends.
pub(crate) async fn pipeline(config: ServeConfig, parts: &[Part]) -> Result<()> {
    let mut sup = Supervisor::start(&config).await?;
    // In one process acks wait for the local buffer, never for ClickHouse.
    let select = Selection::parts(&config, parts);
    match config.bus.kind {
        BusKind::Inprocess => {
            let mut links = InProcess::new(&config);
            topology::build(&config, select, &mut links, &mut sup).await?;
            // The topology holds what it needs; the unused ends close.
            drop(links);
            sup.run("serve").await
        }
        BusKind::Kafka => {
            let mut links = Kafka::new(&config)?;
            topology::build(&config, select, &mut links, &mut sup).await?;
            tracing::info!(brokers = %links.brokers(), "stages joined their groups");
            sup.run("over kafka").await
        }
    }
}
