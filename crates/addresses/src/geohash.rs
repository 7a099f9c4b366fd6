//! Geohash cells: the cache's key. Every position in a cell shares one
//! address, asked for once, at the cell's centre.

const BASE32: &[u8; 32] = b"0123456789bcdefghjkmnpqrstuvwxyz";

/// A cell: its geohash and its centre.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    /// The geohash, `precision` characters (8: 38 m × 19 m).
    pub hash: String,
    /// Centre latitude, degrees.
    pub lat: f64,
    /// Centre longitude, degrees.
    pub lon: f64,
}

/// The cell of `lat`, `lon` at `precision` characters (1 to 12).
pub fn cell(lat: f64, lon: f64, precision: usize) -> Cell {
    let (mut la, mut lo) = ((-90.0f64, 90.0f64), (-180.0f64, 180.0f64));
    let lat = lat.clamp(-90.0, 90.0);
    let lon = (lon + 180.0).rem_euclid(360.0) - 180.0;
    let mut hash = String::with_capacity(precision);
    // Bits alternate longitude, latitude, starting with longitude.
    let mut even = true;
    for _ in 0..precision.clamp(1, 12) {
        let mut ch = 0usize;
        for _ in 0..5 {
            let (range, v) = if even { (&mut lo, lon) } else { (&mut la, lat) };
            let mid = (range.0 + range.1) / 2.0;
            ch <<= 1;
            if v >= mid {
                ch |= 1;
                range.0 = mid;
            } else {
                range.1 = mid;
            }
            even = !even;
        }
        hash.push(BASE32[ch] as char);
    }
    Cell {
        hash,
        lat: (la.0 + la.1) / 2.0,
        lon: (lo.0 + lo.1) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_hashes() {
        // Wikipedia's example, and the geohash.org reference points.
        assert_eq!(cell(42.605, -5.603, 5).hash, "ezs42");
        assert_eq!(cell(57.64911, 10.40744, 11).hash, "u4pruydqqvj");
        assert_eq!(cell(48.8583, 2.2945, 8).hash, "u09tunqu");
        // Longitude wraps: 190 E is 170 W.
        assert_eq!(cell(0.0, 190.0, 6).hash, cell(0.0, -170.0, 6).hash);
        let c = cell(42.605, -5.603, 5);
        assert!((c.lat - 42.60498046875).abs() < 1e-9, "{}", c.lat);
        assert!((c.lon - -5.60302734375).abs() < 1e-9, "{}", c.lon);
    }
}
