//! Encoders: rows in, bytes out, one row at a time, so an answer of any
//! size is written as it is read. Each encoder writes a prefix
//! ([`Encoder::begin`]), its rows, and a suffix ([`Encoder::end`]);
//! whatever has been written so far may be sent.
//!
//! Formats of positions: JSON (an array of objects named like the
//! table's columns), NDJSON (one object a line), GeoJSON (a
//! FeatureCollection of Points whose properties are the other columns),
//! a GeoJSON LineString per device, GPX 1.1 (a track per device), CSV
//! (a header, then one line a row). OwnTracks Recorder's shapes, for
//! `/api/0`: its location objects (`_type`, the payload's fields,
//! `isotst`, `disptst`, `username`, `device`), its `{"data":[..],
//! "count":N,"status":200}` envelope and its single LineString Feature.
//!
//! Numbers: integers with itoa, floats with ryu (shortest text that reads
//! back to the same double), except in GPX, where XML Schema's decimal
//! has no exponent.
//!
//! Parquet ([`parquet`]): positions, trips and stops (and visits, which
//! are stops) as typed columns. Places: JSON objects or GeoJSON Points
//! ([`Feature`]).
//! The heatmap's cells: JSON objects or GeoJSON hexagons (`heat`).
//!
//! Layout: one module a format: [`json`], [`geojson`], `gpx`, `csv` (the
//! `csv-core` writer), [`parquet`], and `dates`.

mod csv;
mod dates;
pub mod geojson;
mod gpx;
mod heat;
pub mod json;
pub mod parquet;
#[cfg(test)]
mod tests;

use std::io::Write as _;

use crate::read::rows::{Position, Str};

pub use dates::{civil, day, days_from_civil, iso8601};
pub use geojson::{EventFormat, Feature, FeatureEncoder};
pub use heat::heatmap_json;
use json::{Obj, float, position_members};
pub use json::{
    device_json, devices_json, position_json, recorder_last, recorder_location, stats_json,
    summary_json,
};

/// Writes rows of `T` as one document.
pub trait Encoder<T> {
    /// The document's opening.
    fn begin(&mut self, out: &mut Vec<u8>);
    /// One row.
    fn row(&mut self, row: &T, out: &mut Vec<u8>);
    /// The document's closing.
    fn end(&mut self, out: &mut Vec<u8>);
    /// The `Content-Type` of the document.
    fn content_type(&self) -> &'static str;
    /// Whether the document can no longer be completed (an encoder that
    /// failed): the answer is then cut off, never ended as if whole.
    fn failed(&self) -> bool {
        false
    }
}

/// `rows` written whole by `encoder`: an answer already in memory.
pub fn encode_all<T, E: Encoder<T>>(rows: &[T], mut encoder: E) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + rows.len() * 256);
    encoder.begin(&mut out);
    for r in rows {
        encoder.row(r, &mut out);
    }
    encoder.end(&mut out);
    out
}

/// The output formats of positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A JSON array of objects.
    Json,
    /// One JSON object a line.
    Ndjson,
    /// A GeoJSON FeatureCollection of Points.
    GeoJson,
    /// GeoJSON LineStrings, one per device.
    LineString,
    /// GPX 1.1, a track per device.
    Gpx,
    /// CSV with a header line.
    Csv,
}

impl Format {
    /// The format named `s` (the `format` parameter), if there is one.
    pub fn parse(s: &str) -> Option<Format> {
        Some(match s {
            "json" => Format::Json,
            "ndjson" => Format::Ndjson,
            "geojson" => Format::GeoJson,
            "linestring" => Format::LineString,
            "gpx" => Format::Gpx,
            "csv" => Format::Csv,
            _ => return None,
        })
    }

    /// Every format's name, for error messages.
    pub const NAMES: &'static str = "json, ndjson, geojson, linestring, gpx, csv";
}

/// Whose conventions the JSON shapes follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// otstream's own: the tables' column names.
    Otstream,
    /// OwnTracks Recorder's `/api/0`.
    Recorder,
}

/// Positions in a [`Format`] and [`Shape`].
pub struct PositionEncoder {
    format: Format,
    shape: Shape,
    fields: Option<Vec<String>>,
    rows: u64,
    /// The device of the open LineString or GPX track.
    open: Option<(Str, Str)>,
    csv: csv::Csv,
}

impl PositionEncoder {
    /// An encoder; `fields` limits Recorder's location objects to those
    /// members.
    pub fn new(format: Format, shape: Shape, fields: Option<Vec<String>>) -> Self {
        Self {
            format,
            shape,
            fields,
            rows: 0,
            open: None,
            csv: csv::Csv::default(),
        }
    }

    fn same_device(&self, p: &Position) -> bool {
        self.open
            .as_ref()
            .is_some_and(|(u, d)| *u == p.user && *d == p.device)
    }
}

impl Encoder<Position> for PositionEncoder {
    fn begin(&mut self, out: &mut Vec<u8>) {
        match (self.format, self.shape) {
            (Format::Json, Shape::Otstream) => out.push(b'['),
            (Format::Json, Shape::Recorder) => out.extend_from_slice(b"{\"data\":["),
            (Format::Ndjson, _) => {}
            (Format::GeoJson, _) => {
                out.extend_from_slice(b"{\"type\":\"FeatureCollection\",\"features\":[")
            }
            (Format::LineString, Shape::Otstream) => {
                out.extend_from_slice(b"{\"type\":\"FeatureCollection\",\"features\":[")
            }
            (Format::LineString, Shape::Recorder) => out.extend_from_slice(
                b"{\"type\":\"Feature\",\"properties\":{},\"geometry\":{\"type\":\"LineString\",\"coordinates\":[",
            ),
            (Format::Gpx, _) => out.extend_from_slice(gpx::BEGIN),
            (Format::Csv, _) => out.extend_from_slice(csv::HEADER.as_bytes()),
        }
    }

    fn row(&mut self, p: &Position, out: &mut Vec<u8>) {
        let first = self.rows == 0;
        self.rows += 1;
        match (self.format, self.shape) {
            (Format::Json, Shape::Otstream) | (Format::Ndjson, _) => {
                if !first && self.format == Format::Json {
                    out.push(b',');
                }
                let mut o = Obj::open(out, None);
                position_members(&mut o, p, true);
                o.close();
                if self.format == Format::Ndjson {
                    out.push(b'\n');
                }
            }
            (Format::Json, Shape::Recorder) => {
                if !first {
                    out.push(b',');
                }
                recorder_location(out, p, self.fields.as_deref());
            }
            (Format::GeoJson, _) => {
                if !first {
                    out.push(b',');
                }
                out.extend_from_slice(
                    b"{\"type\":\"Feature\",\"geometry\":{\"type\":\"Point\",\"coordinates\":[",
                );
                float(out, p.lon);
                out.push(b',');
                float(out, p.lat);
                out.extend_from_slice(b"]},\"properties\":");
                let mut o = Obj::open(out, None);
                position_members(&mut o, p, false);
                o.close();
                out.push(b'}');
            }
            (Format::LineString, shape) => {
                let new_line = shape == Shape::Otstream && !self.same_device(p);
                if new_line {
                    if self.open.is_some() {
                        out.extend_from_slice(b"]}},");
                    }
                    out.extend_from_slice(b"{\"type\":\"Feature\",\"properties\":");
                    let mut o = Obj::open(out, None);
                    o.str("user", &p.user);
                    o.str("device", &p.device);
                    o.close();
                    out.extend_from_slice(
                        b",\"geometry\":{\"type\":\"LineString\",\"coordinates\":[",
                    );
                    self.open = Some((p.user.clone(), p.device.clone()));
                } else if !first {
                    out.push(b',');
                }
                out.push(b'[');
                float(out, p.lon);
                out.push(b',');
                float(out, p.lat);
                out.push(b']');
            }
            (Format::Gpx, _) => {
                if !self.same_device(p) {
                    if self.open.is_some() {
                        out.extend_from_slice(gpx::CLOSE_TRACK);
                    }
                    gpx::open_track(out, p);
                    self.open = Some((p.user.clone(), p.device.clone()));
                }
                gpx::point(out, p);
            }
            (Format::Csv, _) => self.csv.row(out, p),
        }
    }

    fn end(&mut self, out: &mut Vec<u8>) {
        match (self.format, self.shape) {
            (Format::Json, Shape::Otstream) => out.push(b']'),
            (Format::Json, Shape::Recorder) => {
                let _ = write!(out, "],\"count\":{},\"status\":200}}", self.rows);
            }
            (Format::Ndjson | Format::Csv, _) => {}
            (Format::GeoJson, _) => out.extend_from_slice(b"]}"),
            (Format::LineString, Shape::Otstream) => {
                if self.open.is_some() {
                    out.extend_from_slice(b"]}}");
                }
                out.extend_from_slice(b"]}");
            }
            (Format::LineString, Shape::Recorder) => out.extend_from_slice(b"]}}"),
            (Format::Gpx, _) => {
                if self.open.is_some() {
                    out.extend_from_slice(gpx::CLOSE_TRACK);
                }
                out.extend_from_slice(gpx::END);
            }
        }
    }

    fn content_type(&self) -> &'static str {
        match self.format {
            Format::Json => "application/json",
            Format::Ndjson => "application/x-ndjson",
            Format::GeoJson | Format::LineString => "application/geo+json",
            Format::Gpx => "application/gpx+xml",
            Format::Csv => "text/csv; charset=utf-8",
        }
    }
}
