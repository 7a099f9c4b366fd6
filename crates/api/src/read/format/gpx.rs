//! GPX 1.1: a track per device. XML Schema's decimal has no exponent, so
//! coordinates are written with `Display`, not ryu.

use std::io::Write as _;

use crate::read::rows::Position;

use super::dates::push_iso8601;

/// The document's opening.
pub(crate) const BEGIN: &[u8] = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<gpx version=\"1.1\" creator=\"otstream\" xmlns=\"http://www.topografix.com/GPX/1/1\">\n";
/// Closes a device's track.
pub(crate) const CLOSE_TRACK: &[u8] = b"</trkseg></trk>\n";
/// The document's closing.
pub(crate) const END: &[u8] = b"</gpx>\n";

/// Opens `p`'s device's track.
pub(crate) fn open_track(out: &mut Vec<u8>, p: &Position) {
    let _ = writeln!(
        out,
        "<trk><name>{}/{}</name><trkseg>",
        xml_escape(&p.user),
        xml_escape(&p.device)
    );
}

/// `p` as a track point.
pub(crate) fn point(out: &mut Vec<u8>, p: &Position) {
    let _ = write!(out, "<trkpt lat=\"{}\" lon=\"{}\">", p.lat, p.lon);
    if let Some(alt) = p.alt {
        let _ = write!(out, "<ele>{alt}</ele>");
    }
    out.extend_from_slice(b"<time>");
    push_iso8601(out, p.tst, b'T', true);
    out.extend_from_slice(b"</time></trkpt>\n");
}

pub(crate) fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}
