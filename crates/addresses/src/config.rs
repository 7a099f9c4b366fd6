//! `[geocode.addresses]`.

use otstream_model::ConfigError;
use serde::Deserialize;

use crate::provider::Provider;

/// Street addresses from an external geocoder; off unless `url` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AddressesConfig {
    /// The service's base URL (`https://nominatim.openstreetmap.org`,
    /// `https://photon.komoot.io`, or your own instance).
    pub url: Option<String>,
    /// What answers at `url`.
    pub provider: Provider,
    /// Requests a second at most (Nominatim's public policy: 1).
    pub per_second: f64,
    /// Geohash characters of a cache cell: 8 is 38 m × 19 m, 7 is 153 m.
    pub precision: usize,
    /// Preferred language of the answers (`de`, `fr`), if any.
    pub language: Option<String>,
    /// The User-Agent sent: Nominatim's policy asks for one naming the
    /// application (and, better, a contact).
    pub user_agent: String,
    /// A request without an answer after this long is retried later.
    pub timeout_ms: u64,
    /// Seconds between looks for stops and trips with no address yet.
    pub interval_s: u64,
}

impl Default for AddressesConfig {
    fn default() -> Self {
        AddressesConfig {
            url: None,
            provider: Provider::Nominatim,
            per_second: 1.0,
            precision: 8,
            language: None,
            user_agent: concat!("otstream/", env!("CARGO_PKG_VERSION")).to_owned(),
            timeout_ms: 10_000,
            interval_s: 10,
        }
    }
}

impl AddressesConfig {
    /// Checks the URL and the limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.url {
            if !(url.starts_with("http://") || url.starts_with("https://"))
                || url.parse::<hyper::Uri>().is_err()
            {
                return Err(ConfigError::new(
                    "geocode.addresses.url",
                    format!("geocode.addresses.url must be an http(s) URL, got {url:?}"),
                ));
            }
        }
        if !(self.per_second > 0.0 && self.per_second.is_finite()) {
            return Err(ConfigError::new(
                "geocode.addresses.per_second",
                "geocode.addresses.per_second must be a positive number",
            ));
        }
        if !(4..=12).contains(&self.precision) {
            return Err(ConfigError::new(
                "geocode.addresses.precision",
                "geocode.addresses.precision must be 4 to 12 geohash characters",
            ));
        }
        Ok(())
    }
}
