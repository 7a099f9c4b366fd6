//! Street addresses for stops and trips' ends, from an external geocoder.
//!
//! In: the store's `stops` and `trips` rows that have no address yet
//! (the embedded store or ClickHouse, polled every `interval_s`), and a
//! Nominatim or Photon service at `[geocode.addresses] url`. Out: each
//! such row's `address` (`start_address`, `end_address`), and the
//! `addresses` table, the cache: one row per geohash cell asked (8
//! characters by default, 38 m × 19 m), its address or '' for none.
//! Guarantees: off the hot path (the sink writes rows with a NULL address
//! and moves on; this job fills them in afterwards, newest first); at most
//! `per_second` requests, one at a time, each cell asked once ever (the
//! cache outlives restarts), a service that is down or answers 429/5xx
//! retried with backoff (honouring Retry-After) without losing a row.
//! Only stops and trips' ends are asked for, never positions: a fleet's
//! stops are few and repeat, where positions would be millions.

pub mod config;
pub mod geohash;
pub mod provider;
pub mod remote;
pub mod store;

use std::collections::HashMap;
use std::time::Duration;

use otstream_bus::Stage;
use otstream_model::raw::now_ms;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use config::AddressesConfig;
pub use provider::Provider;
pub use remote::{Answer, Remote};
pub use store::{Pending, Rows, Target};

/// Rows read per look.
const BATCH: usize = 256;

/// Why the job could not start or go on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// The configuration cannot be used.
    #[error("addresses: {0}")]
    Setup(String),
    /// The embedded store refused.
    #[error("addresses: store: {0}")]
    Store(String),
    /// ClickHouse refused.
    #[error("addresses: clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
}

/// The job: a value built from its config and store, run until shutdown.
pub struct Addresses {
    config: AddressesConfig,
    remote: Remote,
    rows: Rows,
}

/// Sleeps until `t`; false when shutdown came first.
async fn wait(t: Instant, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep_until(t) => true,
        _ = shutdown.cancelled() => false,
    }
}

impl Addresses {
    /// The job for `config` (its `url` set) over `rows`.
    pub fn new(config: AddressesConfig, rows: Rows) -> Result<Addresses, AddressError> {
        let remote = Remote::new(&config)?;
        Ok(Addresses {
            config,
            remote,
            rows,
        })
    }
}

impl Stage<(), ()> for Addresses {
    /// Fills in addresses until `shutdown`. Store errors are logged and
    /// retried at the next look: the job never stops the pipeline.
    type Error = AddressError;

    async fn run(
        self,
        _input: (),
        _output: (),
        shutdown: CancellationToken,
    ) -> Result<(), AddressError> {
        let interval = Duration::from_secs(self.config.interval_s.max(1));
        let gap = Duration::from_secs_f64(1.0 / self.config.per_second);
        let mut cache = loop {
            match self.rows.cached().await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(error = %e, "addresses: cannot read the cache; retrying");
                    if !wait(Instant::now() + interval, &shutdown).await {
                        return Ok(());
                    }
                }
            }
        };
        tracing::info!(cells = cache.len(), url = ?self.config.url, "addresses: started");
        let mut next_request = Instant::now();
        let mut backoff = Duration::ZERO;
        while !shutdown.is_cancelled() {
            let pending = match self.rows.pending(BATCH).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "addresses: cannot read pending rows");
                    Vec::new()
                }
            };
            if pending.is_empty() {
                if !wait(Instant::now() + interval, &shutdown).await {
                    break;
                }
                continue;
            }
            // By cell, in the order found (newest first).
            let mut cells: Vec<(geohash::Cell, Vec<&Pending>)> = Vec::new();
            let mut at: HashMap<String, usize> = HashMap::new();
            for p in &pending {
                let c = geohash::cell(p.lat, p.lon, self.config.precision);
                match at.get(&c.hash) {
                    Some(&i) => cells[i].1.push(p),
                    None => {
                        at.insert(c.hash.clone(), cells.len());
                        cells.push((c, vec![p]));
                    }
                }
            }
            let mut asked = false;
            for (cell, rows) in cells {
                let address = match cache.get(&cell.hash) {
                    Some(a) => {
                        metrics::counter!("otstream_address_cache_hits_total").increment(1);
                        a.clone()
                    }
                    None => {
                        if !wait(next_request, &shutdown).await {
                            return Ok(());
                        }
                        asked = true;
                        let answer = self.remote.ask(cell.lat, cell.lon).await;
                        next_request = Instant::now() + gap;
                        let address = match answer {
                            Answer::Found(a) => {
                                let outcome = if a.is_some() { "found" } else { "none" };
                                metrics::counter!("otstream_address_requests_total", "outcome" => outcome)
                                    .increment(1);
                                backoff = Duration::ZERO;
                                a.unwrap_or_default()
                            }
                            Answer::Refused(why) => {
                                metrics::counter!("otstream_address_requests_total", "outcome" => "refused")
                                    .increment(1);
                                tracing::warn!(cell = %cell.hash, %why, "addresses: refused; kept as none");
                                String::new()
                            }
                            Answer::Later(why, after) => {
                                metrics::counter!("otstream_address_requests_total", "outcome" => "later")
                                    .increment(1);
                                backoff = (backoff * 2)
                                    .clamp(Duration::from_secs(1), Duration::from_secs(300));
                                let pause = after.map_or(backoff, |a| a.max(backoff));
                                tracing::warn!(cell = %cell.hash, %why, retry_in_s = pause.as_secs_f64(), "addresses: geocoder unavailable");
                                next_request = Instant::now() + pause;
                                break;
                            }
                        };
                        if let Err(e) = self.rows.remember(&cell.hash, &address, now_ms()).await {
                            tracing::warn!(error = %e, "addresses: cannot keep an answer");
                        }
                        cache.insert(cell.hash.clone(), address.clone());
                        address
                    }
                };
                for target in [Target::Stop, Target::TripStart, Target::TripEnd] {
                    let of: Vec<&Pending> = rows
                        .iter()
                        .copied()
                        .filter(|p| p.target == target)
                        .collect();
                    match self.rows.apply(target, &of, &address).await {
                        Ok(()) => metrics::counter!("otstream_addresses_applied_total")
                            .increment(of.len() as u64),
                        Err(e) => tracing::warn!(error = %e, "addresses: cannot write an address"),
                    }
                }
            }
            // Only cached answers applied: a short breath before the next
            // look, so that rows the store keeps re-writing cannot spin.
            if !asked && !wait(Instant::now() + Duration::from_millis(100), &shutdown).await {
                break;
            }
        }
        Ok(())
    }
}
