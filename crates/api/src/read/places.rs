//! Places from their stops: what both backends aggregate per place, made
//! into a [`Place`], and a user's places merged across devices.
//!
//! Every figure is derived from the stops in the window read (count, sum,
//! mean, extremes), never kept as a running total, so a stop delivered
//! twice (stored once by its key, or collapsed by `FINAL`) counts once.

use geo::{Distance, Haversine, Point};

use crate::read::rows::Place;

/// Most places one answer holds: a device keeps at most
/// `otstream_trips::places::MAX_PLACES`, so this is a fleet of hundreds.
pub const MAX_PLACES_ANSWER: usize = 20_000;

/// One place's stops in the window, as a backend sums them up; the
/// names are those of the place's first stop.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Aggregate {
    pub user: String,
    pub device: String,
    pub id: i64,
    /// Mean position of the stops.
    pub lat: f64,
    pub lon: f64,
    /// Their bounding box: `(min_lat, max_lat, min_lon, max_lon)`.
    pub bbox: (f64, f64, f64, f64),
    /// The largest fence name of its stops (any, when some lie in one).
    pub fence: Option<String>,
    pub address: Option<String>,
    pub locality: Option<String>,
    pub cc: Option<String>,
    pub first: i64,
    pub last: i64,
    pub visits: i64,
    pub dwell: i64,
}

/// Metres per degree of latitude, less than any on the haversine's sphere
/// (111,195), so the test of latitude never rules out a place within reach.
const M_PER_DEGREE: f64 = 111_000.0;

fn metres(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    Haversine.distance(Point::new(lon1, lat1), Point::new(lon2, lat2))
}

/// Rounded to 1e-7 degrees (a centimetre): the two backends sum a mean in
/// different orders, and their last bits must not make answers differ.
fn degrees(v: f64) -> f64 {
    (v * 1e7).round() / 1e7
}

impl Aggregate {
    /// The place: its radius is the distance from the centre to the
    /// farthest corner of the stops' bounding box, so no stop lies
    /// farther.
    pub(crate) fn place(self) -> Place {
        let (lat, lon) = (degrees(self.lat), degrees(self.lon));
        let (s, n, w, e) = self.bbox;
        let radius = [(s, w), (s, e), (n, w), (n, e)]
            .into_iter()
            .map(|(a, b)| metres(lat, lon, a, b))
            .fold(0.0, f64::max)
            .ceil();
        let name = |s: Option<String>| s.filter(|s| !s.is_empty());
        Place {
            user: self.user,
            device: self.device,
            id: self.id,
            lat,
            lon,
            radius,
            fence: name(self.fence),
            address: self.address,
            locality: name(self.locality),
            cc: name(self.cc),
            first_seen: self.first,
            last_seen: self.last,
            visits: self.visits,
            dwell_s: self.dwell,
            devices: Vec::new(),
        }
    }
}

/// A user's places across their devices: the devices' places taken in
/// the order they were first seen (then by device and id), each joining
/// the nearest of the user's places already made whose centre lies within
/// `radius_m` of its own (the rule that made each device's places, one
/// level up), else founding one under its own device and id. A merged
/// place's centre is the mean of its members' weighted by visits; its
/// radius reaches the farthest member's edge; its names are its
/// founder's; its figures are the sums. By user, then first seen.
pub fn by_user(mut places: Vec<Place>, radius_m: f64) -> Vec<Place> {
    places.sort_by(|a, b| {
        (&a.user, a.first_seen, &a.device, a.id).cmp(&(&b.user, b.first_seen, &b.device, b.id))
    });
    let mut merged: Vec<(Place, Vec<Place>)> = Vec::new();
    let mut user_start = 0;
    for p in places {
        if merged
            .get(user_start)
            .is_some_and(|(m, _)| m.user != p.user)
        {
            user_start = merged.len();
        }
        // A cheap test of latitude first: a user's places are compared
        // pairwise, and most pairs are far apart.
        let nearest = merged[user_start..]
            .iter()
            .enumerate()
            .filter(|(_, (m, _))| (m.lat - p.lat).abs() * M_PER_DEGREE <= radius_m)
            .map(|(i, (m, _))| (user_start + i, metres(m.lat, m.lon, p.lat, p.lon)))
            .filter(|&(_, d)| d <= radius_m)
            .min_by(|a, b| a.1.total_cmp(&b.1));
        match nearest {
            Some((i, _)) => merged[i].1.push(p),
            None => {
                let mut founder = p.clone();
                founder.devices = vec![p.device.clone()];
                merged.push((founder, vec![p]));
            }
        }
    }
    merged
        .into_iter()
        .map(|(m, members)| combine(m, &members))
        .collect()
}

/// `founder` with the figures of all its `members` (itself included).
fn combine(mut place: Place, members: &[Place]) -> Place {
    if members.len() == 1 {
        return place;
    }
    let weight: f64 = members.iter().map(|m| m.visits.max(1) as f64).sum();
    let mean = |f: fn(&Place) -> f64| {
        members
            .iter()
            .map(|m| f(m) * m.visits.max(1) as f64)
            .sum::<f64>()
            / weight
    };
    place.lat = degrees(mean(|m| m.lat));
    place.lon = degrees(mean(|m| m.lon));
    place.radius = members
        .iter()
        .map(|m| metres(place.lat, place.lon, m.lat, m.lon) + m.radius)
        .fold(0.0, f64::max)
        .ceil();
    place.first_seen = members.iter().map(|m| m.first_seen).min().unwrap_or(0);
    place.last_seen = members.iter().map(|m| m.last_seen).max().unwrap_or(0);
    place.visits = members.iter().map(|m| m.visits).sum();
    place.dwell_s = members.iter().map(|m| m.dwell_s).sum();
    place.fence = place
        .fence
        .or_else(|| members.iter().find_map(|m| m.fence.clone()));
    let mut devices: Vec<String> = members.iter().map(|m| m.device.clone()).collect();
    devices.sort();
    devices.dedup();
    place.devices = devices;
    place
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(device: &str, id: i64, lat: f64, visits: i64) -> Place {
        Place {
            user: "jane".into(),
            device: device.into(),
            id,
            lat,
            lon: 13.4,
            radius: 10.5,
            first_seen: id,
            last_seen: id + 600,
            visits,
            dwell_s: visits * 600,
            ..Place::default()
        }
    }

    #[test]
    fn the_bounding_box_bounds_the_radius_and_the_centre_is_rounded() {
        let p = Aggregate {
            user: "jane".into(),
            device: "phone".into(),
            id: 100,
            lat: 52.500_000_000_4,
            lon: 13.4,
            // 50 m south and north, 0.001 degrees (68 m) east and west.
            bbox: (
                52.5 - 50.0 / 111_195.0,
                52.5 + 50.0 / 111_195.0,
                13.399,
                13.401,
            ),
            fence: Some(String::new()),
            locality: Some("Berlin, Berlin".into()),
            address: Some(String::new()),
            ..Aggregate::default()
        }
        .place();
        assert_eq!(p.lat, 52.5);
        // sqrt(50² + 67.7²) = 84.2: the corner, rounded up.
        assert_eq!(p.radius, 85.0);
        assert_eq!(p.fence, None);
        // No fence, an address not found (''): the locality names it.
        assert_eq!(p.name(), Some("Berlin, Berlin"));
    }

    #[test]
    fn a_users_devices_share_a_place_within_the_radius_and_keep_their_own_elsewhere() {
        let north = |m: f64| 52.5 + m / 111_195.0;
        let merged = by_user(
            vec![
                place("car", 2000, north(40.0), 1),
                place("phone", 1000, north(0.0), 3),
                place("phone", 5000, north(5000.0), 2),
                Place {
                    user: "bob".into(),
                    ..place("phone", 500, north(0.0), 1)
                },
            ],
            150.0,
        );
        assert_eq!(merged.len(), 3);
        let (bob, home, far) = (&merged[0], &merged[1], &merged[2]);
        assert_eq!(
            (bob.user.as_str(), bob.id, bob.devices.len()),
            ("bob", 500, 1)
        );
        // The phone founded home (seen first); the car's place joined it.
        assert_eq!((home.device.as_str(), home.id), ("phone", 1000));
        assert_eq!(home.devices, ["car", "phone"]);
        assert_eq!((home.visits, home.dwell_s), (4, 2400));
        assert_eq!((home.first_seen, home.last_seen), (1000, 2600));
        // Weighted by visits: 10 m north of the phone's centre.
        assert!((home.lat - north(10.0)).abs() < 1e-7, "{}", home.lat);
        // The car's centre is 30 m off the merged one, plus its 10.5 m.
        assert_eq!(home.radius, 41.0);
        assert_eq!(
            (far.id, far.visits, far.devices.as_slice()),
            (5000, 2, &["phone".to_owned()][..])
        );
    }
}
