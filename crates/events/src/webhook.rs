//! Webhooks: each event POSTed as JSON, signed.

use std::time::Duration;

use crate::outbox::Entry;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::StatusCode;
use hyper::header::{CONTENT_TYPE, HeaderValue, USER_AGENT};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::EventsError;
use crate::config::WebhookConfig;
use crate::deliver::{Destination, Sent};

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "x-otstream-signature";
/// The header carrying the time the request was signed, UNIX seconds.
pub const TIMESTAMP_HEADER: &str = "x-otstream-timestamp";
/// How far a receiver should accept a timestamp from its own clock, s:
/// what [`verify`] allows. A captured request replayed later than this is
/// refused.
pub const TOLERANCE_S: i64 = 300;

/// `sha256=<hex>` of HMAC-SHA256, with `secret`, over the timestamp (UNIX
/// seconds, in decimal), a `.`, and the body: what a receiver computes and
/// compares (in constant time) to the header, after checking the
/// timestamp is within [`TOLERANCE_S`] of its clock. Signing the time
/// with the body is what makes a captured request useless later.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256=");
    for b in tag.as_ref() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A receiver's check of a delivery: the timestamp within [`TOLERANCE_S`]
/// of `now` (UNIX s) and the signature that of the timestamp and body,
/// compared in constant time.
pub fn verify(
    secret: &[u8],
    timestamp: &str,
    signature_header: &str,
    body: &[u8],
    now: i64,
) -> bool {
    let Ok(ts) = timestamp.trim().parse::<i64>() else {
        return false;
    };
    if (now - ts).abs() > TOLERANCE_S {
        return false;
    }
    let Some(tag) = signature_header
        .trim()
        .strip_prefix("sha256=")
        .filter(|h| h.len() == 64)
        .and_then(|h| {
            (0..32)
                .map(|i| u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok())
                .collect::<Option<Vec<u8>>>()
        })
    else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut message = format!("{ts}.").into_bytes();
    message.extend_from_slice(body);
    ring::hmac::verify(&key, &message, &tag).is_ok()
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
            // Signed at each attempt: a retry carries a time of its own.
            let now = otstream_model::raw::now_ms() / 1000;
            req = req.header(TIMESTAMP_HEADER, now).header(
                SIGNATURE_HEADER,
                signature(secret, now, entry.body.as_bytes()),
            );
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
    fn signature_covers_the_timestamp_and_the_body() {
        // HMAC-SHA256("s3cret", "1700000000.{\"kind\":\"enter\"}"), by
        // Python's hmac module: what a receiver in any language computes.
        assert_eq!(
            signature(b"s3cret", 1_700_000_000, b"{\"kind\":\"enter\"}"),
            "sha256=7178fef20cbc5732e1ffc79ede9c0f2fa28f4042d1020e94efd5ebff679fc6ef"
        );
        let ts = 1_700_000_000;
        let sig = signature(b"s3cret", ts, b"{\"kind\":\"enter\"}");
        let now = ts + 10;
        assert!(verify(
            b"s3cret",
            "1700000000",
            &sig,
            b"{\"kind\":\"enter\"}",
            now
        ));
        // Another body, another time, another key, a replay later.
        assert!(!verify(
            b"s3cret",
            "1700000000",
            &sig,
            b"{\"kind\":\"leave\"}",
            now
        ));
        assert!(!verify(
            b"s3cret",
            "1700000001",
            &sig,
            b"{\"kind\":\"enter\"}",
            now
        ));
        assert!(!verify(
            b"other",
            "1700000000",
            &sig,
            b"{\"kind\":\"enter\"}",
            now
        ));
        assert!(!verify(
            b"s3cret",
            "1700000000",
            &sig,
            b"{\"kind\":\"enter\"}",
            ts + TOLERANCE_S + 1
        ));
        assert!(!verify(
            b"s3cret",
            "soon",
            &sig,
            b"{\"kind\":\"enter\"}",
            now
        ));
    }
}
