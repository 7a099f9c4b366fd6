//! The HTTP server: accept loop, connection limits and timeouts, graceful
//! shutdown, and the OwnTracks request handler.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use metrics::{Counter, Histogram};
use otstream_bus::{Ack, AckStatus, Stage};
use otstream_decode::{DecodeConfig, DecodeError, Decoder, ErrorKind, KeyRing};
use otstream_model::ConfigError;
use otstream_model::identity;
use otstream_model::raw::now_ms;
use otstream_model::{IdentityHints, RawMessage, Record, Transport};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::HttpConfig;
use crate::friends::Friends;
use crate::intake::Intake;
use crate::push::Push;
use otstream_auth::{Authenticator, Facts};

/// Why the ingress could not start or keep running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngressError {
    /// Accepting connections failed.
    #[error("accept failed: {0}")]
    Accept(std::io::Error),
    /// The configuration is inconsistent.
    #[error("invalid http configuration: {0}")]
    Config(#[from] ConfigError),
}

const STATUSES: [u16; 11] = [200, 400, 401, 403, 404, 405, 408, 413, 429, 500, 503];

struct Meters {
    received: Counter,
    responses: [Counter; STATUSES.len()],
    duration: Histogram,
    rejected: Vec<(ErrorKind, Counter)>,
    overloaded: Counter,
}

impl Meters {
    fn new() -> Self {
        let stage = "ingress_http";
        Self {
            received: metrics::counter!("otstream_received_events_total", "stage" => stage),
            responses: STATUSES.map(|s| {
                metrics::counter!("otstream_http_responses_total", "status" => s.to_string())
            }),
            duration: metrics::histogram!("otstream_http_request_duration_seconds"),
            rejected: ErrorKind::ALL
                .iter()
                .map(|k| (*k, metrics::counter!("otstream_rejected_total", "stage" => stage, "reason" => k.code())))
                .collect(),
            overloaded: metrics::counter!("otstream_rejected_total", "stage" => stage, "reason" => "overloaded"),
        }
    }

    fn status(&self, s: StatusCode) {
        if let Some(i) = STATUSES.iter().position(|x| *x == s.as_u16()) {
            self.responses[i].increment(1);
        }
    }

    fn rejected(&self, kind: ErrorKind) {
        if let Some((_, c)) = self.rejected.iter().find(|(k, _)| *k == kind) {
            c.increment(1);
        }
    }
}

pub use otstream_http::{Fallback, FallbackBody};

type Answer = Response<Either<Full<Bytes>, FallbackBody>>;

/// Largest refused body still read before the 413 (see `respond`).
const DRAIN_LIMIT: usize = 1 << 20;

struct State<I> {
    config: HttpConfig,
    fallback: Option<Arc<dyn Fallback>>,
    output: I,
    decode_config: DecodeConfig,
    keys: Arc<KeyRing>,
    /// Decoders keep parser scratch; a small pool avoids rebuilding it per
    /// request. Held only for the microsecond a validation takes.
    decoders: Mutex<Vec<Decoder>>,
    auth: Arc<Authenticator>,
    friends: Option<Arc<Friends>>,
    push: Option<Arc<Push>>,
    meters: Meters,
}

/// The HTTP ingress, built from its configuration: OwnTracks HTTP on its
/// listener. Its output is an [`Intake`]: [`Raw`](crate::intake::Raw)
/// over Kafka, [`Decoded`](crate::intake::Decoded) in one process, whose
/// link should have a send deadline (a full bus turns into 503, not into
/// waiting forever); it has no input but the phones.
pub struct HttpIngress {
    listener: TcpListener,
    config: HttpConfig,
    decode_config: DecodeConfig,
    keys: Arc<KeyRing>,
    fallback: Option<Arc<dyn Fallback>>,
    auth: Arc<Authenticator>,
    friends: Option<Arc<Friends>>,
    push: Option<Arc<Push>>,
}

impl HttpIngress {
    /// Serves `listener`, checking payloads as the decode stage would
    /// (`decode_config`, `keys`). `auth` holds the access rules (the
    /// credentials of `config.htpasswd`, loaded by the caller so that the
    /// read API checks the same ones; they must be loaded when it is set).
    pub fn new(
        listener: TcpListener,
        config: HttpConfig,
        decode_config: DecodeConfig,
        keys: Arc<KeyRing>,
        auth: Arc<Authenticator>,
    ) -> Self {
        HttpIngress {
            listener,
            config,
            decode_config,
            keys,
            fallback: None,
            auth,
            friends: None,
            push: None,
        }
    }

    /// Every request that is not an OwnTracks POST goes to `fallback`
    /// (the read API), when there is one.
    pub fn with_fallback(mut self, fallback: Option<Arc<dyn Fallback>>) -> Self {
        self.fallback = fallback;
        self
    }

    /// `friends` (built from `config.friends` by the caller, who may also
    /// feed it from the store) answers each 200.
    pub fn with_friends(mut self, friends: Option<Arc<Friends>>) -> Self {
        self.friends = friends;
        self
    }

    /// `push` sends a device the operator's fences in the answer to its
    /// next location after they changed.
    pub fn with_push(mut self, push: Option<Arc<Push>>) -> Self {
        self.push = push;
        self
    }
}

impl<I: Intake> Stage<(), I> for HttpIngress {
    type Error = IngressError;

    /// Serves until `shutdown` is cancelled, then stops accepting, lets
    /// in-flight requests finish (each still waits for its message to be
    /// durable) and returns once every connection is closed.
    async fn run(
        self,
        _input: (),
        output: I,
        shutdown: CancellationToken,
    ) -> Result<(), IngressError> {
        let HttpIngress {
            listener,
            config,
            decode_config,
            keys,
            fallback,
            auth,
            friends,
            push,
        } = self;
        config.validate()?;
        if let (Some(path), false) = (&config.htpasswd, auth.required()) {
            return Err(IngressError::Config(ConfigError::new(
                "http.htpasswd",
                format!(
                    "http.htpasswd is {} but no credentials were loaded from it",
                    path.display()
                ),
            )));
        }
        let limits = otstream_http::Limits {
            max_connections: config.max_connections,
            header_timeout: Duration::from_millis(config.header_timeout_ms),
            // In-flight requests may still be reading their body and then
            // waiting for their ack; the supervisor's own deadline names a
            // stage that hangs past it.
            drain: Duration::from_millis(
                config.header_timeout_ms + config.body_timeout_ms + config.ack_timeout_ms,
            ),
        };
        let state = Arc::new(State {
            config,
            fallback,
            output,
            decode_config,
            keys,
            decoders: Mutex::new(Vec::new()),
            auth,
            friends,
            push,
            meters: Meters::new(),
        });
        otstream_http::serve(
            listener,
            limits,
            move |remote| {
                let state = state.clone();
                service_fn(move |req| handle(state.clone(), remote, req))
            },
            shutdown,
        )
        .await;
        Ok(())
    }
}

async fn handle<I: Intake>(
    state: Arc<State<I>>,
    remote: SocketAddr,
    req: Request<Incoming>,
) -> Result<Answer, Infallible> {
    if let Some(fallback) = &state.fallback {
        let path = req.uri().path();
        let ingest_path = state.config.paths.iter().any(|p| p == path);
        let theirs =
            !ingest_path || (req.method() != Method::POST && fallback.serves(req.method(), path));
        if theirs {
            return Ok(fallback.call(req, remote).await.map(Either::Right));
        }
    }
    let started = Instant::now();
    let response = respond(&state, remote, req).await;
    state.meters.status(response.status());
    state
        .meters
        .duration
        .record(started.elapsed().as_secs_f64());
    Ok(response.map(Either::Left))
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    json_bytes(status, Bytes::from(body.to_string()))
}

fn json_bytes(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// 200 with `[]`: nothing to tell the device.
fn empty_list() -> Response<Full<Bytes>> {
    json_bytes(StatusCode::OK, Bytes::from_static(b"[]"))
}

fn error_response(
    status: StatusCode,
    kind: &str,
    field: Option<&str>,
    message: &str,
) -> Response<Full<Bytes>> {
    json_response(
        status,
        &json!({"error": {"kind": kind, "field": field, "message": message}}),
    )
}

fn overloaded<S>(state: &State<S>, message: &str) -> Response<Full<Bytes>> {
    state.meters.overloaded.increment(1);
    let mut r = error_response(StatusCode::SERVICE_UNAVAILABLE, "overloaded", None, message);
    r.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(state.config.retry_after_s),
    );
    r
}

/// The answer to a request the access rules refused.
fn refused(refusal: otstream_auth::Refusal) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::FORBIDDEN);
    let mut r = error_response(status, refusal.kind(), None, refusal.message());
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"otstream\""),
        );
    }
    if let Some(s) = refusal.retry_after_s() {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    r
}

fn header_str(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn respond<I: Intake>(
    state: &Arc<State<I>>,
    remote: SocketAddr,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    if !state.config.paths.iter().any(|p| p == req.uri().path()) {
        return error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            None,
            "no OwnTracks endpoint at this path",
        );
    }
    if req.method() != Method::POST {
        let mut r = error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            None,
            "OwnTracks payloads are sent with POST",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }

    let facts = Facts {
        remote,
        authorization: req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
        query_token: None,
        host: None,
        forwarded: false,
    };
    let auth_user = match state.auth.publisher(&facts).await {
        Ok(user) => user,
        Err(refusal) => return refused(refusal),
    };

    let max = state.config.max_body_bytes;
    let too_large = || {
        error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            None,
            &format!("body exceeds the limit of {max} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let body_timeout = Duration::from_millis(state.config.body_timeout_ms);
    if let Some(n) = declared.filter(|n| *n > max) {
        // A body of moderate size is read (and dropped) first: answering
        // before it is read makes the kernel reset the connection under a
        // client still sending, which then never sees the 413.
        if n <= DRAIN_LIMIT {
            let drain = Limited::new(req.into_body(), DRAIN_LIMIT).collect();
            let _ = tokio::time::timeout(body_timeout, drain).await;
        }
        return too_large();
    }
    let hints = IdentityHints {
        mqtt_topic: None,
        x_limit_u: header_str(&req, "x-limit-u"),
        x_limit_d: header_str(&req, "x-limit-d"),
        auth_user,
    };
    let body = match tokio::time::timeout(
        body_timeout,
        Limited::new(req.into_body(), max).collect(),
    )
    .await
    {
        Err(_) => {
            return error_response(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                None,
                "the body did not arrive in time",
            );
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
        Ok(Err(e)) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "bad_body",
                None,
                &format!("could not read the body: {e}"),
            );
        }
        Ok(Ok(b)) => b.to_bytes(),
    };
    state.meters.received.increment(1);

    let raw = RawMessage {
        received_at: now_ms(),
        transport: Transport::Http,
        hints,
        remote_addr: Some(remote.to_string()),
        payload: body.to_vec(),
    };
    let mut records = Vec::new();
    let verdict = validate(state, &raw, &mut records);
    let key = records.first().map(Record::key).unwrap_or_else(|| {
        identity::resolve(&raw.hints, &state.decode_config.topic_prefix, None, None)
            .map(|id| id.key())
            .unwrap_or_default()
    });

    // Accepted or not, the body goes to the bus: a refused one becomes a
    // dead letter, and the answer waits until that is durable too.
    let (ack, done) = Ack::new();
    // The friends answer is made of what was stored; only then is it known.
    let for_friends = state.friends.as_ref().map(|_| records.clone());
    // A location says the app is listening: it may be sent its fences.
    let pushing = state.push.as_ref().and_then(|_| {
        records.iter().find_map(|r| match r {
            Record::Position(p) => Some((p.meta.user.clone(), p.meta.device.clone())),
            _ => None,
        })
    });
    let handed = state
        .output
        .hand_off(key.clone(), raw, records, verdict.as_ref().map(|_| ()), ack)
        .await;
    if let Err(e) = handed {
        return overloaded(
            state,
            &format!("cannot take the message now ({e}); retry later"),
        );
    }
    let ack_timeout = Duration::from_millis(state.config.ack_timeout_ms);
    match tokio::time::timeout(ack_timeout, done).await {
        Ok(AckStatus::Delivered) => {}
        Ok(AckStatus::Failed) => {
            return overloaded(state, "the message could not be stored; retry later");
        }
        Err(_) => return overloaded(state, "the store did not confirm in time; retry later"),
    }
    match verdict {
        Ok(()) => {
            let mut answer = match (&state.friends, for_friends) {
                (Some(f), Some(records)) => {
                    f.update(&records);
                    f.response(&key)
                }
                _ => Vec::new(),
            };
            if let (Some(push), Some((user, device))) = (&state.push, pushing) {
                answer.extend(push.command(&user, &device));
            }
            if answer.is_empty() {
                // The common answer, without building a JSON value.
                return empty_list();
            }
            json_response(StatusCode::OK, &serde_json::Value::Array(answer))
        }
        Err(e) => {
            state.meters.rejected(e.kind);
            let status = match e.kind {
                ErrorKind::Forbidden => StatusCode::FORBIDDEN,
                ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                _ => StatusCode::BAD_REQUEST,
            };
            error_response(status, e.kind.code(), e.field.as_deref(), &e.message)
        }
    }
}

fn validate<S>(
    state: &State<S>,
    raw: &RawMessage,
    records: &mut Vec<Record>,
) -> Result<(), DecodeError> {
    let pooled = state.decoders.lock().ok().and_then(|mut p| p.pop());
    let mut decoder =
        pooled.unwrap_or_else(|| Decoder::new(state.decode_config.clone(), state.keys.clone()));
    let result = decoder.decode(raw, records).map(|_| ());
    if let Ok(mut pool) = state.decoders.lock() {
        pool.push(decoder);
    }
    result
}
