//! The heatmap's cells: the H3 index of a position at the resolutions
//! stored beside it ([`RESOLUTIONS`]: about 250 km², 5 km² and 0.1 km²
//! a cell), computed when it is written, so that a heatmap is a `GROUP
//! BY` in either store (ClickHouse 18.16 has no `geoToH3`, SQLite no H3
//! at all). Through the h3o crate, H3's reference algorithms in Rust.

use h3o::{CellIndex, LatLng, Resolution};

/// The resolutions stored, coarse to fine.
pub const RESOLUTIONS: [u8; 3] = [5, 7, 9];

/// The column holding the cells at `res`, if that resolution is stored.
pub fn column(res: u8) -> Option<&'static str> {
    Some(match res {
        5 => "h3_5",
        7 => "h3_7",
        9 => "h3_9",
        _ => return None,
    })
}

/// The cells of a position at [`RESOLUTIONS`]: its cell at 9 and that
/// cell's ancestors at 7 and 5 (H3's hierarchy: near a coarse cell's edge
/// an ancestor may differ from the coarse cell of the point itself, and
/// every count at 5 and 7 is the sum of its children's at 9); `None` for
/// coordinates H3 cannot place (not finite).
pub fn cells(lat: f64, lon: f64) -> Option<[u64; 3]> {
    // The finest from the coordinates, the coarser as its parents: a
    // parent is bit arithmetic, a cell from coordinates a projection.
    let fine = LatLng::new(lat, lon).ok()?.to_cell(Resolution::Nine);
    let parent = |r| fine.parent(r).map_or(0, u64::from);
    Some([
        parent(Resolution::Five),
        parent(Resolution::Seven),
        u64::from(fine),
    ])
}

/// A cell's centre and its boundary (a closed ring), `(lat, lon)` in
/// degrees; `None` for a number that is no cell.
#[allow(clippy::type_complexity)]
pub fn shape(cell: u64) -> Option<((f64, f64), Vec<(f64, f64)>)> {
    let c = CellIndex::try_from(cell).ok()?;
    let centre = LatLng::from(c);
    let mut ring: Vec<(f64, f64)> = c.boundary().iter().map(|v| (v.lat(), v.lng())).collect();
    if let Some(first) = ring.first().copied() {
        ring.push(first);
    }
    Some(((centre.lat(), centre.lng()), ring))
}

/// A cell as H3 writes it: 15 hexadecimal digits.
pub fn hex(cell: u64) -> String {
    format!("{cell:x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cells of the Eiffel Tower at 5, 7 and 9 as ClickHouse's
    /// `geoToH3` (H3's C library, through chDB 3) gives them, and the
    /// finest one's shape around the point.
    #[test]
    fn cells_are_h3s_and_nest() {
        let [c5, c7, c9] = cells(48.85822, 2.2945).expect("cells");
        assert_eq!(hex(c5), "851fb467fffffff");
        assert_eq!(hex(c7), "871fb4674ffffff");
        assert_eq!(hex(c9), "891fb46741bffff");
        let ((lat, lon), ring) = shape(c9).expect("shape");
        assert!((lat - 48.85822).abs() < 0.003 && (lon - 2.2945).abs() < 0.003);
        assert_eq!(ring.len(), 7);
        assert_eq!(ring.first(), ring.last());
        assert_eq!(cells(f64::NAN, 0.0), None);
        assert_eq!(shape(42), None);
        assert_eq!(column(6), None);
    }
}
