//! The step before the sink: what the records need before they are stored
//! and told. It names places (the offline geocoder: every position's, each
//! trip's ends, each stop's locality), adds the event each
//! device-reported transition is, and appends every event to the outbox
//! queues that want it, durably, before passing the batch on to the sink.
//! A crash between the append and the sink's write delivers an event
//! again, never loses one (its acks are not settled until the sink's
//! write is durable). So an event may reach its destination a little
//! before its rows can be read back: by the sink's batching and the link
//! between them at most. A failed append is retried with backoff while
//! nothing more is read: backpressure, not loss.

use std::sync::Arc;

use otstream_bus::{Message, Receiver, Sender, Stage};
use otstream_geocode::Geocoder;
use otstream_model::Record;
use otstream_schema::file::{Unwritten, until_done};
use tokio_util::sync::CancellationToken;

use crate::EventsError;
use crate::outbox::{Outbox, device_transitions};

/// Most records taken at a time: a batch's outbox append is one
/// transaction.
const BATCH: usize = 4096;

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

    /// Whether it would pass every record on as it came.
    pub fn is_idle(&self) -> bool {
        self.geocoder.is_none() && !self.device_transitions && self.outbox.is_none()
    }
}

impl<R: Receiver<Record>, S: Sender<Record>> Stage<R, S> for Outgoing {
    type Error = EventsError;

    async fn run(
        self,
        mut input: R,
        output: S,
        shutdown: CancellationToken,
    ) -> Result<(), EventsError> {
        let mut batch: Vec<Message<Record>> = Vec::new();
        loop {
            let n = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                n = input.recv_many(&mut batch, BATCH) => n,
            };
            if n == 0 {
                return Ok(());
            }
            if let Some(g) = &self.geocoder {
                places(g, &mut batch);
            }
            if self.device_transitions {
                device_transitions(&mut batch);
            }
            let told = batch.iter().any(|m| matches!(m.value, Record::Event(_)));
            if let (Some(ob), true) = (&self.outbox, told) {
                let ob = ob.clone();
                let appended = until_done(
                    &mut batch,
                    self.retry_initial_ms,
                    &shutdown,
                    "outgoing",
                    "outbox append",
                    move |values| ob.append(values, otstream_model::raw::now_ms()),
                )
                .await;
                match appended {
                    Ok(_) => {}
                    // Unacknowledged: it comes again.
                    Err(Unwritten::Stopped) => return Ok(()),
                    Err(Unwritten::Thread(why)) => return Err(EventsError::Thread(why)),
                }
            }
            // The next batch's buffer, sized by this one's.
            let out = std::mem::replace(&mut batch, Vec::with_capacity(n));
            tokio::select! {
                // Stopped hard: what is not stored stays unacknowledged.
                () = shutdown.cancelled() => return Ok(()),
                sent = output.send_all(out) => if sent.is_err() {
                    return Err(EventsError::OutputClosed);
                }
            }
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
