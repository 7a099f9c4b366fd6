//! A webhook receiver, or a geocoding service: a real HTTP/1.1 server on
//! loopback (keep-alive, Content-Length bodies) that records what it is
//! sent, answers 503 to as many requests as it is told to fail (else 200,
//! with the body `respond` gives for the request's target), and can be
//! stopped (connections refused) and started again on the same port.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// One request received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The request line's target (path and query).
    pub target: String,
    /// When it arrived.
    pub at: std::time::Instant,
    /// `x-otstream-signature`, if sent.
    pub signature: Option<String>,
    /// `x-otstream-timestamp`, if sent.
    pub timestamp: Option<String>,
    /// The body.
    pub body: String,
    /// Whether it was answered 2xx.
    pub accepted: bool,
}

/// What the receiver saw, kept across its restarts.
#[derive(Debug, Default)]
pub struct Seen {
    /// Requests still to answer 503.
    pub fail_next: usize,
    /// Every request, in arrival order.
    pub requests: Vec<Received>,
    /// The body of a 200 for a target (none: empty).
    pub respond: Option<fn(&str) -> String>,
}

/// A running receiver.
pub struct Receiver {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// What it saw.
    pub seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    /// Listens on `port` (0 for any), recording into `seen`.
    pub fn start(port: u16, seen: Arc<Mutex<Seen>>) -> std::io::Result<Receiver> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut conns = Vec::new();
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((c, _)) => {
                        let (s, st) = (s.clone(), st.clone());
                        conns.push(std::thread::spawn(move || serve(c, &s, &st)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            drop(listener);
            for c in conns {
                let _ = c.join();
            }
        });
        Ok(Receiver {
            port,
            seen,
            stop,
            thread: Some(thread),
        })
    }

    /// Stops listening and closes every connection.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Answers the requests of one connection until it closes or the
/// receiver stops.
fn serve(mut c: TcpStream, seen: &Mutex<Seen>, stop: &AtomicBool) {
    let _ = c.set_nonblocking(false);
    let _ = c.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        // A whole request in `buf`?
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let header = |name: &str| {
                head.lines().skip(1).find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim()
                        .eq_ignore_ascii_case(name)
                        .then(|| v.trim().to_owned())
                })
            };
            let len: usize = header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
                buf.drain(..end + 4 + len);
                let target = head
                    .lines()
                    .next()
                    .and_then(|l| l.split(' ').nth(1))
                    .unwrap_or_default()
                    .to_owned();
                let (accepted, content) = {
                    let mut s = seen.lock().unwrap_or_else(PoisonError::into_inner);
                    let fail = s.fail_next > 0;
                    s.fail_next = s.fail_next.saturating_sub(1);
                    let content = match s.respond {
                        Some(f) if !fail => f(&target),
                        _ => String::new(),
                    };
                    s.requests.push(Received {
                        target,
                        at: std::time::Instant::now(),
                        signature: header("x-otstream-signature"),
                        timestamp: header("x-otstream-timestamp"),
                        body,
                        accepted: !fail,
                    });
                    (!fail, content)
                };
                let status = if accepted {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                let answer = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{content}",
                    content.len()
                );
                if c.write_all(answer.as_bytes()).is_err() {
                    return;
                }
                continue;
            }
        }
        match c.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
