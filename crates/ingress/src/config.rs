//! HTTP ingress configuration.

use otstream_model::ConfigError;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// How the HTTP ingress listens and answers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address. Port 5144 is Traccar's OwnTracks port, so apps
    /// configured for Traccar work unchanged.
    #[serde(default = "default_addr")]
    pub addr: SocketAddr,
    /// Paths that accept POSTs: `/` (Traccar) and `/pub` (OwnTracks Recorder).
    #[serde(default = "default_paths")]
    pub paths: Vec<String>,
    /// Largest body accepted, bytes; larger gets 413. Matches the decoder's
    /// default limit (256 KiB), far above any real OwnTracks payload.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Time allowed to receive the request headers, ms; also bounds how long
    /// an idle keep-alive connection is held. 30 s, like common proxies.
    #[serde(default = "default_header_timeout_ms")]
    pub header_timeout_ms: u64,
    /// Time allowed to receive the body once the headers are in, ms.
    #[serde(default = "default_body_timeout_ms")]
    pub body_timeout_ms: u64,
    /// Most connections served at once; further ones wait in the kernel's
    /// accept queue. 10,000 connections cost well under a GiB.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// How long a request may wait for room on the bus before 503, ms.
    #[serde(default = "default_send_timeout_ms")]
    pub send_timeout_ms: u64,
    /// How long a request waits for its message to be durable before 503,
    /// ms. The apps' own HTTP timeouts are 30 s and more; 10 s leaves room.
    #[serde(default = "default_ack_timeout_ms")]
    pub ack_timeout_ms: u64,
    /// `Retry-After` sent with 503, seconds.
    #[serde(default = "default_retry_after_s")]
    pub retry_after_s: u64,
    /// An htpasswd file (`user:bcrypt-hash` lines): when set, every request
    /// needs HTTP Basic authentication, and a user may publish only as itself.
    #[serde(default)]
    pub htpasswd: Option<PathBuf>,
    /// Friends: the last location and card of group members in each 200.
    #[serde(default)]
    pub friends: FriendsConfig,
    /// Before `access.admins`: read as part of it (deprecated).
    #[serde(default)]
    pub admins: Vec<String>,
}

/// The friends feature, as OwnTracks Recorder offers it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FriendsConfig {
    /// Off by default: the answer is `[]`.
    #[serde(default)]
    pub enabled: bool,
    /// Before `access.groups`: read as part of it (deprecated). A device
    /// sees every other member of each access group it is in.
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
}

fn default_addr() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 5144))
}
fn default_paths() -> Vec<String> {
    vec!["/".to_owned(), "/pub".to_owned()]
}
fn default_max_body_bytes() -> usize {
    256 * 1024
}
fn default_header_timeout_ms() -> u64 {
    30_000
}
fn default_body_timeout_ms() -> u64 {
    30_000
}
fn default_max_connections() -> usize {
    10_000
}
fn default_send_timeout_ms() -> u64 {
    1_000
}
fn default_ack_timeout_ms() -> u64 {
    10_000
}
fn default_retry_after_s() -> u64 {
    1
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            addr: default_addr(),
            paths: default_paths(),
            max_body_bytes: default_max_body_bytes(),
            header_timeout_ms: default_header_timeout_ms(),
            body_timeout_ms: default_body_timeout_ms(),
            max_connections: default_max_connections(),
            send_timeout_ms: default_send_timeout_ms(),
            ack_timeout_ms: default_ack_timeout_ms(),
            retry_after_s: default_retry_after_s(),
            htpasswd: None,
            friends: FriendsConfig::default(),
            admins: Vec::new(),
        }
    }
}

impl HttpConfig {
    /// Checks the values make sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.paths.is_empty() || self.paths.iter().any(|p| !p.starts_with('/')) {
            return Err(ConfigError::new(
                "http.paths",
                "http.paths must be a non-empty list of paths starting with /",
            ));
        }
        if self.max_connections == 0 || self.max_body_bytes == 0 {
            return Err(ConfigError::new(
                "http.max_connections",
                "http.max_connections and http.max_body_bytes must be at least 1",
            ));
        }
        Ok(())
    }
}
