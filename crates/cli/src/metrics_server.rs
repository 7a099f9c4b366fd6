//! Prometheus `/metrics`, `/healthz` (the process is up) and `/readyz` (the
//! stages are running and the ingress accepts), on their own address so
//! that probes and scrapes never queue behind phone traffic.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets, seconds: from 0.5 ms (a cached commit) to 10 s (the
/// default ack timeout).
const SECONDS_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Connections the metrics listener serves at once: Prometheus, a probe
/// or two, an operator's curl.
const METRICS_CONNECTIONS: usize = 64;

/// Installs the Prometheus recorder and serves the endpoints on `addr`.
/// Returns the bound address.
pub async fn start(addr: SocketAddr, ready: Arc<AtomicBool>) -> Result<SocketAddr> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
        .context("invalid histogram buckets")?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for metrics"))?;
    let bound = listener.local_addr()?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        // Histograms are drained into the exporter on upkeep.
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    // Scrapes and probes are few; a client that opens more, or holds
    // them idle, is cut off rather than let it starve them.
    let limits = otstream_http::Limits {
        max_connections: METRICS_CONNECTIONS,
        header_timeout: Duration::from_secs(10),
        drain: Duration::from_secs(1),
    };
    tokio::spawn(otstream_http::serve(
        listener,
        limits,
        move |_| {
            let (handle, ready) = (handle.clone(), ready.clone());
            service_fn(move |req| respond(handle.clone(), ready.clone(), req))
        },
        // Served until the process ends: /readyz tells of the stop.
        tokio_util::sync::CancellationToken::new(),
    ));
    Ok(bound)
}

async fn respond(
    handle: PrometheusHandle,
    ready: Arc<AtomicBool>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body) = match req.uri().path() {
        "/metrics" => (StatusCode::OK, handle.render()),
        "/healthz" => (StatusCode::OK, "ok\n".to_owned()),
        "/readyz" if ready.load(Ordering::Acquire) => (StatusCode::OK, "ready\n".to_owned()),
        "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".to_owned()),
        _ => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    Ok(r)
}
