//! GeoJSON of derived rows (trips, stops, waypoints, transitions) and the
//! encoder of rows that are a JSON object and a geometry.

use crate::read::rows::{Place, Stop, Transition, Trip, Waypoint};

use super::Encoder;
use super::json::{Obj, float};

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
        if let Some(id) = self.place_id {
            o.int("place_id", id);
        }
        o.close();
    }

    fn points(&self) -> Vec<(f64, f64)> {
        vec![(self.lon, self.lat)]
    }
}

impl Feature for Place {
    fn members(&self, out: &mut Vec<u8>) {
        let mut o = Obj::open(out, None);
        o.str("user", &self.user);
        o.str("device", &self.device);
        o.int("id", self.id);
        o.float("lat", self.lat);
        o.float("lon", self.lon);
        o.float("radius", self.radius);
        o.opt_str("name", self.name());
        o.opt_str("fence", self.fence.as_deref());
        o.opt_str("address", self.address.as_deref().filter(|a| !a.is_empty()));
        o.opt_str("locality", self.locality.as_deref());
        o.opt_str("cc", self.cc.as_deref());
        o.int("first_seen", self.first_seen);
        o.int("last_seen", self.last_seen);
        o.int("visits", self.visits);
        o.int("dwell_s", self.dwell_s);
        o.list("devices", &self.devices);
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
