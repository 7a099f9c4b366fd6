//! The HTTP client of the external geocoder: one kept-alive connection,
//! TLS for https.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::{ACCEPT, HeaderValue, RETRY_AFTER, USER_AGENT};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::AddressError;
use crate::config::AddressesConfig;
use crate::provider::Provider;

/// What one request came to.
#[derive(Debug, PartialEq)]
pub enum Answer {
    /// The service answered: the address, or `None` for nothing there.
    Found(Option<String>),
    /// Try again later (no answer, 429, 5xx), not before `after` if the
    /// service said so.
    Later(String, Option<Duration>),
    /// The service refused this position for good (another 4xx, an
    /// answer that is not its format): remembered as no address.
    Refused(String),
}

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// A geocoding service.
pub struct Remote {
    client: Client<Https, Empty<Bytes>>,
    base: String,
    provider: Provider,
    language: Option<String>,
    user_agent: HeaderValue,
    timeout: Duration,
}

impl Remote {
    /// The client for `config.url`.
    pub fn new(config: &AddressesConfig) -> Result<Remote, AddressError> {
        let url = config
            .url
            .as_deref()
            .ok_or_else(|| AddressError::Setup("geocode.addresses.url is not set".into()))?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| AddressError::Setup(format!("no TLS root certificates: {e}")))?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Remote {
            client: Client::builder(TokioExecutor::new()).build(https),
            base: url.trim_end_matches('/').to_owned(),
            provider: config.provider,
            language: config.language.clone(),
            user_agent: HeaderValue::from_str(&config.user_agent)
                .map_err(|e| AddressError::Setup(format!("geocode.addresses.user_agent: {e}")))?,
            timeout: Duration::from_millis(config.timeout_ms.max(1)),
        })
    }

    /// Asks for the address at `lat`, `lon`.
    pub async fn ask(&self, lat: f64, lon: f64) -> Answer {
        let target = self.provider.target(lat, lon, self.language.as_deref());
        let uri = match format!("{}{target}", self.base).parse::<hyper::Uri>() {
            Ok(u) => u,
            Err(e) => return Answer::Refused(e.to_string()),
        };
        let req = match hyper::Request::get(uri)
            .header(USER_AGENT, self.user_agent.clone())
            .header(ACCEPT, HeaderValue::from_static("application/json"))
            .body(Empty::new())
        {
            Ok(r) => r,
            Err(e) => return Answer::Refused(e.to_string()),
        };
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let after = resp
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, after, body))
        };
        let (status, after, body) = match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => {
                return Answer::Later(
                    format!("no answer within {} ms", self.timeout.as_millis()),
                    None,
                );
            }
            Ok(Err(e)) => return Answer::Later(e, None),
            Ok(Ok(x)) => x,
        };
        match status.as_u16() {
            200..=299 => match self.provider.address(&body) {
                Ok(a) => Answer::Found(a),
                Err(e) => Answer::Refused(format!("unreadable answer: {e}")),
            },
            408 | 429 | 500..=599 => Answer::Later(format!("answered {status}"), after),
            _ => Answer::Refused(format!("answered {status}")),
        }
    }
}
