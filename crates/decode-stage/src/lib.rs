//! The decode stage: raw payloads in, normalized records and dead letters
//! out, acknowledgements carried through. The decoding itself is the pure
//! `otstream-decode` crate; this is its loop between two bus links.
//!
//! In: [`RawMessage`]s (the MQTT ingress's in one process, the `raw` topic
//! over Kafka). Out: [`Record`]s, in the input's order per device.
//! Every input message's [`Ack`](otstream_bus::Ack) is cloned into each
//! record derived from it (a `waypoints` list gives several), so its sender
//! hears "delivered" only once all of them are stored. A payload that cannot
//! be decoded becomes one dead letter carrying the ack: bad input is stored
//! with its reason and never stops the stream. Decoding is CPU work, so it
//! runs in batches on the blocking pool, never on the I/O reactor.

use std::sync::Arc;

use metrics::Counter;
use otstream_bus::{Message, Receiver, Sender, Stage};
use otstream_decode::{DecodeConfig, Decoder, ErrorKind, KeyRing};
use otstream_model::{RawMessage, Record};
use tokio_util::sync::CancellationToken;

/// Most messages decoded per trip to the blocking pool: enough to amortize
/// the hand-off (a few microseconds) over ~0.7 µs messages, small enough to
/// keep per-message latency low.
pub const BATCH: usize = 256;

struct Meters {
    received: Counter,
    sent: Counter,
    errors: Vec<(ErrorKind, Counter)>,
}

impl Meters {
    fn new() -> Self {
        let stage = "decode";
        Meters {
            received: metrics::counter!("otstream_received_events_total", "stage" => stage),
            sent: metrics::counter!("otstream_sent_events_total", "stage" => stage),
            errors: ErrorKind::ALL
                .iter()
                .map(|k| (*k, metrics::counter!("otstream_errors_total", "stage" => stage, "error_code" => k.code())))
                .collect(),
        }
    }

    fn error(&self, kind: ErrorKind) {
        if let Some((_, c)) = self.errors.iter().find(|(k, _)| *k == kind) {
            c.increment(1);
        }
    }
}

/// Why the decode stage stopped before its input ended.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StageError {
    /// A batch's decoding panicked (a bug); its messages' acks were dropped
    /// with it, so their senders heard "not delivered".
    #[error("decode batch failed: {0}")]
    Panicked(String),
    /// The next stage stopped taking records.
    #[error("the decode stage's output is closed")]
    OutputClosed,
}

/// The decode stage: built from its configuration and keys, then run.
pub struct DecodeStage {
    decoder: Decoder,
    topic_prefix: String,
    meters: Meters,
}

impl DecodeStage {
    /// The stage decoding with `config` and `keys`.
    pub fn new(config: DecodeConfig, keys: Arc<KeyRing>) -> Self {
        DecodeStage {
            topic_prefix: config.topic_prefix.clone(),
            decoder: Decoder::new(config, keys),
            meters: Meters::new(),
        }
    }

    /// Decodes `inputs`, each record and dead letter carrying its input's
    /// ack, and the kinds of the errors met; `inputs` is left empty.
    fn decode(
        &mut self,
        inputs: &mut Vec<Message<RawMessage>>,
    ) -> (Vec<Message<Record>>, Vec<ErrorKind>) {
        let mut out: Vec<Message<Record>> = Vec::with_capacity(inputs.len());
        let mut errors = Vec::new();
        let mut records = Vec::new();
        for Message {
            mut key,
            value,
            ack,
        } in inputs.drain(..)
        {
            records.clear();
            match self.decoder.decode(&value, &mut records) {
                Ok(_) => {
                    // The input's key is the records' key unless the
                    // payload named another device; the last record takes
                    // it rather than a copy.
                    let last = records.len().saturating_sub(1);
                    for (i, r) in records.drain(..).enumerate() {
                        let k = if !r.has_key(&key) {
                            r.key()
                        } else if i == last {
                            std::mem::take(&mut key)
                        } else {
                            key.clone()
                        };
                        out.push(Message::new(k, r, ack.clone()));
                    }
                    // Nothing derived (an empty "clear" body) means
                    // nothing left to wait for.
                    ack.delivered();
                }
                Err(e) => {
                    errors.push(e.kind);
                    let dl = Record::DeadLetter(e.dead_letter(value, &self.topic_prefix));
                    out.push(Message::new(key, dl, ack));
                }
            }
        }
        (out, errors)
    }
}

impl<R: Receiver<RawMessage>, S: Sender<Record>> Stage<R, S> for DecodeStage {
    /// Runs until the input is closed and drained (`Ok`), or until
    /// `shutdown` is cancelled (`Ok`); a panicked batch or a closed output
    /// ends it with the error.
    type Error = StageError;

    async fn run(
        mut self,
        mut input: R,
        output: S,
        shutdown: CancellationToken,
    ) -> Result<(), StageError> {
        let mut batch: Vec<Message<RawMessage>> = Vec::with_capacity(BATCH);
        loop {
            let n = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                n = input.recv_many(&mut batch, BATCH) => n,
            };
            if n == 0 {
                return Ok(());
            }
            self.meters.received.increment(n as u64);
            let mut inputs = std::mem::take(&mut batch);
            // The stage itself goes to the blocking pool with its batch and
            // comes back with the results (and the emptied batch, to fill
            // again without a new allocation).
            let (stage, emptied, out, errors) = tokio::task::spawn_blocking(move || {
                let (out, errors) = self.decode(&mut inputs);
                (self, inputs, out, errors)
            })
            .await
            .map_err(|e| StageError::Panicked(e.to_string()))?;
            self = stage;
            batch = emptied;
            for k in errors {
                self.meters.error(k);
            }
            let sent = out.len() as u64;
            if output.send_all(out).await.is_err() {
                return Err(StageError::OutputClosed);
            }
            self.meters.sent.increment(sent);
        }
    }
}

#[cfg(test)]
mod tests {
    use otstream_bus::{Ack, AckStatus, channel};
    use otstream_model::{IdentityHints, Transport};

    use super::*;

    fn raw(payload: &str) -> RawMessage {
        RawMessage {
            received_at: 7,
            transport: Transport::Http,
            hints: IdentityHints {
                x_limit_u: Some("jane".into()),
                x_limit_d: Some("phone".into()),
                ..Default::default()
            },
            remote_addr: Some("10.0.0.1:4000".into()),
            payload: payload.as_bytes().to_vec(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_closed_output_ends_the_stage_with_that_error() {
        let (raw_tx, raw_rx) = channel::<RawMessage>(16);
        let (rec_tx, rec_rx) = channel::<Record>(16);
        drop(rec_rx);
        let stage = tokio::spawn(
            DecodeStage::new(DecodeConfig::default(), Arc::default()).run(
                raw_rx,
                rec_tx,
                CancellationToken::new(),
            ),
        );
        let (ack, _w) = Ack::new();
        raw_tx
            .send(Message::new("jane/phone", raw("not json"), ack))
            .await
            .unwrap();
        let err = stage.await.unwrap().unwrap_err();
        assert_eq!(err.to_string(), "the decode stage's output is closed");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_and_dead_letters_carry_the_ack() {
        let (raw_tx, raw_rx) = channel::<RawMessage>(16);
        let (rec_tx, mut rec_rx) = channel::<Record>(16);
        let stage = tokio::spawn(
            DecodeStage::new(DecodeConfig::default(), Arc::default()).run(
                raw_rx,
                rec_tx,
                CancellationToken::new(),
            ),
        );
        let mut waiters = Vec::new();
        for body in [
            r#"{"_type":"waypoints","waypoints":[{"tst":1,"desc":"a"},{"tst":2,"desc":"b"}]}"#,
            "not json",
            "",
        ] {
            let (ack, w) = Ack::new();
            raw_tx
                .send(Message::new("jane/phone", raw(body), ack))
                .await
                .unwrap();
            waiters.push(w);
        }
        drop(raw_tx);
        let mut got = Vec::new();
        while rec_rx.recv_many(&mut got, 16).await > 0 {}
        stage.await.unwrap().unwrap();
        assert_eq!(
            got.iter().map(|m| m.value.type_name()).collect::<Vec<_>>(),
            ["waypoint", "waypoint", "dead_letter"]
        );
        assert_eq!(got[0].key, "jane/phone");
        let Record::DeadLetter(dl) = &got[2].value else {
            unreachable!()
        };
        assert_eq!(
            (dl.user.as_str(), dl.device.as_str(), dl.kind.as_str()),
            ("jane", "phone", "invalid_json")
        );
        assert_eq!(
            (dl.payload.as_slice(), dl.remote_addr.as_deref()),
            (&b"not json"[..], Some("10.0.0.1:4000"))
        );
        // The empty body needed nothing stored: already delivered.
        let empty = waiters.pop().unwrap();
        assert_eq!(empty.await, AckStatus::Delivered);
        // The waypoints' message: delivered only when both records are.
        let mut msgs = got.into_iter();
        let (a, b, dead) = (
            msgs.next().unwrap(),
            msgs.next().unwrap(),
            msgs.next().unwrap(),
        );
        let mut wp = waiters.remove(0);
        a.ack.delivered();
        tokio::select! {
            s = &mut wp => panic!("delivered with one record pending: {s:?}"),
            () = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
        }
        b.ack.delivered();
        assert_eq!(wp.await, AckStatus::Delivered);
        dead.ack.delivered();
        assert_eq!(waiters.remove(0).await, AckStatus::Delivered);
    }
}
