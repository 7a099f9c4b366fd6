//! The decoder: bytes in, normalized records out, parser scratch reused.

use std::collections::BTreeSet;
use std::sync::Arc;

use otstream_model::ConfigError;

use otstream_model::identity::{self, DEFAULT_TOPIC_PREFIX};
use otstream_model::{DeviceId, IdentityError, Meta, RawMessage, Record, Text, Transport};
use serde::Deserialize;
use simd_json::tape::Tape;
use simd_json::{Buffers, ErrorType, INPUT_PADDING, fill_tape_padded};

use crate::crypto::{self, KeyRing};
use crate::error::{DecodeError, ErrorKind};
use crate::fast;
use crate::normalize::normalize;
use crate::tape::{Val, missing, wrong_type};

/// Limits and conventions for decoding.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeConfig {
    /// Largest payload accepted, bytes. The default, 256 KiB, is far above
    /// what the apps send (a location is ~250 B, a card with a face ~3 KB, a
    /// configuration dump with many waypoints tens of KB) and far below what
    /// would let one message hurt the process.
    #[serde(default = "default_max_payload_bytes")]
    pub max_payload_bytes: usize,
    /// Deepest nesting of objects and arrays accepted. OwnTracks nests at
    /// most five levels (cmd > configuration > waypoints > [] > waypoint);
    /// 32 leaves room for tracker-specific extras and bounds the work.
    #[serde(default = "default_max_depth")]
    pub max_depth: usize,
    /// MQTT topic prefix, `owntracks` as in the apps' default base topic.
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// The device registry: when set, only these devices (`user/device`)
    /// are accepted and any other is refused as `unknown_device`, as Traccar
    /// does. Unset (the default), every device is accepted.
    #[serde(default)]
    pub registry: Option<BTreeSet<String>>,
    /// Where an HTTP message that says nothing of who sent it (no topic,
    /// no X-Limit headers, no authenticated user, no tid) is stored, as
    /// OwnTracks Recorder does: user `owntracks`, device `phone`. Empty
    /// refuses such a message (400 `identity`).
    #[serde(default = "default_user")]
    pub default_user: String,
    /// See `default_user`.
    #[serde(default = "default_device")]
    pub default_device: String,
}

fn default_max_payload_bytes() -> usize {
    256 * 1024
}
fn default_max_depth() -> usize {
    32
}
fn default_topic_prefix() -> String {
    DEFAULT_TOPIC_PREFIX.to_owned()
}
fn default_user() -> String {
    "owntracks".to_owned()
}
fn default_device() -> String {
    "phone".to_owned()
}

impl Default for DecodeConfig {
    fn default() -> Self {
        Self {
            max_payload_bytes: default_max_payload_bytes(),
            max_depth: default_max_depth(),
            topic_prefix: default_topic_prefix(),
            registry: None,
            default_user: default_user(),
            default_device: default_device(),
        }
    }
}

impl DecodeConfig {
    /// Checks the limits make sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_payload_bytes == 0 {
            return Err(ConfigError::new(
                "decode.max_payload_bytes",
                "decode.max_payload_bytes must be at least 1",
            ));
        }
        if self.max_depth < 2 {
            return Err(ConfigError::new(
                "decode.max_depth",
                "decode.max_depth must be at least 2 (an object inside an array)",
            ));
        }
        if (self.default_user.is_empty()) != (self.default_device.is_empty()) {
            return Err(ConfigError::new(
                "decode.default_user",
                "decode.default_user and decode.default_device are both set or both empty",
            ));
        }
        if !self.default_user.is_empty() {
            DeviceId::checked(&self.default_user, &self.default_device).map_err(|e| {
                ConfigError::new(
                    "decode.default_user",
                    format!("decode.default_user/default_device: {e}"),
                )
            })?;
        }
        Ok(())
    }

    /// Where a message with no identity at all is stored, if anywhere.
    pub fn default_identity(&self) -> Option<DeviceId> {
        (!self.default_user.is_empty() && !self.default_device.is_empty())
            .then(|| DeviceId::new(self.default_user.as_str(), self.default_device.as_str()))
    }
}

/// An encrypted envelope seen while walking, opened after the tape that
/// borrows the input is released.
struct Sealed {
    data: String,
    id: Option<DeviceId>,
    topic: Option<String>,
}

/// Decodes OwnTracks payloads into normalized records.
///
/// One decoder per thread: it owns the parser's scratch (the padded input
/// copy, simd-json's buffers and tape), which is reused from one message to
/// the next, so steady-state decoding allocates only the records it returns.
pub struct Decoder {
    config: DecodeConfig,
    keys: Arc<KeyRing>,
    input: Vec<u8>,
    buffers: Buffers,
    tape: Option<Tape<'static>>,
    sealed: Vec<u8>,
    /// Whether the typical location takes [`fast::location`]; off only to
    /// compare the two paths in tests.
    fast: bool,
}

impl Decoder {
    /// A decoder with the given limits and encryption keys.
    pub fn new(config: DecodeConfig, keys: Arc<KeyRing>) -> Self {
        // 4 KiB covers every common payload without growing.
        let buffers = Buffers::with_max_depth(4096, config.max_depth);
        Self {
            config,
            keys,
            input: Vec::new(),
            buffers,
            tape: None,
            sealed: Vec::new(),
            fast: true,
        }
    }

    /// This decoder with the fast path off: every message takes the tape.
    #[cfg(test)]
    pub(crate) fn general_only(mut self) -> Self {
        self.fast = false;
        self
    }

    /// The limits in force.
    pub fn config(&self) -> &DecodeConfig {
        &self.config
    }

    /// Decodes one received message, appending its records to `out` and
    /// returning how many were appended. An empty body (the apps' "clear"
    /// publish) and an empty array yield none. On error nothing is appended.
    pub fn decode(
        &mut self,
        msg: &RawMessage,
        out: &mut Vec<Record>,
    ) -> Result<usize, DecodeError> {
        let start = out.len();
        match self.decode_payload(&msg.payload, msg, None, out) {
            Ok(()) => Ok(out.len() - start),
            Err(e) => {
                out.truncate(start);
                Err(e)
            }
        }
    }

    fn decode_payload(
        &mut self,
        payload: &[u8],
        msg: &RawMessage,
        outer_topic: Option<Option<&str>>,
        out: &mut Vec<Record>,
    ) -> Result<(), DecodeError> {
        if payload.len() > self.config.max_payload_bytes {
            return Err(DecodeError::new(
                ErrorKind::TooLarge,
                format!(
                    "payload of {} bytes exceeds the limit of {} bytes",
                    payload.len(),
                    self.config.max_payload_bytes
                ),
            ));
        }
        // A UTF-8 byte order mark is not JSON, but some HTTP clients add one;
        // it carries no meaning, so it is skipped rather than refused.
        let body = payload.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(payload);
        let body = body.trim_ascii();
        if body.is_empty() {
            return Ok(());
        }

        let walker = Walker {
            config: &self.config,
            msg,
            outer_topic,
        };
        // The typical location skips the tape; anything else, and any
        // location the fast path declines or whose sender is refused, takes
        // the general path, which words every error.
        if self.fast
            && outer_topic.is_none()
            && let Some(found) = fast::location(body, msg.received_at, msg.transport, out)
        {
            let identified = walker.identify(found.topic, found.tid);
            if let (Ok(id), Some(Record::Position(p))) = (identified, out.last_mut()) {
                p.meta.topic = walker.topic(found.topic).map(Text::from);
                (p.meta.user, p.meta.device) = (id.user, id.device);
                return Ok(());
            }
            out.pop();
        }

        let len = body.len();
        self.input.clear();
        self.input.extend_from_slice(body);
        self.input.resize(len + INPUT_PADDING, 0);
        let mut tape: Tape<'_> = self.tape.take().unwrap_or_else(|| Tape(Vec::new())).reset();
        let mut sealed = Vec::new();
        let result = match fill_tape_padded(&mut self.input, len, &mut self.buffers, &mut tape) {
            Ok(()) => walker.root(Val(&tape.0), &mut sealed, out),
            Err(e) => Err(json_error(&e, body)),
        };
        self.tape = Some(tape.reset());
        result?;

        for s in sealed {
            let secret = self.keys.find(s.id.as_ref()).ok_or_else(|| {
                let who =
                    s.id.as_ref()
                        .map_or_else(|| "an unidentified device".into(), |i| i.key());
                DecodeError::new(
                    ErrorKind::NoKey,
                    format!("encrypted message from {who}, and no key is configured for it"),
                )
            })?;
            let mut sealed_bytes = std::mem::take(&mut self.sealed);
            let opened = crypto::unbase64(&s.data, &mut sealed_bytes)
                .and_then(|()| crypto::open(secret, &sealed_bytes));
            self.sealed = sealed_bytes;
            let plaintext = opened?;
            // iOS encrypts the zero-length "clear" publish too: no records.
            self.decode_payload(&plaintext, msg, Some(s.topic.as_deref()), out)?;
        }
        Ok(())
    }
}

fn json_error(e: &simd_json::Error, body: &[u8]) -> DecodeError {
    match e.error() {
        ErrorType::InvalidUtf8 => {
            DecodeError::new(ErrorKind::InvalidUtf8, "payload is not valid UTF-8")
        }
        ErrorType::DepthLimitExceeded => DecodeError::new(
            ErrorKind::TooDeep,
            "objects and arrays nest deeper than the configured limit",
        ),
        _ => {
            let at = e.index();
            let message = match body.get(at) {
                Some(b) if b.is_ascii_graphic() => {
                    format!(
                        "payload is not valid JSON: unexpected '{}' at byte {at}",
                        *b as char
                    )
                }
                Some(b) => {
                    format!("payload is not valid JSON: unexpected byte 0x{b:02x} at byte {at}")
                }
                None => {
                    "payload is not valid JSON: it ends before the value is complete".to_owned()
                }
            };
            DecodeError::new(ErrorKind::InvalidJson, message)
        }
    }
}

/// Walks one parsed document.
struct Walker<'a> {
    config: &'a DecodeConfig,
    msg: &'a RawMessage,
    /// `Some` when decoding the plaintext of an encrypted envelope; holds
    /// the envelope's own `topic`, which the inner message inherits.
    outer_topic: Option<Option<&'a str>>,
}

impl Walker<'_> {
    /// The rules on who may publish: with authentication on, a user only as
    /// itself; with a registry, only registered devices.
    fn admit(&self, id: &DeviceId) -> Result<(), DecodeError> {
        if let Some(auth) = self.msg.hints.auth_user.as_deref() {
            if id.user != auth {
                return Err(DecodeError::new(
                    ErrorKind::Forbidden,
                    format!("user {auth:?} may not publish as {:?}", id.key()),
                ));
            }
        }
        if let Some(registry) = &self.config.registry {
            let key = id.key();
            if !registry.contains(&key) {
                return Err(DecodeError::new(
                    ErrorKind::UnknownDevice,
                    format!("unknown device {key:?}: not in the device registry"),
                ));
            }
        }
        Ok(())
    }

    /// The topic a record keeps: the MQTT one, else the payload's.
    fn topic<'t>(&'t self, payload_topic: Option<&'t str>) -> Option<&'t str> {
        self.msg.hints.mqtt_topic.as_deref().or(payload_topic)
    }

    /// Who sent the message (HTTP without any identity: the configured
    /// default), if they may publish.
    fn identify(&self, topic: Option<&str>, tid: Option<&str>) -> Result<DeviceId, DecodeError> {
        let id = identity::resolve(&self.msg.hints, &self.config.topic_prefix, topic, tid)
            .or_else(|e| match e {
                // HTTP only: an MQTT message always has its topic.
                IdentityError::Missing if self.msg.transport == Transport::Http => {
                    self.config.default_identity().ok_or(e)
                }
                e => Err(e),
            })
            .map_err(|e| {
                let kind = match e {
                    IdentityError::Invalid { .. } => ErrorKind::InvalidIdentity,
                    _ => ErrorKind::Identity,
                };
                DecodeError::new(kind, e.to_string())
            })?;
        self.admit(&id)?;
        Ok(id)
    }

    fn root(
        &self,
        root: Val<'_, '_>,
        sealed: &mut Vec<Sealed>,
        out: &mut Vec<Record>,
    ) -> Result<(), DecodeError> {
        if root.as_object().is_some() {
            return self.message(root, sealed, out);
        }
        // A JSON array of messages: what /pub responses look like, and valid
        // per the OwnTracks schema for message lists.
        let Some(items) = root.as_array() else {
            return Err(DecodeError::new(
                ErrorKind::NotAnObject,
                format!("expected a JSON object, found {}", root.type_name()),
            ));
        };
        for (i, item) in items.enumerate() {
            if item.as_object().is_none() {
                return Err(DecodeError::new(
                    ErrorKind::NotAnObject,
                    format!(
                        "array element {i}: expected a JSON object, found {}",
                        item.type_name()
                    ),
                ));
            }
            self.message(item, sealed, out)?;
        }
        Ok(())
    }

    fn message(
        &self,
        obj: Val<'_, '_>,
        sealed: &mut Vec<Sealed>,
        out: &mut Vec<Record>,
    ) -> Result<(), DecodeError> {
        let (mut kind, mut topic, mut tid, mut data) = (None, None, None, None);
        for (k, v) in obj.as_object().into_iter().flatten() {
            match k {
                "_type" => kind = Some(v),
                "topic" => topic = v.as_str(),
                "tid" => tid = v.as_str(),
                "data" => data = Some(v),
                _ => {}
            }
        }
        let kind = match kind.map(|v| (v, v.as_str())) {
            Some((_, Some(k))) if !k.is_empty() => k,
            Some((v, None)) if !v.is_null() => return Err(wrong_type("_type", "a string", v)),
            _ => {
                return Err(DecodeError::field(
                    ErrorKind::MissingType,
                    "_type",
                    "missing `_type`: cannot tell what kind of message this is",
                ));
            }
        };
        let topic = topic.or(self.outer_topic.flatten());

        if kind == "encrypted" {
            if self.outer_topic.is_some() {
                return Err(DecodeError::new(
                    ErrorKind::NestedEncryption,
                    "an encrypted message inside an encrypted message",
                ));
            }
            let data = data
                .filter(|v| !v.is_null())
                .ok_or_else(|| missing("data"))?;
            let text = data
                .as_str()
                .ok_or_else(|| wrong_type("data", "a base64 string", data))?;
            let id = identity::resolve(&self.msg.hints, &self.config.topic_prefix, topic, tid);
            sealed.push(Sealed {
                data: text.to_owned(),
                id: id.ok(),
                topic: topic.map(str::to_owned),
            });
            return Ok(());
        }

        // Content is checked before identity: "missing `lat`" tells a sender
        // more than "who are you?" does, and a valid message is rarely
        // anonymous. The identity is filled in once the records exist.
        let meta = Meta {
            user: Text::default(),
            device: Text::default(),
            tid: tid.map(Text::from),
            received_at: self.msg.received_at,
            transport: self.msg.transport,
            topic: self.topic(topic).map(Text::from),
        };
        let start = out.len();
        normalize(kind, obj, meta, out)?;
        let id = self.identify(topic, tid)?;
        if let Some((last, rest)) = out[start..].split_last_mut() {
            for m in rest.iter_mut().filter_map(Record::meta_mut) {
                m.user.clone_from(&id.user);
                m.device.clone_from(&id.device);
            }
            if let Some(m) = last.meta_mut() {
                m.user = id.user;
                m.device = id.device;
            }
        }
        Ok(())
    }
}
