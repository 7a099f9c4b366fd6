//! Traccar's summary report, computed from trips and stops: per device per
//! UTC day, the distance and time of its trips, how many trips and stops
//! began that day, and its top speed. Pure: the same rows give the same
//! figures whichever backend they came from.

use std::collections::BTreeMap;

use crate::read::format::day;
use crate::read::rows::{DaySummary, Stop, Trip};

/// Days being summed, keyed so that iteration gives user, device, day.
pub type Days = BTreeMap<(String, String, String), DaySummary>;

fn entry<'a>(days: &'a mut Days, user: &str, device: &str, start: i64) -> &'a mut DaySummary {
    let d = day(start);
    days.entry((user.to_owned(), device.to_owned(), d.clone()))
        .or_insert_with(|| DaySummary {
            user: user.to_owned(),
            device: device.to_owned(),
            day: d,
            ..DaySummary::default()
        })
}

/// Counts a trip on the day it started.
pub fn add_trip(days: &mut Days, t: &Trip) {
    let e = entry(days, &t.user, &t.device, t.start);
    e.trips += 1;
    e.distance += t.distance;
    e.driving_s += t.duration;
    e.max_vel = e.max_vel.max(t.max_vel);
}

/// Counts a stop on the day it started.
pub fn add_stop(days: &mut Days, s: &Stop) {
    entry(days, &s.user, &s.device, s.start).stops += 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_per_device_and_utc_day() {
        let mut days = Days::new();
        let trip = |device: &str, start: i64, distance: f64, duration: i64, max_vel: f64| Trip {
            user: "u".into(),
            device: device.into(),
            start,
            distance,
            duration,
            max_vel,
            ..Trip::default()
        };
        // 2023-11-14 22:13:20 and 23:59:59 UTC, then 2023-11-15 00:00:00.
        add_trip(&mut days, &trip("a", 1_700_000_000, 1000.0, 600, 40.0));
        add_trip(&mut days, &trip("a", 1_700_006_399, 500.5, 60, 55.0));
        add_trip(&mut days, &trip("a", 1_700_006_400, 10.0, 5, 9.0));
        add_trip(&mut days, &trip("b", 1_700_000_000, 1.0, 1, 1.0));
        add_stop(
            &mut days,
            &Stop {
                user: "u".into(),
                device: "a".into(),
                start: 1_700_001_000,
                ..Stop::default()
            },
        );
        let got: Vec<_> = days.into_values().collect();
        assert_eq!(got.len(), 3);
        assert_eq!(
            got[0],
            DaySummary {
                user: "u".into(),
                device: "a".into(),
                day: "2023-11-14".into(),
                distance: 1500.5,
                driving_s: 660,
                trips: 2,
                stops: 1,
                max_vel: 55.0
            }
        );
        assert_eq!(
            (got[1].day.as_str(), got[1].trips, got[1].stops),
            ("2023-11-15", 1, 0)
        );
        assert_eq!((got[2].device.as_str(), got[2].distance), ("b", 1.0));
    }
}
