//! Cross-origin reads (CORS) for pages hosted elsewhere, such as
//! OwnTracks' web frontend on its own origin: an allow-list of origins
//! (`api.cors_origins`), off by default.
//!
//! An allowed origin's requests get `Access-Control-Allow-Origin` (its own
//! origin, with credentials allowed, so the browser may send Basic
//! credentials; or `*` without them), and its preflights a 204 naming the
//! methods and headers the API reads. Any other origin gets no allow
//! header at all: the browser keeps the answer from the page. `*` is
//! refused by configuration where reads are trusted by address rather
//! than credentials (see the cli's check), or any web page a local user
//! opened could read every device.

use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};
use otstream_http::FallbackBody;
use otstream_model::ConfigError;

/// Headers a cross-origin page may send: credentials and Recorder's
/// `X-Limit-*` scope headers.
const ALLOW_HEADERS: &str =
    "Authorization, Content-Type, X-Limit-User, X-Limit-Device, X-Limit-From, X-Limit-To";

/// The allow-list.
#[derive(Debug, Clone, Default)]
pub struct Cors {
    any: bool,
    origins: Vec<String>,
}

impl Cors {
    /// From `api.cors_origins`: `*`, or origins `scheme://host[:port]`.
    pub fn new(origins: &[String]) -> Result<Self, ConfigError> {
        let mut cors = Cors::default();
        for o in origins {
            if o == "*" {
                cors.any = true;
                continue;
            }
            let rest = o
                .strip_prefix("https://")
                .or_else(|| o.strip_prefix("http://"));
            match rest {
                Some(host) if !host.is_empty() && !host.contains(['/', '?', '#', ' ']) => {
                    cors.origins.push(o.to_ascii_lowercase());
                }
                _ => {
                    return Err(ConfigError::new(
                        "api.cors_origins",
                        format!(
                            "{o:?} is not an origin: give scheme://host[:port] (https://frontend.example.com), no path, or \"*\""
                        ),
                    ));
                }
            }
        }
        Ok(cors)
    }

    /// Whether `*` is on the list.
    pub fn allows_any(&self) -> bool {
        self.any
    }

    /// Whether a page of `origin` may read.
    pub fn allows(&self, origin: &str) -> bool {
        self.any || self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin))
    }

    /// Whether a WebSocket upgrade with `origin` (the request's `Origin`
    /// header, if any) may proceed: a client that is not a browser sends
    /// none; a page of the API's own origin (`host`) or of one listed by
    /// name may; any other page may not. `*` does not count here: browsers
    /// apply no CORS to WebSockets and send saved Basic credentials with
    /// the handshake, so `*` would let any page a signed-in user opens read
    /// what that user reads.
    pub fn allows_socket(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        let same = host.is_some_and(|h| {
            ["http://", "https://"].iter().any(|s| {
                origin
                    .strip_prefix(s)
                    .is_some_and(|o| o.eq_ignore_ascii_case(h))
            })
        });
        same || self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin))
    }

    /// Adds the allow headers for `origin` to an answer, if it is allowed.
    pub fn decorate(&self, origin: Option<&str>, headers: &mut HeaderMap) {
        let Some(origin) = origin.filter(|o| self.allows(o)) else {
            return;
        };
        headers.append("vary", HeaderValue::from_static("Origin"));
        if self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin)) {
            if let Ok(v) = HeaderValue::from_str(origin) {
                headers.insert("access-control-allow-origin", v);
                headers.insert(
                    "access-control-allow-credentials",
                    HeaderValue::from_static("true"),
                );
            }
        } else {
            headers.insert("access-control-allow-origin", HeaderValue::from_static("*"));
        }
    }

    /// The answer to a preflight (`OPTIONS` with an `Origin`): 204 with
    /// what may be sent when the origin is allowed, else 403 without any
    /// allow header.
    pub fn preflight(&self, origin: Option<&str>) -> Response<FallbackBody> {
        let allowed = origin.is_some_and(|o| self.allows(o));
        let mut r = Response::new(crate::body::full(bytes::Bytes::new()));
        *r.status_mut() = if allowed {
            StatusCode::NO_CONTENT
        } else {
            StatusCode::FORBIDDEN
        };
        if allowed {
            let h = r.headers_mut();
            h.insert(
                "access-control-allow-methods",
                HeaderValue::from_static("GET, HEAD, POST, OPTIONS"),
            );
            h.insert(
                "access-control-allow-headers",
                HeaderValue::from_static(ALLOW_HEADERS),
            );
            h.insert("access-control-max-age", HeaderValue::from_static("600"));
            self.decorate(origin, h);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_origins_are_allowed_and_a_socket_from_elsewhere_is_not() {
        let cors = Cors::new(&["https://frontend.example.com".to_owned()]).unwrap();
        assert!(cors.allows("https://frontend.example.com"));
        assert!(cors.allows("HTTPS://Frontend.Example.com"));
        assert!(!cors.allows("https://evil.example"));
        assert!(!cors.allows("https://frontend.example.com.evil.example"));
        let mut h = HeaderMap::new();
        cors.decorate(Some("https://evil.example"), &mut h);
        assert!(h.is_empty());
        cors.decorate(Some("https://frontend.example.com"), &mut h);
        assert_eq!(
            h["access-control-allow-origin"],
            "https://frontend.example.com"
        );
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(cors.preflight(Some("https://evil.example")).status(), 403);
        assert_eq!(cors.preflight(None).status(), 403);
        let ok = cors.preflight(Some("https://frontend.example.com"));
        assert_eq!(ok.status(), 204);
        assert_eq!(ok.headers()["access-control-max-age"], "600");
        // Sockets: no Origin (not a browser), the API's own, a listed one.
        assert!(cors.allows_socket(None, Some("fleet.example.com")));
        assert!(cors.allows_socket(Some("https://fleet.example.com"), Some("fleet.example.com")));
        assert!(cors.allows_socket(Some("https://frontend.example.com"), Some("x")));
        assert!(!cors.allows_socket(Some("https://evil.example"), Some("fleet.example.com")));
        assert!(!cors.allows_socket(Some("https://evil.example"), None));
    }

    #[test]
    fn any_origin_is_star_without_credentials_and_paths_are_not_origins() {
        let cors = Cors::new(&["*".to_owned()]).unwrap();
        assert!(cors.allows_any() && cors.allows("https://anything.example"));
        // Never a socket: the browser would send the user's credentials.
        assert!(!cors.allows_socket(Some("https://anything.example"), Some("fleet.example.com")));
        let mut h = HeaderMap::new();
        cors.decorate(Some("https://anything.example"), &mut h);
        assert_eq!(h["access-control-allow-origin"], "*");
        assert!(h.get("access-control-allow-credentials").is_none());
        for bad in [
            "frontend.example.com",
            "https://x.example/app",
            "ftp://x",
            "https://",
        ] {
            let e = Cors::new(&[bad.to_owned()]).unwrap_err();
            assert_eq!(e.key, "api.cors_origins", "{bad}");
        }
    }
}
