//! `GET /api/v1/live`: server-sent events of positions, transitions and
//! events (rules' alerts among them) as they are stored, never before. The
//! sink publishes each committed position, transition and event on a
//! broadcast channel (only while someone
//! listens); every client gets its own receiver, filtered by what it may
//! read. A client too slow for the channel's capacity skips what it
//! missed and is told so (`event: lagged`), so one slow browser never
//! holds back the sink or the others.

use std::time::Duration;

use crate::read::format::{Feature, position_json};
use crate::read::rows::Str;
use crate::read::{Position, Transition, Visible};
use bytes::Bytes;
use otstream_http::FallbackBody;
use otstream_model::Record;
use tokio::sync::{OwnedSemaphorePermit, broadcast};
use tokio_util::sync::CancellationToken;

use crate::body;

/// Records a slow client may fall behind by before it skips ahead.
pub const LIVE_CAPACITY: usize = 4096;

/// A comment line every so often keeps proxies from closing an idle
/// stream and lets the browser notice a dead server.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The channel the sink publishes committed records on.
pub fn channel() -> broadcast::Sender<Record> {
    broadcast::channel(LIVE_CAPACITY).0
}

/// A stored position as the read API writes it.
pub fn position_row(p: &otstream_model::Position) -> Position {
    let m = &p.meta;
    let text = |t: &Option<otstream_model::Text>| t.as_ref().map(|s| Str::from(s.as_str()));
    Position {
        user: Str::from(m.user.as_str()),
        device: Str::from(m.device.as_str()),
        tid: text(&m.tid),
        tst: p.tst,
        lat: p.lat,
        lon: p.lon,
        acc: p.acc,
        alt: p.alt,
        vac: p.vac,
        vel: p.vel,
        cog: p.cog,
        batt: p.batt,
        bs: p.bs,
        t: text(&p.t),
        conn: text(&p.conn),
        p: p.p,
        m: p.m,
        ssid: text(&p.ssid),
        bssid: text(&p.bssid),
        created_at: p.created_at,
        inregions: p.inregions.iter().map(|s| Str::from(s.as_str())).collect(),
        inrids: p.inrids.iter().map(|s| Str::from(s.as_str())).collect(),
        topic: text(&m.topic),
        received_at: m.received_at,
    }
}

/// A stored transition as the read API writes it.
pub fn transition_row(t: &otstream_model::Transition) -> Transition {
    let m = &t.meta;
    let text = |t: &Option<otstream_model::Text>| t.as_ref().map(|s| s.as_str().to_owned());
    Transition {
        user: m.user.as_str().to_owned(),
        device: m.device.as_str().to_owned(),
        tid: text(&m.tid),
        tst: t.tst,
        wtst: t.wtst,
        lat: t.lat,
        lon: t.lon,
        acc: t.acc,
        event: t.event.as_str().to_owned(),
        desc: text(&t.desc),
        rid: text(&t.rid),
        t: text(&t.t),
        source: t.source.as_str().to_owned(),
        received_at: m.received_at,
    }
}

/// One record as an event, if it is one the client may see (`events`:
/// whether it may see events at all).
fn event(r: &Record, visible: &Visible, events: bool) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(512);
    match r {
        Record::Position(p) if visible.allows(&p.meta.user, &p.meta.device) => {
            out.extend_from_slice(b"event: position\ndata: ");
            position_json(&mut out, &position_row(p));
        }
        Record::Transition(t) if visible.allows(&t.meta.user, &t.meta.device) => {
            out.extend_from_slice(b"event: transition\ndata: ");
            transition_row(t).members(&mut out);
        }
        // As the outboxes deliver it: one line of JSON, as SSE needs.
        // A proximity event names a second device (`peer`): shown only to
        // a client that may see that one too.
        Record::Event(e)
            if events
                && visible.allows(&e.meta.user, &e.meta.device)
                && e.peer.as_deref().is_none_or(|peer| {
                    peer.split_once('/')
                        .is_some_and(|(u, d)| visible.allows(u, d))
                }) =>
        {
            out.extend_from_slice(b"event: event\ndata: ");
            out.extend_from_slice(e.to_json().as_bytes());
        }
        _ => return None,
    }
    out.extend_from_slice(b"\n\n");
    Some(out)
}

/// The event stream for one client.
pub fn stream(
    live: &broadcast::Sender<Record>,
    visible: Visible,
    events: bool,
    shutdown: CancellationToken,
    place: OwnedSemaphorePermit,
    recheck: crate::access::Recheck,
) -> FallbackBody {
    let mut rx = live.subscribe();
    let (tx, body) = body::channel();
    tokio::spawn(async move {
        // The stream's place in the live budget, given back when it ends.
        let _place = place;
        let hello = Bytes::from_static(b"retry: 2000\n: connected\n\n");
        if tx.send(Ok(hello)).await.is_err() {
            return;
        }
        let mut tick = tokio::time::interval(KEEP_ALIVE);
        tick.tick().await;
        let mut again = tokio::time::interval(crate::access::RECHECK);
        again.tick().await;
        loop {
            let out = tokio::select! {
                () = shutdown.cancelled() => return,
                _ = again.tick() => {
                    if recheck.holds().await {
                        continue;
                    }
                    // Revoked or expired: said, then the stream ends (the
                    // browser's reconnection meets the 401).
                    let _ = tx.send(Ok(Bytes::from_static(b"event: revoked\ndata: {}\n\n"))).await;
                    return;
                }
                _ = tick.tick() => Bytes::from_static(b": keep-alive\n\n"),
                r = rx.recv() => match r {
                    Ok(record) => match event(&record, &visible, events) {
                        Some(e) => Bytes::from(e),
                        None => continue,
                    },
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        Bytes::from(format!("event: lagged\ndata: {{\"missed\":{n}}}\n\n"))
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            if tx.send(Ok(out)).await.is_err() {
                return;
            }
        }
    });
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use otstream_model::{Event, EventKind, Meta, Transport};

    fn jane_phone() -> Meta {
        Meta {
            user: "jane".into(),
            device: "phone".into(),
            tid: None,
            received_at: 1,
            transport: Transport::Http,
            topic: None,
        }
    }

    /// Events name fences and rules: a share link or a token of last
    /// positions (`events` false) is never sent one; a reader of history is.
    #[test]
    fn events_go_only_to_readers_of_history() {
        let meta = jane_phone();
        let e = Event::new(EventKind::Enter, meta, 10, (1.0, 2.0), Some("Depot".into()))
            .for_rule("depot-in");
        let r = Record::Event(e);
        assert_eq!(event(&r, &Visible::All, false), None);
        let sent = String::from_utf8(event(&r, &Visible::All, true).unwrap_or_default())
            .unwrap_or_default();
        assert!(
            sent.starts_with("event: event\ndata: {\"id\":\"enter:jane/phone:10:Depot#depot-in\""),
            "{sent}"
        );
        assert!(sent.ends_with("}\n\n"), "{sent}");
    }

    /// A proximity event says where a second device is (its distance from
    /// the first): a reader who may see only the first is not sent it.
    #[test]
    fn a_proximity_event_goes_only_to_readers_of_both_devices() {
        let meta = jane_phone();
        let e = Event {
            peer: Some("bob/car".into()),
            distance: Some(42.0),
            near: Some(true),
            ..Event::new(EventKind::Proximity, meta, 10, (1.0, 2.0), None).for_rule("close")
        };
        let r = Record::Event(e);
        let jane = Visible::Some {
            users: vec!["jane".into()],
            devices: vec![],
        };
        assert_eq!(event(&r, &jane, true), None);
        let both = Visible::Some {
            users: vec!["jane".into()],
            devices: vec![("bob".into(), "car".into())],
        };
        assert!(event(&r, &both, true).is_some());
        assert!(event(&r, &Visible::All, true).is_some());
    }
}
