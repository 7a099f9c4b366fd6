//! OwnTracks Recorder's store: `rec/<user>/<device>/YYYY-MM.rec`, a line
//! per message: ISO-8601 time, TAB, the relative topic padded to 18
//! characters (`*` for the device's own topic, else the subtopic:
//! `event`, `waypoint`, `cmd`, ...), TAB, the JSON payload as received.

use std::io::BufRead;
use std::path::Path;

use otstream_model::{IdentityHints, RawMessage, Transport};

use crate::{Context, Identity, Item};

/// `<user>/<device>` from `.../<user>/<device>/<file>.rec`.
pub fn identity_from_path(path: &Path) -> Option<Identity> {
    let device = path.parent()?;
    let user = device.parent()?;
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    Some(Identity {
        user: name(user)?,
        device: name(device)?,
    })
}

/// One line as the message Recorder received: published on
/// `<prefix>/<user>/<device>[/<subtopic>]`.
pub fn line(line: &str, identity: &Identity, ctx: &Context) -> Item {
    let mut parts = line.splitn(3, '\t');
    let (Some(time), Some(topic), Some(payload)) = (parts.next(), parts.next(), parts.next())
    else {
        return Item::Skipped("rec line: not TIME<TAB>TOPIC<TAB>PAYLOAD".into());
    };
    if crate::parse_time(time).is_none() {
        return Item::Skipped(format!("rec line: {time:?} is not an ISO-8601 time"));
    }
    let topic = topic.trim();
    let mut full = format!("{}/{}/{}", ctx.topic_prefix, identity.user, identity.device);
    if !topic.is_empty() && topic != "*" {
        full.push('/');
        full.push_str(topic);
    }
    Item::Message(RawMessage {
        received_at: ctx.received_at,
        transport: Transport::Mqtt,
        hints: IdentityHints {
            mqtt_topic: Some(full),
            ..IdentityHints::default()
        },
        remote_addr: None,
        payload: payload.trim_end().as_bytes().to_vec(),
    })
}

/// Every line of a `.rec` file.
pub fn read(
    reader: impl BufRead,
    identity: &Identity,
    ctx: &Context,
    emit: &mut dyn FnMut(Item) -> bool,
) -> std::io::Result<()> {
    crate::each_line(reader, &mut |l| emit(line(l, identity, ctx)))
}
