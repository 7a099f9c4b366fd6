//! Why a payload was not turned into records.

use std::borrow::Cow;
use std::fmt;

use otstream_model::identity;
use otstream_model::{DeadLetter, RawMessage, Text};

/// The bounded set of reasons a payload is refused. [`ErrorKind::code`] is
/// stable and low-cardinality: it is used as a metric label and as the
/// `kind` of a dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The body is larger than the configured limit.
    TooLarge,
    /// The body is not valid UTF-8.
    InvalidUtf8,
    /// The body is not JSON.
    InvalidJson,
    /// Objects and arrays nest deeper than the configured limit.
    TooDeep,
    /// The JSON is not an object (nor an array of objects).
    NotAnObject,
    /// The object has no usable `_type`.
    MissingType,
    /// A required field is absent or null.
    MissingField,
    /// A field has a JSON type that cannot be read as what it means.
    InvalidType,
    /// A field's value is outside its range.
    OutOfRange,
    /// A field's value is not one of the values it may take.
    InvalidValue,
    /// Nothing says which device sent the message, or its topic is malformed.
    Identity,
    /// A user or device name that cannot be a key: longer than 128 bytes,
    /// or with a control character.
    InvalidIdentity,
    /// An encrypted message for a user without a configured key.
    NoKey,
    /// Encrypted data that is not base64 or too short to hold nonce and MAC.
    BadCiphertext,
    /// Decryption failed: wrong key, or the data was tampered with.
    DecryptFailed,
    /// An encrypted message inside an encrypted message.
    NestedEncryption,
    /// The device is not in the device registry, which is required.
    UnknownDevice,
    /// An authenticated user publishing as another user.
    Forbidden,
}

impl ErrorKind {
    /// The stable snake_case code.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::TooLarge => "too_large",
            ErrorKind::InvalidUtf8 => "invalid_utf8",
            ErrorKind::InvalidJson => "invalid_json",
            ErrorKind::TooDeep => "too_deep",
            ErrorKind::NotAnObject => "not_an_object",
            ErrorKind::MissingType => "missing_type",
            ErrorKind::MissingField => "missing_field",
            ErrorKind::InvalidType => "invalid_type",
            ErrorKind::OutOfRange => "out_of_range",
            ErrorKind::InvalidValue => "invalid_value",
            ErrorKind::Identity => "identity",
            ErrorKind::InvalidIdentity => "invalid_identity",
            ErrorKind::NoKey => "no_key",
            ErrorKind::BadCiphertext => "bad_ciphertext",
            ErrorKind::DecryptFailed => "decrypt_failed",
            ErrorKind::NestedEncryption => "nested_encryption",
            ErrorKind::UnknownDevice => "unknown_device",
            ErrorKind::Forbidden => "forbidden",
        }
    }

    /// Every kind, for metric pre-registration and summaries.
    pub const ALL: [ErrorKind; 18] = [
        ErrorKind::TooLarge,
        ErrorKind::InvalidUtf8,
        ErrorKind::InvalidJson,
        ErrorKind::TooDeep,
        ErrorKind::NotAnObject,
        ErrorKind::MissingType,
        ErrorKind::MissingField,
        ErrorKind::InvalidType,
        ErrorKind::OutOfRange,
        ErrorKind::InvalidValue,
        ErrorKind::Identity,
        ErrorKind::InvalidIdentity,
        ErrorKind::NoKey,
        ErrorKind::BadCiphertext,
        ErrorKind::DecryptFailed,
        ErrorKind::NestedEncryption,
        ErrorKind::UnknownDevice,
        ErrorKind::Forbidden,
    ];
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A payload that could not be decoded: what kind of problem, which field
/// (when one is to blame), and a sentence a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    /// The kind of problem.
    pub kind: ErrorKind,
    /// The field at fault, as a path (`lat`, `waypoints[2].lat`).
    pub field: Option<Cow<'static, str>>,
    /// What is wrong, in lowercase prose.
    pub message: String,
}

impl DecodeError {
    /// The dead letter standing for `msg`, refused for this error: stored
    /// with its reason instead of its records. Its identity is what the
    /// transport alone says (the payload could not be trusted).
    pub fn dead_letter(&self, msg: RawMessage, topic_prefix: &str) -> DeadLetter {
        let id = identity::resolve(&msg.hints, topic_prefix, None, None).ok();
        DeadLetter {
            user: id.as_ref().map(|i| i.user.clone()).unwrap_or_default(),
            device: id.map(|i| i.device).unwrap_or_default(),
            received_at: msg.received_at,
            transport: msg.transport,
            topic: msg.hints.mqtt_topic.as_deref().map(Text::from),
            remote_addr: msg.remote_addr.as_deref().map(Text::from),
            kind: Text::from(self.kind.code()),
            field: self.field.as_deref().map(Text::from),
            message: self.message.clone(),
            payload: msg.payload,
        }
    }

    /// An error not tied to one field.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            field: None,
            message: message.into(),
        }
    }

    /// An error about one field.
    pub fn field(
        kind: ErrorKind,
        field: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            field: Some(field.into()),
            message: message.into(),
        }
    }

    /// Places the field path under `prefix` (`lat` becomes `waypoints[2].lat`).
    pub(crate) fn within(mut self, prefix: &str) -> Self {
        self.field = Some(match self.field.take() {
            Some(f) => Cow::Owned(format!("{prefix}.{f}")),
            None => Cow::Owned(prefix.to_owned()),
        });
        self
    }
}
