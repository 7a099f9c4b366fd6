//! One way to serve HTTP/1.1, for every listener of the process (the
//! phones' ingest, the read API's own, the metrics').
//!
//! In: a bound listener, its [`Limits`], a service per connection, and a
//! shutdown token. Out: the service's answers; at shutdown, no new
//! connection, in-flight requests finished, and a return once every
//! connection closed or [`Limits::drain`] passed.
//!
//! Guarantees: no more than [`Limits::max_connections`] connections are
//! served at once (past it, new ones wait in the kernel's accept queue,
//! never overcommit the process); a client that sends its headers too
//! slowly, or holds an idle keep-alive connection, is cut off after
//! [`Limits::header_timeout`]; every request carries its connection's
//! [`Slot`], so a request that turns into a long stream (a live feed) can
//! move out of the listener's budget into a [`Budget`] of its own and
//! never hold slots meant for short requests.
//!
//! Layout: this file ([`serve`], [`listen`], [`Limits`], [`Budget`],
//! [`Slot`], and [`Fallback`]: what answers the requests a listener's own
//! service does not take, such as the read API on the phones' port).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What one listener allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Time to receive a request's headers; also how long an idle
    /// keep-alive connection is kept.
    pub header_timeout: Duration,
    /// How long a shutdown waits for connections to finish.
    pub drain: Duration,
}

/// Connections the kernel queues for the accept loop. A fleet's phones
/// come back together (after a network blip, a restart of the server): with
/// tokio's default of 1,024, a replay opening 1,024 connections at once
/// overflowed the queue, and every dropped handshake waited out the
/// client's one-second SYN retry (measured: the open-loop p99 of a second).
/// The kernel caps it at `net.core.somaxconn`.
const BACKLOG: u32 = 8192;

/// Binds a listening socket at `addr`, with [`BACKLOG`].
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As `TcpListener::bind`: a restarted server binds its port at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// The body of an answer another service gives on a listener it shares
/// (the read API on the phones' port): streamed, and ended with an error
/// (the connection is cut) when the stream fails half-way.
pub type FallbackBody = http_body_util::combinators::BoxBody<bytes::Bytes, std::io::Error>;

/// What answers the requests on the ingest listener that are not
/// OwnTracks POSTs (the read API and the map page share the phones'
/// port): every request to a path that is not one of `http.paths`, and
/// those of its requests to them that [`Fallback::serves`] claims (a GET
/// of `/` is the map; a GET of `/pub` stays the ingress's 405). Here, not
/// in the ingress, so that the API needs only this serving layer.
pub trait Fallback: Send + Sync + 'static {
    /// Whether a request other than a POST to an ingest path is its own.
    fn serves(&self, method: &hyper::Method, path: &str) -> bool;

    /// The answer to `req` from `remote`.
    fn call(
        &self,
        req: Request<Incoming>,
        remote: SocketAddr,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<FallbackBody>> + Send>>;
}

/// A connection's place in its listener's budget, in every request's
/// extensions. [`Slot::release`] gives the place back while the
/// connection goes on (a request that becomes a long stream, counted by a
/// [`Budget`] of its own from then on).
#[derive(Clone, Debug)]
pub struct Slot(Arc<Mutex<Option<OwnedSemaphorePermit>>>);

impl Slot {
    /// Gives the connection's place back to its listener.
    pub fn release(&self) {
        if let Ok(mut p) = self.0.lock() {
            p.take();
        }
    }
}

/// A count of something held at once (live streams, reads), with its
/// bound: past it, [`Budget::take`] says no at once and the request is
/// answered 503.
#[derive(Clone, Debug)]
pub struct Budget(Arc<Semaphore>);

impl Budget {
    /// A budget of `n` at once.
    pub fn new(n: usize) -> Self {
        Budget(Arc::new(Semaphore::new(n)))
    }

    /// A place, held until the permit is dropped; `None` at the bound.
    pub fn take(&self) -> Option<OwnedSemaphorePermit> {
        self.0.clone().try_acquire_owned().ok()
    }

    /// Places free now.
    pub fn available(&self) -> usize {
        self.0.available_permits()
    }
}

/// Serves `listener` under `limits` until `shutdown`: each connection
/// gets the service `make(remote)`; then stops accepting, lets in-flight
/// requests finish and returns once every connection is closed or
/// `limits.drain` passed.
pub async fn serve<F, S, B>(
    listener: TcpListener,
    limits: Limits,
    make: F,
    shutdown: CancellationToken,
) where
    F: Fn(SocketAddr) -> S,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    // Every connection's task, to wait for at shutdown.
    let tasks = TaskTracker::new();
    loop {
        // A place first: at the cap, stop accepting and let the kernel
        // queue new connections rather than overcommit.
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            p = connections.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, remote) = tokio::select! {
            () = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: pause, don't spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let slot = Slot(Arc::new(Mutex::new(Some(permit))));
        let service = WithSlot {
            inner: make(remote),
            slot: slot.clone(),
        };
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), service)
            // A WebSocket (`/ws/last`) takes the connection over once its
            // 101 is sent; the socket's own task ends it at shutdown.
            .with_upgrades();
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let ended = tokio::select! {
                r = conn.as_mut() => r,
                () = stop.cancelled() => {
                    // The request in flight is answered; no other is read.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, %remote, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    tasks.close();
    if tokio::time::timeout(limits.drain, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "connections still open {} s after the shutdown began; leaving them",
            limits.drain.as_secs()
        );
    }
}

/// A service that puts its connection's [`Slot`] in each request.
struct WithSlot<S> {
    inner: S,
    slot: Slot,
}

impl<S: Service<Request<Incoming>>> Service<Request<Incoming>> for WithSlot<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(self.slot.clone());
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::service::service_fn;
    use std::convert::Infallible;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn start(limits: Limits) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(
            listener,
            limits,
            |_| {
                service_fn(|req: Request<Incoming>| async move {
                    if req.uri().path() == "/release" {
                        req.extensions().get::<Slot>().unwrap().release();
                    }
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                })
            },
            stop.clone(),
        ));
        (addr, stop, task)
    }

    async fn get(stream: &mut tokio::net::TcpStream, path: &str) -> String {
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut buf = vec![0u8; 1024];
        let n = stream.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_cap_holds_idle_connections_are_cut_and_a_released_slot_frees_a_place() {
        let limits = Limits {
            max_connections: 2,
            header_timeout: Duration::from_millis(300),
            drain: Duration::from_secs(1),
        };
        let (addr, stop, task) = start(limits).await;
        let mut a = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut b = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(get(&mut a, "/").await.starts_with("HTTP/1.1 200"));
        assert!(get(&mut b, "/").await.starts_with("HTTP/1.1 200"));
        // A third waits in the accept queue: no answer while both are open.
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let waited = tokio::time::timeout(Duration::from_millis(150), c.read(&mut buf)).await;
        assert!(
            waited.is_err(),
            "the third connection was served past the cap"
        );
        // `a` moves out of the budget: `c` is served, `a` still is.
        assert!(get(&mut a, "/release").await.starts_with("HTTP/1.1 200"));
        let n = tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        assert!(get(&mut a, "/").await.starts_with("HTTP/1.1 200"));
        // Idle past the header timeout: closed by the server.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let n = b.read(&mut buf).await.unwrap_or(0);
        assert_eq!(n, 0, "an idle connection was kept");
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(3), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn a_budget_says_no_at_its_bound() {
        let b = Budget::new(2);
        let (x, y) = (b.take(), b.take());
        assert!(x.is_some() && y.is_some() && b.take().is_none());
        drop(x);
        assert_eq!(b.available(), 1);
        assert!(b.take().is_some());
    }
}
