//! Canonical device identity: `user/device`.
//!
//! OwnTracks never sends one field that says who is talking, so identity is
//! assembled from what the transport and the payload offer, in a fixed order
//! (DESIGN.md, "Identity"):
//!
//! 1. MQTT: the topic the message arrived on, `<prefix>/<user>/<device>[/sub]`.
//! 2. HTTP: the payload's `topic` field (Traccar's rule; iOS sends it),
//! 3. then the `X-Limit-U` / `X-Limit-D` headers the apps send,
//! 4. then the Basic-auth user plus the payload's `tid`,
//! 5. then `tid` alone, under the reserved user [`TID_USER`].
//!
//! `tid` is always kept as a column of its own, whichever rule applied.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::record::Text;

/// FNV-1a of `s`: stable across processes and releases, unlike std's
/// hasher, so what is stored or sent with it keeps its meaning.
pub fn stable_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The default MQTT topic prefix the apps publish under.
pub const DEFAULT_TOPIC_PREFIX: &str = "owntracks";

/// The user part given to devices known only by their `tid`. The leading
/// underscore follows OwnTracks' own convention for metadata keys (`_type`,
/// `_id`), so it cannot be mistaken for a user someone chose.
pub const TID_USER: &str = "_tid";

/// The longest user or device name taken, in bytes: longer is refused
/// (`invalid_identity`) rather than stored as a key in every table.
pub const MAX_NAME_BYTES: usize = 128;

/// A device's canonical identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DeviceId {
    /// The user (MQTT topic level 2, `X-Limit-U`, or the authenticated user).
    pub user: Text,
    /// The device (MQTT topic level 3, `X-Limit-D`, or the `tid`).
    pub device: Text,
}

impl DeviceId {
    /// A device id from its two parts.
    pub fn new(user: impl Into<Text>, device: impl Into<Text>) -> Self {
        Self {
            user: user.into(),
            device: device.into(),
        }
    }

    /// A device id whose parts are usable names: at most
    /// [`MAX_NAME_BYTES`] bytes, no control characters.
    pub fn checked(user: &str, device: &str) -> Result<Self, IdentityError> {
        for (part, name) in [("user", user), ("device", device)] {
            if name.len() > MAX_NAME_BYTES {
                return Err(IdentityError::Invalid {
                    part,
                    why: format!("is {} bytes long, at most {MAX_NAME_BYTES}", name.len()),
                });
            }
            if name.chars().any(char::is_control) {
                return Err(IdentityError::Invalid {
                    part,
                    why: "has a control character".to_owned(),
                });
            }
        }
        // The key of the proximity rules' fixes and state: a device of
        // this user would share their partition key in `state`.
        if user == crate::Near::USER {
            return Err(IdentityError::Invalid {
                part: "user",
                why: format!(
                    "{:?} is reserved (otstream's proximity rules)",
                    crate::Near::USER
                ),
            });
        }
        Ok(Self::new(user, device))
    }

    /// The bus key for this device: `user/device`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.user, self.device)
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.user, self.device)
    }
}

/// What the transport knows about the sender, before the payload is read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityHints {
    /// The MQTT topic the message was published on.
    pub mqtt_topic: Option<String>,
    /// The `X-Limit-U` HTTP header (the app's configured user name).
    pub x_limit_u: Option<String>,
    /// The `X-Limit-D` HTTP header (the app's configured device name).
    pub x_limit_d: Option<String>,
    /// The user that passed HTTP Basic authentication, if any.
    pub auth_user: Option<String>,
}

/// Why no identity could be established.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// An MQTT topic that does not name a user and a device.
    #[error("topic {topic:?} does not have the form <prefix>/<user>/<device>[/subtopic]")]
    BadTopic {
        /// The offending topic.
        topic: String,
    },
    /// Nothing in the transport or the payload says who sent the message.
    #[error(
        "no identity: no MQTT topic, no payload topic, no X-Limit-U header, no authenticated user and no tid"
    )]
    Missing,
    /// A user or device name that cannot be a key.
    #[error("the {part} name {why}")]
    Invalid {
        /// `user` or `device`.
        part: &'static str,
        /// What is wrong with it.
        why: String,
    },
}

/// A topic split into its identity and its subtopic (`event`, `info`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicParts<'a> {
    /// The user level.
    pub user: &'a str,
    /// The device level.
    pub device: &'a str,
    /// What follows the device level, without the leading slash; empty for
    /// the base topic.
    pub subtopic: &'a str,
}

/// Splits an OwnTracks topic. The configured prefix (which may itself have
/// several levels) is stripped when present; otherwise the first level is
/// taken as the prefix, as OwnTracks Recorder does, so that apps configured
/// with another base topic (`public/user/device`) are still understood.
pub fn parse_topic<'a>(topic: &'a str, prefix: &str) -> Option<TopicParts<'a>> {
    let rest = match topic.strip_prefix(prefix).and_then(|r| r.strip_prefix('/')) {
        Some(rest) if !prefix.is_empty() => rest,
        _ => topic.split_once('/')?.1,
    };
    let (user, rest) = rest.split_once('/')?;
    let (device, subtopic) = match rest.split_once('/') {
        Some((device, sub)) => (device, sub),
        None => (rest, ""),
    };
    if user.is_empty() || device.is_empty() {
        return None;
    }
    Some(TopicParts {
        user,
        device,
        subtopic,
    })
}

/// The user and password of an HTTP `Authorization: Basic ...` value, as
/// sent (nothing is verified here). The password may hold colons; the user
/// cannot.
pub fn basic_credentials(value: &str) -> Option<(String, String)> {
    use base64::Engine as _;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn non_empty(s: Option<&str>) -> Option<&str> {
    s.map(str::trim).filter(|s| !s.is_empty())
}

/// Resolves the identity of a message from the transport hints and the
/// payload's own `topic` and `tid` fields, in the order the module explains.
pub fn resolve(
    hints: &IdentityHints,
    prefix: &str,
    payload_topic: Option<&str>,
    tid: Option<&str>,
) -> Result<DeviceId, IdentityError> {
    if let Some(topic) = hints.mqtt_topic.as_deref() {
        return parse_topic(topic, prefix)
            .ok_or_else(|| IdentityError::BadTopic {
                topic: topic.to_owned(),
            })
            .and_then(|p| DeviceId::checked(p.user, p.device));
    }
    if let Some(parts) = non_empty(payload_topic).and_then(|t| parse_topic(t, prefix)) {
        return DeviceId::checked(parts.user, parts.device);
    }
    let tid = non_empty(tid);
    if let Some(user) = non_empty(hints.x_limit_u.as_deref()) {
        // Home Assistant's rule when X-Limit-D is missing: the device is
        // named after the user; we prefer the tid when there is one.
        let device = non_empty(hints.x_limit_d.as_deref())
            .or(tid)
            .unwrap_or(user);
        return DeviceId::checked(user, device);
    }
    if let Some(user) = non_empty(hints.auth_user.as_deref()) {
        return DeviceId::checked(user, tid.unwrap_or(user));
    }
    match tid {
        Some(tid) => DeviceId::checked(TID_USER, tid),
        None => Err(IdentityError::Missing),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mqtt(topic: &str) -> IdentityHints {
        IdentityHints {
            mqtt_topic: Some(topic.into()),
            ..Default::default()
        }
    }

    #[test]
    fn names_too_long_or_with_control_characters_are_refused() {
        let long = "u".repeat(129);
        let hints = IdentityHints {
            x_limit_u: Some(long),
            x_limit_d: Some("phone".into()),
            ..Default::default()
        };
        assert_eq!(
            resolve(&hints, "owntracks", None, None)
                .unwrap_err()
                .to_string(),
            "the user name is 129 bytes long, at most 128"
        );
        let e = resolve(&mqtt("owntracks/jane/ph\u{7}one"), "owntracks", None, None);
        assert_eq!(
            e.unwrap_err().to_string(),
            "the device name has a control character"
        );
        let exactly = "d".repeat(128);
        assert_eq!(
            DeviceId::checked("jane", &exactly).map(|d| d.device.len()),
            Ok(128)
        );
    }

    #[test]
    fn basic_credentials_split_at_the_first_colon() {
        // "jane:s3cret:x"
        assert_eq!(
            basic_credentials("Basic amFuZTpzM2NyZXQ6eA=="),
            Some(("jane".into(), "s3cret:x".into()))
        );
        assert_eq!(basic_credentials("Bearer abc"), None);
        assert_eq!(basic_credentials("Basic !!!"), None);
        // "jane" with no colon is no credentials.
        assert_eq!(basic_credentials("Basic amFuZQ=="), None);
    }

    #[test]
    fn topic_with_prefix_and_subtopic() {
        let p = parse_topic("owntracks/jane/phone/event", "owntracks").unwrap();
        assert_eq!((p.user, p.device, p.subtopic), ("jane", "phone", "event"));
        let p = parse_topic("owntracks/jane/phone", "owntracks").unwrap();
        assert_eq!((p.user, p.device, p.subtopic), ("jane", "phone", ""));
    }

    #[test]
    fn multi_level_prefix_and_foreign_prefix() {
        let p = parse_topic("fleet/eu/jane/phone/info", "fleet/eu").unwrap();
        assert_eq!((p.user, p.device, p.subtopic), ("jane", "phone", "info"));
        // Recorder's rule: an unknown first level is taken as the prefix.
        let p = parse_topic("public/user/FFA4", "owntracks").unwrap();
        assert_eq!((p.user, p.device), ("user", "FFA4"));
    }

    #[test]
    fn short_or_empty_topics_are_refused() {
        assert_eq!(parse_topic("owntracks/jane", "owntracks"), None);
        assert_eq!(parse_topic("owntracks//phone", "owntracks"), None);
        assert_eq!(parse_topic("owntracks", "owntracks"), None);
        let e = resolve(&mqtt("owntracks/jane"), "owntracks", None, Some("JJ")).unwrap_err();
        assert_eq!(
            e,
            IdentityError::BadTopic {
                topic: "owntracks/jane".into()
            }
        );
    }

    #[test]
    fn unicode_and_spaces_survive() {
        let id = resolve(
            &mqtt("owntracks/jürgen/iPhone 12 Pro"),
            "owntracks",
            None,
            None,
        )
        .unwrap();
        assert_eq!(id.key(), "jürgen/iPhone 12 Pro");
    }

    #[test]
    fn mqtt_topic_wins_over_payload() {
        let id = resolve(
            &mqtt("owntracks/a/b/cmd"),
            "owntracks",
            Some("owntracks/c/d"),
            Some("JJ"),
        )
        .unwrap();
        assert_eq!(id, DeviceId::new("a", "b"));
    }

    #[test]
    fn http_order_topic_then_headers_then_auth_then_tid() {
        let mut h = IdentityHints {
            x_limit_u: Some("u".into()),
            x_limit_d: Some("d".into()),
            auth_user: Some("auth".into()),
            ..Default::default()
        };
        let topic = Some("owntracks/jane/phone/event");
        assert_eq!(
            resolve(&h, "owntracks", topic, Some("JJ")).unwrap(),
            DeviceId::new("jane", "phone")
        );
        assert_eq!(
            resolve(&h, "owntracks", None, Some("JJ")).unwrap(),
            DeviceId::new("u", "d")
        );
        h.x_limit_d = None;
        assert_eq!(
            resolve(&h, "owntracks", None, Some("JJ")).unwrap(),
            DeviceId::new("u", "JJ")
        );
        assert_eq!(
            resolve(&h, "owntracks", None, None).unwrap(),
            DeviceId::new("u", "u")
        );
        h.x_limit_u = None;
        assert_eq!(
            resolve(&h, "owntracks", None, Some("JJ")).unwrap(),
            DeviceId::new("auth", "JJ")
        );
        h.auth_user = None;
        assert_eq!(
            resolve(&h, "owntracks", None, Some("JJ")).unwrap(),
            DeviceId::new("_tid", "JJ")
        );
        assert_eq!(
            resolve(&h, "owntracks", None, Some(" ")),
            Err(IdentityError::Missing)
        );
    }

    #[test]
    fn unparsable_payload_topic_falls_through() {
        let h = IdentityHints::default();
        assert_eq!(
            resolve(&h, "owntracks", Some("nonsense"), Some("JJ")).unwrap(),
            DeviceId::new("_tid", "JJ")
        );
    }
}
