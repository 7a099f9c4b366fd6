//! The loop every route runs: its queue, in order, to its destination.

use std::future::Future;
use std::time::Duration;

use crate::outbox::{Entry, Reader};
use otstream_model::raw::now_ms;
use tokio_util::sync::CancellationToken;

use crate::EventsError;

/// Entries read from the queue at a time; deleted together once sent.
const READ: usize = 256;
/// How often an idle deliverer looks at its queue without being woken
/// (another process may append: `run sink` beside `serve`).
const IDLE_POLL: Duration = Duration::from_secs(1);
/// Retry delays: from 200 ms, doubling with jitter, up to 30 s.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// What a destination did with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// Taken.
    Delivered,
    /// Refused for good (the reason): it is not offered again.
    Refused(String),
}

/// Where a route's events go.
pub trait Destination: Send {
    /// Offers one entry; an error is retried.
    fn send(&mut self, entry: &Entry) -> impl Future<Output = Result<Sent, String>> + Send;
}

struct Meters {
    delivered: metrics::Counter,
    refused: metrics::Counter,
    expired: metrics::Counter,
    failures: metrics::Counter,
    waiting: metrics::Gauge,
}

impl Meters {
    fn new(route: &str) -> Self {
        let r = route.to_owned();
        Meters {
            delivered: metrics::counter!("otstream_events_delivered_total", "route" => r.clone()),
            refused: metrics::counter!("otstream_events_refused_total", "route" => r.clone()),
            expired: metrics::counter!("otstream_events_expired_total", "route" => r.clone()),
            failures: metrics::counter!("otstream_event_delivery_failures_total", "route" => r.clone()),
            waiting: metrics::gauge!("otstream_outbox_entries", "route" => r),
        }
    }
}

/// Runs `route`'s deliverer until `stop`: reads its queue in order, offers
/// each entry to `dest` until it is taken, refused, or older than
/// `max_age`, and deletes what is done. What is in flight at the stop is
/// offered again at the next start.
pub async fn deliver(
    route: String,
    reader: Reader,
    mut dest: impl Destination,
    max_age: Duration,
    stop: CancellationToken,
) -> Result<(), EventsError> {
    let meters = Meters::new(&route);
    let max_age_ms = i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX);
    let mut appended = reader.appended();
    let mut reader = Some(reader);
    let mut after = 0i64;
    loop {
        let (r, entries) = blocking(&mut reader, move |r| r.next(after, READ)).await?;
        reader = Some(r);
        let entries = entries?;
        if entries.is_empty() {
            let (r, waiting) = blocking(&mut reader, |r| r.waiting()).await?;
            reader = Some(r);
            meters.waiting.set(waiting? as f64);
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                _ = appended.changed() => {}
                () = tokio::time::sleep(IDLE_POLL) => {}
            }
            continue;
        }
        let mut done = None;
        for e in &entries {
            let mut delays = otstream_model::retry::backoff(RETRY_FIRST, RETRY_MAX);
            loop {
                if now_ms().saturating_sub(e.created_ms) > max_age_ms {
                    tracing::warn!(route = %route, seq = e.seq, "event older than events.max_age_days and never delivered; dropped");
                    meters.expired.increment(1);
                    break;
                }
                let sent = tokio::select! {
                    () = stop.cancelled() => None,
                    r = dest.send(e) => Some(r),
                };
                match sent {
                    None => {
                        // Whatever was sent before the stop is done.
                        if let Some(seq) = done {
                            blocking(&mut reader, move |r| r.delete_through(seq))
                                .await?
                                .1?;
                        }
                        return Ok(());
                    }
                    Some(Ok(Sent::Delivered)) => {
                        meters.delivered.increment(1);
                        break;
                    }
                    Some(Ok(Sent::Refused(why))) => {
                        tracing::warn!(route = %route, seq = e.seq, why, "the endpoint refused an event for good; skipped");
                        meters.refused.increment(1);
                        break;
                    }
                    Some(Err(why)) => {
                        meters.failures.increment(1);
                        let delay = delays.next().unwrap_or(RETRY_MAX);
                        tracing::warn!(route = %route, seq = e.seq, error = why, retry_in_ms = delay.as_millis() as u64, "event delivery failed; retrying");
                        tokio::select! {
                            () = stop.cancelled() => {}
                            () = tokio::time::sleep(delay) => {}
                        }
                    }
                }
            }
            done = Some(e.seq);
            after = e.seq;
        }
        if let Some(seq) = done {
            let (r, deleted) = blocking(&mut reader, move |r| r.delete_through(seq)).await?;
            reader = Some(r);
            deleted?;
        }
    }
}

/// Runs `f` on the reader on the blocking pool and gives the reader back.
async fn blocking<T: Send + 'static>(
    reader: &mut Option<Reader>,
    f: impl FnOnce(&Reader) -> T + Send + 'static,
) -> Result<(Reader, T), EventsError> {
    let r = reader
        .take()
        .ok_or_else(|| EventsError::Thread("the outbox reader was lost".into()))?;
    tokio::task::spawn_blocking(move || {
        let t = f(&r);
        (r, t)
    })
    .await
    .map_err(|e| EventsError::Thread(e.to_string()))
}
