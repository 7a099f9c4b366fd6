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

/// A deterministic generator (xorshift), so every run measures the same
/// inputs.
pub struct Rng(pub u64);

impl Rng {
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }
}
