//! Places: a device's stops clustered into the places it keeps returning
//! to (home, the depot, a customer's site).
//!
//! The rule, stated once: a finished stop is a visit of the nearest of the
//! device's places whose centre lies within `place_radius_m` of the stop;
//! when none does, the stop founds a new place there, whose id is the
//! founding stop's start (UNIX s; unique per device, as a stop's start
//! is). A place's centre is the mean of its stops' positions, so it
//! settles where the device actually rests. Ids never change: a stop keeps
//! the id it was given, in the `place_id` column of `stops`.
//!
//! Pure and per device, like the trip rules: the geofence stage keeps each
//! device's [`Places`] beside its trip state, stores it with the stops it
//! assigned (kind `places`), and a restart or a Kafka rebalance resumes
//! from it. The readers derive everything else (visits, dwell, first and
//! last seen, the radius, a name) from the stops, so those figures stay
//! exact however often a stop is delivered.

use serde::{Deserialize, Serialize};

use crate::distance;

/// Places remembered per device. Past it, the place visited longest ago is
/// forgotten (its stops keep their id; a later stop there founds a new
/// place): a device cannot grow its state without bound by wandering.
pub const MAX_PLACES: usize = 256;

/// One place as the clustering remembers it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(from = "(i64, f64, f64, u32, i64)", into = "(i64, f64, f64, u32, i64)")]
pub struct Place {
    /// The start of its first stop, UNIX s.
    pub id: i64,
    /// Centre, degrees: the mean of its stops' positions.
    pub lat: f64,
    /// Centre's longitude, degrees.
    pub lon: f64,
    /// Stops in the mean.
    pub stops: u32,
    /// When its latest stop ended, UNIX s: which place to forget when full.
    pub last: i64,
}

impl From<(i64, f64, f64, u32, i64)> for Place {
    fn from((id, lat, lon, stops, last): (i64, f64, f64, u32, i64)) -> Self {
        Place {
            id,
            lat,
            lon,
            stops,
            last,
        }
    }
}

impl From<Place> for (i64, f64, f64, u32, i64) {
    fn from(p: Place) -> Self {
        (p.id, p.lat, p.lon, p.stops, p.last)
    }
}

/// A device's places: the clustering's state. Stored as JSON, each place
/// as `[id, lat, lon, stops, last]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Places(Vec<Place>);

impl Places {
    /// The place a stop from `start` to `end` at `lat`/`lon` is a visit of,
    /// by the rule above; founds one when no place is within `radius_m`.
    /// Returns its id.
    pub fn visit(&mut self, radius_m: f64, (start, end): (i64, i64), lat: f64, lon: f64) -> i64 {
        let nearest = self
            .0
            .iter()
            .enumerate()
            .map(|(i, p)| (i, distance(p.lat, p.lon, lat, lon)))
            .filter(|&(_, d)| d <= radius_m)
            .min_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((i, _)) = nearest {
            let p = &mut self.0[i];
            p.stops = p.stops.saturating_add(1);
            let n = f64::from(p.stops);
            p.lat += (lat - p.lat) / n;
            p.lon += (lon - p.lon) / n;
            p.last = p.last.max(end);
            return p.id;
        }
        if self.0.len() >= MAX_PLACES
            && let Some(oldest) = self
                .0
                .iter()
                .enumerate()
                .min_by_key(|(_, p)| (p.last, p.id))
                .map(|(i, _)| i)
        {
            self.0.swap_remove(oldest);
        }
        self.0.push(Place {
            id: start,
            lat,
            lon,
            stops: 1,
            last: end,
        });
        start
    }

    /// The places remembered.
    pub fn places(&self) -> &[Place] {
        &self.0
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// About `m` metres north of `lat`.
    fn north(lat: f64, m: f64) -> f64 {
        lat + m / 111_195.0
    }

    #[test]
    fn stops_within_the_radius_are_one_place_whose_centre_is_their_mean() {
        let mut places = Places::default();
        let home = (52.5, 13.4);
        assert_eq!(places.visit(150.0, (1000, 2000), home.0, home.1), 1000);
        // 100 m north: the same place; the centre moves halfway.
        let id = places.visit(150.0, (5000, 6000), north(home.0, 100.0), home.1);
        assert_eq!(id, 1000);
        let p = places.places()[0];
        assert_eq!(p.stops, 2);
        assert!((p.lat - north(home.0, 50.0)).abs() < 1e-9);
        assert_eq!(p.last, 6000);
        // 250 m north of the first, 200 m from the centre: a new place.
        assert_eq!(
            places.visit(150.0, (9000, 9500), north(home.0, 250.0), home.1),
            9000
        );
        // 160 m north of the first: 110 m from the first's centre, 90 m
        // from the second: the nearest wins.
        assert_eq!(
            places.visit(150.0, (12000, 13000), north(home.0, 160.0), home.1),
            9000
        );
        assert_eq!(places.places().len(), 2);
    }

    #[test]
    fn past_the_bound_the_place_visited_longest_ago_is_forgotten() {
        let mut places = Places::default();
        for i in 0..MAX_PLACES as i64 {
            // A kilometre apart, each visited once; the first again last.
            places.visit(
                150.0,
                (i * 100, i * 100 + 50),
                north(0.0, i as f64 * 1000.0),
                0.0,
            );
        }
        places.visit(150.0, (1_000_000, 1_000_050), 0.0, 0.0);
        assert_eq!(places.places().len(), MAX_PLACES);
        // A new place pushes out the one at 1 km (visited longest ago), not
        // the first, visited again.
        assert_eq!(
            places.visit(150.0, (2_000_000, 2_000_050), -10.0, 0.0),
            2_000_000
        );
        let ids: Vec<i64> = places.places().iter().map(|p| p.id).collect();
        assert_eq!(ids.len(), MAX_PLACES);
        assert!(ids.contains(&0) && ids.contains(&2_000_000) && !ids.contains(&100));
        // Its stops come back to it under a new id.
        assert_eq!(
            places.visit(150.0, (3_000_000, 3_000_050), north(0.0, 1000.0), 0.0),
            3_000_000
        );
    }

    #[test]
    fn the_state_reads_back_as_written() {
        let mut places = Places::default();
        places.visit(150.0, (1000, 2000), 52.5, 13.4);
        let json = serde_json::to_string(&places).unwrap();
        assert_eq!(json, "[[1000,52.5,13.4,1,2000]]");
        assert_eq!(serde_json::from_str::<Places>(&json).unwrap(), places);
    }
}
