//! `_type=encrypted`: libsodium secretbox (XSalsa20-Poly1305), as the
//! OwnTracks apps, Recorder and Home Assistant use it.
//!
//! The key is the user's secret string as UTF-8, truncated or zero-padded to
//! 32 bytes. `data` is base64 of the 24-byte nonce followed by the box (the
//! 16-byte MAC, then the ciphertext).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use crypto_secretbox::aead::{Aead, KeyInit};
use crypto_secretbox::{Key, Nonce, XSalsa20Poly1305};
use otstream_model::DeviceId;
use serde::Deserialize;

use crate::error::{DecodeError, ErrorKind};

const NONCE_LEN: usize = 24;
const MAC_LEN: usize = 16;

/// Padding is optional in what the apps send; some encoders omit it.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Per-user secrets for `_type=encrypted`, looked up most specific first:
/// `user/device`, then `user`, then `*` (a fleet-wide key).
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRing {
    /// Secret strings by `user/device`, `user` or `*`.
    #[serde(default)]
    keys: BTreeMap<String, String>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print secrets: only who has one.
        f.debug_struct("KeyRing")
            .field("users", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A key file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The file could not be read.
    #[error("cannot read key file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not TOML of the expected shape.
    #[error("key file {path} is not valid: {source}")]
    Parse {
        /// The file.
        path: String,
        /// Why.
        source: toml::de::Error,
    },
}

impl KeyRing {
    /// An empty key ring.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a secret for `who` (`user/device`, `user` or `*`).
    pub fn insert(&mut self, who: impl Into<String>, secret: impl Into<String>) {
        self.keys.insert(who.into(), secret.into());
    }

    /// Reads a TOML key file:
    ///
    /// ```toml
    /// [keys]
    /// "jane" = "secret for every device of jane"
    /// "jane/phone" = "secret for that one device"
    /// "*" = "fleet-wide fallback"
    /// ```
    pub fn from_file(path: &Path) -> Result<Self, KeyFileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
            path: shown.clone(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| KeyFileError::Parse {
            path: shown,
            source,
        })
    }

    /// Whether any key is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The secret for a device, most specific first.
    pub fn find(&self, id: Option<&DeviceId>) -> Option<&str> {
        let by = |k: &str| self.keys.get(k).map(String::as_str);
        id.and_then(|id| by(&id.key()).or_else(|| by(&id.user)))
            .or_else(|| by("*"))
    }
}

/// The 32-byte key for a secret string: UTF-8, truncated or zero-padded.
fn key_bytes(secret: &str) -> [u8; 32] {
    let mut key = [0u8; 32];
    let bytes = secret.as_bytes();
    let n = bytes.len().min(32);
    key[..n].copy_from_slice(&bytes[..n]);
    key
}

/// Decodes base64 `data` into `scratch` (reused across messages).
pub(crate) fn unbase64(data: &str, scratch: &mut Vec<u8>) -> Result<(), DecodeError> {
    scratch.clear();
    let trimmed: &str = data.trim();
    BASE64.decode_vec(trimmed, scratch).map_err(|e| {
        DecodeError::field(
            ErrorKind::BadCiphertext,
            "data",
            format!("field `data`: not base64 ({e})"),
        )
    })?;
    if scratch.len() < NONCE_LEN + MAC_LEN {
        return Err(DecodeError::field(
            ErrorKind::BadCiphertext,
            "data",
            format!(
                "field `data`: {} bytes is shorter than the {NONCE_LEN}-byte nonce and {MAC_LEN}-byte MAC",
                scratch.len()
            ),
        ));
    }
    Ok(())
}

/// Opens a secretbox: `sealed` is nonce || MAC || ciphertext.
pub(crate) fn open(secret: &str, sealed: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let (nonce, boxed) = sealed.split_at(NONCE_LEN.min(sealed.len()));
    if nonce.len() < NONCE_LEN || boxed.len() < MAC_LEN {
        return Err(DecodeError::new(
            ErrorKind::BadCiphertext,
            "encrypted data is truncated",
        ));
    }
    let cipher = XSalsa20Poly1305::new(Key::from_slice(&key_bytes(secret)));
    cipher
        .decrypt(Nonce::from_slice(nonce), boxed)
        .map_err(|_| {
            DecodeError::field(
                ErrorKind::DecryptFailed,
                "data",
                "decryption failed: wrong key, or the data was altered",
            )
        })
}

/// Seals `plaintext` the way the apps do (for tests, tools and load
/// generation); `nonce` must be unique per message under one key.
pub fn seal(secret: &str, nonce: &[u8; NONCE_LEN], plaintext: &[u8]) -> String {
    let cipher = XSalsa20Poly1305::new(Key::from_slice(&key_bytes(secret)));
    // Encryption with a valid key and nonce has no failure mode; an empty box
    // would fail to open, which is the honest outcome if it ever did.
    let boxed = cipher
        .encrypt(Nonce::from_slice(nonce), plaintext)
        .unwrap_or_default();
    let mut sealed = Vec::with_capacity(NONCE_LEN + boxed.len());
    sealed.extend_from_slice(nonce);
    sealed.extend_from_slice(&boxed);
    BASE64.encode(sealed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_truncated_or_zero_padded() {
        assert_eq!(&key_bytes("123")[..4], b"123\0");
        assert_eq!(
            key_bytes("abcdefghijklmnopqrstuvwxyz0123456789-EXTRA"),
            *b"abcdefghijklmnopqrstuvwxyz012345"
        );
    }

    #[test]
    fn lookup_is_most_specific_first() {
        let mut k = KeyRing::new();
        k.insert("jane", "u");
        k.insert("jane/phone", "d");
        assert_eq!(k.find(Some(&DeviceId::new("jane", "phone"))), Some("d"));
        assert_eq!(k.find(Some(&DeviceId::new("jane", "tablet"))), Some("u"));
        assert_eq!(k.find(Some(&DeviceId::new("bob", "x"))), None);
        k.insert("*", "all");
        assert_eq!(k.find(Some(&DeviceId::new("bob", "x"))), Some("all"));
        assert_eq!(k.find(None), Some("all"));
        assert!(
            !format!("{k:?}").contains("all\""),
            "debug must not show secrets: {k:?}"
        );
    }

    #[test]
    fn seal_then_open() {
        let data = seal("k", &[7; 24], b"{}");
        let mut buf = Vec::new();
        unbase64(&data, &mut buf).unwrap();
        assert_eq!(open("k", &buf).unwrap(), b"{}");
        assert_eq!(
            open("other", &buf).unwrap_err().kind,
            ErrorKind::DecryptFailed
        );
    }
}
