//! The outgoing step: what the records need before they are stored and
//! told, run by the sink on each batch before it writes it
//! ([`otstream_bus::Step`]: no link of its own). It names places (the
//! offline geocoder: every position's, each trip's ends, each stop's
//! locality) as records arrive, adds the event each device-reported
//! transition is, and appends every event to the outbox queues that want
//! it, durably, before the sink writes the batch.
//! A crash between the append and the sink's write delivers an event
//! again, never loses one (its acks are not settled until the sink's
//! write is durable). A failed append is retried with backoff while
//! nothing more is read: backpressure, not loss.

use std::sync::Arc;

use otstream_bus::{Message, Step, StepEnd};
use otstream_geocode::Geocoder;
use otstream_model::Record;
use otstream_schema::file::{Unwritten, until_done};
use tokio_util::sync::CancellationToken;

use crate::outbox::{Outbox, device_transitions};

/// The step, built from `[geocode]` and `[events]`.
pub struct Outgoing {
    geocoder: Option<Arc<Geocoder>>,
    device_transitions: bool,
    outbox: Option<Outbox>,
    retry_initial_ms: u64,
}

impl Outgoing {
    /// Names places with `geocoder`, adds device transitions' events when
    /// `device_transitions`, appends events to `outbox`, retrying a failed
    /// append from `retry_initial_ms`.
    pub fn new(
        geocoder: Option<Arc<Geocoder>>,
        device_transitions: bool,
        outbox: Option<Outbox>,
        retry_initial_ms: u64,
    ) -> Self {
        Outgoing {
            geocoder,
            device_transitions,
            outbox,
            retry_initial_ms,
        }
    }
}

impl Step<Record> for Outgoing {
    fn arrived(&self, batch: &mut [Message<Record>]) {
        if let Some(g) = &self.geocoder {
            places(g, batch);
        }
    }

    fn waits(&self) -> bool {
        self.outbox.is_some()
    }

    async fn before(
        &self,
        batch: &mut Vec<Message<Record>>,
        shutdown: &CancellationToken,
    ) -> Result<(), StepEnd> {
        if self.device_transitions {
            device_transitions(batch);
        }
        let told = batch.iter().any(|m| matches!(m.value, Record::Event(_)));
        let (Some(ob), true) = (&self.outbox, told) else {
            return Ok(());
        };
        let ob = ob.clone();
        let appended = until_done(
            batch,
            self.retry_initial_ms,
            shutdown,
            "sink",
            "outbox append",
            move |values| ob.append(values, otstream_model::raw::now_ms()),
        )
        .await;
        match appended {
            Ok(_) => Ok(()),
            Err(Unwritten::Stopped) => Err(StepEnd::Stopped),
            Err(Unwritten::Thread(why)) => Err(StepEnd::Failed(why)),
        }
    }
}

/// Fills the places the offline geocoder knows: every position's, each
/// trip's start and end, each stop's locality (a lookup is well under a
/// microsecond).
pub fn places(g: &Geocoder, batch: &mut [Message<Record>]) {
    let find = |lat, lon| {
        g.lookup(lat, lon)
            .map(|p| {
                let mut label = otstream_model::Text::default();
                // Writing to a Text cannot fail.
                let _ = p.write_label(&mut label);
                (label, otstream_model::Text::from(p.cc))
            })
            .unzip()
    };
    for m in batch {
        match &mut m.value {
            Record::Position(p) if p.place.is_none() => (p.place, p.cc) = find(p.lat, p.lon),
            Record::Trip(t) if t.start_place.is_none() => {
                (t.start_place, t.start_cc) = find(t.start_lat, t.start_lon);
                (t.end_place, t.end_cc) = find(t.end_lat, t.end_lon);
            }
            Record::Stop(s) if s.locality.is_none() => (s.locality, s.cc) = find(s.lat, s.lon),
            _ => {}
        }
    }
}
