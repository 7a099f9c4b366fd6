//! Decode + normalize, otstream's simd-json tape decoder against the
//! serde_json baseline (same normalization, tested equal), in one run.
//!
//! Run: `cargo bench -p otstream-benches --bench decode`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use otstream_benches::{baseline, samples};
use otstream_decode::{DecodeConfig, Decoder};
use otstream_model::RawMessage;

fn bench_inputs(c: &mut Criterion, name: &str, msgs: &[RawMessage]) {
    let mut group = c.benchmark_group(format!("decode/{name}"));
    group.throughput(Throughput::Elements(msgs.len() as u64));
    let mut decoder = Decoder::new(DecodeConfig::default(), Arc::default());
    let mut out = Vec::with_capacity(4);
    group.bench_function(BenchmarkId::new("otstream_simd", msgs.len()), |b| {
        b.iter(|| {
            for m in msgs {
                out.clear();
                let _ = black_box(decoder.decode(black_box(m), &mut out));
            }
        })
    });
    group.bench_function(BenchmarkId::new("serde_json_baseline", msgs.len()), |b| {
        b.iter(|| {
            for m in msgs {
                out.clear();
                let _ = black_box(baseline::decode(black_box(m), &mut out));
            }
        })
    });
    group.finish();
}

fn decode(c: &mut Criterion) {
    bench_inputs(c, "location", &[samples::mqtt(samples::LOCATION)]);
    bench_inputs(c, "transition", &[samples::mqtt(samples::TRANSITION)]);
    bench_inputs(c, "card_2k_face", &[samples::mqtt(&samples::card())]);
    bench_inputs(c, "mixed_stream", &samples::mixed());
}

criterion_group!(benches, decode);
criterion_main!(benches, floor_group);

/// The floor: simd-json building the tape of the typical location, with the
/// same reused buffers, and nothing else.
fn floor(c: &mut Criterion) {
    let mut group = c.benchmark_group("floor/location");
    let msg = samples::mqtt(samples::LOCATION);
    let mut input = Vec::new();
    let mut buffers = simd_json::Buffers::new(4096);
    let mut tape = simd_json::tape::Tape(Vec::new());
    group.bench_function("simd_json_tape_only", |b| {
        b.iter(|| {
            input.clear();
            input.extend_from_slice(&msg.payload);
            let len = input.len();
            input.resize(len + simd_json::INPUT_PADDING, 0);
            let mut t = std::mem::replace(&mut tape, simd_json::tape::Tape(Vec::new())).reset();
            let _ = black_box(simd_json::fill_tape_padded(
                &mut input,
                len,
                &mut buffers,
                &mut t,
            ));
            tape = t.reset();
        })
    });
    group.finish();
}
criterion_group!(floor_group, floor);
