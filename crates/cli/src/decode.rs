//! `otstream decode`: what is this device sending?
//!
//! Reads the recording format or bare payloads, one per line, and prints one
//! NDJSON line per normalized record, each with the `input_line` it came
//! from; a line that cannot be decoded prints
//! `{"error":{"kind":..,"field":..,"message":..},"input_line":N}` instead,
//! and a line that yields no record (an empty body, `[]`) prints
//! `{"records":0,"input_line":N}`. A summary goes to stderr. The exit status
//! is 0 whatever the payloads hold: bad payloads are the data being looked
//! at, not a failure of the tool.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use otstream_decode::{DecodeConfig, DecodeError, Decoder, KeyRing};
use otstream_model::raw::now_ms;
use otstream_model::{IdentityHints, RawMessage, Record, RecordingLine, Transport};

/// Flags of `otstream decode`.
#[derive(clap::Args)]
pub struct Args {
    /// Input file (recording format or bare payloads, one per line); stdin
    /// when absent or `-`.
    file: Option<PathBuf>,
    /// TOML file with per-user secrets for `_type=encrypted` (a `[keys]`
    /// table of "user", "user/device" or "*" to secret).
    #[arg(long, value_name = "FILE")]
    keys: Option<PathBuf>,
    /// Treat bare payload lines as MQTT messages published on this topic
    /// (they are HTTP bodies with no headers otherwise).
    #[arg(long, value_name = "TOPIC")]
    topic: Option<String>,
    /// MQTT topic prefix before `<user>/<device>`.
    #[arg(long, default_value = otstream_model::identity::DEFAULT_TOPIC_PREFIX)]
    topic_prefix: String,
    /// Largest payload accepted, bytes.
    #[arg(long, default_value_t = DecodeConfig::default().max_payload_bytes)]
    max_payload_bytes: usize,
    /// Deepest nesting of objects and arrays accepted.
    #[arg(long, default_value_t = DecodeConfig::default().max_depth)]
    max_depth: usize,
}

/// Counts for the summary.
#[derive(Default)]
struct Summary {
    lines: u64,
    records: BTreeMap<&'static str, u64>,
    errors: BTreeMap<String, u64>,
}

pub fn run(args: Args) -> Result<()> {
    let config = DecodeConfig {
        max_payload_bytes: args.max_payload_bytes,
        max_depth: args.max_depth,
        topic_prefix: args.topic_prefix.clone(),
        registry: None,
        ..DecodeConfig::default()
    };
    config.validate().context("invalid decode limits")?;
    let keys = match &args.keys {
        Some(path) => KeyRing::from_file(path)?,
        None => KeyRing::new(),
    };
    let mut decoder = Decoder::new(config, Arc::new(keys));

    let input: Box<dyn BufRead> = match &args.file {
        Some(path) if path.as_os_str() != "-" => Box::new(BufReader::new(
            File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
        )),
        _ => Box::new(io::stdin().lock()),
    };
    let stdout = io::stdout().lock();
    let mut out = BufWriter::new(stdout);
    let summary = decode_stream(input, &mut out, &mut decoder, args.topic.as_deref())?;
    out.flush().context("cannot write to stdout")?;
    eprintln!("{}", summary.render());
    Ok(())
}

fn decode_stream(
    mut input: impl BufRead,
    out: &mut impl Write,
    decoder: &mut Decoder,
    topic: Option<&str>,
) -> Result<Summary> {
    let mut summary = Summary::default();
    let mut line = Vec::new();
    let mut records = Vec::new();
    let mut n = 0u64;
    loop {
        line.clear();
        if input
            .read_until(b'\n', &mut line)
            .context("cannot read input")?
            == 0
        {
            break;
        }
        n += 1;
        let text = trim_line_end(&line);
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        summary.lines += 1;
        records.clear();
        let outcome = to_message(text, topic).and_then(|msg| {
            decoder
                .decode(&msg, &mut records)
                .map_err(|e| LineError::Decode(Box::new(e)))
        });
        match outcome {
            Ok(0) => writeln!(out, r#"{{"records":0,"input_line":{n}}}"#)?,
            Ok(_) => {
                for r in &records {
                    *summary.records.entry(r.type_name()).or_default() += 1;
                    write_record(out, r, n)?;
                }
            }
            Err(e) => {
                *summary.errors.entry(e.kind().to_owned()).or_default() += 1;
                let line = serde_json::json!({
                    "error": {"kind": e.kind(), "field": e.field(), "message": e.message()},
                    "input_line": n,
                });
                writeln!(out, "{line}")?;
            }
        }
    }
    Ok(summary)
}

fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The record's JSON with `input_line` appended.
fn write_record(out: &mut impl Write, r: &Record, n: u64) -> io::Result<()> {
    let json = r.to_json();
    let body = json.strip_suffix('}').unwrap_or(&json);
    writeln!(out, r#"{body},"input_line":{n}}}"#)
}

enum LineError {
    Recording(String),
    Decode(Box<DecodeError>),
}

impl LineError {
    fn kind(&self) -> &str {
        match self {
            LineError::Recording(_) => "invalid_recording",
            LineError::Decode(e) => e.kind.code(),
        }
    }
    fn field(&self) -> Option<&str> {
        match self {
            LineError::Recording(_) => None,
            LineError::Decode(e) => e.field.as_deref(),
        }
    }
    fn message(&self) -> &str {
        match self {
            LineError::Recording(m) => m,
            LineError::Decode(e) => &e.message,
        }
    }
}

/// A line is a recording line when it is an object with `transport` and a
/// payload but no `_type`; anything else is a bare payload.
fn to_message(text: &[u8], topic: Option<&str>) -> Result<RawMessage, LineError> {
    let now = now_ms();
    if is_recording_line(text) {
        let text = std::str::from_utf8(text).map_err(|e| LineError::Recording(e.to_string()))?;
        return RecordingLine::message(text, now).map_err(|e| LineError::Recording(e.to_string()));
    }
    let hints = IdentityHints {
        mqtt_topic: topic.map(str::to_owned),
        ..Default::default()
    };
    Ok(RawMessage {
        received_at: now,
        transport: if topic.is_some() {
            Transport::Mqtt
        } else {
            Transport::Http
        },
        hints,
        remote_addr: None,
        payload: text.to_vec(),
    })
}

fn is_recording_line(text: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Probe<'a> {
        #[serde(borrow, rename = "_type")]
        kind: Option<&'a serde_json::value::RawValue>,
        #[serde(borrow)]
        transport: Option<&'a serde_json::value::RawValue>,
        #[serde(borrow)]
        payload: Option<&'a serde_json::value::RawValue>,
        #[serde(borrow)]
        payload_base64: Option<&'a serde_json::value::RawValue>,
    }
    match serde_json::from_slice::<Probe<'_>>(text) {
        Ok(p) => {
            p.kind.is_none()
                && p.transport.is_some()
                && (p.payload.is_some() || p.payload_base64.is_some())
        }
        Err(_) => false,
    }
}

impl Summary {
    fn render(&self) -> String {
        let join = |m: &mut dyn Iterator<Item = (String, u64)>| {
            m.map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let records: u64 = self.records.values().sum();
        let errors: u64 = self.errors.values().sum();
        format!(
            "decoded {} lines: {records} records ({}), {errors} errors ({})",
            self.lines,
            join(&mut self.records.iter().map(|(k, v)| ((*k).to_owned(), *v))),
            join(&mut self.errors.iter().map(|(k, v)| (k.clone(), *v))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_lines(input: &str) -> (String, String) {
        let mut d = Decoder::new(DecodeConfig::default(), Arc::default());
        let mut out = Vec::new();
        let s = decode_stream(input.as_bytes(), &mut out, &mut d, None).unwrap();
        (String::from_utf8(out).unwrap(), s.render())
    }

    #[test]
    fn recording_and_bare_lines_mixed() {
        let input = concat!(
            r#"{"received_at":5,"transport":"mqtt","topic":"owntracks/jane/phone","payload":{"_type":"lwt"}}"#,
            "\n\n",
            "not json\r\n",
            r#"{"received_at":6,"transport":"http","topic":null,"headers":{"X-Limit-U":"u","X-Limit-D":"d"},"payload":"[]"}"#,
            "\n",
        );
        let (out, summary) = run_lines(input);
        assert_eq!(
            out,
            concat!(
                r#"{"type":"device_event","user":"jane","device":"phone","received_at":5,"transport":"mqtt","topic":"owntracks/jane/phone","event":"lwt","input_line":1}"#,
                "\n",
                r#"{"error":{"field":null,"kind":"invalid_json","message":"payload is not valid JSON: unexpected 'n' at byte 0"},"input_line":3}"#,
                "\n",
                r#"{"records":0,"input_line":4}"#,
                "\n",
            )
        );
        assert_eq!(
            summary,
            "decoded 3 lines: 1 records (device_event=1), 1 errors (invalid_json=1)"
        );
    }

    #[test]
    fn broken_recording_lines_are_reported() {
        let (out, _) = run_lines(r#"{"transport":"carrier-pigeon","payload":{}}"#);
        assert!(out.starts_with(r#"{"error":{"field":null,"kind":"invalid_recording","message":"not a recording line: unknown variant `carrier-pigeon`"#), "{out}");
    }
}
