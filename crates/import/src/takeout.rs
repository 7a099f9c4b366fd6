//! Google Takeout location history, streamed: one record in memory at a
//! time, whatever the file's size.
//!
//! - `Records.json`: `{"locations": [{"latitudeE7", "longitudeE7",
//!   "timestamp" (ISO-8601) or "timestampMs" (text), "accuracy",
//!   "velocity" (m/s), "altitude", "heading", "activity", ...}]}`;
//! - the on-device Timeline export: `{"semanticSegments": [{"timelinePath":
//!   [{"point": "48.1°, 11.5°", "time": "..."}], ...}], "rawSignals":
//!   [{"position": {"LatLng": "48.1°, 11.5°", "accuracyMeters",
//!   "altitudeMeters", "speedMetersPerSecond", "timestamp"}}, ...]}`.
//!
//! Visits and activities (a segment's summary, not a fix), Wi-Fi scans and
//! activity records carry no position of their own and are not read.

use std::fmt;
use std::io::BufRead;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::{Context, Identity, Item, Point};

/// Every point of the file.
pub fn read(
    reader: impl BufRead,
    identity: &Identity,
    ctx: &Context,
    emit: &mut dyn FnMut(Item) -> bool,
) -> Result<(), String> {
    let mut top = Top {
        identity,
        ctx,
        emit,
        stopped: false,
    };
    let mut de = serde_json::Deserializer::from_reader(reader);
    match de::Deserializer::deserialize_map(&mut de, &mut top) {
        Ok(()) => Ok(()),
        Err(_) if top.stopped => Ok(()),
        Err(e) => Err(format!("not a Google Takeout location file: {e}")),
    }
}

struct Top<'a> {
    identity: &'a Identity,
    ctx: &'a Context,
    emit: &'a mut dyn FnMut(Item) -> bool,
    stopped: bool,
}

impl Top<'_> {
    fn emit(&mut self, item: Item) -> bool {
        let go_on = (self.emit)(item);
        self.stopped |= !go_on;
        go_on
    }

    fn point(&mut self, p: Option<Point>, what: &str) -> bool {
        let item = match p {
            Some(p) => Item::Message(self.ctx.message(self.identity, p.payload())),
            None => Item::Skipped(format!("Takeout {what} without a usable time and position")),
        };
        self.emit(item)
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Records,
    Segments,
    Signals,
}

impl<'de> Visitor<'de> for &mut Top<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Takeout object (locations, semanticSegments or rawSignals)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            let kind = match key.as_str() {
                "locations" => Kind::Records,
                "semanticSegments" => Kind::Segments,
                "rawSignals" => Kind::Signals,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            map.next_value_seed(Each {
                top: &mut *self,
                kind,
            })?;
        }
        Ok(())
    }
}

/// An array of one kind, element by element.
struct Each<'t, 'a> {
    top: &'t mut Top<'a>,
    kind: Kind,
}

impl<'de> DeserializeSeed<'de> for Each<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Each<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array")
    }

    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<(), S::Error> {
        match self.kind {
            Kind::Records => {
                while let Some(r) = seq.next_element::<Record>()? {
                    if !self.top.point(r.point(), "record") {
                        return Err(de::Error::custom("stopped"));
                    }
                }
            }
            Kind::Segments => {
                while let Some(s) = seq.next_element::<Segment>()? {
                    for p in s.timeline_path.unwrap_or_default() {
                        if !self.top.point(p.point(), "timelinePath point") {
                            return Err(de::Error::custom("stopped"));
                        }
                    }
                }
            }
            Kind::Signals => {
                while let Some(s) = seq.next_element::<Signal>()? {
                    let Some(p) = s.position else { continue };
                    if !self.top.point(p.point(), "rawSignals position") {
                        return Err(de::Error::custom("stopped"));
                    }
                }
            }
        }
        Ok(())
    }
}

/// A `Records.json` location.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    latitude_e7: Option<i64>,
    longitude_e7: Option<i64>,
    timestamp: Option<String>,
    timestamp_ms: Option<String>,
    accuracy: Option<f64>,
    velocity: Option<f64>,
    altitude: Option<f64>,
    heading: Option<f64>,
}

impl Record {
    fn point(&self) -> Option<Point> {
        let tst = match (&self.timestamp, &self.timestamp_ms) {
            (Some(t), _) => crate::parse_time(t)?,
            (None, Some(ms)) => ms.trim().parse::<i64>().ok()?.div_euclid(1000),
            (None, None) => return None,
        };
        // E7 coordinates past the int32 range wrapped in old exports
        // (Google's own note): unwrap them.
        let e7 = |v: i64| {
            let v = if v > 1_800_000_000 {
                v - (1i64 << 32)
            } else {
                v
            };
            v as f64 / 1e7
        };
        Some(Point {
            tst,
            lat: e7(self.latitude_e7?),
            lon: e7(self.longitude_e7?),
            acc: self.accuracy,
            alt: self.altitude,
            vel: self.velocity.map(|v| v * 3.6),
            cog: self.heading,
        })
    }
}

/// A Timeline segment: only its path is read.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Segment {
    timeline_path: Option<Vec<PathPoint>>,
}

#[derive(Deserialize)]
struct PathPoint {
    point: Option<String>,
    time: Option<String>,
}

impl PathPoint {
    fn point(&self) -> Option<Point> {
        let (lat, lon) = lat_lng(self.point.as_deref()?)?;
        Some(Point {
            tst: crate::parse_time(self.time.as_deref()?)?,
            lat,
            lon,
            ..Point::default()
        })
    }
}

#[derive(Deserialize)]
struct Signal {
    position: Option<SignalPosition>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SignalPosition {
    #[serde(rename = "LatLng")]
    lat_lng: Option<String>,
    accuracy_meters: Option<f64>,
    altitude_meters: Option<f64>,
    speed_meters_per_second: Option<f64>,
    timestamp: Option<String>,
}

impl SignalPosition {
    fn point(&self) -> Option<Point> {
        let (lat, lon) = lat_lng(self.lat_lng.as_deref()?)?;
        Some(Point {
            tst: crate::parse_time(self.timestamp.as_deref()?)?,
            lat,
            lon,
            acc: self.accuracy_meters,
            alt: self.altitude_meters,
            vel: self.speed_meters_per_second.map(|v| v * 3.6),
            cog: None,
        })
    }
}

/// `"48.1234567°, 11.1234567°"` or `"geo:48.1,11.5"`.
fn lat_lng(s: &str) -> Option<(f64, f64)> {
    let s = s.trim().trim_start_matches("geo:");
    let (a, b) = s.split_once(',')?;
    let num = |t: &str| t.trim().trim_end_matches('°').trim().parse::<f64>().ok();
    Some((num(a)?, num(b)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_notations_of_a_position() {
        assert_eq!(
            lat_lng("48.1234567°, 11.1234567°"),
            Some((48.1234567, 11.1234567))
        );
        assert_eq!(lat_lng("geo:48.1,-11.5"), Some((48.1, -11.5)));
        assert_eq!(lat_lng("nowhere"), None);
    }
}
