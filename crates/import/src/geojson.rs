//! GeoJSON: a FeatureCollection of Points, each with its time in the
//! property `timestamp`, `time` or `tst` (ISO-8601 text, or a number of
//! seconds or milliseconds); `accuracy`/`acc`, `altitude`/`alt`,
//! `speed` (m/s) or `vel` (km/h), `course`/`cog` when present.

use std::io::BufRead;

use serde_json::Value;

use crate::{Context, Identity, Item, Point};

/// Every timed Point feature.
pub fn read(
    reader: impl BufRead,
    identity: &Identity,
    ctx: &Context,
    emit: &mut dyn FnMut(Item) -> bool,
) -> Result<(), String> {
    let fc: ::geojson::FeatureCollection = serde_json::from_reader(reader)
        .map_err(|e| format!("not a GeoJSON FeatureCollection: {e}"))?;
    for f in &fc.features {
        if !emit(feature(f, identity, ctx)) {
            break;
        }
    }
    Ok(())
}

fn feature(f: &::geojson::Feature, identity: &Identity, ctx: &Context) -> Item {
    let Some(::geojson::GeometryValue::Point { coordinates }) =
        f.geometry.as_ref().map(|g| &g.value)
    else {
        return Item::Skipped("GeoJSON feature that is not a Point".into());
    };
    let c = coordinates.as_slice();
    let (Some(&lon), Some(&lat)) = (c.first(), c.get(1)) else {
        return Item::Skipped("GeoJSON Point without coordinates".into());
    };
    let prop = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| f.properties.as_ref().and_then(|p| p.get(*n)))
    };
    let tst = match prop(&["timestamp", "time", "tst"]) {
        Some(Value::String(s)) => crate::parse_time(s),
        Some(Value::Number(n)) => n.as_f64().map(crate::time_parse::from_number),
        _ => None,
    };
    let Some(tst) = tst else {
        return Item::Skipped("GeoJSON Point without a time (timestamp, time or tst)".into());
    };
    let num = |names: &[&str]| prop(names).and_then(Value::as_f64);
    let p = Point {
        tst,
        lat,
        lon,
        acc: num(&["accuracy", "acc"]),
        alt: num(&["altitude", "alt"]).or_else(|| c.get(2).copied()),
        vel: num(&["speed"]).map(|v| v * 3.6).or_else(|| num(&["vel"])),
        cog: num(&["course", "cog"]),
    };
    Item::Message(ctx.message(identity, p.payload()))
}
