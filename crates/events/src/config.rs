//! The `[events]` section: the rules (read by the geofence stage), how
//! long an undelivered event is kept, and the destinations.
//!
//! ```toml
//! [events]
//! silent_after_s = 3600
//! battery_low_percent = 15
//! max_age_days = 7
//!
//! [[events.webhooks]]
//! url = "https://ops.example.com/otstream"
//! secret = "s3cret"
//! kinds = ["enter", "leave"]      # all kinds when absent
//! users = ["fleet"]               # all users when absent
//! fences = ["Depot"]              # any fence (or none) when absent
//!
//! [events.mqtt]
//! enabled = true
//! topic = "owntracks/{user}/{device}/event"
//! ```

use std::collections::HashSet;

use crate::outbox::{Format, Route};
use otstream_model::{ConfigError, EventKind};
use serde::Deserialize;

/// `[events]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// Derive events at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// No fix for this long makes a device silent, s (0 is off).
    #[serde(default = "default_silent_after_s")]
    pub silent_after_s: u64,
    /// A battery below this is low, percent (0 is off).
    #[serde(default = "default_battery_low_percent")]
    pub battery_low_percent: i32,
    /// An event not delivered after this many days is dropped (counted
    /// in `otstream_events_expired_total`).
    #[serde(default = "default_max_age_days")]
    pub max_age_days: u32,
    /// HTTP endpoints.
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
    /// Publishing to MQTT.
    #[serde(default)]
    pub mqtt: EventsMqttConfig,
}

fn yes() -> bool {
    true
}
fn default_silent_after_s() -> u64 {
    3600
}
fn default_battery_low_percent() -> i32 {
    15
}
fn default_max_age_days() -> u32 {
    7
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            enabled: true,
            silent_after_s: default_silent_after_s(),
            battery_low_percent: default_battery_low_percent(),
            max_age_days: default_max_age_days(),
            webhooks: Vec::new(),
            mqtt: EventsMqttConfig::default(),
        }
    }
}

/// One `[[events.webhooks]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Names its queue [default: the URL]. Renaming (or changing the URL
    /// of an unnamed one) starts a new, empty queue.
    #[serde(default)]
    pub name: Option<String>,
    /// Where events are POSTed: http:// or https://.
    pub url: String,
    /// Signs each body (HMAC-SHA256): `X-Otstream-Signature: sha256=<hex>`.
    #[serde(default)]
    pub secret: Option<String>,
    /// Only these kinds.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Only these users' devices.
    #[serde(default)]
    pub users: Vec<String>,
    /// Only events about these fences.
    #[serde(default)]
    pub fences: Vec<String>,
    /// Only the events these rules fire (`"*"`: any rule's); by default
    /// every event, the built-in ones and those the rules fire (a rule's
    /// copy of a built-in kind carries `rule` and an id of its own).
    #[serde(default)]
    pub rules: Vec<String>,
    /// Longest one POST may take, ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    10_000
}

impl WebhookConfig {
    /// Its queue's name.
    pub fn name(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.url.clone())
    }

    /// What metrics and logs call it: its `name`, else `webhook-` and
    /// the first 8 hex digits of the URL's SHA-256. Never the URL: a
    /// Slack-style hook's URL is its secret, and metrics are scraped and
    /// kept elsewhere.
    pub fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            let digest = ring::digest::digest(&ring::digest::SHA256, self.url.as_bytes());
            let hex: String = digest.as_ref()[..4]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            format!("webhook-{hex}")
        })
    }

    /// Its URL's scheme, host and port, for logs.
    pub fn origin(&self) -> String {
        self.url
            .parse::<hyper::Uri>()
            .ok()
            .and_then(|u| Some(format!("{}://{}", u.scheme_str()?, u.authority()?)))
            .unwrap_or_default()
    }
}

/// `[events.mqtt]`: off by default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsMqttConfig {
    /// Publish events.
    #[serde(default)]
    pub enabled: bool,
    /// The broker [default: the `[mqtt]` ingress's, with its credentials].
    #[serde(default)]
    pub url: Option<String>,
    /// Credentials for `url`.
    #[serde(default)]
    pub username: Option<String>,
    /// Credentials for `url`.
    #[serde(default)]
    pub password: Option<String>,
    /// The session's client id (not the ingress's).
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// Where each event goes; `{user}` and `{device}` are replaced. The
    /// default is where the apps publish their own transitions.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// Only these kinds.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Only these users' devices.
    #[serde(default)]
    pub users: Vec<String>,
    /// Only the events these rules fire (`"*"`: any rule's); by default
    /// every event, the built-in ones and those the rules fire (a rule's
    /// copy of a built-in kind carries `rule` and an id of its own).
    #[serde(default)]
    pub rules: Vec<String>,
}

fn default_client_id() -> String {
    "otstream-events".to_owned()
}
fn default_topic() -> String {
    "owntracks/{user}/{device}/event".to_owned()
}

impl Default for EventsMqttConfig {
    fn default() -> Self {
        EventsMqttConfig {
            enabled: false,
            url: None,
            username: None,
            password: None,
            client_id: default_client_id(),
            topic: default_topic(),
            kinds: Vec::new(),
            users: Vec::new(),
            rules: Vec::new(),
        }
    }
}

/// The name of the MQTT route's queue.
pub const MQTT_ROUTE: &str = "mqtt";

impl EventsConfig {
    /// Checks the values and that every kind named exists.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(0..=100).contains(&self.battery_low_percent) {
            return Err(ConfigError::new(
                "events.battery_low_percent",
                "events.battery_low_percent must be between 0 (off) and 100",
            ));
        }
        if self.max_age_days == 0 {
            return Err(ConfigError::new(
                "events.max_age_days",
                "events.max_age_days must be at least 1",
            ));
        }
        let mut names = HashSet::new();
        for w in &self.webhooks {
            if !(w.url.starts_with("http://") || w.url.starts_with("https://"))
                || w.url.parse::<hyper::Uri>().is_err()
            {
                return Err(ConfigError::new(
                    "events.webhooks.url",
                    format!(
                        "events.webhooks.url {:?} is not an http:// or https:// URL",
                        w.url
                    ),
                ));
            }
            if !names.insert(w.name()) || w.name() == MQTT_ROUTE {
                return Err(ConfigError::new(
                    "events.webhooks.name",
                    format!(
                        "two event destinations are named {:?}: each needs its own queue",
                        w.name()
                    ),
                ));
            }
            kinds(&w.kinds, "events.webhooks.kinds")?;
        }
        kinds(&self.mqtt.kinds, "events.mqtt.kinds")?;
        Ok(())
    }

    /// The outbox routes: one per webhook, and MQTT's when enabled.
    pub fn routes(&self) -> Result<Vec<Route>, ConfigError> {
        let set = |v: &[String]| v.iter().cloned().collect::<HashSet<_>>();
        let mut routes = Vec::new();
        for w in &self.webhooks {
            routes.push(Route {
                name: w.name(),
                format: Format::Json,
                kinds: kinds(&w.kinds, "events.webhooks.kinds")?,
                users: set(&w.users),
                fences: set(&w.fences),
                rules: set(&w.rules),
            });
        }
        if self.mqtt.enabled {
            routes.push(Route {
                name: MQTT_ROUTE.to_owned(),
                format: Format::Mqtt {
                    topic: self.mqtt.topic.clone(),
                },
                kinds: kinds(&self.mqtt.kinds, "events.mqtt.kinds")?,
                users: set(&self.mqtt.users),
                fences: HashSet::new(),
                rules: set(&self.mqtt.rules),
            });
        }
        Ok(routes)
    }

    /// How long an undelivered event is kept.
    pub fn max_age(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.max_age_days) * 86_400)
    }
}

fn kinds(names: &[String], key: &'static str) -> Result<HashSet<EventKind>, ConfigError> {
    names
        .iter()
        .map(|n| {
            EventKind::named(n).ok_or_else(|| {
                let all: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
                ConfigError::new(
                    key,
                    format!(
                        "{key}: unknown event kind {n:?} (kinds: {})",
                        all.join(", ")
                    ),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_follow_the_config_and_bad_kinds_are_named() {
        let c: EventsConfig = toml_like(
            r#"{"webhooks":[{"url":"http://127.0.0.1:1/h","kinds":["enter"],"fences":["Depot"]}],
                "mqtt":{"enabled":true}}"#,
        );
        c.validate().unwrap();
        let routes = c.routes().unwrap();
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[0].name, "http://127.0.0.1:1/h");
        assert_eq!(routes[0].kinds, HashSet::from([EventKind::Enter]));
        assert_eq!(
            routes[1].format,
            Format::Mqtt {
                topic: "owntracks/{user}/{device}/event".into()
            }
        );
        let bad: EventsConfig =
            toml_like(r#"{"webhooks":[{"url":"http://h/","kinds":["entered"]}]}"#);
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("unknown event kind \"entered\""), "{e}");
        let ftp: EventsConfig = toml_like(r#"{"webhooks":[{"url":"ftp://h/"}]}"#);
        assert!(ftp.validate().is_err());
    }

    /// A route takes every event by default, or only the events the
    /// rules it names fire; a rule's `enter` is published over MQTT as an
    /// event, never as a second transition.
    #[test]
    fn routes_take_rules_events_as_told_and_mqtt_publishes_them_as_events() {
        use otstream_model::Event;
        let c: EventsConfig = toml_like(
            r#"{"webhooks":[{"url":"http://127.0.0.1:1/all"},{"url":"http://127.0.0.1:1/rules","rules":["*"]},{"url":"http://127.0.0.1:1/depot","rules":["depot-in"]}]}"#,
        );
        c.validate().unwrap();
        let routes = c.routes().unwrap();
        let meta = otstream_model::Meta {
            user: "jane".into(),
            device: "phone".into(),
            tid: None,
            received_at: 1,
            transport: otstream_model::Transport::Http,
            topic: None,
        };
        let enter = Event::new(EventKind::Enter, meta, 10, (1.0, 2.0), Some("Depot".into()));
        let by_rule = enter.clone().for_rule("depot-in");
        let other = enter.clone().for_rule("yard-in");
        let takes = |e: &Event| -> Vec<bool> { routes.iter().map(|r| r.wants(e)).collect() };
        assert_eq!(takes(&enter), [true, false, false]);
        assert_eq!(takes(&by_rule), [true, true, true]);
        assert_eq!(takes(&other), [true, true, false]);
        let mqtt: serde_json::Value = serde_json::from_str(&by_rule.to_mqtt_json()).unwrap();
        assert_eq!(
            (&mqtt["_type"], &mqtt["rule"]),
            (&serde_json::json!("event"), &serde_json::json!("depot-in"))
        );
        let plain: serde_json::Value = serde_json::from_str(&enter.to_mqtt_json()).unwrap();
        assert_eq!(plain["_type"], "transition");
    }

    fn toml_like(json: &str) -> EventsConfig {
        serde_json::from_str(json).unwrap()
    }
}

#[cfg(test)]
mod label_tests {
    use super::*;

    #[test]
    fn a_webhook_is_labelled_by_its_name_or_a_hash_never_its_url() {
        let mut w: WebhookConfig = serde_json::from_str(
            r#"{"url": "https://hooks.slack.com/services/T000/B000/XXXXSECRET"}"#,
        )
        .unwrap();
        let label = w.label();
        assert!(
            label.starts_with("webhook-") && label.len() == 16,
            "{label}"
        );
        assert!(!label.contains("SECRET"));
        assert_eq!(w.origin(), "https://hooks.slack.com");
        w.name = Some("ops".into());
        assert_eq!(w.label(), "ops");
    }
}
