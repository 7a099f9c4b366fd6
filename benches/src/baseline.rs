//! The serde_json baseline: the same normalization as otstream-decode, for
//! the types the benchmarks use (location, transition, card, lwt), written
//! the fastest way serde_json allows.
//!
//! One serde_json pass reads the object into borrowed `(key, &RawValue)`
//! pairs: nothing is allocated per field, and unknown fields are copied into
//! `extra` as the raw text they were, with no re-serialization. Each known
//! field is then parsed from its raw text with the same lenient rules.

use std::borrow::Cow;
use std::fmt;

use otstream_model::identity;
use otstream_model::record::{Card, DeviceEvent, Meta, Position, Transition};
use otstream_model::{RawMessage, Record, Text};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// An object's fields, borrowed from the input.
struct Fields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(24));
                while let Some(k) = map.next_key::<Key<'de>>()? {
                    fields.push((k.0, map.next_value::<&'de RawValue>()?));
                }
                Ok(Fields(fields))
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(serde::Deserialize)]
struct Key<'a>(#[serde(borrow)] Cow<'a, str>);

enum L<T> {
    Null,
    Value(T),
    Unusable,
}

fn text(raw: &RawValue) -> &str {
    raw.get()
}

fn string<T: for<'a> From<&'a str>>(raw: &RawValue) -> L<T> {
    match text(raw) {
        "null" => L::Null,
        t if t.starts_with('"') => serde_json::from_str::<Key<'_>>(t)
            .map_or(L::Unusable, |s| L::Value(T::from(s.0.as_ref()))),
        _ => L::Unusable,
    }
}

fn number(raw: &RawValue) -> L<f64> {
    let t = text(raw);
    if t == "null" {
        return L::Null;
    }
    let t = if t.starts_with('"') {
        match serde_json::from_str::<Cow<'_, str>>(t) {
            Ok(s) => return s.trim().parse::<f64>().map_or(L::Unusable, L::Value),
            Err(_) => return L::Unusable,
        }
    } else {
        t
    };
    t.parse::<f64>()
        .ok()
        .filter(|f| f.is_finite())
        .map_or(L::Unusable, L::Value)
}

fn integer(raw: &RawValue) -> L<i64> {
    let t = text(raw);
    if let Ok(i) = t.parse::<i64>() {
        return L::Value(i);
    }
    match number(raw) {
        L::Value(f) if f.abs() < 9.2e18 => L::Value(f.trunc() as i64),
        L::Value(_) | L::Unusable => L::Unusable,
        L::Null => L::Null,
    }
}

fn int32(raw: &RawValue) -> L<i32> {
    match integer(raw) {
        L::Value(i) => i32::try_from(i).map_or(L::Unusable, L::Value),
        L::Null => L::Null,
        L::Unusable => L::Unusable,
    }
}

fn seconds(raw: &RawValue) -> L<i64> {
    match integer(raw) {
        L::Value(mut t) => {
            while t > 100_000_000_000 {
                t /= 1000;
            }
            L::Value(t)
        }
        other => other,
    }
}

fn strings(raw: &RawValue) -> L<Vec<Text>> {
    match text(raw) {
        "null" => L::Null,
        t => serde_json::from_str::<Vec<Text>>(t).map_or(L::Unusable, L::Value),
    }
}

/// Collects unknown fields as raw JSON text.
#[derive(Default)]
struct Extra(String);

impl Extra {
    fn push(&mut self, key: &str, raw: &RawValue) {
        self.0.push(if self.0.is_empty() { '{' } else { ',' });
        self.0
            .push_str(&serde_json::to_string(key).unwrap_or_default());
        self.0.push(':');
        self.0.push_str(raw.get());
    }
    fn finish(mut self) -> Option<String> {
        if self.0.is_empty() {
            return None;
        }
        self.0.push('}');
        Some(self.0)
    }
}

fn col<T>(l: L<T>, k: &str, raw: &RawValue, extra: &mut Extra) -> Option<T> {
    match l {
        L::Value(v) => Some(v),
        L::Null => None,
        L::Unusable => {
            extra.push(k, raw);
            None
        }
    }
}

fn nn(x: Option<i32>) -> Option<i32> {
    x.filter(|x| *x >= 0)
}

fn coord(raw: Option<&RawValue>, field: &str, limit: f64) -> Result<f64, String> {
    match raw.map(number) {
        Some(L::Value(f)) if (-limit..=limit).contains(&f) => Ok(f),
        Some(L::Value(f)) => Err(format!("field `{field}`: {f} is out of range")),
        _ => Err(format!("missing required field `{field}`")),
    }
}

fn required_seconds(raw: Option<&RawValue>) -> Result<i64, String> {
    match raw.map(seconds) {
        Some(L::Value(t)) if t > 0 => Ok(t),
        _ => Err("missing or invalid `tst`".into()),
    }
}

fn is_meta(k: &str, raw: &RawValue) -> bool {
    matches!(k, "_type" | "topic" | "tid") && (raw.get().starts_with('"') || raw.get() == "null")
}

/// Decodes one message the serde_json way; the same records as
/// otstream-decode for the supported types.
pub fn decode(msg: &RawMessage, out: &mut Vec<Record>) -> Result<(), String> {
    let fields: Fields<'_> = serde_json::from_slice(&msg.payload).map_err(|e| e.to_string())?;
    let get_str = |name: &str| {
        fields
            .0
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| match string::<Text>(v) {
                L::Value(s) => Some(s),
                _ => None,
            })
    };
    let kind = get_str("_type").ok_or("missing `_type`")?;
    let topic = get_str("topic");
    let tid = get_str("tid");
    let id = identity::resolve(&msg.hints, "owntracks", topic.as_deref(), tid.as_deref())
        .map_err(|e| e.to_string())?;
    let meta = Meta {
        user: id.user,
        device: id.device,
        tid,
        received_at: msg.received_at,
        transport: msg.transport,
        topic: msg.hints.mqtt_topic.as_deref().map(Text::from).or(topic),
    };
    let mut extra = Extra::default();
    let record = match kind.as_str() {
        "location" => {
            let (mut lat, mut lon, mut tst) = (None, None, None);
            let mut p = Position::at(meta, 0, 0.0, 0.0);
            for (k, v) in &fields.0 {
                let (k, v, x) = (k.as_ref(), *v, &mut extra);
                match k {
                    "lat" => lat = Some(v),
                    "lon" => lon = Some(v),
                    "tst" => tst = Some(v),
                    "acc" => p.acc = nn(col(int32(v), k, v, x)),
                    "alt" => p.alt = col(int32(v), k, v, x).filter(|a| *a != -1),
                    "vac" => p.vac = nn(col(int32(v), k, v, x)),
                    "vel" => p.vel = nn(col(int32(v), k, v, x)),
                    "cog" => p.cog = nn(col(int32(v), k, v, x)),
                    "batt" => p.batt = nn(col(int32(v), k, v, x)),
                    "bs" => p.bs = col(int32(v), k, v, x),
                    "t" => p.t = col(string(v), k, v, x),
                    "conn" => p.conn = col(string(v), k, v, x),
                    "p" => p.p = col(number(v), k, v, x),
                    "m" => p.m = col(int32(v), k, v, x),
                    "SSID" | "ssid" => p.ssid = col(string(v), k, v, x),
                    "BSSID" | "bssid" => p.bssid = col(string(v), k, v, x),
                    "created_at" => p.created_at = col(seconds(v), k, v, x),
                    "inregions" => p.inregions = col(strings(v), k, v, x).unwrap_or_default(),
                    "inrids" => p.inrids = col(strings(v), k, v, x).unwrap_or_default(),
                    _ if is_meta(k, v) => {}
                    _ => x.push(k, v),
                }
            }
            p.lat = coord(lat, "lat", 90.0)?;
            p.lon = coord(lon, "lon", 180.0)?;
            p.tst = required_seconds(tst)?;
            p.extra = extra.finish();
            Record::Position(p)
        }
        "transition" => {
            let (mut lat, mut lon, mut tst, mut event) = (None, None, None, None);
            let mut t = Transition {
                meta,
                tst: 0,
                wtst: None,
                lat: 0.0,
                lon: 0.0,
                acc: None,
                event: Text::default(),
                desc: None,
                rid: None,
                t: None,
                source: Text::const_new("device"),
                extra: None,
            };
            for (k, v) in &fields.0 {
                let (k, v, x) = (k.as_ref(), *v, &mut extra);
                match k {
                    "lat" => lat = Some(v),
                    "lon" => lon = Some(v),
                    "tst" => tst = Some(v),
                    "event" => event = Some(v),
                    "wtst" => t.wtst = col(seconds(v), k, v, x),
                    "acc" => t.acc = nn(col(int32(v), k, v, x)),
                    "desc" => t.desc = col(string(v), k, v, x),
                    "rid" => t.rid = col(string(v), k, v, x),
                    "t" => t.t = col(string(v), k, v, x),
                    _ if is_meta(k, v) => {}
                    _ => x.push(k, v),
                }
            }
            t.lat = coord(lat, "lat", 90.0)?;
            t.lon = coord(lon, "lon", 180.0)?;
            t.tst = required_seconds(tst)?;
            t.event = match event.map(string::<Text>) {
                Some(L::Value(e)) if e.eq_ignore_ascii_case("enter") => Text::const_new("enter"),
                Some(L::Value(e)) if e.eq_ignore_ascii_case("leave") => Text::const_new("leave"),
                _ => return Err("invalid `event`".into()),
            };
            t.extra = extra.finish();
            Record::Transition(t)
        }
        "card" => {
            let mut c = Card {
                meta,
                name: None,
                face: None,
                extra: None,
            };
            for (k, v) in &fields.0 {
                let (k, v, x) = (k.as_ref(), *v, &mut extra);
                match k {
                    "name" => c.name = col(string(v), k, v, x),
                    "face" => c.face = col(string(v), k, v, x),
                    _ if is_meta(k, v) => {}
                    _ => x.push(k, v),
                }
            }
            c.extra = extra.finish();
            Record::Card(c)
        }
        "lwt" => {
            let mut e = DeviceEvent {
                meta,
                event: kind.clone(),
                tst: None,
                extra: None,
            };
            for (k, v) in &fields.0 {
                let (k, v) = (k.as_ref(), *v);
                match k {
                    "tst" => e.tst = col(seconds(v), k, v, &mut extra),
                    _ if is_meta(k, v) => {}
                    _ => extra.push(k, v),
                }
            }
            e.extra = extra.finish();
            Record::DeviceEvent(e)
        }
        other => return Err(format!("the baseline does not implement `{other}`")),
    };
    out.push(record);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use otstream_decode::{DecodeConfig, Decoder};

    use super::*;
    use crate::samples;

    #[test]
    fn baseline_and_decoder_agree_on_every_benchmark_input() {
        let mut d = Decoder::new(DecodeConfig::default(), Arc::default());
        let mut inputs = samples::mixed();
        inputs.push(samples::mqtt(r#"{"_type":"location","lat":"1.5","lon":2,"tst":"1700000000000","batt":true,"vel":5.6,"x":[1,{"y":null}],"inregions":["a"]}"#));
        for msg in inputs {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            d.decode(&msg, &mut a).unwrap();
            decode(&msg, &mut b).unwrap();
            assert_eq!(a, b, "{}", String::from_utf8_lossy(&msg.payload));
            assert_eq!(a.len(), 1);
        }
    }
}
