//! Signed, scoped, expiring tokens and share links, checked by every
//! process from the configuration alone (no session store): the claims
//! travel in the token, signed with HMAC-SHA256 under the key in
//! `access.token_secret_file`.
//!
//! A token is `ots1.<claims>.<signature>`, both parts base64url without
//! padding, the claims a JSON object ([`Claims`]). A share link carries a
//! token with `share` set: read-only, its devices only, the last position
//! or the track since it was made, and nothing else of the API.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

/// The prefix of every token of this format.
pub const PREFIX: &str = "ots1.";

/// Longest token accepted, bytes; a longer `Authorization` is refused
/// unread.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// What a token allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// Its name: in logs, and in the revocation list.
    pub id: String,
    /// Devices it reads: `user/device`, `user/*`, or `*` for every device.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    /// Groups whose devices it reads (as the configuration defines them
    /// when it is used).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Whether it reads at all.
    #[serde(default)]
    pub read: bool,
    /// The user it publishes as, if it publishes (like that user's
    /// password: the apps' and Home Assistant's HTTP mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<String>,
    /// Only the last position of each device, no history.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub last_only: bool,
    /// History readable from this time on (UNIX s); none: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<i64>,
    /// A share link: the map page in its share mode, and no other reads.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub share: bool,
    /// Expiry, UNIX s.
    pub exp: i64,
}

/// Why a token is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not of this format, or not signed with this key.
    #[error("the token is malformed or its signature does not match")]
    Invalid,
    /// Past its expiry.
    #[error("the token expired")]
    Expired,
    /// On the revocation list.
    #[error("the token was revoked")]
    Revoked,
}

/// The signing key.
pub struct Secret(ring::hmac::Key);

/// Fewest bytes a key may have.
pub const MIN_SECRET_BYTES: usize = 32;

impl Secret {
    /// A key of `bytes` (at least [`MIN_SECRET_BYTES`]; a key file's
    /// surrounding whitespace is not part of it).
    pub fn new(bytes: &[u8]) -> Option<Secret> {
        let bytes = bytes.trim_ascii();
        (bytes.len() >= MIN_SECRET_BYTES)
            .then(|| Secret(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, bytes)))
    }

    /// A fresh random key, hex-encoded (what `otstream token secret`
    /// writes).
    pub fn generate() -> Result<String, ring::error::Unspecified> {
        use ring::rand::SecureRandom as _;
        let mut bytes = [0u8; 32];
        ring::rand::SystemRandom::new().fill(&mut bytes)?;
        Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The token of `claims`.
    pub fn sign(&self, claims: &Claims) -> String {
        let json = serde_json::to_vec(claims).unwrap_or_default();
        let mut token = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json));
        let tag = ring::hmac::sign(&self.0, token.as_bytes());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(tag.as_ref()));
        token
    }

    /// The claims of `token`, if this key signed it and it has not
    /// expired at `now` (UNIX s). The signature is compared in constant
    /// time, before the claims are read.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_BYTES || !token.starts_with(PREFIX) {
            return Err(TokenError::Invalid);
        }
        let (signed, tag) = token.rsplit_once('.').ok_or(TokenError::Invalid)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| TokenError::Invalid)?;
        ring::hmac::verify(&self.0, signed.as_bytes(), &tag).map_err(|_| TokenError::Invalid)?;
        let json = URL_SAFE_NO_PAD
            .decode(&signed[PREFIX.len()..])
            .map_err(|_| TokenError::Invalid)?;
        let claims: Claims = serde_json::from_slice(&json).map_err(|_| TokenError::Invalid)?;
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            id: "ha".into(),
            devices: vec!["jane/phone".into()],
            groups: vec![],
            read: true,
            publish: None,
            last_only: false,
            since: None,
            share: false,
            exp: 2_000,
        }
    }

    #[test]
    fn signed_tokens_round_trip_and_anything_else_is_refused() {
        let key = Secret::new(&[7u8; 32]).unwrap();
        let t = key.sign(&claims());
        assert!(t.starts_with("ots1.eyJ"));
        assert_eq!(key.verify(&t, 1_999), Ok(claims()));
        assert_eq!(key.verify(&t, 2_000), Err(TokenError::Expired));
        // Another key, a changed claim, a cut signature, garbage.
        let other = Secret::new(&[8u8; 32]).unwrap();
        assert_eq!(other.verify(&t, 0), Err(TokenError::Invalid));
        let mut forged = claims();
        forged.devices = vec!["*".into()];
        let forged_body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        let sig = t.rsplit_once('.').unwrap().1;
        assert_eq!(
            key.verify(&format!("{PREFIX}{forged_body}.{sig}"), 0),
            Err(TokenError::Invalid)
        );
        assert_eq!(key.verify(&t[..t.len() - 2], 0), Err(TokenError::Invalid));
        assert_eq!(key.verify("ots1.", 0), Err(TokenError::Invalid));
        assert_eq!(key.verify(&"a".repeat(5000), 0), Err(TokenError::Invalid));
        assert!(Secret::new(b"short").is_none());
        assert_eq!(Secret::generate().unwrap().len(), 64);
    }
}
