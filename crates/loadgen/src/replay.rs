//! Sending messages to a server and measuring its answers.
//!
//! One thread reads the input, rewrites each message, gives it its due time
//! and its connection (the one that carries its device, so a device's
//! messages stay in order), and passes them on in chunks. A dispatcher task
//! hands each to its connection when it is due: every message due within
//! the next millisecond at once, after one timer wait, rather than a sleep
//! and a cross-thread wake-up per message (at 10,000 msgs/s those were
//! most of the replayer's CPU). Each connection is a task with one
//! keep-alive HTTP/1.1 connection, or one MQTT client publishing at QoS 1.
//! Latency runs to the answer (a 2xx status or a PUBACK) from the message's
//! due time, or from its hand-over if that came first (open loop), or from
//! its send time (closed loop).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use indicatif::{ProgressBar, ProgressStyle};
use otstream_model::{BrokerUrl, RawMessage};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::pacing::{Pacing, Schedule};
use crate::report::{Latencies, Report};
use crate::rewrite::Rewrite;

/// Messages waiting per connection.
const QUEUE_PER_CONNECTION: usize = 4096;

/// Messages the reading thread passes to the dispatcher at a time: one
/// wake-up between the two per chunk, not per message.
const CHUNK: usize = 256;

/// How early the dispatcher may hand a message over: one timer wait (the
/// timer's tick is a millisecond) covers everything due this soon.
const EARLY: Duration = Duration::from_millis(1);

/// Where a replay sends.
#[derive(Debug, Clone)]
pub enum Target {
    /// POSTs to an OwnTracks HTTP endpoint (`http://host:port/path`).
    Http {
        /// The URL.
        url: String,
        /// Basic-auth `user:password`, if the server wants it.
        basic_auth: Option<String>,
    },
    /// PUBLISHes at QoS 1 to a broker (`mqtt://[user:pass@]host:port`).
    Mqtt {
        /// The broker URL.
        url: String,
        /// Client ids are this plus the connection's number.
        client_id: String,
    },
}

/// What to send and how.
#[derive(Debug, Clone)]
pub struct ReplayConfig {
    /// Where to.
    pub target: Target,
    /// How fast.
    pub pacing: Pacing,
    /// Connections (each one MQTT client or one HTTP keep-alive connection).
    pub connections: usize,
    /// Changes to the recorded messages.
    pub rewrite: Rewrite,
    /// Resend a message answered 503 or lost with its connection, after the
    /// server's Retry-After (or a short pause), as the apps do; its latency
    /// then runs to the answer that finally acknowledged it.
    pub retry: bool,
    /// Keep every latency sample (microseconds) for the caller.
    pub keep_samples: bool,
    /// Draw a progress bar on stderr (when it is a terminal) for this many
    /// recorded messages.
    pub progress: Option<u64>,
}

/// Why a replay could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The target URL is not usable.
    #[error("bad target: {0}")]
    Target(String),
    /// The input could not be read.
    #[error("input: {0}")]
    Input(String),
}

/// The report, and the raw latency samples when asked for.
#[derive(Debug)]
pub struct Outcome {
    /// The report.
    pub report: Report,
    /// Latencies in microseconds, in no particular order.
    pub samples: Vec<u64>,
}

/// One message on its way to a connection.
struct Job {
    msg: RawMessage,
    /// When its latency starts: when it was due, or handed over if that was
    /// earlier; `None` in closed loop.
    due: Option<Instant>,
}

/// A job and the connection that carries its device.
type Routed = (usize, Job);

/// What one connection measured.
#[derive(Default)]
struct Tally {
    outcomes: BTreeMap<String, u64>,
    latencies: Latencies,
    samples: Vec<u64>,
    last_answer: Option<Instant>,
}

impl Tally {
    fn answer(&mut self, outcome: &str, since: Instant, keep: bool) {
        let now = Instant::now();
        let latency = now.saturating_duration_since(since);
        self.latencies.record(latency);
        if keep {
            self.samples
                .push(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
        }
        *self.outcomes.entry(outcome.to_owned()).or_default() += 1;
        self.last_answer = Some(now);
    }

    fn merge(&mut self, other: Tally) {
        for (k, v) in other.outcomes {
            *self.outcomes.entry(k).or_default() += v;
        }
        self.latencies.merge(&other.latencies);
        self.samples.extend(other.samples);
        self.last_answer = self.last_answer.max(other.last_answer);
    }
}

/// Sends every message of `input` to the target as `config` says and
/// reports how the target answered. Ends when the input is exhausted and
/// every message sent is answered, or when `shutdown` is cancelled (the
/// messages already sent are still awaited).
pub async fn replay<I>(
    config: ReplayConfig,
    input: I,
    shutdown: CancellationToken,
) -> Result<Outcome, ReplayError>
where
    I: Iterator<Item = Result<RawMessage, String>> + Send + 'static,
{
    let pacing = config.pacing.validate().map_err(ReplayError::Target)?;
    let connections = config.connections.max(1);
    let progress = match config.progress {
        Some(n) => {
            let bar = ProgressBar::new(n.saturating_mul(u64::from(config.rewrite.devices.max(1))));
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        }
        None => ProgressBar::hidden(),
    };
    // Parsed once for every connection; a bad URL stops here.
    let target = match &config.target {
        Target::Http { url, basic_auth } => {
            Parsed::Http(HttpTarget::new(url, basic_auth.as_deref())?)
        }
        Target::Mqtt { url, client_id } => {
            let broker = BrokerUrl::parse(url).map_err(ReplayError::Target)?;
            if broker.tls {
                return Err(ReplayError::Target(
                    "replay speaks plain mqtt:// only; put a TLS terminator in front".into(),
                ));
            }
            Parsed::Mqtt(broker, client_id)
        }
    };
    let skipped = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::with_capacity(connections);
    let mut workers = Vec::with_capacity(connections);
    for i in 0..connections {
        // Deep enough that one connection waiting on a slow answer does
        // not hold the dispatcher (and so every other connection) back for long;
        // bounded so that memory stays flat whatever the input's size.
        let (tx, rx) = mpsc::channel::<Job>(QUEUE_PER_CONNECTION);
        senders.push(tx);
        let worker = Worker {
            rx,
            keep: config.keep_samples,
            retry: config.retry,
            rewrite: config.rewrite.clone(),
            progress: progress.clone(),
            skipped: skipped.clone(),
            stop: shutdown.clone(),
        };
        workers.push(match &target {
            Parsed::Http(http) => tokio::spawn(worker.http(http.clone())),
            Parsed::Mqtt(broker, client_id) => {
                tokio::spawn(worker.mqtt(broker.clone(), format!("{client_id}-{i}")))
            }
        });
    }
    let started = Instant::now();
    let (chunks, chunks_rx) = mpsc::channel::<Vec<Routed>>(4);
    let reader = {
        let rewrite = config.rewrite.clone();
        let stop = shutdown.clone();
        let skipped = skipped.clone();
        std::thread::Builder::new()
            .name("replay-reader".into())
            .spawn(move || {
                read(
                    input,
                    pacing,
                    rewrite,
                    connections,
                    started,
                    &stop,
                    &skipped,
                    &chunks,
                )
            })
            .map_err(|e| ReplayError::Input(e.to_string()))?
    };
    let dispatcher = tokio::spawn(dispatch(chunks_rx, senders, shutdown.clone()));
    let mut total = Tally::default();
    for w in workers {
        if let Ok(t) = w.await {
            total.merge(t);
        }
    }
    progress.finish_and_clear();
    reader
        .join()
        .map_err(|_| ReplayError::Input("the reading thread panicked".into()))?;
    dispatcher
        .await
        .map_err(|e| ReplayError::Input(format!("the dispatcher failed: {e}")))?
        .map_err(ReplayError::Input)?;
    let elapsed = total
        .last_answer
        .map_or(Duration::ZERO, |t| t.saturating_duration_since(started));
    let target = match &config.target {
        Target::Http { url, .. } | Target::Mqtt { url, .. } => url.clone(),
    };
    Ok(Outcome {
        report: Report::new(
            target,
            pacing.to_string(),
            total.outcomes,
            skipped.load(Ordering::Relaxed),
            elapsed,
            &total.latencies,
        ),
        samples: total.samples,
    })
}

/// The reading thread: rewriting, due times, routing by device; the
/// messages go to the dispatcher in chunks. Ends at the input's end, on
/// `stop`, or when the dispatcher has gone (it says why).
#[allow(clippy::too_many_arguments)]
fn read<I>(
    input: I,
    pacing: Pacing,
    rewrite: Rewrite,
    connections: usize,
    started: Instant,
    stop: &CancellationToken,
    skipped: &AtomicU64,
    out: &mpsc::Sender<Vec<Routed>>,
) where
    I: Iterator<Item = Result<RawMessage, String>>,
{
    let mut schedule = Schedule::new(pacing);
    // Each device goes to the next connection in turn when first seen and
    // stays there, so its messages keep their order and every connection
    // carries as many devices as the others.
    let mut connection_of: HashMap<u64, usize> = HashMap::new();
    let mut chunk = Vec::with_capacity(CHUNK);
    for msg in input {
        if stop.is_cancelled() {
            return;
        }
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                // A line that is not a message is the input's fault, not
                // the server's: say which and go on.
                tracing::warn!("skipped: {e}");
                skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let received_at = msg.received_at;
        for copy in rewrite.expand(msg) {
            let due = schedule.next(received_at).map(|d| started + d);
            let next = connection_of.len() % connections;
            let conn = *connection_of.entry(rewrite.route(&copy)).or_insert(next);
            chunk.push((conn, Job { msg: copy, due }));
            // A full chunk goes; so does any message when the dispatcher
            // has taken everything and waits (a slow input, stdin from a
            // live `record`, is then passed on message by message).
            if chunk.len() == CHUNK || out.capacity() == out.max_capacity() {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
                if out.blocking_send(full).is_err() {
                    return;
                }
            }
        }
    }
    if !chunk.is_empty() {
        let _ = out.blocking_send(chunk);
    }
}

/// The dispatcher: hands each message to its connection when it is due (up
/// to [`EARLY`] before), its latency then starting at the earlier of the
/// two. A connection that ended early ends the replay with an error.
async fn dispatch(
    mut chunks: mpsc::Receiver<Vec<Routed>>,
    senders: Vec<mpsc::Sender<Job>>,
    stop: CancellationToken,
) -> Result<(), String> {
    while let Some(chunk) = chunks.recv().await {
        for (conn, mut job) in chunk {
            if let Some(due) = job.due {
                let mut now = Instant::now();
                if due > now + EARLY {
                    tokio::select! {
                        () = stop.cancelled() => return Ok(()),
                        () = tokio::time::sleep_until((due - EARLY).into()) => {}
                    }
                    now = Instant::now();
                }
                job.due = Some(due.min(now));
            }
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                sent = senders[conn].send(job) => if sent.is_err() {
                    return Err("a connection ended early".into());
                },
            }
        }
    }
    Ok(())
}

/// The target, parsed.
enum Parsed<'a> {
    Http(HttpTarget),
    /// The broker and the client id prefix.
    Mqtt(BrokerUrl, &'a str),
}

/// A parsed HTTP target.
#[derive(Clone)]
struct HttpTarget {
    uri: hyper::Uri,
    host: String,
    port: u16,
    authorization: Option<String>,
}

impl HttpTarget {
    fn new(url: &str, basic_auth: Option<&str>) -> Result<Self, ReplayError> {
        use base64::Engine as _;
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| ReplayError::Target(format!("{url:?}: {e}")))?;
        if uri.scheme_str() != Some("http") {
            return Err(ReplayError::Target(format!(
                "{url:?}: replay speaks plain http:// only"
            )));
        }
        let host = uri
            .host()
            .ok_or_else(|| ReplayError::Target(format!("{url:?} has no host")))?
            .to_owned();
        let port = uri.port_u16().unwrap_or(80);
        let authorization = basic_auth.map(|c| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(c)
            )
        });
        Ok(Self {
            uri,
            host,
            port,
            authorization,
        })
    }
}

struct Worker {
    rx: mpsc::Receiver<Job>,
    keep: bool,
    retry: bool,
    rewrite: Rewrite,
    progress: ProgressBar,
    skipped: Arc<AtomicU64>,
    /// Cancelled: stop retrying and stop waiting for answers.
    stop: CancellationToken,
}

type HttpConn = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn http_connect(t: &HttpTarget) -> Result<HttpConn, String> {
    let stream = tokio::net::TcpStream::connect((t.host.as_str(), t.port))
        .await
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

/// The pause before a retry: the server's Retry-After, capped, or 100 ms.
fn retry_after(headers: &hyper::HeaderMap) -> Duration {
    headers
        .get(hyper::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::from_millis(100), |s| {
            Duration::from_secs(s).min(Duration::from_secs(5))
        })
}

impl Worker {
    async fn http(mut self, t: HttpTarget) -> Tally {
        let mut tally = Tally::default();
        let mut conn: Option<HttpConn> = None;
        while let Some(job) = self.rx.recv().await {
            let headers = self.rewrite.http_headers(&job.msg);
            let body = Bytes::from(job.msg.payload);
            let mut since = job.due;
            loop {
                let sender = match conn.as_mut() {
                    Some(c) => c,
                    None => match http_connect(&t).await {
                        Ok(c) => conn.insert(c),
                        Err(e) => {
                            tracing::warn!(host = %t.host, "connect: {e}");
                            if self.retry && !self.stop.is_cancelled() {
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                continue;
                            }
                            tally.answer("error", since.unwrap_or_else(Instant::now), self.keep);
                            break;
                        }
                    },
                };
                let mut req = Request::post(t.uri.clone())
                    .header(hyper::header::HOST, t.host.as_str())
                    .header(hyper::header::CONTENT_TYPE, "application/json");
                for (name, value) in &headers {
                    req = req.header(*name, value.as_str());
                }
                if let Some(a) = &t.authorization {
                    req = req.header(hyper::header::AUTHORIZATION, a.as_str());
                }
                let Ok(req) = req.body(Full::new(body.clone())) else {
                    // Only a header value with control characters gets here.
                    tally.answer("bad_request", Instant::now(), self.keep);
                    break;
                };
                let sent = *since.get_or_insert_with(Instant::now);
                let answer = match sender.send_request(req).await {
                    Ok(resp) => {
                        let status = resp.status();
                        let pause = retry_after(resp.headers());
                        match resp.into_body().collect().await {
                            Ok(_) => Ok((status, pause)),
                            Err(e) => Err(e.to_string()),
                        }
                    }
                    Err(e) => Err(e.to_string()),
                };
                match answer {
                    Ok((status, pause)) => {
                        let retryable = status == hyper::StatusCode::SERVICE_UNAVAILABLE
                            || status == hyper::StatusCode::TOO_MANY_REQUESTS;
                        if self.retry && retryable && !self.stop.is_cancelled() {
                            tokio::time::sleep(pause).await;
                            continue;
                        }
                        tally.answer(status.as_str(), sent, self.keep);
                        break;
                    }
                    Err(e) => {
                        tracing::debug!("request: {e}");
                        conn = None;
                        if self.retry && !self.stop.is_cancelled() {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                        tally.answer("error", sent, self.keep);
                        break;
                    }
                }
            }
            self.progress.inc(1);
        }
        tally
    }

    async fn mqtt(mut self, broker: BrokerUrl, client_id: String) -> Tally {
        use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

        let mut opts = MqttOptions::new(client_id, broker.host.clone(), broker.port);
        opts.set_keep_alive(Duration::from_secs(30))
            .set_inflight(100)
            .set_max_packet_size(1 << 20, 1 << 20);
        if let Some(u) = &broker.username {
            opts.set_credentials(u, broker.password.clone().unwrap_or_default());
        }
        let (client, mut events) = AsyncClient::new(opts, 128);
        // Publishes handed to the client wait here for the packet id the
        // event loop gives them, then by id for their PUBACK.
        let queued: Arc<std::sync::Mutex<VecDeque<Instant>>> = Default::default();
        let tally: Arc<std::sync::Mutex<Tally>> = Default::default();
        let acked = Arc::new(AtomicU64::new(0));
        let answered = Arc::new(tokio::sync::Notify::new());
        let reader = {
            let (queued, tally, acked, answered) = (
                queued.clone(),
                tally.clone(),
                acked.clone(),
                answered.clone(),
            );
            let (keep, progress) = (self.keep, self.progress.clone());
            tokio::spawn(async move {
                let mut by_pkid: BTreeMap<u16, Instant> = BTreeMap::new();
                loop {
                    match events.poll().await {
                        Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                            let due = queued.lock().ok().and_then(|mut q| q.pop_front());
                            if let Some(t) = due {
                                by_pkid.insert(pkid, t);
                            }
                        }
                        Ok(Event::Incoming(Packet::PubAck(ack))) => {
                            if let Some(t) = by_pkid.remove(&ack.pkid) {
                                if let Ok(mut tally) = tally.lock() {
                                    tally.answer("puback", t, keep);
                                }
                                acked.fetch_add(1, Ordering::Release);
                                answered.notify_one();
                                progress.inc(1);
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            // rumqttc resends what was not acknowledged when
                            // the next poll reconnects.
                            tracing::warn!("mqtt: {e}");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            })
        };
        let mut published = 0u64;
        while let Some(job) = self.rx.recv().await {
            let topic = match self.rewrite.mqtt_topic(&job.msg) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!("skipped: {e}");
                    self.skipped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            if let Ok(mut q) = queued.lock() {
                q.push_back(job.due.unwrap_or_else(Instant::now));
            }
            if client
                .publish(topic, QoS::AtLeastOnce, false, job.msg.payload)
                .await
                .is_err()
            {
                break;
            }
            published += 1;
        }
        while acked.load(Ordering::Acquire) < published && !self.stop.is_cancelled() {
            let _ = tokio::time::timeout(Duration::from_millis(100), answered.notified()).await;
        }
        let _ = client.try_disconnect();
        reader.abort();
        let _ = reader.await;
        Arc::try_unwrap(tally)
            .ok()
            .and_then(|m| m.into_inner().ok())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests;
