//! The fleet map and the report of a device's day or week: two HTML
//! pages, their scripts and styles, and Leaflet (from npm,
//! `leaflet@1.9.4`, see assets/vendor/leaflet/), all compiled into the
//! binary, so the page works with no network beyond this server. The
//! tile URL is the only outside address, and it is optional.

use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};
use otstream_http::FallbackBody;
use otstream_model::ConfigError;

use crate::{ApiConfig, body};

/// The policy of every answer that is not the page (JSON, CSV, GPX, the
/// live feed): nothing in it may load or run anything, nor be framed,
/// should a browser render it.
const DATA_POLICY: &str = "default-src 'none'; frame-ancestors 'none'; sandbox";

/// The map page's Content-Security-Policy, built once from the
/// configuration: its own scripts and styles only (no inline script, no
/// eval), data from this server only, images from here and the tile
/// server, never framed. A slip that lets device text become markup still
/// runs nothing.
pub fn page_policy(config: &ApiConfig) -> HeaderValue {
    let img = match tile_source(&config.tile_url) {
        Ok(Some(tiles)) => format!("'self' data: {tiles}"),
        // No tiles, or a template validation refused: none drawn.
        _ => "'self' data:".to_owned(),
    };
    let policy = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src {img}; \
         connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    );
    // tile_source admits only header-safe characters.
    HeaderValue::from_str(&policy).unwrap_or_else(|_| HeaderValue::from_static(DATA_POLICY))
}

/// The CSP source of a `{z}/{x}/{y}` tile URL template: its scheme, host
/// and port, Leaflet's `{s}` subdomain as a `*.` wildcard; `None` for no
/// tiles (an empty template).
pub fn tile_source(template: &str) -> Result<Option<String>, ConfigError> {
    if template.is_empty() {
        return Ok(None);
    }
    let bad =
        |why: &str| ConfigError::new("api.tile_url", format!("api.tile_url {template:?}: {why}"));
    let (scheme, rest) = template
        .split_once("://")
        .filter(|(s, _)| *s == "https" || *s == "http")
        .ok_or_else(|| bad("must start with https:// or http://"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix("{s}.") {
        Some(rest) => format!("*.{rest}"),
        None => authority.to_owned(),
    };
    let plain =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '*' | '[' | ']');
    if host.is_empty() || !host.chars().all(plain) || host[1..].contains('*') {
        return Err(bad(
            "its host must be a plain name (a template only in its first label: {s}.tile.example.org)",
        ));
    }
    Ok(Some(format!("{scheme}://{host}")))
}

/// Sets the headers every answer of the read side carries: `nosniff` (a
/// JSON body is never sniffed into HTML), no referrer (share links and
/// tokens in a URL stay here), never framed, and `policy` for the page or
/// [`DATA_POLICY`] for anything else.
pub fn secure(headers: &mut HeaderMap, page_policy: Option<&HeaderValue>) {
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        page_policy
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static(DATA_POLICY)),
    );
}

const INDEX: &str = include_str!("../assets/index.html");
const REPORT: &str = include_str!("../assets/report.html");
const ASSETS: [(&str, &str, &[u8]); 6] = [
    (
        "/assets/map.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/map.js"),
    ),
    (
        "/assets/map.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/map.css"),
    ),
    (
        "/assets/report.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/report.js"),
    ),
    (
        "/assets/report.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/report.css"),
    ),
    (
        "/assets/leaflet.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/vendor/leaflet/leaflet.js"),
    ),
    (
        "/assets/leaflet.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/vendor/leaflet/leaflet.css"),
    ),
];

/// A bundled asset, if `path` names one.
pub fn asset(path: &str) -> Option<Response<FallbackBody>> {
    let (_, content_type, bytes) = ASSETS.iter().find(|(p, _, _)| *p == path)?;
    let mut r = Response::new(body::full(*bytes));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Assets change only with the binary; an hour keeps reloads cheap.
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    Some(r)
}

/// The map page, with the map's settings in a JSON data block (read by
/// the script, never executed).
pub fn index(config: &ApiConfig) -> Response<FallbackBody> {
    html(INDEX, config)
}

/// The report page (`/report?user&device&day&span=day|week`), with the
/// same settings; it reads its data from the API with the reader's own
/// credentials.
pub fn report(config: &ApiConfig) -> Response<FallbackBody> {
    html(REPORT, config)
}

fn html(page: &str, config: &ApiConfig) -> Response<FallbackBody> {
    let settings = serde_json::json!({
        "tileUrl": config.tile_url,
        "tileAttribution": config.tile_attribution,
    })
    .to_string()
    // A JSON string cannot end the script element it is embedded in.
    .replace("</", "<\\/");
    let html = page.replace("{{SETTINGS}}", &settings);
    let mut r = Response::new(body::full(html));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Whether an answer to `path` is the page (and takes the page's policy).
pub fn is_page(path: &str, status: StatusCode) -> bool {
    status.is_success() && matches!(path, "/" | "/map" | "/share" | "/report")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_sources() {
        assert_eq!(
            tile_source("https://tile.openstreetmap.org/{z}/{x}/{y}.png").unwrap(),
            Some("https://tile.openstreetmap.org".to_owned())
        );
        assert_eq!(
            tile_source("http://{s}.tiles.example:8080/{z}/{x}/{y}.png").unwrap(),
            Some("http://*.tiles.example:8080".to_owned())
        );
        assert_eq!(tile_source("").unwrap(), None);
        for bad in [
            "tile.openstreetmap.org/{z}/{x}/{y}.png",
            "javascript:alert(1)",
            "https://a.{s}.example/{z}",
            "https://x.example; script-src *",
            "https:///{z}",
        ] {
            assert!(tile_source(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_page_policy_admits_only_this_server_and_the_tiles() {
        let config = ApiConfig::default();
        assert_eq!(
            page_policy(&config).to_str().unwrap(),
            "default-src 'none'; script-src 'self'; style-src 'self'; \
             img-src 'self' data: https://tile.openstreetmap.org; connect-src 'self'; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        );
        let none = ApiConfig {
            tile_url: String::new(),
            ..ApiConfig::default()
        };
        assert!(
            page_policy(&none)
                .to_str()
                .unwrap()
                .contains("img-src 'self' data:; connect-src")
        );
    }
}
