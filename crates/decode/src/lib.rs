//! Turns OwnTracks payloads into normalized records, fast, and says exactly
//! why when it cannot.
//!
//! In: a [`RawMessage`](otstream_model::RawMessage), the bytes of one HTTP
//! body or MQTT publish with the transport facts around them. Out: zero or
//! more [`Record`](otstream_model::Record)s (a `waypoints` list yields one
//! per waypoint, an empty "clear" body yields none), or a [`DecodeError`]
//! whose [`ErrorKind`] is a bounded code fit for a metric label and a dead
//! letter, and whose message names the field and the problem.
//!
//! The typical location (a flat object of the fields the apps write) is
//! read in one pass over its bytes, straight into its record; everything
//! else, and any location that path declines, is parsed to simd-json's
//! tape and read in place: the decoder keeps its input copy, simd-json's
//! buffers and the tape between messages, so decoding allocates nothing
//! but the records themselves. A differential property test holds the two
//! paths to the same records. Real phones send messy
//! JSON, and the rules here are the apps' own: numbers as strings are
//! parsed, floats in integer fields are truncated, `-1` means unknown,
//! `SSID` and `ssid` are the same field, unknown fields are kept verbatim in
//! `extra`. What cannot be a row (no `_type`, `lat` out of range, not JSON,
//! too deep, too large, undecryptable) is refused, never panicked on.
//!
//! `_type=encrypted` is opened with the sender's key from a [`KeyRing`]
//! (libsodium secretbox), then decoded like any other payload.
//!
//! Layout:
//! - [`decoder`]: [`Decoder`] and [`DecodeConfig`].
//! - `fast`: the typical location in one pass over its bytes, no tape.
//! - `normalize`: one function per `_type`.
//! - `tape`: walking simd-json's tape, lenient coercions, the `extra` writer.
//! - [`crypto`]: secretbox and the key ring.
//! - [`error`]: [`DecodeError`] and [`ErrorKind`].
//!
//! Everything here is pure: no I/O, no runtime, no bus. The stage that runs
//! it between two bus links is `otstream-decode-stage`; the HTTP ingress
//! uses the decoder directly for its edge check.

pub mod crypto;
pub mod decoder;
pub mod error;
mod fast;
mod normalize;
mod tape;
#[cfg(test)]
mod tests;

pub use crypto::{KeyFileError, KeyRing};
pub use decoder::{DecodeConfig, Decoder};
pub use error::{DecodeError, ErrorKind};
