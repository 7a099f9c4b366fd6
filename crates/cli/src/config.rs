//! `otstream serve` configuration: a TOML file, then `OTSTREAM_*`
//! environment variables, then flags, each overriding the one before.
//!
//! Any key of the file can be set from the environment as
//! `OTSTREAM_<SECTION>__<KEY>` (double underscore between levels), e.g.
//! `OTSTREAM_SINK__LINGER_MS=50` or `OTSTREAM_HTTP__MAX_CONNECTIONS=2000`.
//! The flags of `otstream serve --help` read their own variables
//! (`OTSTREAM_HTTP_ADDR`, `OTSTREAM_DATA_DIR`, ...).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use figment::Figment;
use figment::providers::{Env, Format, Toml};
use otstream_bus::kafka::KafkaConfig;
use otstream_decode::DecodeConfig;
use otstream_geofence::GeofenceConfig;
use otstream_geofence::stage::StageConfig;
use otstream_ingress::{HttpConfig, MqttConfig};
use otstream_schema::clickhouse::ClickHouseConfig;
use otstream_sink::SinkConfig;
use otstream_sink::clickhouse::buffer::BufferConfig;
use otstream_sink::retention::RetentionConfig;
use otstream_trips::TripConfig;
use serde::Deserialize;

/// Everything `otstream serve` can be told.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Where the embedded store lives (`otstream.db` inside).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// A TOML file of secrets for `_type=encrypted` (`[keys]` table).
    #[serde(default)]
    pub keys_file: Option<PathBuf>,
    /// HTTP ingress.
    #[serde(default)]
    pub http: HttpConfig,
    /// Decoding limits, topic prefix, device registry.
    #[serde(default)]
    pub decode: DecodeConfig,
    /// The bus between stages: in-process, or Kafka.
    #[serde(default)]
    pub bus: BusConfig,
    /// The Kafka brokers and topics, for `bus.kind = "kafka"` and
    /// `otstream run`.
    #[serde(default)]
    pub kafka: Option<KafkaConfig>,
    /// Batching and retries of the embedded store writer.
    #[serde(default)]
    pub sink: SinkConfig,
    /// MQTT ingress (off unless a broker URL is given).
    #[serde(default)]
    pub mqtt: Option<MqttConfig>,
    /// Write to ClickHouse instead of the embedded store.
    #[serde(default)]
    pub clickhouse: Option<ClickHouseConfig>,
    /// The local buffer `serve` acknowledges from when it writes to
    /// ClickHouse.
    #[serde(default)]
    pub buffer: BufferConfig,
    /// How long the embedded store keeps rows.
    #[serde(default)]
    pub retention: RetentionConfig,
    /// Server-side geofences: the fences file and the evaluation rules.
    #[serde(default)]
    pub geofence: GeofenceConfig,
    /// Trip and stop detection rules.
    #[serde(default)]
    pub trips: TripConfig,
    /// Position filters: fixes set aside, with a reason.
    #[serde(default)]
    pub filters: otstream_geofence::filter::FilterConfig,
    /// Events: their rules and where they are delivered.
    #[serde(default)]
    pub events: otstream_events::EventsConfig,
    /// The offline geocoder's places.
    #[serde(default)]
    pub geocode: GeocodeConfig,
    /// Prometheus metrics and health endpoints.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// The read API, the live feed and the map page.
    #[serde(default)]
    pub api: otstream_api::ApiConfig,
    /// Who reads what: device groups, roles, tokens, loopback trust.
    #[serde(default)]
    pub access: otstream_auth::AccessConfig,
    /// Longest a graceful shutdown may take before stages are stopped hard,
    /// ms. Covers the in-flight requests' wait for their acks (10 s at most
    /// by default) plus the final commit.
    #[serde(default = "default_shutdown_timeout_ms")]
    pub shutdown_timeout_ms: u64,
}

/// `[geocode]`: the nearest place of positions, trips' ends and stops,
/// from the embedded GeoNames set; and, when `[geocode.addresses]` names a
/// service, street addresses of stops and trips' ends.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GeocodeConfig {
    /// Fill `place` and `cc`.
    pub enabled: bool,
    /// A place farther than this is no answer (at sea), km.
    pub max_km: f64,
    /// The external geocoder (Nominatim, Photon); off unless `url` is set.
    pub addresses: otstream_addresses::AddressesConfig,
}

impl Default for GeocodeConfig {
    fn default() -> Self {
        GeocodeConfig {
            enabled: true,
            max_km: 100.0,
            addresses: Default::default(),
        }
    }
}

impl GeocodeConfig {
    /// Checks the reach and the external geocoder's settings.
    pub fn validate(&self) -> Result<()> {
        if !(self.max_km > 0.0 && self.max_km.is_finite()) {
            bail!("geocode.max_km must be a positive number of kilometres");
        }
        self.addresses.validate()?;
        Ok(())
    }
}

/// The bus between stages.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    /// `inprocess` (bounded channels, one process) or `kafka` (topics; see
    /// the `[kafka]` section).
    #[serde(default)]
    pub kind: BusKind,
    /// Messages each link holds before senders wait. 10,000 is half a
    /// second of the target load: enough to ride out a slow commit, small
    /// enough that a stalled store turns into 503s within a second.
    #[serde(default = "default_capacity")]
    pub capacity: usize,
}

/// Which bus links the stages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    /// Bounded in-process channels: every stage in this process.
    #[default]
    Inprocess,
    /// Kafka topics: stages in any number of processes.
    Kafka,
}

/// Where `/metrics`, `/healthz` and `/readyz` are served.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Listen address; 9145 sits beside Prometheus exporters' usual range.
    #[serde(default = "default_metrics_addr")]
    pub addr: SocketAddr,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./data")
}
fn default_shutdown_timeout_ms() -> u64 {
    30_000
}
fn default_capacity() -> usize {
    10_000
}
fn default_metrics_addr() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 9145))
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            kind: BusKind::default(),
            capacity: default_capacity(),
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            addr: default_metrics_addr(),
        }
    }
}

impl ServeConfig {
    /// The geofence stage's part.
    pub fn geo_stage(&self) -> StageConfig {
        StageConfig {
            geofence: self.geofence.clone(),
            trips: self.trips,
            filters: self.filters,
            events: otstream_geofence::events::EventRules {
                enabled: self.events.enabled,
                silent_after_s: self.events.silent_after_s,
                battery_low_percent: self.events.battery_low_percent,
            },
            derived_only: false,
            coalesce_state: false,
            groups: self.access().groups,
        }
    }

    /// Reads the file (if any) and applies the `OTSTREAM_<SECTION>__<KEY>`
    /// variables of the environment on top (figment: the file's TOML,
    /// then the variables, each value read as TOML when it parses as a
    /// number, boolean or array, else as a string). Call
    /// [`ServeConfig::validate`] once flags are applied too.
    pub fn load(file: Option<&Path>) -> Result<Self> {
        let mut layers = Figment::new();
        if let Some(path) = file {
            // Named on purpose, so it must be there: figment would
            // otherwise take a missing file as an empty one.
            std::fs::metadata(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            layers = layers.merge(Toml::file_exact(path));
        }
        // Only the variables with a section: the single-level ones
        // (OTSTREAM_HTTP_ADDR, ...) belong to the flags, which read them.
        let env = Env::prefixed("OTSTREAM_")
            .filter(|k| k.as_str().contains("__"))
            .split("__");
        layers.merge(env).extract().context("invalid configuration")
    }

    /// `[access]` with what the older keys say folded in:
    /// `http.friends.groups` are access groups, `http.admins` admins.
    pub fn access(&self) -> otstream_auth::AccessConfig {
        let mut access = self.access.clone();
        for (name, members) in &self.http.friends.groups {
            let group = access.groups.entry(name.clone()).or_default();
            for m in members {
                if !group.contains(m) {
                    group.push(m.clone());
                }
            }
        }
        for a in &self.http.admins {
            if !access.admins.contains(a) {
                access.admins.push(a.clone());
            }
        }
        access
    }

    /// The Kafka section, which must be there (with brokers) to use Kafka.
    pub fn kafka(&self) -> Result<&KafkaConfig> {
        self.kafka.as_ref().context(
            "Kafka needs brokers: --brokers HOST:PORT, OTSTREAM_KAFKA_BROKERS or [kafka] brokers",
        )
    }

    /// Checks every section.
    pub fn validate(&self) -> Result<()> {
        self.http.validate()?;
        self.decode.validate()?;
        self.sink.validate()?;
        self.trips.validate()?;
        self.filters.validate()?;
        self.geocode.validate()?;
        self.events.validate()?;
        self.retention.validate()?;
        self.api.validate()?;
        self.access().validate()?;
        // Without htpasswd, reads are trusted by address (loopback, or
        // anyone with api.public): a CORS `*` would let any web page a
        // local user opens read every device through the browser.
        if self.http.htpasswd.is_none() && self.api.cors_origins.iter().any(|o| o == "*") {
            bail!(
                "api.cors_origins = [\"*\"] needs http.htpasswd: without it reads are trusted by address, and any web page could read every device; list the frontend's origin instead"
            );
        }
        if !self.http.friends.groups.is_empty() || !self.http.admins.is_empty() {
            tracing::warn!(
                "http.friends.groups and http.admins are read as access.groups and access.admins; move them there"
            );
        }
        if let Some(m) = &self.mqtt {
            m.validate()?;
        }
        if let Some(ch) = &self.clickhouse {
            ch.validate()?;
        }
        if self.geofence.rules.is_some() && !self.events.enabled {
            bail!(
                "geofence.rules needs events.enabled: a rule that fires is an event, and events.enabled = false derives none"
            );
        }
        if self.bus.capacity == 0 {
            bail!("bus.capacity must be at least 1");
        }
        if let Some(k) = &self.kafka {
            k.validate()?;
        }
        Ok(())
    }
}

#[cfg(test)]
// figment's Jail takes closures returning its own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn defaults_without_any_configuration() {
        figment::Jail::expect_with(|_| {
            let c = ServeConfig::load(None).unwrap();
            assert_eq!(c.data_dir, PathBuf::from("./data"));
            assert_eq!(c.http.addr.to_string(), "0.0.0.0:5144");
            assert_eq!(c.http.paths, ["/", "/pub"]);
            assert_eq!(c.metrics.addr.to_string(), "0.0.0.0:9145");
            assert_eq!(c.bus.capacity, 10_000);
            assert_eq!(c.sink.linger_ms, 0);
            Ok(())
        });
    }

    /// The README's "Configuration" block is a configuration `serve` takes:
    /// every key it shows exists (sections deny unknown keys).
    #[test]
    fn the_readme_configuration_loads() {
        let readme = include_str!("../../../README.md");
        let from = readme
            .find("### Configuration")
            .and_then(|i| readme[i..].find("```toml\n").map(|j| i + j + 8))
            .expect("a toml block under ### Configuration");
        let block = &readme[from..from + readme[from..].find("```").unwrap_or(0)];
        figment::Jail::expect_with(|jail| {
            jail.create_file("readme.toml", block)?;
            let c = ServeConfig::load(Some(Path::new("readme.toml"))).unwrap();
            assert_eq!(c.access.viewers["dispatch"], ["vans"]);
            assert_eq!(c.geofence.max_regions_per_device, 256);
            assert_eq!(c.api.max_live_streams, 256);
            Ok(())
        });
    }

    #[test]
    fn environment_overrides_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "serve.toml",
                "data_dir = \"/var/lib/ot\"\n[sink]\nlinger_ms = 10\n[http]\nmax_connections = 5\n",
            )?;
            jail.set_env("OTSTREAM_SINK__LINGER_MS", "50");
            jail.set_env("OTSTREAM_HTTP__PATHS", "[\"/owntracks\"]");
            jail.set_env("OTSTREAM_DATA_DIR", "ignored: a flag's variable");
            jail.set_env("OTSTREAM_DECODE__TOPIC_PREFIX", "fleet");
            let c = ServeConfig::load(Some(Path::new("serve.toml"))).unwrap();
            assert_eq!(c.data_dir, PathBuf::from("/var/lib/ot"));
            assert_eq!(c.sink.linger_ms, 50);
            assert_eq!(c.http.max_connections, 5);
            assert_eq!(c.http.paths, ["/owntracks"]);
            assert_eq!(c.decode.topic_prefix, "fleet");
            let missing = ServeConfig::load(Some(Path::new("nowhere.toml"))).unwrap_err();
            assert!(
                format!("{missing:#}").starts_with("cannot read config file nowhere.toml: "),
                "{missing:#}"
            );
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("OTSTREAM_SINK__LINGER", "5");
            let e = ServeConfig::load(None).unwrap_err();
            assert!(
                format!("{e:#}").contains("unknown field: found `linger`"),
                "{e:#}"
            );
            jail.clear_env();
            jail.set_env("OTSTREAM_BUS__CAPACITY", "0");
            let e = ServeConfig::load(None).unwrap().validate().unwrap_err();
            assert_eq!(format!("{e:#}"), "bus.capacity must be at least 1");
            Ok(())
        });
    }
}
