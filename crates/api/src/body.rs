//! Streamed answers: rows are encoded as they are read and sent in
//! chunks of about [`FLUSH_BYTES`], through a channel of
//! [`FRAMES_IN_FLIGHT`] chunks, so an export of any size holds a bounded
//! amount of memory and a slow client slows the reader, not the server.

use std::pin::Pin;
use std::task::{Context, Poll};

use crate::read::format::Encoder;
use crate::read::{QueryError, RowStream};
use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use otstream_http::FallbackBody;
use tokio::sync::mpsc;

/// Encoded bytes gathered before a chunk is sent: large enough to make
/// per-chunk costs vanish, small enough to start the answer at once.
pub const FLUSH_BYTES: usize = 64 * 1024;
/// Chunks a writer may be ahead of the client.
pub const FRAMES_IN_FLIGHT: usize = 4;

/// A body fed by a channel; an error item ends the response abruptly
/// (the client sees a cut-off answer, never a short but complete one).
pub struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|item| item.map(|r| r.map(Frame::data)))
    }
}

/// A body and the sender that feeds it.
pub fn channel() -> (mpsc::Sender<Result<Bytes, std::io::Error>>, FallbackBody) {
    let (tx, rx) = mpsc::channel(FRAMES_IN_FLIGHT);
    (tx, ChannelBody { rx }.boxed())
}

/// A whole body at once.
pub fn full(bytes: impl Into<Bytes>) -> FallbackBody {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// Starts encoding `rows` with `encoder` into a streamed body. The first
/// chunk of rows is awaited here, so that a read that fails at once (the
/// server is down, the query is refused) is answered with an error status
/// instead of a cut-off 200.
pub async fn stream<T, E>(
    mut rows: RowStream<T>,
    mut encoder: E,
) -> Result<FallbackBody, QueryError>
where
    T: Send + Sync + 'static,
    E: Encoder<T> + Send + 'static,
{
    let first = rows.recv().await.transpose()?;
    let (tx, body) = channel();
    tokio::spawn(async move {
        let mut buf = Vec::with_capacity(FLUSH_BYTES + 4096);
        encoder.begin(&mut buf);
        let mut next = first;
        loop {
            let Some(chunk) = next else { break };
            if encoder.failed() {
                let _ = tx
                    .send(Err(std::io::Error::other(
                        "the answer could not be encoded",
                    )))
                    .await;
                return;
            }
            for row in &chunk {
                encoder.row(row, &mut buf);
                if buf.len() >= FLUSH_BYTES {
                    let full = std::mem::replace(&mut buf, Vec::with_capacity(FLUSH_BYTES + 4096));
                    if tx.send(Ok(full.into())).await.is_err() {
                        return; // the client left: stop reading.
                    }
                }
            }
            next = match rows.recv().await {
                None => None,
                Some(Ok(chunk)) => Some(chunk),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "read failed in the middle of an answer; cutting it off");
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    return;
                }
            };
        }
        encoder.end(&mut buf);
        if encoder.failed() {
            let _ = tx
                .send(Err(std::io::Error::other(
                    "the answer could not be encoded",
                )))
                .await;
            return;
        }
        let _ = tx.send(Ok(buf.into())).await;
    });
    Ok(body)
}

/// `body`, holding `place` until its last byte is sent (or the client
/// goes): a read's place in its budget.
pub fn holding(body: FallbackBody, place: tokio::sync::OwnedSemaphorePermit) -> FallbackBody {
    Holding {
        body,
        _place: place,
    }
    .boxed()
}

struct Holding {
    body: FallbackBody,
    _place: tokio::sync::OwnedSemaphorePermit,
}

impl Body for Holding {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
