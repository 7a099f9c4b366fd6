//! The fleet map: one HTML page, its script and style, and Leaflet (from
//! npm, `leaflet@1.9.4`, see assets/vendor/leaflet/), all compiled into
//! the binary, so the page works with no network beyond this server. The
//! tile URL is the only outside address, and it is optional.

use hyper::Response;
use hyper::header::{self, HeaderValue};
use otstream_ingress::FallbackBody;

use crate::{ApiConfig, body};

const INDEX: &str = include_str!("../assets/index.html");
const ASSETS: [(&str, &str, &[u8]); 4] = [
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

/// The page, with the map's settings in a JSON data block (read by the
/// script, never executed).
pub fn index(config: &ApiConfig) -> Response<FallbackBody> {
    let settings = serde_json::json!({
        "tileUrl": config.tile_url,
        "tileAttribution": config.tile_attribution,
    })
    .to_string()
    // A JSON string cannot end the script element it is embedded in.
    .replace("</", "<\\/");
    let html = INDEX.replace("{{SETTINGS}}", &settings);
    let mut r = Response::new(body::full(html));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
