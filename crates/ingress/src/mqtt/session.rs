//! The session: events from the broker, PUBLISHes onto the bus, PUBACKs
//! back in arrival order once each message is durable, and reconnects.

use super::*;

pub(super) struct Session<S> {
    pub(super) client: Client,
    pub(super) eventloop: Loop,
    pub(super) subscribed: tokio::sync::watch::Sender<bool>,
    /// SUBACKs still to come on this connection.
    pub(super) awaiting_subacks: usize,
    pub(super) filters: Vec<String>,
    pub(super) prefix: String,
    pub(super) output: S,
    pub(super) ack_tx: mpsc::UnboundedSender<(Delivery, AckWaiter)>,
    pub(super) resync: CancellationToken,
    pub(super) meters: Meters,
    pub(super) config: MqttConfig,
    pub(super) push: Option<std::sync::Arc<crate::push::Push>>,
    /// Pushes being handed to the client, at most [`PUSHES_IN_FLIGHT`].
    pub(super) pushing: std::sync::Arc<tokio::sync::Semaphore>,
}

/// Fences commands handed to the MQTT client at once. Each waits in a task
/// of its own for room in the client's queue, which only this session's
/// loop empties: waiting in the loop would stop it. Past the bound a
/// device is left for its next location.
pub(super) const PUSHES_IN_FLIGHT: usize = 64;

impl<S: Sender<RawMessage>> Session<S> {
    pub(super) async fn run(&mut self, shutdown: CancellationToken) {
        let first = Duration::from_millis(100);
        let max = Duration::from_millis(self.config.reconnect_max_ms);
        let mut delays = otstream_model::retry::backoff(first, max);
        loop {
            let event = tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                () = self.resync.cancelled() => {
                    // A message was not stored: drop the connection so the
                    // broker delivers what is unacknowledged again.
                    tracing::warn!("a message could not be stored; resuming the session for redelivery");
                    self.resync = CancellationToken::new();
                    self.client.disconnect().await;
                    continue;
                }
                e = self.eventloop.poll() => e,
            };
            match event {
                Ok(Incoming::ConnAck { session_present }) => {
                    delays = otstream_model::retry::backoff(first, max);
                    tracing::info!(session_present, protocol = ?self.config.protocol, filters = ?self.filters, "connected to the MQTT broker");
                    // Subscribing again is harmless with a kept session and
                    // necessary when the broker lost it.
                    self.subscribed.send_replace(false);
                    self.awaiting_subacks = self.filters.len();
                    for f in &self.filters {
                        if let Err(e) = self.client.subscribe(f).await {
                            tracing::warn!(error = %e, filter = %f, "subscribe failed");
                        }
                    }
                }
                Ok(Incoming::SubAck { granted }) => {
                    if !granted {
                        tracing::error!(filters = ?self.filters, "the broker refused a subscription (check its ACLs); those messages will not arrive");
                    }
                    self.awaiting_subacks = self.awaiting_subacks.saturating_sub(1);
                    if self.awaiting_subacks == 0 && !*self.subscribed.borrow() {
                        tracing::info!("subscribed");
                        self.subscribed.send_replace(true);
                    }
                }
                Ok(Incoming::Publish(p)) => self.forward(p).await,
                Ok(Incoming::Other | Incoming::PubAck) => {}
                Err(e) => {
                    self.subscribed.send_replace(false);
                    self.meters.reconnects.increment(1);
                    let backoff = delays.next().unwrap_or(max);
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "MQTT connection lost; reconnecting");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                }
            }
        }
    }

    pub(super) async fn forward(&mut self, p: Delivery) {
        if memchr_str(p.payload(), OWN_MARKER.as_bytes()) {
            // otstream's own event, published where the devices publish
            // theirs: not device data. Acknowledged in its turn.
            self.meters.own.increment(1);
            let (ack, done) = Ack::new();
            ack.delivered();
            let _ = self.ack_tx.send((p, done));
            return;
        }
        self.meters.received.increment(1);
        let hints = IdentityHints {
            mqtt_topic: Some(p.topic()),
            ..Default::default()
        };
        let key = identity::resolve(&hints, &self.prefix, None, None)
            .map(|i| i.key())
            .unwrap_or_default();
        let raw = RawMessage {
            received_at: now_ms(),
            transport: Transport::Mqtt,
            hints,
            remote_addr: None,
            payload: p.payload().to_vec(),
        };
        let (ack, done) = Ack::new();
        // A location on the device's own topic says the app is listening.
        let device_topic = p.topic().matches('/').count() == 2;
        match self.output.send(Message::new(key.clone(), raw, ack)).await {
            // QoS 0 messages have nothing to acknowledge; the FIFO keeps
            // them only if they carry a packet id.
            Ok(()) => {
                if device_topic {
                    self.push_fences(&p.topic(), &key);
                }
                let _ = self.ack_tx.send((p, done));
            }
            Err(e) => {
                // The bus is closed: shutting down. No PUBACK: redelivered.
                tracing::debug!(error = %e, "bus closed; message left to the broker");
            }
        }
    }
}

impl<S> Session<S> {
    /// The device's fences on its command topic, if they changed since it
    /// was last sent them. Marked as ours, so that this subscription, which
    /// takes the `cmd` subtopic too, leaves it alone.
    fn push_fences(&self, topic: &str, key: &str) {
        let Some(push) = &self.push else { return };
        let Some((user, device)) = key.split_once('/') else {
            return;
        };
        let Some(mut cmd) = push.command(user, device) else {
            return;
        };
        let Ok(permit) = self.pushing.clone().try_acquire_owned() else {
            push.unsent(user, device);
            return;
        };
        cmd["_otstream"] = serde_json::Value::Bool(true);
        let body = cmd.to_string().into_bytes();
        let (client, topic) = (self.client.clone(), format!("{topic}/cmd"));
        let (push, key) = (push.clone(), key.to_owned());
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = client.publish(&topic, body).await {
                tracing::warn!(error = %e, device = %key, "cannot publish the fences command");
                if let Some((user, device)) = key.split_once('/') {
                    push.unsent(user, device);
                }
            }
        });
    }
}

/// Sends PUBACKs in the order the PUBLISHes arrived, each once its message
/// is stored. A message that was not stored stops the line (no later
/// message may be acknowledged before it) and asks for a session resync.
pub(super) async fn ack_in_order(
    client: Client,
    mut rx: mpsc::UnboundedReceiver<(Delivery, AckWaiter)>,
    resync: CancellationToken,
    unacked: Counter,
) {
    let mut pending: VecDeque<(Delivery, AckWaiter)> = VecDeque::new();
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(item) => pending.push_back(item),
                None => return,
            }
        }
        while let Ok(item) = rx.try_recv() {
            pending.push_back(item);
        }
        let Some((publish, waiter)) = pending.pop_front() else {
            continue;
        };
        match waiter.await {
            AckStatus::Delivered => {
                if let Err(e) = client.ack(&publish).await {
                    // The client is going away: the broker redelivers what
                    // it has no PUBACK for once the session is back.
                    tracing::warn!(error = %e, "cannot send a PUBACK; resubscribing");
                    resync.cancel();
                    pending.clear();
                }
            }
            AckStatus::Failed => {
                unacked.increment(1);
                resync.cancel();
                // Everything after it is redelivered with it.
                pending.clear();
            }
        }
    }
}

/// Whether `needle` occurs in `haystack`.
fn memchr_str(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
