//! GPX 1.0 and 1.1 (the `gpx` crate): every track segment's points, then
//! every route's, then the waypoints; a point without a time is skipped.

use std::io::BufRead;

use crate::{Context, Identity, Item, Point};

/// Every timed point of the document.
pub fn read(
    reader: impl BufRead,
    identity: &Identity,
    ctx: &Context,
    emit: &mut dyn FnMut(Item) -> bool,
) -> Result<(), String> {
    let doc = ::gpx::read(reader).map_err(|e| format!("not GPX 1.0 or 1.1: {e}"))?;
    let points = doc
        .tracks
        .iter()
        .flat_map(|t| t.segments.iter())
        .flat_map(|s| s.points.iter())
        .chain(doc.routes.iter().flat_map(|r| r.points.iter()))
        .chain(doc.waypoints.iter());
    for w in points {
        let item = match w.time {
            Some(t) => {
                let at = w.point();
                let p = Point {
                    tst: time::OffsetDateTime::from(t).unix_timestamp(),
                    lat: at.y(),
                    lon: at.x(),
                    // The horizontal dilution times a typical 5 m GPS error
                    // is what the apps call accuracy; GPX has nothing closer.
                    acc: w.hdop.map(|h| h * 5.0),
                    alt: w.elevation,
                    // GPX speed is m/s.
                    vel: w.speed.map(|v| v * 3.6),
                    cog: None,
                };
                Item::Message(ctx.message(identity, p.payload()))
            }
            None => Item::Skipped("GPX point without a time".into()),
        };
        if !emit(item) {
            break;
        }
    }
    Ok(())
}
