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

use std::io::Write as _;

use crate::rows::{DaySummary, Device, Position, Stop, Str, Transition, Trip, Waypoint};

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

/// `YYYY-MM-DD` of a UNIX time, UTC.
pub fn day(t: i64) -> String {
    let (y, m, d) = civil(t.div_euclid(86_400));
    format!("{y:04}-{m:02}-{d:02}")
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a UNIX time, UTC (Recorder's `isotst`).
pub fn iso8601(t: i64) -> String {
    let mut out = Vec::with_capacity(20);
    push_iso8601(&mut out, t, b'T', true);
    String::from_utf8(out).unwrap_or_default()
}

/// Appends `YYYY-MM-DD{sep}HH:MM:SS` and, with `zulu`, `Z`: digits
/// written in place, since an export writes one to three of these a row.
fn push_iso8601(out: &mut Vec<u8>, t: i64, sep: u8, zulu: bool) {
    let (y, m, d) = civil(t.div_euclid(86_400));
    let secs = t.rem_euclid(86_400);
    if !(0..=9999).contains(&y) {
        let _ = write!(
            out,
            "{y:04}-{m:02}-{d:02}{}{:02}:{:02}:{:02}{}",
            sep as char,
            secs / 3600,
            secs / 60 % 60,
            secs % 60,
            if zulu { "Z" } else { "" }
        );
        return;
    }
    let (y, secs) = (y as u32, secs as u32);
    let mut b = *b"0000-00-00T00:00:00Z";
    let digits = [
        (0, y / 1000),
        (1, y / 100 % 10),
        (2, y / 10 % 10),
        (3, y % 10),
        (5, m / 10),
        (6, m % 10),
        (8, d / 10),
        (9, d % 10),
        (11, secs / 36_000),
        (12, secs / 3600 % 10),
        (14, secs / 600 % 6),
        (15, secs / 60 % 10),
        (17, secs % 60 / 10),
        (18, secs % 10),
    ];
    for (i, v) in digits {
        b[i] = b'0' + v as u8;
    }
    b[10] = sep;
    out.extend_from_slice(&b[..if zulu { 20 } else { 19 }]);
}

/// Year, month, day of a count of days since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`, exact over the whole proleptic calendar).
pub fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Days since 1970-01-01 of a civil date (`days_from_civil`).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A JSON object being written member by member; members absent from
/// `fields` (Recorder's `fields=` projection), when given, are left out.
struct Obj<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
    fields: Option<&'a [String]>,
}

impl<'a> Obj<'a> {
    fn open(out: &'a mut Vec<u8>, fields: Option<&'a [String]>) -> Self {
        out.push(b'{');
        Self {
            out,
            first: true,
            fields,
        }
    }

    // The members are inlined where they are called with literal keys, so
    // each key's length is a constant and its copy is a few moves rather
    // than a call to memcpy: an export writes twenty keys a row.
    #[inline(always)]
    fn key(&mut self, k: &str) -> bool {
        if self.fields.is_some_and(|f| !f.iter().any(|x| x == k)) {
            return false;
        }
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(k.as_bytes());
        self.out.extend_from_slice(b"\":");
        true
    }

    #[inline(always)]
    fn str(&mut self, k: &str, v: &str) {
        if self.key(k) {
            json_str(self.out, v);
        }
    }

    #[inline(always)]
    fn opt_str(&mut self, k: &str, v: Option<&str>) {
        if let Some(v) = v {
            self.str(k, v);
        }
    }

    #[inline(always)]
    fn int(&mut self, k: &str, v: i64) {
        if self.key(k) {
            int(self.out, v);
        }
    }

    #[inline(always)]
    fn opt_int(&mut self, k: &str, v: Option<i32>) {
        if let Some(v) = v {
            self.int(k, v.into());
        }
    }

    #[inline(always)]
    fn float(&mut self, k: &str, v: f64) {
        if self.key(k) {
            float(self.out, v);
        }
    }

    fn list<S: AsRef<str>>(&mut self, k: &str, v: &[S]) {
        if !v.is_empty() && self.key(k) {
            self.out.push(b'[');
            for (i, s) in v.iter().enumerate() {
                if i > 0 {
                    self.out.push(b',');
                }
                json_str(self.out, s.as_ref());
            }
            self.out.push(b']');
        }
    }

    /// A member whose value the caller writes next, unfiltered.
    fn raw(&mut self, k: &str) -> &mut Vec<u8> {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(k.as_bytes());
        self.out.extend_from_slice(b"\":");
        self.out
    }

    fn close(self) {
        self.out.push(b'}');
    }
}

fn json_str(out: &mut Vec<u8>, s: &str) {
    // Most texts (names, ids, triggers) need no escaping: copied as they
    // are, without serde_json's per-byte escape table walk.
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    // Writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn int(out: &mut Vec<u8>, v: i64) {
    // Most integer columns (acc, alt, vel, cog, batt) are under 1000.
    if (0..1000).contains(&v) {
        let v = v as u16;
        if v >= 100 {
            out.push(b'0' + (v / 100) as u8);
        }
        if v >= 10 {
            out.push(b'0' + (v / 10 % 10) as u8);
        }
        out.push(b'0' + (v % 10) as u8);
        return;
    }
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

fn float(out: &mut Vec<u8>, v: f64) {
    if v.is_finite() {
        out.extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
}

/// What the fix itself says, from `acc` to `inrids`, as JSON members;
/// `wifi` names the Wi-Fi members (Recorder keeps the apps' `SSID`).
fn fix_members(o: &mut Obj<'_>, p: &Position, wifi: [&str; 2]) {
    o.opt_int("acc", p.acc);
    o.opt_int("alt", p.alt);
    o.opt_int("vac", p.vac);
    o.opt_int("vel", p.vel);
    o.opt_int("cog", p.cog);
    o.opt_int("batt", p.batt);
    o.opt_int("bs", p.bs);
    o.opt_str("t", p.t.as_deref());
    o.opt_str("conn", p.conn.as_deref());
    if let Some(v) = p.p {
        o.float("p", v);
    }
    o.opt_int("m", p.m);
    o.opt_str(wifi[0], p.ssid.as_deref());
    o.opt_str(wifi[1], p.bssid.as_deref());
    if let Some(v) = p.created_at {
        o.int("created_at", v);
    }
    o.list("inregions", &p.inregions);
    o.list("inrids", &p.inrids);
}

/// The columns of a position, as JSON members (all but `lat`/`lon` when
/// `coordinates` is false: GeoJSON carries them in the geometry).
fn position_members(o: &mut Obj<'_>, p: &Position, coordinates: bool) {
    o.str("user", &p.user);
    o.str("device", &p.device);
    o.opt_str("tid", p.tid.as_deref());
    o.int("tst", p.tst);
    if coordinates {
        o.float("lat", p.lat);
        o.float("lon", p.lon);
    }
    fix_members(o, p, ["ssid", "bssid"]);
    o.opt_str("topic", p.topic.as_deref());
    o.int("received_at", p.received_at);
}

/// One position as Recorder writes a location: the payload's own fields
/// (`_type`, `tid`, `tst`, `lat`, `lon`, ...) plus `topic`, `isorcv`,
/// `isotst`, `disptst`, `username` and `device`. A fix that came without
/// a topic (over HTTP) gets the one Recorder gives it,
/// `owntracks/<user>/<device>`: its web frontend keys devices by it.
pub fn recorder_location(out: &mut Vec<u8>, p: &Position, fields: Option<&[String]>) {
    let mut o = Obj::open(out, fields);
    recorder_members(&mut o, p);
    o.close();
}

/// A device's last position as Recorder's `/api/0/last` writes it: the
/// location ([`recorder_location`]) with the device's card merged in
/// (`name`, `face`).
pub fn recorder_last(out: &mut Vec<u8>, d: &Device, fields: Option<&[String]>) {
    let mut o = Obj::open(out, fields);
    recorder_members(&mut o, &d.last);
    o.opt_str("name", d.name.as_deref());
    o.opt_str("face", d.face.as_deref());
    o.close();
}

fn recorder_members(o: &mut Obj<'_>, p: &Position) {
    o.str("_type", "location");
    o.opt_str("tid", p.tid.as_deref());
    o.int("tst", p.tst);
    o.float("lat", p.lat);
    o.float("lon", p.lon);
    fix_members(o, p, ["SSID", "BSSID"]);
    match p.topic.as_deref() {
        Some(topic) => o.str("topic", topic),
        None => {
            if o.key("topic") {
                json_str(o.out, &format!("owntracks/{}/{}", p.user, p.device));
            }
        }
    }
    for (key, t, sep, zulu) in [
        ("isorcv", p.received_at.div_euclid(1000), b'T', true),
        ("isotst", p.tst, b'T', true),
        ("disptst", p.tst, b' ', false),
    ] {
        if o.key(key) {
            o.out.push(b'"');
            push_iso8601(o.out, t, sep, zulu);
            o.out.push(b'"');
        }
    }
    o.str("username", &p.user);
    o.str("device", &p.device);
}

/// Positions in a [`Format`] and [`Shape`].
pub struct PositionEncoder {
    format: Format,
    shape: Shape,
    fields: Option<Vec<String>>,
    rows: u64,
    /// The device of the open LineString or GPX track.
    open: Option<(Str, Str)>,
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
        }
    }

    fn same_device(&self, p: &Position) -> bool {
        self.open
            .as_ref()
            .is_some_and(|(u, d)| *u == p.user && *d == p.device)
    }
}

const CSV_HEADER: &str = "user,device,tid,tst,isotst,lat,lon,acc,alt,vac,vel,cog,batt,bs,t,conn,p,m,ssid,bssid,created_at,inregions,inrids,topic,received_at\n";

/// A text cell. One a spreadsheet would read as a formula (starting with
/// `=`, `+`, `-`, `@`, a tab or a carriage return: a device may call itself
/// `=HYPERLINK(...)`) gets a leading `'`, which spreadsheets show as text
/// (OWASP's CSV injection advice); numbers are written elsewhere, as they
/// are.
fn csv_field(out: &mut Vec<u8>, s: &str) {
    let formula = s.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let neutral;
    let s = if formula {
        neutral = format!("'{s}");
        neutral.as_str()
    } else {
        s
    };
    if s.contains([',', '"', '\n', '\r']) {
        out.push(b'"');
        out.extend_from_slice(s.replace('"', "\"\"").as_bytes());
        out.push(b'"');
    } else {
        out.extend_from_slice(s.as_bytes());
    }
}

fn csv_list<S: AsRef<str>>(out: &mut Vec<u8>, v: &[S]) {
    if !v.is_empty() {
        let mut s = Vec::new();
        s.push(b'[');
        for (i, x) in v.iter().enumerate() {
            if i > 0 {
                s.push(b',');
            }
            json_str(&mut s, x.as_ref());
        }
        s.push(b']');
        csv_field(out, &String::from_utf8_lossy(&s));
    }
}

fn csv_row(out: &mut Vec<u8>, p: &Position) {
    let opt = |out: &mut Vec<u8>, v: Option<i32>| {
        if let Some(v) = v {
            int(out, v.into());
        }
        out.push(b',');
    };
    csv_field(out, &p.user);
    out.push(b',');
    csv_field(out, &p.device);
    out.push(b',');
    csv_field(out, p.tid.as_deref().unwrap_or(""));
    out.push(b',');
    int(out, p.tst);
    out.push(b',');
    push_iso8601(out, p.tst, b'T', true);
    out.push(b',');
    float(out, p.lat);
    out.push(b',');
    float(out, p.lon);
    out.push(b',');
    for v in [p.acc, p.alt, p.vac, p.vel, p.cog, p.batt, p.bs] {
        opt(out, v);
    }
    csv_field(out, p.t.as_deref().unwrap_or(""));
    out.push(b',');
    csv_field(out, p.conn.as_deref().unwrap_or(""));
    out.push(b',');
    if let Some(v) = p.p {
        float(out, v);
    }
    out.push(b',');
    opt(out, p.m);
    csv_field(out, p.ssid.as_deref().unwrap_or(""));
    out.push(b',');
    csv_field(out, p.bssid.as_deref().unwrap_or(""));
    out.push(b',');
    if let Some(v) = p.created_at {
        int(out, v);
    }
    out.push(b',');
    csv_list(out, &p.inregions);
    out.push(b',');
    csv_list(out, &p.inrids);
    out.push(b',');
    csv_field(out, p.topic.as_deref().unwrap_or(""));
    out.push(b',');
    int(out, p.received_at);
    out.push(b'\n');
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
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
            (Format::Gpx, _) => out.extend_from_slice(
                b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<gpx version=\"1.1\" creator=\"otstream\" xmlns=\"http://www.topografix.com/GPX/1/1\">\n",
            ),
            (Format::Csv, _) => out.extend_from_slice(CSV_HEADER.as_bytes()),
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
                        out.extend_from_slice(b"</trkseg></trk>\n");
                    }
                    let _ = writeln!(
                        out,
                        "<trk><name>{}/{}</name><trkseg>",
                        xml_escape(&p.user),
                        xml_escape(&p.device)
                    );
                    self.open = Some((p.user.clone(), p.device.clone()));
                }
                let _ = write!(out, "<trkpt lat=\"{}\" lon=\"{}\">", p.lat, p.lon);
                if let Some(alt) = p.alt {
                    let _ = write!(out, "<ele>{alt}</ele>");
                }
                out.extend_from_slice(b"<time>");
                push_iso8601(out, p.tst, b'T', true);
                out.extend_from_slice(b"</time></trkpt>\n");
            }
            (Format::Csv, _) => csv_row(out, p),
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
                    out.extend_from_slice(b"</trkseg></trk>\n");
                }
                out.extend_from_slice(b"</gpx>\n");
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

/// Whether derived rows are written as JSON objects or GeoJSON features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventFormat {
    /// A JSON array of objects.
    Json,
    /// A GeoJSON FeatureCollection.
    GeoJson,
}

impl EventFormat {
    /// The format named `s`, if there is one.
    pub fn parse(s: &str) -> Option<EventFormat> {
        match s {
            "json" => Some(EventFormat::Json),
            "geojson" => Some(EventFormat::GeoJson),
            _ => None,
        }
    }
}

/// Rows that are a JSON object and a GeoJSON geometry.
pub trait Feature {
    /// The row's columns.
    fn members(&self, o: &mut Vec<u8>);
    /// Its geometry: `[lon, lat]` points, one (a Point) or more (a
    /// LineString).
    fn points(&self) -> Vec<(f64, f64)>;
}

impl Feature for Trip {
    fn members(&self, out: &mut Vec<u8>) {
        let mut o = Obj::open(out, None);
        o.str("user", &self.user);
        o.str("device", &self.device);
        o.int("start", self.start);
        o.int("end", self.end);
        o.float("start_lat", self.start_lat);
        o.float("start_lon", self.start_lon);
        o.float("end_lat", self.end_lat);
        o.float("end_lon", self.end_lon);
        o.float("distance", self.distance);
        o.int("duration", self.duration);
        o.float("avg_vel", self.avg_vel);
        o.float("max_vel", self.max_vel);
        o.int("points", self.points);
        o.opt_str("start_place", self.start_place.as_deref());
        o.opt_str("start_cc", self.start_cc.as_deref());
        o.opt_str("end_place", self.end_place.as_deref());
        o.opt_str("end_cc", self.end_cc.as_deref());
        o.opt_str(
            "start_address",
            self.start_address.as_deref().filter(|a| !a.is_empty()),
        );
        o.opt_str(
            "end_address",
            self.end_address.as_deref().filter(|a| !a.is_empty()),
        );
        o.close();
    }

    fn points(&self) -> Vec<(f64, f64)> {
        vec![
            (self.start_lon, self.start_lat),
            (self.end_lon, self.end_lat),
        ]
    }
}

impl Feature for Stop {
    fn members(&self, out: &mut Vec<u8>) {
        let mut o = Obj::open(out, None);
        o.str("user", &self.user);
        o.str("device", &self.device);
        o.int("start", self.start);
        o.int("end", self.end);
        o.float("lat", self.lat);
        o.float("lon", self.lon);
        o.int("duration", self.duration);
        o.int("points", self.points);
        o.opt_str("place", self.place.as_deref());
        o.opt_str("locality", self.locality.as_deref());
        o.opt_str("cc", self.cc.as_deref());
        o.opt_str("address", self.address.as_deref().filter(|a| !a.is_empty()));
        o.close();
    }

    fn points(&self) -> Vec<(f64, f64)> {
        vec![(self.lon, self.lat)]
    }
}

impl Feature for Waypoint {
    fn members(&self, out: &mut Vec<u8>) {
        let mut o = Obj::open(out, None);
        o.str("user", &self.user);
        o.str("device", &self.device);
        o.int("tst", self.tst);
        o.float("lat", self.lat);
        o.float("lon", self.lon);
        o.opt_int("radius", self.rad);
        o.opt_str("desc", self.desc.as_deref());
        o.opt_str("rid", self.rid.as_deref());
        o.int("received_at", self.received_at);
        o.close();
    }

    fn points(&self) -> Vec<(f64, f64)> {
        vec![(self.lon, self.lat)]
    }
}

impl Feature for Transition {
    fn members(&self, out: &mut Vec<u8>) {
        let mut o = Obj::open(out, None);
        o.str("user", &self.user);
        o.str("device", &self.device);
        o.opt_str("tid", self.tid.as_deref());
        o.int("tst", self.tst);
        if let Some(w) = self.wtst {
            o.int("wtst", w);
        }
        o.float("lat", self.lat);
        o.float("lon", self.lon);
        o.opt_int("acc", self.acc);
        o.str("event", &self.event);
        o.opt_str("desc", self.desc.as_deref());
        o.opt_str("rid", self.rid.as_deref());
        o.opt_str("t", self.t.as_deref());
        o.str("source", &self.source);
        o.int("received_at", self.received_at);
        o.close();
    }

    fn points(&self) -> Vec<(f64, f64)> {
        vec![(self.lon, self.lat)]
    }
}

/// Trips, stops or transitions as JSON or GeoJSON.
pub struct FeatureEncoder {
    format: EventFormat,
    rows: u64,
}

impl FeatureEncoder {
    /// An encoder of `format`.
    pub fn new(format: EventFormat) -> Self {
        Self { format, rows: 0 }
    }
}

impl<T: Feature> Encoder<T> for FeatureEncoder {
    fn begin(&mut self, out: &mut Vec<u8>) {
        match self.format {
            EventFormat::Json => out.push(b'['),
            EventFormat::GeoJson => {
                out.extend_from_slice(b"{\"type\":\"FeatureCollection\",\"features\":[")
            }
        }
    }

    fn row(&mut self, row: &T, out: &mut Vec<u8>) {
        if self.rows > 0 {
            out.push(b',');
        }
        self.rows += 1;
        match self.format {
            EventFormat::Json => row.members(out),
            EventFormat::GeoJson => {
                let points = row.points();
                out.extend_from_slice(b"{\"type\":\"Feature\",\"geometry\":{\"type\":");
                let point = |out: &mut Vec<u8>, (lon, lat): (f64, f64)| {
                    out.push(b'[');
                    float(out, lon);
                    out.push(b',');
                    float(out, lat);
                    out.push(b']');
                };
                if let [one] = points.as_slice() {
                    out.extend_from_slice(b"\"Point\",\"coordinates\":");
                    point(out, *one);
                } else {
                    out.extend_from_slice(b"\"LineString\",\"coordinates\":[");
                    for (i, p) in points.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        point(out, *p);
                    }
                    out.push(b']');
                }
                out.extend_from_slice(b"},\"properties\":");
                row.members(out);
                out.push(b'}');
            }
        }
    }

    fn end(&mut self, out: &mut Vec<u8>) {
        match self.format {
            EventFormat::Json => out.push(b']'),
            EventFormat::GeoJson => out.extend_from_slice(b"]}"),
        }
    }

    fn content_type(&self) -> &'static str {
        match self.format {
            EventFormat::Json => "application/json",
            EventFormat::GeoJson => "application/geo+json",
        }
    }
}

/// `/api/v1/devices`: each device's last fix, card name and when it was
/// last seen.
pub fn devices_json(devices: &[Device]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 * devices.len() + 2);
    out.push(b'[');
    for (i, d) in devices.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        device_json(&mut out, d);
    }
    out.push(b']');
    out
}

/// One device as `/api/v1/devices` and the live feed write it.
pub fn device_json(out: &mut Vec<u8>, d: &Device) {
    let p = &d.last;
    let mut o = Obj::open(out, None);
    o.str("user", &p.user);
    o.str("device", &p.device);
    o.opt_str("tid", p.tid.as_deref());
    o.opt_str("name", d.name.as_deref());
    o.float("lat", p.lat);
    o.float("lon", p.lon);
    o.int("tst", p.tst);
    o.opt_int("acc", p.acc);
    o.opt_int("batt", p.batt);
    o.opt_int("vel", p.vel);
    let regions = o.raw("inregions");
    regions.push(b'[');
    for (i, s) in p.inregions.iter().enumerate() {
        if i > 0 {
            regions.push(b',');
        }
        json_str(regions, s);
    }
    regions.push(b']');
    o.int("seen", p.received_at);
    o.close();
}

/// A position as the live feed sends it.
pub fn position_json(out: &mut Vec<u8>, p: &Position) {
    let mut o = Obj::open(out, None);
    position_members(&mut o, p, true);
    o.close();
}

/// `/api/v1/summary`.
pub fn summary_json(days: &[DaySummary]) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 * days.len() + 2);
    out.push(b'[');
    for (i, d) in days.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let mut o = Obj::open(&mut out, None);
        o.str("user", &d.user);
        o.str("device", &d.device);
        o.str("day", &d.day);
        o.float("distance", d.distance);
        o.int("driving_s", d.driving_s);
        o.int("trips", d.trips.into());
        o.int("stops", d.stops.into());
        o.float("max_vel", d.max_vel);
        o.close();
    }
    out.push(b']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_and_integers_as_serde_json_writes_them() {
        for s in [
            "",
            "jane",
            "Café ☕",
            "a\"b",
            "back\\slash",
            "tab\there",
            "\u{1}",
            "\u{7f}",
            "line\n",
        ] {
            let mut out = Vec::new();
            json_str(&mut out, s);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(s).unwrap()
            );
        }
        for v in [
            0,
            7,
            9,
            10,
            99,
            100,
            999,
            1000,
            -1,
            -999,
            i64::MIN,
            i64::MAX,
            1_700_000_000,
        ] {
            let mut out = Vec::new();
            int(&mut out, v);
            assert_eq!(String::from_utf8(out).unwrap(), v.to_string());
        }
    }

    fn fix(device: &str, tst: i64) -> Position {
        Position {
            user: "jane".into(),
            device: device.into(),
            tid: Some("JJ".into()),
            tst,
            lat: 48.85833,
            lon: 2.29513,
            alt: Some(35),
            batt: Some(41),
            inregions: vec!["home".into()],
            received_at: tst * 1000 + 123,
            ..Position::default()
        }
    }

    fn encode(format: Format, shape: Shape, rows: &[Position]) -> String {
        let mut e = PositionEncoder::new(format, shape, None);
        let mut out = Vec::new();
        e.begin(&mut out);
        for r in rows {
            e.row(r, &mut out);
        }
        e.end(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn calendar_round_trips() {
        assert_eq!(iso8601(1_497_508_651), "2017-06-15T06:37:31Z");
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(253_402_300_799), "9999-12-31T23:59:59Z");
        assert_eq!(iso8601(253_402_300_800), "10000-01-01T00:00:00Z");
        assert_eq!(iso8601(-1), "1969-12-31T23:59:59Z");
        assert_eq!(day(-1), "1969-12-31");
        assert_eq!(civil(days_from_civil(2024, 2, 29)), (2024, 2, 29));
        for d in [-800_000, -1, 0, 59, 60, 11_016, 20_000, 2_932_896] {
            let (y, m, dd) = civil(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
    }

    #[test]
    fn every_format_of_two_devices() {
        let rows = [
            fix("a", 1_700_000_000),
            fix("a", 1_700_000_010),
            fix("b", 1_700_000_020),
        ];
        let json: serde_json::Value =
            serde_json::from_str(&encode(Format::Json, Shape::Otstream, &rows)).unwrap();
        assert_eq!(json[2]["device"], "b");
        assert_eq!(json[0]["inregions"][0], "home");
        assert_eq!(json[0]["received_at"], 1_700_000_000_123i64);
        let geo: serde_json::Value =
            serde_json::from_str(&encode(Format::GeoJson, Shape::Otstream, &rows)).unwrap();
        assert_eq!(geo["features"][1]["geometry"]["coordinates"][0], 2.29513);
        assert_eq!(geo["features"][1]["properties"]["tst"], 1_700_000_010);
        let line: serde_json::Value =
            serde_json::from_str(&encode(Format::LineString, Shape::Otstream, &rows)).unwrap();
        assert_eq!(line["features"].as_array().unwrap().len(), 2);
        assert_eq!(
            line["features"][0]["geometry"]["coordinates"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        let rec: serde_json::Value =
            serde_json::from_str(&encode(Format::Json, Shape::Recorder, &rows)).unwrap();
        assert_eq!(rec["count"], 3);
        assert_eq!(rec["status"], 200);
        assert_eq!(rec["data"][0]["isotst"], "2023-11-14T22:13:20Z");
        assert_eq!(rec["data"][0]["disptst"], "2023-11-14 22:13:20");
        assert_eq!(rec["data"][0]["_type"], "location");
        let empty: serde_json::Value =
            serde_json::from_str(&encode(Format::LineString, Shape::Otstream, &[])).unwrap();
        assert_eq!(empty["features"].as_array().unwrap().len(), 0);
        let gpx = encode(Format::Gpx, Shape::Otstream, &rows);
        assert_eq!(gpx.matches("<trk>").count(), 2);
        assert!(gpx.contains("<trkpt lat=\"48.85833\" lon=\"2.29513\"><ele>35</ele><time>2023-11-14T22:13:20Z</time></trkpt>"));
        let csv = encode(Format::Csv, Shape::Otstream, &rows);
        assert_eq!(csv.lines().count(), 4);
        assert_eq!(
            csv.lines().nth(1).unwrap(),
            "jane,a,JJ,1700000000,2023-11-14T22:13:20Z,48.85833,2.29513,,35,,,,41,,,,,,,,,\"[\"\"home\"\"]\",,,1700000000123"
        );
    }

    #[test]
    fn recorder_fields_project_the_location() {
        let mut out = Vec::new();
        let fields = vec!["tst".to_owned(), "isotst".to_owned()];
        recorder_location(&mut out, &fix("a", 1_700_000_000), Some(&fields));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"tst\":1700000000,\"isotst\":\"2023-11-14T22:13:20Z\"}"
        );
    }

    #[test]
    fn csv_text_a_spreadsheet_would_run_is_neutralised() {
        let cell = |s: &str| {
            let mut out = Vec::new();
            csv_field(&mut out, s);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            cell("=HYPERLINK(\"http://x\",\"y\")"),
            "\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\""
        );
        assert_eq!(cell("+1"), "'+1");
        assert_eq!(cell("-2+3"), "'-2+3");
        assert_eq!(cell("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(cell("\tx"), "'\tx");
        assert_eq!(cell("jane"), "jane");
        assert_eq!(cell("a,b"), "\"a,b\"");
    }
}
