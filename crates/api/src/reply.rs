//! What the API answers with: its errors as JSON, and the helpers every
//! endpoint shares (parameters read, scopes applied, bodies streamed).

use super::*;

/// Why a request gets no data.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error(transparent)]
    BadParam(#[from] BadParam),
    #[error("refused")]
    Refused(Refusal),
    #[error("no such endpoint")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Query(#[from] QueryError),
}

impl ApiError {
    pub(crate) fn response(&self) -> Response<FallbackBody> {
        let (status, kind, field, message) = match self {
            ApiError::BadParam(b) => (
                StatusCode::BAD_REQUEST,
                "invalid_parameter",
                Some(b.field),
                b.message.clone(),
            ),
            ApiError::Refused(r) => (
                StatusCode::from_u16(r.status()).unwrap_or(StatusCode::FORBIDDEN),
                r.kind(),
                None,
                r.message().to_owned(),
            ),
            ApiError::NotFound => (
                StatusCode::NOT_FOUND,
                "not_found",
                None,
                "no such endpoint; see /api/v1/devices, /api/v1/positions, /api/0/locations".into(),
            ),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                None,
                "reads are GET (Recorder's /api/0 also takes POST); OwnTracks payloads are POSTed to the ingest paths".into(),
            ),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", None, m.clone()),
            // The client asked for more than an answer holds: a 400 saying
            // how to ask for less, not the store's failure.
            ApiError::Query(QueryError::TooLarge(m)) => (
                StatusCode::BAD_REQUEST,
                "too_large",
                None,
                m.clone(),
            ),
            ApiError::Query(e) => {
                tracing::warn!(error = %e, "read failed");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    None,
                    format!("the store could not answer: {e}"),
                )
            }
        };
        let body = json!({"error": {"kind": kind, "field": field, "message": message}});
        let mut r = Response::new(body::full(body.to_string()));
        *r.status_mut() = status;
        set(&mut r, header::CONTENT_TYPE, "application/json");
        match self {
            ApiError::Refused(Refusal::Unauthorized(_)) => {
                set(&mut r, header::WWW_AUTHENTICATE, "Basic realm=\"otstream\"");
            }
            ApiError::MethodNotAllowed => set(&mut r, header::ALLOW, "GET, HEAD"),
            ApiError::Unavailable(_)
            | ApiError::Query(_)
            | ApiError::Refused(Refusal::Limited | Refusal::Busy) => {
                set(&mut r, header::RETRY_AFTER, "1");
            }
            _ => {}
        }
        r
    }
}

pub(crate) fn set(r: &mut Response<FallbackBody>, name: header::HeaderName, value: &'static str) {
    r.headers_mut()
        .insert(name, HeaderValue::from_static(value));
}

pub(crate) fn ok_json(bytes: Vec<u8>) -> Response<FallbackBody> {
    let mut r = Response::new(body::full(bytes));
    set(&mut r, header::CONTENT_TYPE, "application/json");
    set(&mut r, header::CACHE_CONTROL, "no-store");
    r
}

pub(crate) async fn streamed<T, E>(
    rows: crate::read::RowStream<T>,
    encoder: E,
) -> Result<Response<FallbackBody>, ApiError>
where
    T: Send + Sync + 'static,
    E: crate::read::format::Encoder<T> + Send + 'static,
{
    let content_type = encoder.content_type();
    let mut r = Response::new(body::stream(rows, encoder).await?);
    set(&mut r, header::CONTENT_TYPE, content_type);
    set(&mut r, header::CACHE_CONTROL, "no-store");
    Ok(r)
}

/// The `format` of derived rows: `json` (the default) or `geojson`.
pub(crate) fn event_format(params: &Params) -> Result<EventFormat, BadParam> {
    match params.get("format") {
        None => Ok(EventFormat::Json),
        Some(f) => EventFormat::parse(f).ok_or_else(|| {
            BadParam::new(
                "format",
                format!(
                    "{f:?} is not one of json, geojson (and parquet for trips, stops and visits)"
                ),
            )
        }),
    }
}

/// Recorder's `fields=a,b,c`.
pub(crate) fn fields(params: &Params) -> Option<Vec<String>> {
    params
        .get("fields")
        .map(|f| f.split(',').map(|s| s.trim().to_owned()).collect())
}

/// `user` and `device` as asked, checked against what the client may read.
pub(crate) fn scope<'a>(
    params: &'a Params,
    visible: &Visible,
) -> Result<(Option<&'a str>, Option<&'a str>), ApiError> {
    let user = params.get("user");
    let device = params.get("device");
    match (user, device) {
        (None, Some(_)) => Err(BadParam::new("user", "device is given without its user").into()),
        (Some(u), Some(d)) if !visible.allows(u, d) => Err(ApiError::Refused(Refusal::Forbidden(
            "that device is not yours to read",
        ))),
        (Some(u), None) if !visible.allows_user(u) => Err(ApiError::Refused(Refusal::Forbidden(
            "that user's devices are not yours to read",
        ))),
        _ => Ok((user, device)),
    }
}

/// The read a request asks for, within what `grant` may read: its
/// devices, and no history before it may see it.
pub(crate) fn query(
    params: &Params,
    grant: &Grant,
    now: i64,
    span_s: i64,
) -> Result<Query, ApiError> {
    let visible = grant.visible.clone();
    let (user, device) = scope(params, &visible)?;
    let (from, to) = params.window(now, span_s)?;
    Ok(Query {
        user: user.map(str::to_owned),
        device: device.map(str::to_owned),
        from: from.max(grant.history_since.unwrap_or(i64::MAX)),
        to,
        limit: params.count("limit")?,
        visible,
        place: None,
    })
}

/// A form-encoded body (Recorder's API takes its parameters as POST too),
/// at most 64 KiB.
pub(crate) async fn read_form(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    use http_body_util::BodyExt;
    let limited = http_body_util::Limited::new(req.into_body(), 64 * 1024);
    match tokio::time::timeout(Duration::from_secs(30), limited.collect()).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        _ => Err(BadParam::new("body", "the form body is too large, malformed or too slow").into()),
    }
}

pub(crate) fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A bounded label for metrics: the endpoint, never the raw path.
pub(crate) fn endpoint_label(path: &str) -> &'static str {
    match Endpoint::of(path) {
        Some(e) => e.label(),
        None if path.starts_with("/assets/") => "assets",
        None => "other",
    }
}
