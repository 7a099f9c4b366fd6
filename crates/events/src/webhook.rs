//! Webhooks: each event POSTed as JSON, signed.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::StatusCode;
use hyper::header::{CONTENT_TYPE, HeaderValue, USER_AGENT};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use otstream_sink::outbox::Entry;

use crate::EventsError;
use crate::config::WebhookConfig;
use crate::deliver::{Destination, Sent};

/// The header carrying the body's signature.
pub const SIGNATURE_HEADER: &str = "x-otstream-signature";

/// `sha256=<hex>` of HMAC-SHA256 over `body` with `secret`: what a
/// receiver computes and compares (in constant time) to the header.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, body);
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256=");
    for b in tag.as_ref() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// One webhook: a kept-alive HTTP/1.1 client (TLS for https://).
pub struct Webhook {
    client: Client<Https, Full<Bytes>>,
    uri: hyper::Uri,
    secret: Option<Vec<u8>>,
    timeout: Duration,
}

impl Webhook {
    /// The webhook of `config` (its URL checked by validation).
    pub fn new(config: &WebhookConfig) -> Result<Webhook, EventsError> {
        let uri: hyper::Uri = config
            .url
            .parse()
            .map_err(|e| EventsError::Setup(format!("webhook url {}: {e}", config.url)))?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| EventsError::Setup(format!("no TLS root certificates: {e}")))?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Webhook {
            client: Client::builder(TokioExecutor::new()).build(https),
            uri,
            secret: config.secret.as_ref().map(|s| s.as_bytes().to_vec()),
            timeout: Duration::from_millis(config.timeout_ms.max(1)),
        })
    }
}

impl Destination for Webhook {
    async fn send(&mut self, entry: &Entry) -> Result<Sent, String> {
        let mut req = hyper::Request::post(self.uri.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(
                USER_AGENT,
                HeaderValue::from_static(concat!("otstream/", env!("CARGO_PKG_VERSION"))),
            );
        if let Some(secret) = &self.secret {
            req = req.header(SIGNATURE_HEADER, signature(secret, entry.body.as_bytes()));
        }
        let req = req
            .body(Full::new(Bytes::from(entry.body.clone())))
            .map_err(|e| e.to_string())?;
        let answer = async {
            let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            // Read the answer to the end: the connection is kept for the
            // next event only once its body is consumed.
            let _ = resp.into_body().collect().await;
            Ok::<StatusCode, String>(status)
        };
        let status = tokio::time::timeout(self.timeout, answer)
            .await
            .map_err(|_| format!("no answer within {} ms", self.timeout.as_millis()))??;
        Ok(match status.as_u16() {
            200..=299 => Sent::Delivered,
            408 | 429 => return Err(format!("answered {status}")),
            400..=499 => Sent::Refused(format!("answered {status}")),
            _ => return Err(format!("answered {status}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_rfc_4231_hmac_sha256() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
