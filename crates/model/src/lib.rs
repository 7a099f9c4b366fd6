//! The vocabulary every otstream stage shares, and nothing else.
//!
//! Phones and trackers send OwnTracks JSON payloads; the pipeline captures
//! each one as a [`RawMessage`] (the bytes exactly as received, with the
//! transport facts needed to know who sent it), decodes it into zero or more
//! normalized [`Record`]s, and stores those as table rows. This crate defines
//! those three shapes, the rules that turn transport facts into a canonical
//! device identity (`user/device`), the on-disk recording format that every
//! capture and replay tool reads and writes, and the names of the bus topics.
//!
//! It is pure: no I/O, no async runtime, no Kafka or ClickHouse types, so
//! every stage and every tool can depend on it without pulling in the world.
//!
//! Layout:
//! - [`record`]: the normalized records, the rows of the tables, with units.
//! - [`event`]: what operators are told about, with stable ids.
//! - [`identity`]: canonical device identity from MQTT topics and HTTP hints.
//! - [`raw`]: a message as received, and the NDJSON recording format.
//! - [`topics`]: bus topic names and their configurable prefix.
//! - [`broker`]: MQTT broker URLs.
//! - [`visible`]: which devices a reader may see.

pub mod broker;
pub mod config;
pub mod event;
pub mod identity;
pub mod raw;
pub mod record;
pub mod retry;
pub mod topics;
pub mod visible;

pub use broker::BrokerUrl;
pub use config::ConfigError;
pub use event::{Event, EventKind, Span};
pub use identity::{DeviceId, IdentityError, IdentityHints};
pub use raw::{RawMessage, RecordingError, RecordingLine, Transport};
pub use record::{
    Beacon, Card, Command, Configuration, DeadLetter, DeviceEvent, Meta, Near, Position, Record,
    StateSnapshot, Steps, Stop, Text, Transition, Trip, Unknown, Waypoint,
};
pub use visible::Visible;

/// The `rid` prefix of the regions otstream pushes to the phones (the
/// operator's fences, as `setWaypoints`): the server evaluates those
/// fences itself, so a phone's copy is never learned as a region of its
/// own and its transitions for them raise no event a second time.
pub const PUSHED_RID_PREFIX: &str = "otstream:";

/// The `tst` of the region pushed for the fence `id`: what names a region
/// on the phone (so that pushing it again replaces it), and what the
/// phone's transitions for it carry as `wtst` (Android sends no `rid`).
pub fn pushed_tst(id: &str) -> i64 {
    1_000_000_000 + i64::try_from(identity::stable_hash(id) % 500_000_000).unwrap_or(0)
}
