//! Bus topic names. Every topic is keyed by device identity so that one
//! device's messages stay in order inside one partition, but `near`,
//! keyed by the rule (every device a rule compares in one partition).

/// The default prefix in front of every topic name.
pub const DEFAULT_PREFIX: &str = "otstream.";

/// Every payload exactly as received: the durable capture point.
pub const RAW: &str = "raw";
/// Normalized locations, one JSON object per message.
pub const POSITIONS: &str = "positions";
/// Transitions (device-reported and server-evaluated), trips, stops,
/// events, and the fixes the position filters set aside.
pub const EVENTS: &str = "events";
/// Every other normalized type (waypoints, cards, lwt, status, steps, ...).
pub const RECORDS: &str = "records";
/// Payloads that could not be decoded, with the reason.
pub const DEAD_LETTERS: &str = "dead-letters";

/// Each stateful stage's latest state per device (compacted): what a
/// consumer restores when it takes over a partition.
pub const STATE: &str = "state";

/// Fixes re-keyed by the proximity rule that compares them (see
/// [`crate::Near`]): the proximity stage's input.
pub const NEAR: &str = "near";

/// Version of the JSON written to the normalized topics. Carried as a header
/// so that readers can refuse a shape they do not know.
pub const SCHEMA_VERSION: u32 = 1;

/// The full topic name for `name` under `prefix`.
pub fn topic_name(prefix: &str, name: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + name.len());
    s.push_str(prefix);
    s.push_str(name);
    s
}

/// The topic a normalized record goes to.
pub fn topic_for(record: &crate::Record) -> &'static str {
    use crate::Record;
    match record {
        // A fix the filters set aside comes back from the geofence stage
        // with its reason (see `otstream_geofence::filter`): through
        // `events`, which that stage does not read, to the sink.
        Record::Position(p) if p.filtered.is_some() => EVENTS,
        Record::Position(_) => POSITIONS,
        Record::Transition(_) | Record::Trip(_) | Record::Stop(_) | Record::Event(_) => EVENTS,
        Record::State(_) => STATE,
        Record::DeadLetter(_) => DEAD_LETTERS,
        Record::Near(_) => NEAR,
        _ => RECORDS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_join_prefix_and_name() {
        assert_eq!(topic_name(DEFAULT_PREFIX, RAW), "otstream.raw");
        assert_eq!(topic_name("", DEAD_LETTERS), "dead-letters");
    }
}
