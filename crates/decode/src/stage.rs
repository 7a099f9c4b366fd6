//! The decode stage: raw payloads in, normalized records and dead letters
//! out, acknowledgements carried through.
//!
//! Every input message's [`Ack`](otstream_bus::Ack) is cloned into each
//! record derived from it (a `waypoints` list gives several), so its sender
//! hears "delivered" only once all of them are stored. A payload that cannot
//! be decoded becomes one dead letter carrying the ack: bad input is stored
//! with its reason and never stops the stream. Decoding is CPU work, so it
//! runs in batches on the blocking pool, never on the I/O reactor.

use std::sync::Arc;

use metrics::Counter;
use otstream_bus::{Message, Receiver, Sender};
use otstream_model::identity;
use otstream_model::{DeadLetter, RawMessage, Record, Text};
use tokio_util::sync::CancellationToken;

use crate::{DecodeConfig, DecodeError, Decoder, ErrorKind, KeyRing};

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

/// The dead letter for a payload that failed to decode. Its identity is
/// what the transport alone says (the payload could not be trusted).
pub fn dead_letter(msg: &RawMessage, e: &DecodeError, topic_prefix: &str) -> DeadLetter {
    let id = identity::resolve(&msg.hints, topic_prefix, None, None).ok();
    DeadLetter {
        user: id.as_ref().map(|i| i.user.clone()).unwrap_or_default(),
        device: id.map(|i| i.device).unwrap_or_default(),
        received_at: msg.received_at,
        transport: msg.transport,
        topic: msg.hints.mqtt_topic.as_deref().map(Text::from),
        remote_addr: msg.remote_addr.as_deref().map(Text::from),
        kind: Text::from(e.kind.code()),
        field: e.field.as_deref().map(Text::from),
        message: e.message.clone(),
        payload: msg.payload.clone(),
    }
}

/// Runs the decode stage until the input is closed and drained, or until
/// `shutdown` is cancelled.
pub async fn run(
    config: DecodeConfig,
    keys: Arc<KeyRing>,
    mut input: impl Receiver<RawMessage>,
    output: impl Sender<Record>,
    shutdown: CancellationToken,
) {
    let meters = Meters::new();
    let prefix = config.topic_prefix.clone();
    let mut decoder = Some(Decoder::new(config, keys));
    let mut batch: Vec<Message<RawMessage>> = Vec::with_capacity(BATCH);
    loop {
        let n = tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            n = input.recv_many(&mut batch, BATCH) => n,
        };
        if n == 0 {
            return;
        }
        meters.received.increment(n as u64);
        let Some(mut d) = decoder.take() else { return };
        let prefix = prefix.clone();
        let inputs = std::mem::take(&mut batch);
        let joined = tokio::task::spawn_blocking(move || {
            let mut out: Vec<Message<Record>> = Vec::with_capacity(inputs.len());
            let mut errors = Vec::new();
            let mut records = Vec::new();
            for m in inputs {
                records.clear();
                match d.decode(&m.value, &mut records) {
                    Ok(_) => {
                        for r in records.drain(..) {
                            out.push(Message::new(r.key(), r, m.ack.clone()));
                        }
                        // Nothing derived (an empty "clear" body) means
                        // nothing left to wait for.
                        m.ack.delivered();
                    }
                    Err(e) => {
                        errors.push(e.kind);
                        let dl = Record::DeadLetter(dead_letter(&m.value, &e, &prefix));
                        out.push(Message::new(m.key, dl, m.ack));
                    }
                }
            }
            (d, out, errors)
        })
        .await;
        let (d, out, errors) = match joined {
            Ok(v) => v,
            Err(e) => {
                // A panic in the decoder is a bug; the batch's acks were
                // dropped with it, so its senders were told "not delivered".
                tracing::error!(error = %e, "decode batch failed");
                return;
            }
        };
        decoder = Some(d);
        for k in errors {
            meters.error(k);
        }
        for m in out {
            if output.send(m).await.is_err() {
                return;
            }
            meters.sent.increment(1);
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
    async fn records_and_dead_letters_carry_the_ack() {
        let (raw_tx, raw_rx) = channel::<RawMessage>(16);
        let (rec_tx, mut rec_rx) = channel::<Record>(16);
        let stage = tokio::spawn(run(
            DecodeConfig::default(),
            Arc::default(),
            raw_rx,
            rec_tx,
            CancellationToken::new(),
        ));
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
        stage.await.unwrap();
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
