//! The test Mosquitto: its address, and publishing at QoS 1.

/// The Mosquitto started by scripts/test.sh. Panics (the test fails, it
/// never skips) when it is not there.
pub fn mqtt_url() -> String {
    std::env::var("OTSTREAM_TEST_MQTT_URL").unwrap_or_else(|_| {
        panic!(
            "OTSTREAM_TEST_MQTT_URL is not set: this test needs a real MQTT broker; \
             run scripts/test.sh, which installs and starts Mosquitto"
        )
    })
}

/// Publishes `messages` (topic, payload) with QoS 1 as a real MQTT client
/// and returns, for each, whether the broker acknowledged it (PUBACK).
pub fn publish_qos1(url: &str, client_id: &str, messages: &[(String, Vec<u8>)]) -> Vec<bool> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    rt.block_on(async {
        use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
        let rest = url.trim_start_matches("mqtt://");
        let (host, port) = rest.rsplit_once(':').unwrap_or((rest, "1883"));
        let mut opts = MqttOptions::new(client_id, host, port.parse().unwrap_or(1883));
        opts.set_keep_alive(std::time::Duration::from_secs(30))
            .set_inflight(100);
        let (client, mut eventloop) = AsyncClient::new(opts, 10);
        let mut acked = vec![false; messages.len()];
        let mut sent_order = std::collections::VecDeque::new();
        let mut by_pkid = std::collections::HashMap::new();
        let publisher = {
            let client = client.clone();
            let messages = messages.to_vec();
            tokio::spawn(async move {
                for (topic, payload) in messages {
                    if client
                        .publish(topic, QoS::AtLeastOnce, false, payload)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            })
        };
        let mut outgoing = 0usize;
        let mut done = 0usize;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
        while done < messages.len() {
            let event = match tokio::time::timeout_at(deadline, eventloop.poll()).await {
                Ok(Ok(e)) => e,
                Ok(Err(e)) => panic!("mqtt publisher: {e}"),
                Err(_) => panic!(
                    "mqtt publisher: {done} of {} acknowledged after 120 s",
                    messages.len()
                ),
            };
            match event {
                Event::Outgoing(Outgoing::Publish(pkid)) => {
                    sent_order.push_back(pkid);
                    by_pkid.insert(pkid, outgoing);
                    outgoing += 1;
                }
                Event::Incoming(Packet::PubAck(a)) => {
                    if let Some(i) = by_pkid.remove(&a.pkid) {
                        acked[i] = true;
                        done += 1;
                    }
                }
                _ => {}
            }
        }
        let _ = publisher.await;
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), eventloop.poll()).await;
        acked
    })
}

/// A subscriber on a thread of its own, collecting every message on a
/// topic filter (QoS 1) until dropped.
pub struct Subscriber {
    /// `(topic, payload)` in arrival order.
    pub got: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Subscriber {
    /// Subscribes to `filter` at `url`; returns once the broker granted it.
    pub fn start(url: &str, client_id: &str, filter: &str) -> Subscriber {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let rest = url.trim_start_matches("mqtt://").to_owned();
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().unwrap_or(1883)),
            None => (rest.clone(), 1883),
        };
        let (g, s, id, filter) = (
            got.clone(),
            stop.clone(),
            client_id.to_owned(),
            filter.to_owned(),
        );
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("runtime: {e}"));
            rt.block_on(async move {
                use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
                let mut opts = MqttOptions::new(id, host, port);
                opts.set_keep_alive(std::time::Duration::from_secs(30));
                let (client, mut events) = AsyncClient::new(opts, 100);
                let _ = client.subscribe(filter, QoS::AtLeastOnce).await;
                while !s.load(Ordering::SeqCst) {
                    let polled =
                        tokio::time::timeout(std::time::Duration::from_millis(100), events.poll())
                            .await;
                    match polled {
                        Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                            let _ = ready_tx.send(());
                        }
                        Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                            g.lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .push((p.topic, String::from_utf8_lossy(&p.payload).into_owned()));
                        }
                        Ok(Err(_)) => {
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await
                        }
                        _ => {}
                    }
                }
                let _ = client.disconnect().await;
            });
        });
        ready_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("no SUBACK from {url}: {e}"));
        Subscriber { got, stop }
    }

    /// What arrived so far.
    pub fn messages(&self) -> Vec<(String, String)> {
        self.got
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
