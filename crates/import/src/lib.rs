//! History import: files of past locations read as the messages a phone
//! would have sent.
//!
//! In: a file and its [`Format`] (or [`Format::Auto`], decided from its
//! name and first bytes), and optionally the device to file it under. Out:
//! one [`Item`] per point through a callback, in file order: a
//! [`RawMessage`] (an OwnTracks payload with the identity hints a live one
//! carries) for the pipeline to decode, filter, evaluate and store like
//! live data, or a [`Item::Skipped`] point with the reason. Pure but for
//! reading the file: no runtime, no store.
//!
//! Streaming: Recorder `.rec` files and recordings are read a line at a
//! time; Google Takeout files (often gigabytes) through a streaming JSON
//! visitor that holds one record at a time, so memory stays flat whatever
//! the size. GPX and GeoJSON files are parsed whole (their parsers build the
//! document; such files are megabytes).
//!
//! Formats:
//! - [`rec`]: OwnTracks Recorder's store, `rec/<user>/<device>/YYYY-MM.rec`
//!   (ISO-8601 time, TAB, the relative topic padded to 18 characters, TAB,
//!   the JSON payload); the identity from the path;
//! - [`gpx`](mod@gpx): GPX 1.0 and 1.1 tracks, routes and waypoints;
//! - [`geojson`](mod@geojson): FeatureCollections of Points with a time
//!   property (`timestamp`, `time` or `tst`);
//! - [`takeout`]: Google Takeout's `Records.json` and the on-device Timeline
//!   export (`semanticSegments`' `timelinePath`, `rawSignals`);
//! - [`Format::Recording`]: otstream's own recording format (NDJSON).

pub mod geojson;
pub mod gpx;
pub mod rec;
pub mod takeout;
mod time_parse;

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use otstream_model::{IdentityHints, RawMessage, RecordingLine, Transport};

pub use time_parse::parse_time;

/// What a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Decided from the file's name and first bytes.
    Auto,
    /// OwnTracks Recorder `.rec`.
    Rec,
    /// GPX 1.0 or 1.1.
    Gpx,
    /// A GeoJSON FeatureCollection of Points.
    Geojson,
    /// Google Takeout: Records.json or the Timeline export.
    Takeout,
    /// otstream's recording format (NDJSON).
    Recording,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "auto" => Format::Auto,
            "rec" => Format::Rec,
            "gpx" => Format::Gpx,
            "geojson" => Format::Geojson,
            "takeout" => Format::Takeout,
            "recording" => Format::Recording,
            _ => {
                return Err(format!(
                    "unknown format {s:?}: auto, rec, gpx, geojson, takeout or recording"
                ));
            }
        })
    }
}

/// One point of a file.
#[derive(Debug)]
pub enum Item {
    /// A message for the pipeline.
    Message(RawMessage),
    /// A point that cannot be a message, and why.
    Skipped(String),
}

/// Why a file could not be read (a point that cannot be read is
/// [`Item::Skipped`] instead, and the file goes on).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// The file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not of its format as a whole.
    #[error("{path}: {why}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The format needs a device and none was given or found.
    #[error(
        "{path}: no device to file it under: give --user and --device (a .rec file takes them from rec/<user>/<device>/)"
    )]
    NoIdentity {
        /// The file.
        path: PathBuf,
    },
}

/// Whom imported points are filed under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user.
    pub user: String,
    /// The device.
    pub device: String,
}

/// What every item of one import shares.
#[derive(Debug, Clone)]
pub struct Context {
    /// `received_at` of every message (the import's start, ms): a
    /// re-import writes the same rows.
    pub received_at: i64,
    /// The device given on the command line, if any (overrides a path's).
    pub identity: Option<Identity>,
    /// The MQTT topic prefix `decode.topic_prefix` resolves identities
    /// under.
    pub topic_prefix: String,
    /// Bytes read so far, over every file (for a progress bar).
    pub bytes_read: Option<Arc<AtomicU64>>,
}

impl Context {
    /// A message carrying `payload` for `identity`, as an HTTP client
    /// with `X-Limit-U`/`X-Limit-D` sends it.
    pub fn message(&self, identity: &Identity, payload: Vec<u8>) -> RawMessage {
        RawMessage {
            received_at: self.received_at,
            transport: Transport::Http,
            hints: IdentityHints {
                x_limit_u: Some(identity.user.clone()),
                x_limit_d: Some(identity.device.clone()),
                ..IdentityHints::default()
            },
            remote_addr: None,
            payload,
        }
    }
}

/// A fix of a file that is not OwnTracks, as the location payload a phone
/// would have sent.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Point {
    /// UNIX seconds.
    pub tst: i64,
    /// Degrees.
    pub lat: f64,
    /// Degrees.
    pub lon: f64,
    /// Metres.
    pub acc: Option<f64>,
    /// Metres.
    pub alt: Option<f64>,
    /// km/h.
    pub vel: Option<f64>,
    /// Degrees.
    pub cog: Option<f64>,
}

impl Point {
    /// `{"_type":"location",...}`, integers where OwnTracks has them.
    pub fn payload(&self) -> Vec<u8> {
        use std::fmt::Write;
        let mut s = format!(
            r#"{{"_type":"location","tst":{},"lat":{},"lon":{}"#,
            self.tst, self.lat, self.lon
        );
        for (name, v) in [
            ("acc", self.acc),
            ("alt", self.alt),
            ("vel", self.vel),
            ("cog", self.cog),
        ] {
            if let Some(v) = v.filter(|v| v.is_finite()) {
                let _ = write!(s, r#","{name}":{}"#, v.round() as i64);
            }
        }
        s.push('}');
        s.into_bytes()
    }
}

/// The format of `path` from its name, else from its first bytes.
pub fn detect(path: &Path, head: &[u8]) -> Option<Format> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let ext = name.rsplit('.').next().unwrap_or_default();
    match ext {
        "rec" => return Some(Format::Rec),
        "gpx" => return Some(Format::Gpx),
        "geojson" => return Some(Format::Geojson),
        "ndjson" | "jsonl" => return Some(Format::Recording),
        _ => {}
    }
    let text = String::from_utf8_lossy(head);
    let t = text.trim_start();
    if t.starts_with("<?xml") || t.starts_with("<gpx") {
        return Some(Format::Gpx);
    }
    if t.starts_with('{') {
        for (key, format) in [
            ("\"locations\"", Format::Takeout),
            ("\"semanticSegments\"", Format::Takeout),
            ("\"rawSignals\"", Format::Takeout),
            ("\"FeatureCollection\"", Format::Geojson),
            ("\"transport\"", Format::Recording),
        ] {
            if t.contains(key) {
                return Some(format);
            }
        }
    }
    // A Recorder line: a time, a tab.
    let first = t.lines().next().unwrap_or_default();
    if first.split('\t').count() >= 3 && first.as_bytes().first().is_some_and(u8::is_ascii_digit) {
        return Some(Format::Rec);
    }
    None
}

/// Reads `path` as `format`, handing each point to `emit` in file order.
/// `emit` returning false stops the reading (the importer is stopping).
pub fn read(
    path: &Path,
    format: Format,
    ctx: &Context,
    emit: &mut dyn FnMut(Item) -> bool,
) -> Result<(), ImportError> {
    let io = |source| ImportError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let counted = Counting {
        inner: file,
        bytes: ctx.bytes_read.clone(),
    };
    let mut reader = std::io::BufReader::with_capacity(1 << 20, counted);
    let format = match format {
        Format::Auto => {
            let head = reader.fill_buf().map_err(io)?;
            let head = &head[..head.len().min(4096)];
            detect(path, head).ok_or_else(|| ImportError::Format {
                path: path.to_owned(),
                why: "cannot tell the format: name it with --format".into(),
            })?
        }
        f => f,
    };
    let need_identity = || {
        ctx.identity.clone().ok_or_else(|| ImportError::NoIdentity {
            path: path.to_owned(),
        })
    };
    match format {
        Format::Rec => {
            let identity = match &ctx.identity {
                Some(i) => i.clone(),
                None => rec::identity_from_path(path).ok_or_else(|| ImportError::NoIdentity {
                    path: path.to_owned(),
                })?,
            };
            rec::read(reader, &identity, ctx, emit).map_err(io)
        }
        Format::Recording => read_recording(reader, ctx, emit).map_err(io),
        Format::Gpx => {
            let identity = need_identity()?;
            gpx::read(reader, &identity, ctx, emit).map_err(|why| ImportError::Format {
                path: path.to_owned(),
                why,
            })
        }
        Format::Geojson => {
            let identity = need_identity()?;
            geojson::read(reader, &identity, ctx, emit).map_err(|why| ImportError::Format {
                path: path.to_owned(),
                why,
            })
        }
        Format::Takeout => {
            let identity = need_identity()?;
            takeout::read(reader, &identity, ctx, emit).map_err(|why| ImportError::Format {
                path: path.to_owned(),
                why,
            })
        }
        Format::Auto => Err(ImportError::Format {
            path: path.to_owned(),
            why: "cannot tell the format".into(),
        }),
    }
}

/// A reader that adds what it reads to a shared count.
struct Counting<R> {
    inner: R,
    bytes: Option<Arc<AtomicU64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(b) = &self.bytes {
            b.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(n)
    }
}

/// otstream's recordings: each line a message as received, identity and
/// all (`--user`/`--device` file every line under one device instead).
fn read_recording(
    reader: impl BufRead,
    ctx: &Context,
    emit: &mut dyn FnMut(Item) -> bool,
) -> std::io::Result<()> {
    each_line(reader, &mut |line| {
        let item = match RecordingLine::message(line, ctx.received_at) {
            Ok(mut m) => {
                if let Some(id) = &ctx.identity {
                    m.hints = ctx.message(id, Vec::new()).hints;
                }
                Item::Message(m)
            }
            Err(e) => Item::Skipped(format!("recording line: {e}")),
        };
        emit(item)
    })
}

/// Hands each non-blank line to `f` (without its line end) until the end
/// or until `f` returns false. One buffer serves the whole file: a fresh
/// String per line was a malloc and a free per point on the reader thread.
fn each_line(mut reader: impl BufRead, f: &mut dyn FnMut(&str) -> bool) -> std::io::Result<()> {
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let l = line.trim_end_matches(['\n', '\r']);
        if l.trim().is_empty() {
            continue;
        }
        if !f(l) {
            return Ok(());
        }
    }
}

/// Every file under `path` (itself if a file), sorted, so that a
/// Recorder tree is read month by month.
pub fn files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let meta = std::fs::metadata(path)?;
    if meta.is_file() {
        out.push(path.to_owned());
        return Ok(out);
    }
    let mut dirs = vec![path.to_owned()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let p = entry.path();
            if entry.file_type()?.is_dir() {
                dirs.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests;
