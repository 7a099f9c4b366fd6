//! Benchmark inputs and baselines, shared by the criterion benches.
//!
//! The baseline a number is compared with lives here so that it is tested:
//! [`baseline`] is a serde_json implementation of the same normalization the
//! simd-json decoder does, and its tests assert both produce identical
//! records for every benchmark input. [`traccar_trips`] is the trip
//! detector before it used accuracy, speed and persistence.

pub mod baseline;
pub mod samples;
pub mod traccar_trips;
