//! The heatmap's answer: cells with their counts, as JSON objects
//! (`cell` in H3's hexadecimal, its centre, `count`) or as a GeoJSON
//! FeatureCollection of the cells' hexagons (what the map draws).

use super::json::{Obj, float};
use otstream_schema::h3;

/// `cells` (`(cell, count)`, by cell) at resolution `res` as JSON, or as
/// GeoJSON with `geojson`.
pub fn heatmap_json(cells: &[(u64, u64)], res: u8, geojson: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + cells.len() * if geojson { 400 } else { 80 });
    out.extend_from_slice(if geojson {
        b"{\"type\":\"FeatureCollection\",\"features\":["
    } else {
        b"["
    });
    let mut first = true;
    for &(cell, count) in cells {
        // A stored number that is no cell (a row written by hand) is left
        // out rather than drawn somewhere.
        let Some(((lat, lon), ring)) = h3::shape(cell) else {
            continue;
        };
        if !first {
            out.push(b',');
        }
        first = false;
        if geojson {
            out.extend_from_slice(
                b"{\"type\":\"Feature\",\"geometry\":{\"type\":\"Polygon\",\"coordinates\":[[",
            );
            for (i, (vlat, vlon)) in ring.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.push(b'[');
                float(&mut out, *vlon);
                out.push(b',');
                float(&mut out, *vlat);
                out.push(b']');
            }
            out.extend_from_slice(b"]]},\"properties\":");
        }
        let mut o = Obj::open(&mut out, None);
        o.str("cell", &h3::hex(cell));
        o.int("res", i64::from(res));
        o.float("lat", lat);
        o.float("lon", lon);
        o.int("count", i64::try_from(count).unwrap_or(i64::MAX));
        o.close();
        if geojson {
            out.push(b'}');
        }
    }
    out.extend_from_slice(if geojson { b"]}" } else { b"]" });
    out
}
