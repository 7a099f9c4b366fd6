//! Offline reverse geocoding: where a position is, in words people read.
//!
//! In: a latitude and longitude. Out: the nearest populated place of
//! GeoNames' cities1000 set (144,000 places of 1,000 people or more, shipped
//! inside the `reverse_geocoder` crate): its name, first-level region and
//! ISO country code, or nothing when the nearest is farther than
//! `max_km` (at sea, in a desert). Pure and in memory: no network, a
//! lookup is a k-d tree search over points on the unit sphere (so the
//! antimeridian and the poles need no special case), well under a
//! microsecond. Building the index reads the embedded CSV: do it once per
//! process.

use std::sync::Arc;

use reverse_geocoder::ReverseGeocoder;

/// Earth's mean radius, km.
const R_KM: f64 = 6371.0088;

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
        if self.region.is_empty() || self.region == self.name {
            self.name.to_owned()
        } else {
            format!("{}, {}", self.name, self.region)
        }
    }
}

/// The index, shared by every stage of a process.
pub struct Geocoder {
    index: ReverseGeocoder,
    max_km: f64,
}

impl std::fmt::Debug for Geocoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Geocoder")
            .field("max_km", &self.max_km)
            .finish()
    }
}

impl Geocoder {
    /// The index over the embedded places; a place farther than `max_km`
    /// is no answer. About a second of CPU: build it once.
    pub fn new(max_km: f64) -> Arc<Geocoder> {
        Arc::new(Geocoder {
            index: ReverseGeocoder::new(),
            max_km,
        })
    }

    /// The nearest place to `lat`, `lon`, if within `max_km`.
    pub fn lookup(&self, lat: f64, lon: f64) -> Option<Place<'_>> {
        if !(lat.is_finite() && lon.is_finite()) {
            return None;
        }
        let found = self.index.search((lat, lon));
        // The index's distance is the squared chord between unit vectors.
        let chord = found.distance.max(0.0).sqrt();
        let km = 2.0 * (chord / 2.0).min(1.0).asin() * R_KM;
        (km <= self.max_km).then_some(Place {
            name: &found.record.name,
            region: &found.record.admin1,
            cc: &found.record.cc,
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
    }
}
