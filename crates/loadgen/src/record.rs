//! Capturing traffic into a recording.
//!
//! Three sources, one output: an HTTP endpoint that answers like an
//! OwnTracks server (200 with `[]`) and keeps every POST with its identity
//! headers; an MQTT subscriber; and an export of a time range of the Kafka
//! `raw` topic, which already holds every message otstream acknowledged.
//! Each writes the recording format, one line per message, in the order
//! received.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use otstream_bus::kafka::KafkaConfig;
use otstream_model::raw::{header, now_ms};
use otstream_model::{BrokerUrl, IdentityHints, RawMessage, RecordingLine, Transport};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Where the traffic comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Listen for OwnTracks HTTP POSTs (any path) on this address.
    Http {
        /// The address to listen on.
        listen: SocketAddr,
    },
    /// Subscribe at QoS 1 to these filters on a broker.
    Mqtt {
        /// `mqtt://[user:pass@]host:port`.
        url: String,
        /// Topic filters, e.g. `owntracks/#`.
        filters: Vec<String>,
        /// The client id.
        client_id: String,
    },
    /// Export the `raw` topic's messages received in `[from_ms, to_ms)`.
    Kafka {
        /// Brokers and topic names.
        config: Box<KafkaConfig>,
        /// Start, milliseconds since the UNIX epoch (inclusive).
        from_ms: Option<i64>,
        /// End, milliseconds since the UNIX epoch (exclusive).
        to_ms: Option<i64>,
    },
}

/// Why recording stopped short.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The listener could not be bound.
    #[error("listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    /// The broker URL is unusable.
    #[error("broker: {0}")]
    Broker(String),
    /// Reading the Kafka topic failed.
    #[error("kafka: {0}")]
    Kafka(String),
    /// Writing the recording failed.
    #[error("writing the recording: {0}")]
    Write(std::io::Error),
}

/// Records from `source` into `out` until `shutdown` is cancelled, `limit`
/// messages are written, or (Kafka) the range is exported. Returns how many
/// messages were written. `ready` is told what is being recorded once it
/// is: the endpoint's URL once it listens, the filters once subscribed.
pub async fn record(
    source: Source,
    out: Box<dyn Write + Send>,
    limit: Option<u64>,
    ready: Option<tokio::sync::oneshot::Sender<String>>,
    shutdown: CancellationToken,
) -> Result<u64, RecordError> {
    let (tx, rx) = mpsc::channel::<RawMessage>(4096);
    let stop = shutdown.child_token();
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || write_lines(rx, out, limit, &stop))
    };
    let read = match source {
        Source::Http { listen } => http(listen, tx, ready, stop).await,
        Source::Mqtt {
            url,
            filters,
            client_id,
        } => mqtt(&url, &filters, client_id, tx, ready, stop).await,
        Source::Kafka {
            config,
            from_ms,
            to_ms,
        } => tokio::task::spawn_blocking(move || kafka(&config, from_ms, to_ms, &tx, &stop))
            .await
            .map_err(|e| RecordError::Kafka(e.to_string()))
            .and_then(|r| r),
    };
    let written = writer
        .join()
        .map_err(|_| RecordError::Write(std::io::Error::other("writer thread panicked")))?;
    read?;
    written
}

/// Writes `m` as one line of the recording format.
pub fn write_recording_line(out: &mut impl Write, m: &RawMessage) -> std::io::Result<()> {
    out.write_all(RecordingLine::from_message(m).to_line().as_bytes())?;
    out.write_all(b"\n")
}

/// The writer: one line per message, flushed at the end. Cancels `stop`
/// at the limit so the source ends too.
fn write_lines(
    mut rx: mpsc::Receiver<RawMessage>,
    out: Box<dyn Write + Send>,
    limit: Option<u64>,
    stop: &CancellationToken,
) -> Result<u64, RecordError> {
    let mut out = std::io::BufWriter::new(out);
    let mut n = 0u64;
    while let Some(m) = rx.blocking_recv() {
        if limit.is_some_and(|l| n >= l) {
            break;
        }
        write_recording_line(&mut out, &m).map_err(RecordError::Write)?;
        n += 1;
        if limit.is_some_and(|l| n >= l) {
            stop.cancel();
        }
    }
    out.flush().map_err(RecordError::Write)?;
    Ok(n)
}

async fn http(
    listen: SocketAddr,
    tx: mpsc::Sender<RawMessage>,
    ready: Option<tokio::sync::oneshot::Sender<String>>,
    stop: CancellationToken,
) -> Result<(), RecordError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| RecordError::Listen(listen, e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| RecordError::Listen(listen, e))?;
    if let Some(r) = ready {
        let _ = r.send(format!("POSTs to http://{bound}/"));
    }
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    continue;
                }
            },
        };
        let tx = tx.clone();
        let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let tx = tx.clone();
            async move { Ok::<_, Infallible>(keep(req, peer, &tx).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    // Requests in progress finish; the writer ends when the last sender goes.
    drop(tx);
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
    Ok(())
}

async fn keep(
    req: Request<hyper::body::Incoming>,
    peer: SocketAddr,
    tx: &mpsc::Sender<RawMessage>,
) -> Response<Full<Bytes>> {
    let answer = |status: u16, body: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        r
    };
    if req.method() != hyper::Method::POST {
        return answer(405, "{\"error\":\"POST OwnTracks payloads here\"}");
    }
    let h = req.headers();
    let get = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let hints = IdentityHints {
        mqtt_topic: None,
        x_limit_u: get(header::X_LIMIT_U),
        x_limit_d: get(header::X_LIMIT_D),
        // Who the sender claims to be; the recorder checks no password.
        auth_user: get("authorization")
            .as_deref()
            .and_then(otstream_model::identity::basic_credentials)
            .map(|(user, _)| user),
    };
    let payload = match req.into_body().collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(_) => return answer(400, "{\"error\":\"body not read\"}"),
    };
    let msg = RawMessage {
        received_at: now_ms(),
        transport: Transport::Http,
        hints,
        remote_addr: Some(peer.to_string()),
        payload,
    };
    match tx.send(msg).await {
        Ok(()) => answer(200, "[]"),
        Err(_) => answer(503, "{\"error\":\"recorder is stopping\"}"),
    }
}

async fn mqtt(
    url: &str,
    filters: &[String],
    client_id: String,
    tx: mpsc::Sender<RawMessage>,
    mut ready: Option<tokio::sync::oneshot::Sender<String>>,
    stop: CancellationToken,
) -> Result<(), RecordError> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let broker = BrokerUrl::parse(url).map_err(RecordError::Broker)?;
    if broker.tls {
        return Err(RecordError::Broker(
            "the recorder speaks plain mqtt:// only".into(),
        ));
    }
    let mut opts = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    opts.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20);
    if let Some(u) = &broker.username {
        opts.set_credentials(u, broker.password.clone().unwrap_or_default());
    }
    let (client, mut events) = AsyncClient::new(opts, 64);
    loop {
        let ev = tokio::select! {
            _ = stop.cancelled() => break,
            ev = events.poll() => ev,
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                // A clean session each time: subscribe on every connect.
                for f in filters {
                    client
                        .subscribe(f.as_str(), QoS::AtLeastOnce)
                        .await
                        .map_err(|e| RecordError::Broker(e.to_string()))?;
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(format!("{} on {url}", filters.join(", ")));
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let msg = RawMessage {
                    received_at: now_ms(),
                    transport: Transport::Mqtt,
                    hints: IdentityHints {
                        mqtt_topic: Some(p.topic.clone()),
                        ..Default::default()
                    },
                    remote_addr: None,
                    payload: p.payload.to_vec(),
                };
                if tx.send(msg).await.is_err() {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("mqtt: {e}; reconnecting");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    let _ = client.try_disconnect();
    Ok(())
}

fn kafka(
    config: &KafkaConfig,
    from_ms: Option<i64>,
    to_ms: Option<i64>,
    tx: &mpsc::Sender<RawMessage>,
    stop: &CancellationToken,
) -> Result<(), RecordError> {
    let mut messages = Vec::new();
    otstream_bus::kafka::read_since::<RawMessage>(
        config,
        otstream_model::topics::RAW,
        from_ms,
        Duration::from_secs(600),
        |m| {
            let at = m.value.received_at;
            if from_ms.is_none_or(|f| at >= f) && to_ms.is_none_or(|t| at < t) {
                messages.push(m.value);
            }
        },
    )
    .map_err(|e| RecordError::Kafka(e.to_string()))?;
    // Partitions interleave; the recording is in the order received. The
    // sort is stable, so one device (one partition) keeps its order.
    messages.sort_by_key(|m| m.received_at);
    for m in messages {
        if stop.is_cancelled() || tx.blocking_send(m).is_err() {
            break;
        }
    }
    Ok(())
}
