//! Load tooling: capture traffic, replay it at a controlled rate, and
//! simulate a fleet.
//!
//! SREs prove the pipeline with real traffic before and after a change.
//! [`record()`] captures messages into the recording format (the NDJSON
//! that [`otstream_model::RecordingLine`] defines) from an HTTP endpoint, an
//! MQTT subscription, or a time range of the Kafka `raw` topic. [`replay()`]
//! takes messages (a recording, or the synthetic [`fleet::Fleet`]) and
//! sends them over HTTP or MQTT at a fixed rate, at the recorded pacing
//! scaled, or as fast as N connections go, optionally multiplied into N
//! devices with shifted timestamps; its output is a [`Report`] of answers
//! by status, throughput and latency percentiles from an HDR histogram,
//! measured from each message's due time so that a slow server shows up as
//! latency (no coordinated omission).
//!
//! Inputs: messages (an iterator), a target URL, pacing; or a source to
//! record from. Outputs: the report and raw latency samples; or recording
//! lines written to any `Write`. Pure parts (pacing, rewriting, the fleet,
//! the report) have no I/O; the senders and recorders are at the edges.

pub mod fleet;
pub mod pacing;
pub mod record;
pub mod replay;
pub mod report;
pub mod rewrite;
pub mod truth;

pub use fleet::{Fleet, FleetConfig, Kind, TruthTrip};
pub use pacing::Pacing;
pub use record::{RecordError, Source, record, write_recording_line};
pub use replay::{Outcome, ReplayConfig, ReplayError, Target, replay};
pub use report::{Latencies, Report};
pub use rewrite::Rewrite;
pub use truth::{Detected, Score, Sent, locations, rests_inside, score};

/// Reads a recording (or bare payloads, one per line, as HTTP bodies
/// without headers) as messages; a line that is neither is an error naming
/// its line number, so a replay can skip it and say so.
pub fn read_recording<R: std::io::BufRead>(
    input: R,
) -> impl Iterator<Item = Result<otstream_model::RawMessage, String>> {
    let now = otstream_model::raw::now_ms();
    input
        .lines()
        .enumerate()
        .filter(|(_, l)| l.as_ref().map_or(true, |l| !l.trim().is_empty()))
        .map(move |(i, line)| {
            let line = line.map_err(|e| format!("line {}: {e}", i + 1))?;
            let parsed = otstream_model::RecordingLine::message(&line, now)
                .map_err(|e| format!("line {}: {e}", i + 1))?;
            Ok(parsed)
        })
}
