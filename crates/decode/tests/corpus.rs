//! Every payload of the corpus of real OwnTracks traffic, decoded.
//!
//! testdata/corpus/owntracks-payloads.ndjson holds 281 payloads real apps,
//! their test suites and bug reports produced. Each is decoded with the key
//! its line names (if any), and the outcome, records or error, is compared
//! with testdata/corpus/expected.ndjson, which was reviewed line by line.
//! Regenerate it after a deliberate change with `OTSTREAM_BLESS=1 cargo test
//! -p otstream-decode --test corpus` and review the diff.
//!
//! Beyond the snapshot, the lines that say what must happen are checked
//! directly: encrypted samples decode to exactly what their plaintext
//! decodes to, and samples marked for rejection are rejected.

use std::path::PathBuf;
use std::sync::Arc;

use otstream_decode::{DecodeConfig, Decoder, KeyRing};
use otstream_model::{RawMessage, Record, RecordingLine};
use serde_json::{Value, json};

const RECEIVED_AT: i64 = 1_700_000_000_000;

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/corpus")
        .join(name)
}

struct Line {
    n: usize,
    entry: Value,
    msg: RawMessage,
}

fn corpus() -> Vec<Line> {
    let text = std::fs::read_to_string(testdata("owntracks-payloads.ndjson")).expect("corpus");
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            let entry: Value = serde_json::from_str(l).expect("corpus line is JSON");
            // The corpus keeps bodies that are not JSON in `raw_body`; the
            // recording format keeps them as a string payload.
            let mut rec = json!({
                "received_at": RECEIVED_AT,
                "transport": entry["transport"],
                "topic": entry["topic"],
                "headers": entry.get("headers").cloned().unwrap_or(json!({})),
            });
            rec["payload"] = match entry.get("raw_body") {
                Some(raw) => raw.clone(),
                None => Value::String(entry["payload"].to_string()),
            };
            let msg = RecordingLine::message(&rec.to_string(), 0).expect("recording line");
            Line {
                n: i + 1,
                entry,
                msg,
            }
        })
        .collect()
}

fn decoder_for(entry: &Value) -> Decoder {
    let mut keys = KeyRing::new();
    if let Some(k) = entry.get("encryption_key").and_then(Value::as_str) {
        keys.insert("*", k);
    }
    Decoder::new(DecodeConfig::default(), Arc::new(keys))
}

fn outcome(line: &Line) -> Value {
    let mut out = Vec::new();
    match decoder_for(&line.entry).decode(&line.msg, &mut out) {
        Ok(_) => json!({
            "line": line.n,
            "records": out.iter().map(|r| serde_json::to_value(r).expect("record json")).collect::<Vec<_>>(),
        }),
        Err(e) => json!({
            "line": line.n,
            "error": {"kind": e.kind.code(), "field": e.field, "message": e.message},
        }),
    }
}

#[test]
fn every_corpus_line_matches_the_reviewed_outcome() {
    let lines = corpus();
    assert_eq!(lines.len(), 281, "the corpus has 281 payloads");
    let got: Vec<String> = lines.iter().map(|l| outcome(l).to_string()).collect();
    let path = testdata("expected.ndjson");
    if std::env::var_os("OTSTREAM_BLESS").is_some() {
        std::fs::write(&path, got.join("\n") + "\n").expect("write expected");
        return;
    }
    let expected = std::fs::read_to_string(&path).expect("testdata/corpus/expected.ndjson");
    let expected: Vec<&str> = expected.lines().collect();
    assert_eq!(expected.len(), got.len());
    for (g, e) in got.iter().zip(expected) {
        assert_eq!(g, e);
    }
}

fn records_of(msg: &RawMessage, payload: &[u8], decoder: &mut Decoder) -> Vec<Record> {
    let mut plain = msg.clone();
    plain.payload = payload.to_vec();
    let mut out = Vec::new();
    decoder.decode(&plain, &mut out).expect("plaintext decodes");
    out
}

#[test]
fn encrypted_samples_decode_to_their_plaintext() {
    let mut checked = 0;
    for line in corpus() {
        let plaintext = match (line.entry.get("decrypted_raw"), line.entry.get("decrypted")) {
            (Some(Value::String(raw)), _) => raw.clone(),
            (None, Some(v)) => v.to_string(),
            _ => continue,
        };
        let mut d = decoder_for(&line.entry);
        let mut got = Vec::new();
        d.decode(&line.msg, &mut got)
            .unwrap_or_else(|e| panic!("line {}: {e}", line.n));
        let want = records_of(&line.msg, plaintext.as_bytes(), &mut d);
        assert_eq!(got, want, "line {}", line.n);
        checked += 1;
    }
    // 8 samples carry their plaintext: Android's, Home Assistant's, and six
    // vectors (keys of every length, non-ASCII, arrays, empty plaintext).
    assert_eq!(checked, 8);
}

#[test]
fn samples_marked_for_rejection_are_rejected() {
    let mut checked = 0;
    for line in corpus() {
        let Some(expect) = line.entry.get("expect").and_then(Value::as_str) else {
            continue;
        };
        let mut out = Vec::new();
        let result = decoder_for(&line.entry).decode(&line.msg, &mut out);
        let e = result.expect_err(expect);
        let kind = e.kind.code();
        assert!(
            kind == "decrypt_failed" || kind == "bad_ciphertext",
            "line {}: {kind}",
            line.n
        );
        checked += 1;
    }
    assert_eq!(checked, 3);
}
