//! Every route's deliverer as one side job of the topology, stopped after
//! the sink (what the sink appended last is delivered at the next start if
//! not now).

use std::time::Duration;

use crate::outbox::Outbox;
use otstream_bus::Stage;
use otstream_mqtt::MqttConfig;
use tokio_util::sync::CancellationToken;

use crate::config::MQTT_ROUTE;
use crate::mqtt::Mqtt;
use crate::{EventsConfig, EventsError, Webhook, deliver};

/// The deliverers of the routes `[events]` names, each reading its queue.
pub struct Deliverers {
    routes: Vec<(String, Route)>,
    max_age: Duration,
}

enum Route {
    Webhook(crate::outbox::Reader, Box<Webhook>),
    Mqtt(crate::outbox::Reader, Box<Mqtt>),
}

impl Deliverers {
    /// A deliverer for each destination of `config` on its queue in
    /// `outbox`; MQTT falls back to the ingress's broker (`ingress`).
    pub fn new(
        config: &EventsConfig,
        ingress: Option<&MqttConfig>,
        outbox: &Outbox,
    ) -> Result<Deliverers, EventsError> {
        let mut routes = Vec::new();
        for w in &config.webhooks {
            let reader = outbox.reader(&w.name())?;
            let hook = Webhook::new(w)?;
            // Labelled, never named by its URL (a hook's URL can be its secret).
            let label = w.label();
            tracing::info!(route = %label, origin = %w.origin(), "events webhook");
            routes.push((label, Route::Webhook(reader, Box::new(hook))));
        }
        if config.mqtt.enabled {
            let reader = outbox.reader(MQTT_ROUTE)?;
            let mqtt = Mqtt::new(&config.mqtt, ingress)?;
            tracing::info!(topic = %config.mqtt.topic, "events published to MQTT");
            routes.push((MQTT_ROUTE.to_owned(), Route::Mqtt(reader, Box::new(mqtt))));
        }
        Ok(Deliverers {
            routes,
            max_age: config.max_age(),
        })
    }

    /// Whether there is nothing to deliver to.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

impl Stage<(), ()> for Deliverers {
    type Error = EventsError;

    /// Runs every route until `shutdown`; the first that fails ends them all.
    async fn run(
        self,
        _input: (),
        _output: (),
        shutdown: CancellationToken,
    ) -> Result<(), EventsError> {
        let mut set = tokio::task::JoinSet::new();
        for (name, route) in self.routes {
            let stop = shutdown.clone();
            match route {
                Route::Webhook(r, w) => set.spawn(deliver(name, r, *w, self.max_age, stop)),
                Route::Mqtt(r, m) => set.spawn(deliver(name, r, *m, self.max_age, stop)),
            };
        }
        while let Some(done) = set.join_next().await {
            done.map_err(|e| EventsError::Thread(e.to_string()))??;
        }
        Ok(())
    }
}
