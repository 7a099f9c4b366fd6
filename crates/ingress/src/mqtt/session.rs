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
    pub(super) ack_tx: mpsc::UnboundedSender<(Delivery, AckWaiter, PushTo)>,
    pub(super) resync: CancellationToken,
    pub(super) meters: Meters,
    pub(super) config: MqttConfig,
    pub(super) push: Option<std::sync::Arc<crate::push::Push>>,
}

/// A device to send its fences once its location is stored: user,
/// device, and its command topic.
pub(super) type PushTo = Option<(String, String, String)>;

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
            let _ = self.ack_tx.send((p, done, None));
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
        let push_to = self.push_to(&p, &key);
        match self.output.send(Message::new(key, raw, ack)).await {
            // QoS 0 messages have nothing to acknowledge; the FIFO keeps
            // them only if they carry a packet id.
            Ok(()) => {
                let _ = self.ack_tx.send((p, done, push_to));
            }
            Err(e) => {
                // The bus is closed: shutting down. No PUBACK: redelivered.
                tracing::debug!(error = %e, "bus closed; message left to the broker");
            }
        }
    }
}

impl<S> Session<S> {
    /// Whom `p` asks to be sent its fences: a location (not a retained
    /// copy, not a last will, not anything else) on the device's own topic,
    /// when fences are pushed.
    fn push_to(&self, p: &Delivery, key: &str) -> PushTo {
        self.push.as_ref()?;
        #[derive(serde::Deserialize)]
        struct Kind<'a> {
            #[serde(rename = "_type", borrow)]
            kind: &'a str,
        }
        let topic = p.topic();
        if p.retained() || topic != format!("{}/{key}", self.prefix) {
            return None;
        }
        let kind: Kind<'_> = serde_json::from_slice(p.payload()).ok()?;
        if kind.kind != "location" {
            return None;
        }
        let (user, device) = key.split_once('/')?;
        Some((user.to_owned(), device.to_owned(), format!("{topic}/cmd")))
    }
}

/// The device's fences on its command topic, if they changed since it was
/// last sent them (only the fences for everyone: anyone allowed to read
/// the topic reads them). Marked as ours, so that this subscription, which
/// takes the `cmd` subtopic too, leaves it alone.
async fn push_fences(
    client: &Client,
    push: &crate::push::Push,
    (user, device, topic): (String, String, String),
) {
    let Some(mut cmd) = push.command_for_everyone(&user, &device) else {
        return;
    };
    cmd["_otstream"] = serde_json::Value::Bool(true);
    if let Err(e) = client.publish(&topic, cmd.to_string().into_bytes()).await {
        tracing::warn!(error = %e, %user, %device, "cannot publish the fences command");
        push.unsent(&user, &device);
    }
}

/// Sends PUBACKs in the order the PUBLISHes arrived, each once its message
/// is stored. A message that was not stored stops the line (no later
/// message may be acknowledged before it) and asks for a session resync.
/// A location's fences are pushed here, once it is stored: never for what
/// was not, and never from the session's loop, which is what empties the
/// client's queue.
pub(super) async fn ack_in_order(
    client: Client,
    mut rx: mpsc::UnboundedReceiver<(Delivery, AckWaiter, PushTo)>,
    resync: CancellationToken,
    unacked: Counter,
    push: Option<std::sync::Arc<crate::push::Push>>,
) {
    let mut pending: VecDeque<(Delivery, AckWaiter, PushTo)> = VecDeque::new();
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
        let Some((publish, waiter, push_to)) = pending.pop_front() else {
            continue;
        };
        match waiter.await {
            AckStatus::Delivered => {
                if let (Some(push), Some(to)) = (&push, push_to) {
                    push_fences(&client, push, to).await;
                }
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
