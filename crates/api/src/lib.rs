//! The read side over HTTP: the query API, OwnTracks Recorder's API, the
//! live feed and the fleet map page.
//!
//! In: HTTP requests, on the phones' listener (every request that is not
//! an OwnTracks POST, through [`otstream_http::Fallback`]) or on a
//! listener of its own ([`serve`]); the tables, through an
//! [`read::Reader`]; committed positions and transitions, on a
//! broadcast channel from the sink ([`live`]). Out: JSON, NDJSON,
//! GeoJSON, GPX and CSV answers, streamed as they are read; server-sent
//! events; the map page and its scripts, bundled in the binary.
//!
//! Guarantees: a read never sees another user's devices unless the rules
//! of [`access`] allow it; an unauthenticated install answers reads only
//! on loopback; a bad parameter is a 400 naming it; an answer's memory is
//! bounded whatever its size ([`body`]); reads never block ingest.
//!
//! Endpoints (see the README for each with curl):
//! - `/api/v1/devices`, `/positions`, `/trips`, `/stops`,
//!   `/transitions`, `/summary`, `/live`, `/fences`;
//! - the analyst's: `/api/v1/heatmap`, `/places`, `/visits`, `/stats`
//!   (`analyst`);
//! - Recorder's `/api/0/last`, `/locations`, `/list`, `/version`, and its
//!   WebSocket `/ws/last` ([`ws`]);
//! - the map: `/` and `/map`, its assets under `/assets/`.
//!
//! Layout:
//! - [`read`]: the readers of both stores and the output formats.
//! - [`endpoint`]: every endpoint, found by path through one router (matchit).
//! - [`params`]: parameters, times, windows.
//! - [`access`]: who reads what.
//! - [`body`]: streamed bodies.
//! - [`live`]: the live feed.
//! - [`page`]: the map page and its bundled assets.
//! - [`cors`]: cross-origin reads for an allow-list of origins.
//! - [`ws`]: Recorder's `/ws/last` WebSocket.
//! - `analyst`: the heatmap, places, visits and statistics.
//! - [`openapi`]: the OpenAPI 3.1 document of `/api/v1`.

pub mod access;
mod analyst;
pub mod body;
pub mod cors;
pub mod endpoint;
pub mod live;
pub mod openapi;
pub mod page;
pub mod params;
pub mod read;
mod reply;
pub mod ws;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::read::format::parquet::ParquetEncoder;
use crate::read::format::{
    EventFormat, FeatureEncoder, Format, PositionEncoder, Shape, devices_json, recorder_last,
    summary_json,
};
use crate::read::{Query, QueryError, Reader, Visible};
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use otstream_auth::{Authenticator, Grant, Refusal};
use otstream_http::Budget;
use otstream_http::{Fallback, FallbackBody};
use otstream_model::Record;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use endpoint::Endpoint;
use reply::{
    ApiError, endpoint_label, event_format, fields, now_s, ok_json, query, read_form, scope, set,
    streamed,
};

pub use params::{BadParam, Params};

/// How the read API and the map are served.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Serve the read API and the map at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// With authentication off, answer reads from any address, not only
    /// from loopback. Off by default: `serve` listens on every interface
    /// for the phones, and locations are not for the whole network.
    #[serde(default)]
    pub public: bool,
    /// A listener of its own for the API and the map; by default they
    /// share the ingest listener (their paths do not collide with the
    /// apps' POSTs to `/` and `/pub`).
    #[serde(default)]
    pub addr: Option<SocketAddr>,
    /// The map's raster tiles, a `{z}/{x}/{y}` URL template; empty for no
    /// tiles (markers, tracks and the panel work without them).
    /// OpenStreetMap's by default; heavy use needs a tile server of your own
    /// (see OSM's tile usage policy).
    #[serde(default = "default_tile_url")]
    pub tile_url: String,
    /// The tiles' attribution, shown on the map.
    #[serde(default = "default_tile_attribution")]
    pub tile_attribution: String,
    /// Connections its own listener (`addr`) serves at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Reads answered at once (an export holds its place until its last
    /// byte is sent); past it, 503 with `Retry-After`. Each holds a store
    /// reader: enough for a team's dashboards, not for one script to take
    /// every reader of the store.
    #[serde(default = "default_max_reads")]
    pub max_reads: usize,
    /// Live streams (`/api/v1/live`) open at once; past it, 503. A live
    /// stream holds none of its listener's connection places, so phones
    /// keep theirs however many watch.
    #[serde(default = "default_max_live_streams")]
    pub max_live_streams: usize,
    /// Web origins (`https://frontend.example.com`) whose pages may read
    /// the API (CORS) and open `/ws/last`; `*` for any, refused where
    /// reads are trusted by address (no htpasswd). Empty by default: only
    /// the API's own origin.
    #[serde(default)]
    pub cors_origins: Vec<String>,
}

fn default_true() -> bool {
    true
}
fn default_tile_url() -> String {
    "https://tile.openstreetmap.org/{z}/{x}/{y}.png".to_owned()
}
fn default_tile_attribution() -> String {
    "&copy; OpenStreetMap contributors".to_owned()
}
fn default_max_connections() -> usize {
    1024
}
fn default_max_reads() -> usize {
    64
}
fn default_max_live_streams() -> usize {
    256
}

impl ApiConfig {
    /// Checks the tile URL (it becomes part of the page's policy) and
    /// the budgets.
    pub fn validate(&self) -> Result<(), otstream_model::ConfigError> {
        if self.max_connections == 0 || self.max_reads == 0 || self.max_live_streams == 0 {
            return Err(otstream_model::ConfigError::new(
                "api.max_reads",
                "api.max_connections, api.max_reads and api.max_live_streams must be at least 1",
            ));
        }
        cors::Cors::new(&self.cors_origins)?;
        page::tile_source(&self.tile_url).map(|_| ())
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            public: false,
            addr: None,
            tile_url: default_tile_url(),
            tile_attribution: default_tile_attribution(),
            max_connections: default_max_connections(),
            max_reads: default_max_reads(),
            max_live_streams: default_max_live_streams(),
            cors_origins: Vec::new(),
        }
    }
}

/// Default window of `/api/v1` reads: the last day.
const V1_SPAN_S: i64 = 86_400;
/// Default window of Recorder's reads: its `DEFAULT_HISTORY_HOURS`, 6.
const RECORDER_SPAN_S: i64 = 6 * 3600;
/// Default window of the summary: a week of days.
const SUMMARY_SPAN_S: i64 = 7 * 86_400;

struct Inner {
    config: ApiConfig,
    reader: Reader,
    auth: Arc<Authenticator>,
    live: Option<broadcast::Sender<Record>>,
    fences: Option<PathBuf>,
    shutdown: CancellationToken,
    /// The page's Content-Security-Policy, from the tile URL.
    page_policy: HeaderValue,
    /// Reads answered at once.
    reads: Budget,
    /// Live streams (and `/ws/last` sockets) open at once.
    live_streams: Budget,
    /// Origins allowed to read across origins.
    cors: cors::Cors,
    /// Device places within this are one place of their user, metres
    /// (`trips.place_radius_m`).
    place_radius_m: f64,
}

/// The read API: cheap to clone, one per process.
#[derive(Clone)]
pub struct Api(Arc<Inner>);

impl Api {
    /// An API reading through `reader`, checking reads with `auth`,
    /// feeding `/api/v1/live` from `live` (committed records; none: the
    /// feed answers 503) and serving the operator's `fences` file to the
    /// map. Live streams end when `shutdown` is cancelled. A user's places
    /// merge their devices' within `place_radius_m`.
    pub fn new(
        config: ApiConfig,
        reader: Reader,
        auth: Arc<Authenticator>,
        live: Option<broadcast::Sender<Record>>,
        fences: Option<PathBuf>,
        shutdown: CancellationToken,
        place_radius_m: f64,
    ) -> Self {
        Self(Arc::new(Inner {
            page_policy: page::page_policy(&config),
            reads: Budget::new(config.max_reads),
            live_streams: Budget::new(config.max_live_streams),
            // Checked by ApiConfig::validate; an invalid list allows nothing.
            cors: cors::Cors::new(&config.cors_origins).unwrap_or_default(),
            config,
            reader,
            auth,
            live,
            fences,
            shutdown,
            place_radius_m,
        }))
    }

    /// Answers one request.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        remote: SocketAddr,
    ) -> Response<FallbackBody> {
        let started = Instant::now();
        let path = req.uri().path().to_owned();
        let endpoint = endpoint_label(&path);
        let origin = req
            .headers()
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if req.method() == Method::OPTIONS && path.starts_with("/api/") {
            let mut r = self.0.cors.preflight(origin.as_deref());
            page::secure(r.headers_mut(), None);
            return r;
        }
        // A read holds its place until its answer's last byte is sent.
        let read = path.starts_with("/api/") && path != "/api/v1/live";
        let place = if read { self.0.reads.take() } else { None };
        let mut response = if read && place.is_none() {
            ApiError::Unavailable(
                "too many reads at once (api.max_reads); retry in a second".into(),
            )
            .response()
        } else {
            match self.route(req, remote, &path).await {
                Ok(r) => r,
                Err(e) => e.response(),
            }
        };
        if let Some(place) = place {
            response = response.map(|b| body::holding(b, place));
        }
        let page = page::is_page(&path, response.status()).then_some(&self.0.page_policy);
        page::secure(response.headers_mut(), page);
        if path.starts_with("/api/") {
            self.0
                .cors
                .decorate(origin.as_deref(), response.headers_mut());
        }
        metrics::counter!("otstream_api_requests_total", "endpoint" => endpoint, "status" => response.status().as_str().to_owned()).increment(1);
        metrics::histogram!("otstream_api_request_duration_seconds", "endpoint" => endpoint)
            .record(started.elapsed().as_secs_f64());
        response
    }

    /// `/ws/last`: checks the upgrade, takes a place in the live budget,
    /// and leaves the socket to [`ws::Socket`] once the 101 is sent.
    fn socket(
        &self,
        mut req: Request<Incoming>,
        visible: Visible,
        slot: Option<otstream_http::Slot>,
        recheck: access::Recheck,
    ) -> Result<Response<FallbackBody>, ApiError> {
        let header = |name: header::HeaderName| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        if !self.0.cors.allows_socket(
            header(header::ORIGIN).as_deref(),
            header(header::HOST).as_deref(),
        ) {
            return Err(ApiError::Refused(Refusal::Forbidden(
                "a page of another origin may not open /ws/last unless api.cors_origins lists it",
            )));
        }
        let Some(live) = &self.0.live else {
            return Err(ApiError::Unavailable(
                "this process has no live feed (it stores nothing itself)".into(),
            ));
        };
        let accept = ws::check_handshake(&req)
            .map_err(|why| ApiError::BadParam(BadParam::new("upgrade", why)))?;
        let Some(place) = self.0.live_streams.take() else {
            return Err(ApiError::Unavailable(
                "too many live streams open (api.max_live_streams); retry later".into(),
            ));
        };
        if let Some(slot) = slot {
            slot.release();
        }
        let socket = ws::Socket {
            upgrade: hyper::upgrade::on(&mut req),
            live: live.subscribe(),
            reader: self.0.reader.clone(),
            reads: self.0.reads.clone(),
            visible,
            recheck,
            shutdown: self.0.shutdown.clone(),
            place,
        };
        tokio::spawn(socket.run());
        Ok(ws::switching(accept))
    }

    async fn route(
        &self,
        req: Request<Incoming>,
        remote: SocketAddr,
        path: &str,
    ) -> Result<Response<FallbackBody>, ApiError> {
        let method = req.method().clone();
        let slot = req.extensions().get::<otstream_http::Slot>().cloned();
        let get = method == Method::GET || method == Method::HEAD;
        let endpoint = Endpoint::of(path);
        let recorder = endpoint.is_some_and(Endpoint::recorder);
        // Another path is a 404 whatever the method (as the ingress
        // answers it), a known one with another method a 405.
        let asset = page::asset(path);
        let Some(endpoint) = endpoint.or(asset.as_ref().map(|_| Endpoint::Page)) else {
            return Err(ApiError::NotFound);
        };
        if !(get || (recorder && method == Method::POST)) {
            return Err(ApiError::MethodNotAllowed);
        }
        if let Some(asset) = asset {
            return Ok(asset);
        }
        // The page a share link opens holds no data (its token stays in
        // the link's fragment, read by the page's script): anyone may
        // load it.
        if endpoint == Endpoint::Share {
            return Ok(page::index(&self.0.config));
        }
        let mut params = Params::parse(req.uri().query().unwrap_or(""));
        let facts = access::facts(&req, remote, &params);
        // A stream outlives its request: it keeps the credentials to check
        // them again.
        let recheck = endpoint
            .streams()
            .then(|| access::Recheck::new(self.0.auth.clone(), &facts));
        let grant = self
            .0
            .auth
            .reader(&facts)
            .await
            .map_err(ApiError::Refused)?;
        access::admits(&grant, endpoint).map_err(ApiError::Refused)?;
        let visible = grant.visible.clone();
        if let (Some(recheck), Endpoint::RecorderWs) = (&recheck, endpoint) {
            return self.socket(req, visible, slot, recheck.clone());
        }
        if recorder {
            let header = |name: &str| {
                req.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let limits = [
                ("user", header("x-limit-user")),
                ("device", header("x-limit-device")),
                ("from", header("x-limit-from")),
                ("to", header("x-limit-to")),
            ];
            if method == Method::POST {
                params.extend(&read_form(req).await?);
            }
            for (name, value) in limits {
                params.default_from(name, value.as_deref());
            }
        }
        let now = now_s();
        match endpoint {
            Endpoint::Page | Endpoint::Share => Ok(page::index(&self.0.config)),
            // No data in it: its script reads with the reader's credentials.
            Endpoint::Report => Ok(page::report(&self.0.config)),
            Endpoint::Devices => {
                let (user, device) = scope(&params, &visible)?;
                let devices = self.0.reader.devices(user, device, &visible).await?;
                Ok(ok_json(devices_json(&devices)))
            }
            Endpoint::Positions => {
                let q = query(&params, &grant, now, V1_SPAN_S)?;
                if params.get("format") == Some("parquet") {
                    let rows = self.0.reader.positions(&q).await?;
                    return streamed(rows, ParquetEncoder::new()).await;
                }
                let format = match params.get("format") {
                    None => Format::Json,
                    Some(f) => Format::parse(f).ok_or_else(|| {
                        BadParam::new(
                            "format",
                            format!("{f:?} is not one of {}, parquet", Format::NAMES),
                        )
                    })?,
                };
                let rows = self.0.reader.positions(&q).await?;
                streamed(rows, PositionEncoder::new(format, Shape::Otstream, None)).await
            }
            Endpoint::Trips | Endpoint::Stops | Endpoint::Transitions => {
                let q = query(&params, &grant, now, V1_SPAN_S)?;
                match (endpoint, params.get("format")) {
                    (Endpoint::Trips, Some("parquet")) => {
                        streamed(self.0.reader.trips(&q).await?, ParquetEncoder::new()).await
                    }
                    (Endpoint::Stops, Some("parquet")) => {
                        let rows = analyst::stops_for(&grant, self.0.reader.stops(&q).await?);
                        streamed(rows, ParquetEncoder::new()).await
                    }
                    _ => {
                        let encoder = FeatureEncoder::new(event_format(&params)?);
                        match endpoint {
                            Endpoint::Trips => {
                                streamed(self.0.reader.trips(&q).await?, encoder).await
                            }
                            Endpoint::Stops => {
                                let rows =
                                    analyst::stops_for(&grant, self.0.reader.stops(&q).await?);
                                streamed(rows, encoder).await
                            }
                            _ => streamed(self.0.reader.transitions(&q).await?, encoder).await,
                        }
                    }
                }
            }
            Endpoint::Heatmap => self.heatmap(&params, &grant, now).await,
            Endpoint::Places => self.places(&params, &grant, now).await,
            Endpoint::Visits => self.visits(&params, &grant, now).await,
            Endpoint::Stats => self.stats(&params, &grant, now).await,
            Endpoint::OpenApi => Ok(ok_json(openapi::json().to_vec())),
            Endpoint::Summary => {
                let q = query(&params, &grant, now, SUMMARY_SPAN_S)?;
                Ok(ok_json(summary_json(&self.0.reader.summary(&q).await?)))
            }
            Endpoint::Live => {
                let Some(live) = &self.0.live else {
                    return Err(ApiError::Unavailable(
                        "this process has no live feed (it stores nothing itself)".into(),
                    ));
                };
                let Some(place) = self.0.live_streams.take() else {
                    return Err(ApiError::Unavailable(
                        "too many live streams open (api.max_live_streams); retry later".into(),
                    ));
                };
                // From here the stream counts in the live budget, not in
                // its listener's connections.
                if let Some(slot) = slot {
                    slot.release();
                }
                let Some(recheck) = recheck else {
                    return Err(ApiError::NotFound);
                };
                // Events name operator fences and rules and span trips
                // and stops: for readers of history, not for share links
                // or tokens of last positions.
                let events = grant.history_since.is_some() && !grant.share;
                let body = live::stream(
                    live,
                    visible,
                    events,
                    self.0.shutdown.clone(),
                    place,
                    recheck,
                );
                let mut r = Response::new(body);
                set(&mut r, header::CONTENT_TYPE, "text/event-stream");
                set(&mut r, header::CACHE_CONTROL, "no-store");
                Ok(r)
            }
            Endpoint::Fences => self.fences(&visible).await,
            Endpoint::Waypoints => {
                let q = query(&params, &grant, now, V1_SPAN_S)?;
                let encoder = FeatureEncoder::new(event_format(&params)?);
                let rows = self.0.reader.waypoints(&q).await?;
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                // The channel has room for this one chunk: it cannot fail.
                let _ = tx.try_send(Ok(rows));
                streamed(rx, encoder).await
            }
            Endpoint::RecorderVersion => Ok(ok_json(
                json!({"version": env!("CARGO_PKG_VERSION"), "git": "otstream"})
                    .to_string()
                    .into_bytes(),
            )),
            Endpoint::RecorderList => {
                let (user, device) = scope(&params, &visible)?;
                let mut results: Vec<String> = match (user, device) {
                    // Recorder lists the device's monthly .rec files by path,
                    // every month up to `to` whatever `from` says; here each
                    // is a month with positions.
                    (Some(u), Some(d)) => {
                        let mut q = Query::window(0, params.time("to", now)?);
                        (q.user, q.device, q.visible) = (Some(u.into()), Some(d.into()), visible);
                        self.0
                            .reader
                            .months(&q)
                            .await?
                            .into_iter()
                            .map(|m| format!("rec/{u}/{d}/{m}.rec"))
                            .collect()
                    }
                    // Users, or one user's devices.
                    _ => self
                        .0
                        .reader
                        .devices(user, None, &visible)
                        .await?
                        .iter()
                        .map(|d| match user {
                            None => d.last.user.to_string(),
                            Some(_) => d.last.device.to_string(),
                        })
                        .collect(),
                };
                results.dedup();
                Ok(ok_json(
                    json!({ "results": results }).to_string().into_bytes(),
                ))
            }
            Endpoint::RecorderLast => {
                let (user, device) = scope(&params, &visible)?;
                let fields = fields(&params);
                let mut devices = self.0.reader.devices(user, device, &visible).await?;
                if fields
                    .as_ref()
                    .is_none_or(|f| f.iter().any(|x| x == "face"))
                {
                    self.0.reader.faces(&mut devices).await?;
                }
                let mut out = vec![b'['];
                for (i, d) in devices.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    recorder_last(&mut out, d, fields.as_deref());
                }
                out.push(b']');
                Ok(ok_json(out))
            }
            Endpoint::RecorderLocations => {
                for name in ["user", "device"] {
                    if params.get(name).is_none() {
                        return Err(BadParam::new(name, "user and device are required").into());
                    }
                }
                let q = query(&params, &grant, now, RECORDER_SPAN_S)?;
                let format = match params.get("format") {
                    None => Format::Json,
                    Some(f @ ("json" | "csv" | "geojson" | "linestring" | "gpx")) => {
                        Format::parse(f).unwrap_or(Format::Json)
                    }
                    Some(f) => {
                        return Err(BadParam::new(
                            "format",
                            format!("{f:?} is not one of json, csv, geojson, linestring, gpx"),
                        )
                        .into());
                    }
                };
                let rows = self.0.reader.positions(&q).await?;
                streamed(
                    rows,
                    PositionEncoder::new(format, Shape::Recorder, fields(&params)),
                )
                .await
            }
            _ => Err(ApiError::NotFound),
        }
    }

    /// The fences of the operator's file that apply to what the client
    /// may read ([`access::fences_for`]), or an empty collection.
    async fn fences(&self, visible: &Visible) -> Result<Response<FallbackBody>, ApiError> {
        let Some(path) = self.0.fences.clone() else {
            return Ok(ok_json(
                br#"{"type":"FeatureCollection","features":[]}"#.to_vec(),
            ));
        };
        match tokio::fs::read(&path).await {
            Ok(bytes) => access::fences_for(&bytes, visible)
                .map(ok_json)
                .ok_or_else(|| {
                    ApiError::Unavailable(format!(
                        "the fences file {} is not a FeatureCollection",
                        path.display()
                    ))
                }),
            Err(e) => Err(ApiError::Unavailable(format!(
                "cannot read the fences file {}: {e}",
                path.display()
            ))),
        }
    }
}

impl Fallback for Api {
    fn serves(&self, method: &Method, path: &str) -> bool {
        (*method == Method::GET || *method == Method::HEAD)
            && (matches!(path, "/" | "/map" | "/share")
                || path.starts_with("/api/")
                || path.starts_with("/assets/"))
    }

    fn call(
        &self,
        req: Request<Incoming>,
        remote: SocketAddr,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<FallbackBody>> + Send>> {
        let this = self.clone();
        Box::pin(async move { this.handle(req, remote).await })
    }
}

/// Serves the API alone on `listener` until `shutdown` (its own
/// `--api-addr`, or `otstream run api`), at most `api.max_connections`
/// at once.
pub async fn serve(
    listener: tokio::net::TcpListener,
    api: Api,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let limits = otstream_http::Limits {
        max_connections: api.0.config.max_connections,
        header_timeout: Duration::from_secs(30),
        // Live streams end with the shutdown token; the rest finish.
        drain: Duration::from_secs(10),
    };
    otstream_http::serve(
        listener,
        limits,
        move |remote| {
            let api = api.clone();
            hyper::service::service_fn(move |req| {
                let api = api.clone();
                async move { Ok::<_, std::convert::Infallible>(api.handle(req, remote).await) }
            })
        },
        shutdown,
    )
    .await;
    Ok(())
}
