//! Decodes the typical location N times (default 2,000,000) and prints the
//! mean time per decode: one number per process, so two builds can be
//! interleaved in the same minute on this noisy VM (criterion compares a
//! build with its own saved baseline, not with another build):
//!
//! ```sh
//! cargo build --release -p otstream-benches --example decode_loop
//! for i in 1 2 3; do old/decode_loop; target/release/examples/decode_loop; done
//! ```

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use otstream_benches::samples;
use otstream_decode::{DecodeConfig, Decoder};

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000_000);
    let msg = samples::mqtt(samples::LOCATION);
    let mut decoder = Decoder::new(DecodeConfig::default(), Arc::default());
    let mut out = Vec::with_capacity(4);
    let started = Instant::now();
    for _ in 0..n {
        out.clear();
        let _ = black_box(decoder.decode(black_box(&msg), &mut out));
    }
    let ns = started.elapsed().as_nanos() as f64 / f64::from(n);
    println!("{ns:.1} ns per decode of the typical location");
}
