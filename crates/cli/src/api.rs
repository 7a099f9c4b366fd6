//! The read API in the binary: built from the configuration, served on the
//! ingest listener or on `api.addr`, and `otstream run api` (the API
//! alone, in front of ClickHouse).

use std::sync::Arc;

use anyhow::{Context, Result};
use otstream_api::Api;
use otstream_api::read::Reader;
use otstream_api::read::clickhouse::ClickHouseReader;
use otstream_api::read::sqlite::SqliteReader;
use otstream_auth::{Authenticator, Htpasswd};
use otstream_bus::Stage;
use otstream_http::Fallback;
use otstream_ingress::friends::{Fix, Friends, Stored};
use otstream_sink::Committed;
use tokio_util::sync::CancellationToken;

use crate::config::ServeConfig;

/// The API over whatever this configuration writes to (ClickHouse, else
/// the embedded store), with the live feed from `live` when the sink runs
/// in this process; `None` when `api.enabled` is off.
pub(crate) fn build(
    config: &ServeConfig,
    auth: Arc<Authenticator>,
    live: Option<Committed>,
    shutdown: CancellationToken,
) -> Result<Option<Api>> {
    if !config.api.enabled {
        return Ok(None);
    }
    let reader = reader(config);
    if !auth.required() && !config.api.public {
        tracing::info!(
            "read API and map answer loopback clients only (no htpasswd, api.public = false)"
        );
    }
    Ok(Some(Api::new(
        config.api.clone(),
        reader,
        auth,
        live,
        config.geofence.fences.clone(),
        shutdown,
        config.trips.place_radius_m,
    )))
}

/// A reader of whatever this configuration writes to: ClickHouse, else
/// the embedded store.
pub(crate) fn reader(config: &ServeConfig) -> Reader {
    match &config.clickhouse {
        Some(ch) => Reader::ClickHouse(ClickHouseReader::new(ch)),
        None => Reader::Sqlite(SqliteReader::in_data_dir(&config.data_dir)),
    }
}

/// The friends answer of the ingress, when `http.friends` is on, with
/// the side job that feeds it: fed what this process stores, and, read
/// from the store at start and every 5 s, every group member's last fix
/// and card name, so that it survives a restart and shows fixes other
/// processes stored (Kafka mode, several ingress replicas, MQTT).
pub(crate) async fn friends(config: &ServeConfig, auth: &Authenticator) -> Option<FriendsFeed> {
    let groups = auth.policy().device_groups();
    let friends = Arc::new(Friends::new(&config.http.friends, &groups)?);
    let reader = reader(config);
    feed_friends(&friends, &reader).await;
    Some(FriendsFeed { friends, reader })
}

/// The friends lists' last fixes, from the store every 5 s.
pub(crate) struct FriendsFeed {
    friends: Arc<Friends>,
    reader: Reader,
}

impl FriendsFeed {
    /// What the ingress answers from.
    pub(crate) fn friends(&self) -> Arc<Friends> {
        self.friends.clone()
    }
}

impl Stage<(), ()> for FriendsFeed {
    type Error = std::convert::Infallible;

    async fn run(self, _: (), _: (), shutdown: CancellationToken) -> Result<(), Self::Error> {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
            }
            feed_friends(&self.friends, &self.reader).await;
        }
    }
}

async fn feed_friends(friends: &Friends, reader: &Reader) {
    let devices = match reader
        .devices(None, None, &otstream_api::read::Visible::All)
        .await
    {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the friends' last positions; answering from what this process stored");
            return;
        }
    };
    // `remember` keeps only group members.
    for d in devices {
        let p = &d.last;
        friends.remember(&Stored {
            user: p.user.to_string(),
            device: p.device.to_string(),
            tid: p.tid.as_ref().map(ToString::to_string),
            fix: Fix {
                tst: p.tst,
                lat: p.lat,
                lon: p.lon,
                acc: p.acc,
                alt: p.alt,
                batt: p.batt,
                vel: p.vel,
                cog: p.cog,
                vac: p.vac,
            },
            name: d.name,
        });
    }
}

/// Where the API answers: the ingest listener's fallback, or its own
/// listener when `api.addr` is set (neither when it is off).
pub(crate) struct Started {
    pub(crate) fallback: Option<Arc<dyn Fallback>>,
    /// The API's own listener, to run as a unit.
    pub(crate) own: Option<ApiListener>,
    /// The access rules, built once: the ingress checks the same ones.
    pub(crate) auth: Arc<Authenticator>,
}

/// The read API on a listener of its own.
pub(crate) struct ApiListener {
    listener: tokio::net::TcpListener,
    api: Api,
}

impl Stage<(), ()> for ApiListener {
    type Error = std::io::Error;

    async fn run(self, _: (), _: (), shutdown: CancellationToken) -> std::io::Result<()> {
        otstream_api::serve(self.listener, self.api, shutdown).await
    }
}

/// The access rules: the users of `http.htpasswd` (when set), `[access]`,
/// `api.public`.
pub(crate) fn authenticator(config: &ServeConfig) -> Result<Arc<Authenticator>> {
    let users = match &config.http.htpasswd {
        Some(path) => Some(
            Htpasswd::from_file(path)
                .with_context(|| format!("cannot read http.htpasswd {}", path.display()))?,
        ),
        None => None,
    };
    Ok(Arc::new(
        Authenticator::new(&config.access(), users, config.api.public)
            .context("invalid access rules")?,
    ))
}

/// Builds the API ([`build`]) and starts it where the configuration says.
pub(crate) async fn start(
    config: &ServeConfig,
    live: Option<Committed>,
    shutdown: CancellationToken,
) -> Result<Started> {
    let auth = authenticator(config)?;
    let Some(api) = build(config, auth.clone(), live, shutdown.clone())? else {
        return Ok(Started {
            fallback: None,
            own: None,
            auth,
        });
    };
    let Some(addr) = config.api.addr else {
        return Ok(Started {
            fallback: Some(Arc::new(api)),
            own: None,
            auth,
        });
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (api.addr)"))?;
    tracing::info!(%addr, "read API and map listening");
    Ok(Started {
        fallback: None,
        own: Some(ApiListener { listener, api }),
        auth,
    })
}

/// `otstream run api`: the read API and the map alone, reading ClickHouse
/// (or the embedded store), on `api.addr`, else `http.addr`. It stores
/// nothing itself, so it has no live feed.
pub(crate) fn alone(config: &mut ServeConfig) {
    config.api.enabled = true;
    if config.api.addr.is_none() {
        config.api.addr = Some(config.http.addr);
    }
}
