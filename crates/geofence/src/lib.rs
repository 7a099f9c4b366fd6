//! Server-side geofences: enter and leave transitions computed from the
//! position stream, for fences the operator defines centrally and for the
//! regions each device defined itself.
//!
//! In: records (positions in per-device order, waypoints, anything else
//! passes through; a state snapshot is restored). Out: the same records
//! (unless only derived records are asked for; a position the filters set
//! aside is always sent, with its reason in `filtered`), followed by
//! transitions with `source = "server"` (written beside the ones the
//! devices report), trips, stops, events (see [`events`]), and the
//! device's state to persist with them. Phones
//! report transitions only for regions configured on that phone, and region
//! monitoring on iOS and Android misses events; evaluating on the server
//! fixes both.
//!
//! The rules:
//! - a fix enters a fence when it is inside it and its accuracy radius is
//!   no larger than the fence (times `max_acc_ratio`): a 2 km fix cannot
//!   enter a 50 m fence;
//! - it leaves only once outside by more than the hysteresis margin (and
//!   more than its own accuracy radius), so jitter along a border does not
//!   flap;
//! - a fix no newer than the last one evaluated (a late or redelivered fix)
//!   changes nothing: evaluation is idempotent under at-least-once delivery.
//!
//! Cost grows with log(fences): an R-tree over bounding boxes finds the
//! candidates, exact tests run only on those. Circles use great-circle
//! distance, refined with the geodesic (Karney) distance near their edge.
//! The per-device state is the set of fences the device is inside, as
//! stable 64-bit fence-id hashes, and the time of its last fix.
//!
//! The same stage computes trips and stops (rules in `otstream-trips`),
//! since both need every position of a device in order and its state.
//!
//! Proximity compares devices, so it cannot be evaluated per device: the
//! geofence stage sends each fix a proximity rule applies to on as a
//! [`otstream_model::Near`] keyed by the rule, and the proximity stage
//! ([`stage::ProximityStage`]) evaluates each rule with its own state
//! (events and the rule's state out).
//!
//! Layout:
//! - [`fence`]: fences, shapes, GeoJSON parsing (pure).
//! - [`engine`]: the index, per-device state and evaluation (pure).
//! - [`filter`]: the position filters, which set bad fixes aside (pure).
//! - [`events`]: battery and silence events (pure); the others come from
//!   transitions, trips and stops.
//! - [`rules`]: the operator's rules (dwell, idle, overspeed, proximity,
//!   built-in events narrowed), their schedules and per-device state
//!   (pure); a proximity rule's state in [`rules::near`].
//! - [`stage`]: the stage loop: records in, records plus transitions,
//!   trips, stops and state snapshots out; fences file reloading; the
//!   proximity stage.

pub mod engine;
pub mod events;
pub mod fence;
pub mod filter;
pub mod rules;
pub mod stage;

pub use engine::{Crossing, DeviceState, Event, Fix, GeofenceConfig, Geofencer, Learned, Region};
pub use fence::{Fence, FenceError, FenceSet, Shape};
