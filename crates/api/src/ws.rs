//! `GET /ws/last`: OwnTracks Recorder's WebSocket, as its web frontend
//! uses it.
//!
//! In: an upgrade request (checked: a WebSocket version 13 handshake, an
//! `Origin` of the API's own or an allowed origin, the reader's access,
//! a place in the live budget); committed positions from the sink's
//! broadcast channel; the text `LAST` from the client. Out: each committed
//! location the client may read, as Recorder's location object (the
//! payload's members, `topic`, `username`, `device`, `isotst`, ...), one
//! text message each; on `LAST` (one a second at most, each in the API's
//! read budget), the last location of every device it may read, with its
//! card (`name`, `face`), as `/api/0/last` writes them; protocol pings
//! every 15 s; a close (1008) once its credentials no longer hold
//! (checked every 5 s: a revoked or expired token, a removed user).
//!
//! Guarantees: a client sees nothing `/api/0/last` would not show it; a
//! socket holds a place in `api.max_live_streams` (none of its listener's
//! connection places) until it ends; a client that reads too slowly
//! skips what the channel no longer holds (the frontend reloads its view
//! on the next message anyway), and one whose unsent bytes pass 1 MiB, or
//! that takes more than 10 s to accept a message, is closed; what a
//! client sends is read in frames of 64 KiB at most; at shutdown every
//! socket gets a close frame (1001, going away).

use std::time::{Duration, Instant};

use crate::read::format::{recorder_last, recorder_location};
use crate::read::{Reader, Visible};
use futures_util::{SinkExt as _, StreamExt as _};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use otstream_http::FallbackBody;
use otstream_model::Record;
use tokio::sync::{OwnedSemaphorePermit, broadcast};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;

use crate::access::{RECHECK, Recheck};
use crate::live::position_row;
use otstream_http::Budget;

/// Protocol pings this often keep proxies from closing an idle socket.
const PING: Duration = Duration::from_secs(15);

/// Longest a client may take to accept one message.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// A client's `LAST`s are answered this often at most.
const LAST_EVERY: Duration = Duration::from_secs(1);

/// Why an upgrade request is not one.
pub(crate) fn check_handshake(req: &Request<Incoming>) -> Result<HeaderValue, &'static str> {
    let h = req.headers();
    let has = |name: header::HeaderName, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has(header::UPGRADE, "websocket") || !has(header::CONNECTION, "upgrade") {
        return Err("/ws/last is a WebSocket: send Upgrade: websocket and Connection: Upgrade");
    }
    if h.get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err("/ws/last speaks WebSocket version 13 (Sec-WebSocket-Version: 13)");
    }
    let key = h
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or("a WebSocket upgrade needs Sec-WebSocket-Key")?;
    HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
        .map_err(|_| "Sec-WebSocket-Key is not a header value")
}

/// The `101 Switching Protocols` answer for `accept`.
pub(crate) fn switching(accept: HeaderValue) -> Response<FallbackBody> {
    let mut r = Response::new(crate::body::full(bytes::Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    r
}

/// One client's socket, once the connection is upgraded.
pub(crate) struct Socket {
    pub upgrade: OnUpgrade,
    pub live: broadcast::Receiver<Record>,
    pub reader: Reader,
    /// The read API's budget of reads: a `LAST` takes a place of it.
    pub reads: Budget,
    pub visible: Visible,
    pub recheck: Recheck,
    pub shutdown: CancellationToken,
    /// Its place in the live budget, given back when it ends.
    pub place: OwnedSemaphorePermit,
}

impl Socket {
    /// Serves the socket until the client leaves, fails or is too slow, or
    /// the process shuts down.
    pub(crate) async fn run(self) {
        let Socket {
            upgrade,
            mut live,
            reader,
            reads,
            visible,
            recheck,
            shutdown,
            place,
        } = self;
        let _place = place;
        let io = match upgrade.await {
            Ok(io) => TokioIo::new(io),
            Err(e) => {
                tracing::debug!(error = %e, "a /ws/last upgrade did not complete");
                return;
            }
        };
        let config = WebSocketConfig::default()
            .max_message_size(Some(64 << 10))
            .max_frame_size(Some(64 << 10))
            .max_write_buffer_size(1 << 20);
        let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
        let mut ping = tokio::time::interval(PING);
        ping.tick().await;
        let mut again = tokio::time::interval(RECHECK);
        again.tick().await;
        let mut last_asked: Option<Instant> = None;
        loop {
            let out = tokio::select! {
                _ = again.tick() => {
                    if recheck.holds().await {
                        continue;
                    }
                    let bye = CloseFrame { code: CloseCode::Policy, reason: "access revoked or expired".into() };
                    let _ = tokio::time::timeout(SEND_TIMEOUT, ws.close(Some(bye))).await;
                    return;
                }
                () = shutdown.cancelled() => {
                    let bye = CloseFrame { code: CloseCode::Away, reason: "otstream is shutting down".into() };
                    let _ = tokio::time::timeout(SEND_TIMEOUT, ws.close(Some(bye))).await;
                    return;
                }
                _ = ping.tick() => vec![Message::Ping(bytes::Bytes::new())],
                r = live.recv() => match r {
                    Ok(Record::Position(p)) if visible.allows(&p.meta.user, &p.meta.device) => {
                        let mut out = Vec::with_capacity(512);
                        recorder_location(&mut out, &position_row(&p), None);
                        vec![text(out)]
                    }
                    Ok(_) => continue,
                    // Skipped: the next location reloads the client's view.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                m = ws.next() => match m {
                    Some(Ok(Message::Text(t))) if t.as_str() == "LAST" => {
                        // One a second at most, each a read of the API's
                        // budget: a loop of LASTs is not a way around it.
                        if last_asked.is_some_and(|at| at.elapsed() < LAST_EVERY) {
                            continue;
                        }
                        last_asked = Some(Instant::now());
                        let Some(_read) = reads.take() else {
                            continue;
                        };
                        let mut devices = reader.devices(None, None, &visible).await;
                        if let Ok(d) = &mut devices {
                            if let Err(e) = reader.faces(d).await {
                                tracing::warn!(error = %e, "/ws/last could not read the cards' pictures");
                            }
                        }
                        match devices {
                            Ok(devices) => devices
                                .iter()
                                .map(|d| {
                                    let mut out = Vec::with_capacity(512);
                                    recorder_last(&mut out, d, None);
                                    text(out)
                                })
                                .collect(),
                            Err(e) => {
                                tracing::warn!(error = %e, "/ws/last could not read the last positions");
                                Vec::new()
                            }
                        }
                    }
                    // Pongs, pings (answered by the library), other text.
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => continue,
                },
            };
            for m in out {
                match tokio::time::timeout(SEND_TIMEOUT, ws.send(m)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "a /ws/last client went away");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(
                            "a /ws/last client took over 10 s to take a message; closed"
                        );
                        return;
                    }
                }
            }
        }
    }
}

fn text(json: Vec<u8>) -> Message {
    // The encoders write JSON, which is UTF-8.
    Message::Text(String::from_utf8_lossy(&json).into_owned().into())
}
