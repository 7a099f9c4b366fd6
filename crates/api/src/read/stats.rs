//! Statistics per device (or per user) per day, week or month, from the
//! rollups: trips and stops (what the geofence stage derives from the
//! positions as they are stored) and the days present in each place and
//! country (`presence`, kept by the sink in the embedded store and by a
//! materialized view in ClickHouse). Never a scan of the positions. Pure:
//! the same rows give the same figures from either backend, and every
//! figure is a sum over deduplicated rows (stops and trips by their key,
//! days present as a set), so a batch delivered twice changes nothing.
//! `/api/v1/summary` is the daily view of the same figures.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::read::format::{civil, days_from_civil};
use crate::read::rows::{DaySummary, Stop, Trip};

/// A day present: user, device, UTC day (UNIX s / 86400), country, place.
pub type Presence = (String, String, i64, String, String);

/// The period figures are summed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// A UTC day, `2025-11-24`.
    Day,
    /// An ISO week (Monday to Sunday, UTC), `2025-W48`.
    Week,
    /// A UTC month, `2025-11`.
    Month,
    /// The whole window, `all`.
    All,
}

impl Period {
    /// The period named `s`, if there is one.
    pub fn parse(s: &str) -> Option<Period> {
        Some(match s {
            "day" => Period::Day,
            "week" => Period::Week,
            "month" => Period::Month,
            "all" => Period::All,
            _ => return None,
        })
    }

    /// The label of the period holding UTC day `day` (UNIX s / 86400).
    pub fn label(self, day: i64) -> String {
        let (y, m, d) = civil(day);
        match self {
            Period::Day => format!("{y:04}-{m:02}-{d:02}"),
            Period::Month => format!("{y:04}-{m:02}"),
            Period::All => "all".to_owned(),
            Period::Week => {
                // ISO 8601: the week's Thursday decides its year.
                let monday0 = (day + 3).rem_euclid(7);
                let thursday = day - monday0 + 3;
                let (ty, _, _) = civil(thursday);
                let week = (thursday - days_from_civil(ty, 1, 1)) / 7 + 1;
                format!("{ty:04}-W{week:02}")
            }
        }
    }
}

/// Days present (device, day, place) one answer reads at most: a fleet of
/// a thousand devices in a few places a day for a year.
pub const MAX_PRESENCE: usize = 2_000_000;

/// How many of each list a period lists at most.
const TOP_CITIES: usize = 20;
const TOP_PLACES: usize = 5;

/// The figures of one device (or user) over one period.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Stat {
    /// User part of the identity.
    pub user: String,
    /// The device; `None` for a user's devices together.
    pub device: Option<String>,
    /// The period's label ([`Period::label`]).
    pub period: String,
    /// Distance of the trips starting in it, m.
    pub distance: f64,
    /// Their time moving, s.
    pub moving_s: i64,
    /// Trips starting in it.
    pub trips: u32,
    /// Their top speed, km/h.
    pub max_vel: f64,
    /// Stops starting in it.
    pub stops: u32,
    /// Their time, s.
    pub stop_s: i64,
    /// Countries with the days present in each, most days first.
    pub countries: Vec<(String, u32)>,
    /// Cities (`name, region`, country) with days present, most first.
    pub cities: Vec<(String, String, u32)>,
    /// Places most dwelt at: device, id, name, visits, dwell s.
    pub places: Vec<(String, i64, Option<String>, u32, i64)>,
}

/// One key's figures as they are summed.
#[derive(Default)]
struct Acc {
    stat: Stat,
    countries: BTreeMap<String, BTreeSet<i64>>,
    cities: BTreeMap<(String, String), BTreeSet<i64>>,
    places: HashMap<(String, i64), Dwelt>,
}

/// A place's visits in a period, and what its stops there call it.
#[derive(Default)]
struct Dwelt {
    visits: u32,
    dwell: i64,
    /// A fence one of its stops lies in.
    fence: Option<String>,
    /// The street address, else the locality, of its first stop.
    first: Option<Option<String>>,
}

/// Sums figures per key (user, device or not, period).
pub struct Stats {
    period: Period,
    by_user: bool,
    acc: BTreeMap<(String, Option<String>, String), Acc>,
}

impl Stats {
    /// Figures per `period`, per user rather than per device with `by_user`.
    pub fn new(period: Period, by_user: bool) -> Self {
        Self {
            period,
            by_user,
            acc: BTreeMap::new(),
        }
    }

    fn at(&mut self, user: &str, device: &str, t_day: i64) -> &mut Acc {
        let device = (!self.by_user).then(|| device.to_owned());
        let period = self.period.label(t_day);
        self.acc
            .entry((user.to_owned(), device.clone(), period.clone()))
            .or_insert_with(|| Acc {
                stat: Stat {
                    user: user.to_owned(),
                    device,
                    period,
                    ..Stat::default()
                },
                ..Acc::default()
            })
    }

    /// Counts a trip in the period it started.
    pub fn trip(&mut self, t: &Trip) {
        let s = &mut self.at(&t.user, &t.device, t.start.div_euclid(86_400)).stat;
        s.trips += 1;
        s.distance += t.distance;
        s.moving_s += t.duration;
        s.max_vel = s.max_vel.max(t.max_vel);
    }

    /// Counts a stop in the period it started, and its place's visit.
    pub fn stop(&mut self, st: &Stop) {
        let a = self.at(&st.user, &st.device, st.start.div_euclid(86_400));
        a.stat.stops += 1;
        a.stat.stop_s += st.duration;
        if let Some(id) = st.place_id {
            let p = a.places.entry((st.device.clone(), id)).or_default();
            p.visits += 1;
            p.dwell += st.duration;
            if p.fence.is_none() {
                p.fence = st.place.clone().filter(|f| !f.is_empty());
            }
            // Stops come in order: the first seen is the period's first.
            p.first.get_or_insert_with(|| {
                [&st.address, &st.locality]
                    .into_iter()
                    .find_map(|n| n.clone().filter(|n| !n.is_empty()))
            });
        }
    }

    /// Counts a day present at a place (`place` may be empty) of country
    /// `cc`. A user's devices present on one day count it once.
    pub fn present(&mut self, user: &str, device: &str, day: i64, cc: &str, place: &str) {
        let a = self.at(user, device, day);
        a.countries.entry(cc.to_owned()).or_default().insert(day);
        if !place.is_empty() {
            a.cities
                .entry((place.to_owned(), cc.to_owned()))
                .or_default()
                .insert(day);
        }
    }

    /// The figures, by user, device and period; a place named as its
    /// stops in the period name it (a fence one lies in, else the street
    /// address or locality of the first), as `/api/v1/places` names it
    /// from its stops: no read of the place's whole history.
    pub fn finish(self) -> Vec<Stat> {
        let days = |s: &BTreeSet<i64>| u32::try_from(s.len()).unwrap_or(u32::MAX);
        self.acc
            .into_values()
            .map(|a| {
                let mut stat = a.stat;
                stat.countries = a
                    .countries
                    .iter()
                    .map(|(cc, d)| (cc.clone(), days(d)))
                    .collect();
                stat.countries
                    .sort_by(|x, y| y.1.cmp(&x.1).then_with(|| x.0.cmp(&y.0)));
                stat.cities = a
                    .cities
                    .iter()
                    .map(|((name, cc), d)| (name.clone(), cc.clone(), days(d)))
                    .collect();
                stat.cities
                    .sort_by(|x, y| y.2.cmp(&x.2).then_with(|| x.0.cmp(&y.0)));
                stat.cities.truncate(TOP_CITIES);
                let mut top: Vec<_> = a
                    .places
                    .into_iter()
                    .map(|((device, id), p)| {
                        let name = p.fence.or(p.first.flatten());
                        (device, id, name, p.visits, p.dwell)
                    })
                    .collect();
                top.sort_by(|x, y| y.4.cmp(&x.4).then_with(|| (&x.0, x.1).cmp(&(&y.0, y.1))));
                top.truncate(TOP_PLACES);
                stat.places = top;
                stat
            })
            .collect()
    }
}

impl From<&Stat> for DaySummary {
    /// The daily view (`/api/v1/summary`) of a device's day.
    fn from(s: &Stat) -> Self {
        DaySummary {
            user: s.user.clone(),
            device: s.device.clone().unwrap_or_default(),
            day: s.period.clone(),
            distance: s.distance,
            driving_s: s.moving_s,
            trips: s.trips,
            stops: s.stops,
            max_vel: s.max_vel,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_utc_days_iso_weeks_and_months() {
        let day = |y, m, d| days_from_civil(y, m, d);
        assert_eq!(Period::Day.label(day(2025, 11, 24)), "2025-11-24");
        assert_eq!(Period::Month.label(day(2025, 11, 24)), "2025-11");
        // Monday 2025-11-24 and Sunday 2025-11-30: week 48.
        assert_eq!(Period::Week.label(day(2025, 11, 24)), "2025-W48");
        assert_eq!(Period::Week.label(day(2025, 11, 30)), "2025-W48");
        // ISO years: 2024-12-30 (a Monday) is in 2025's first week, and
        // 2021-01-03 (a Sunday) in 2020's 53rd.
        assert_eq!(Period::Week.label(day(2024, 12, 30)), "2025-W01");
        assert_eq!(Period::Week.label(day(2021, 1, 3)), "2020-W53");
        assert_eq!(Period::All.label(0), "all");
    }

    #[test]
    fn sums_per_device_and_period_and_counts_days_present_once() {
        let trip = |device: &str, start: i64, distance: f64, duration: i64, max_vel: f64| Trip {
            user: "u".into(),
            device: device.into(),
            start,
            distance,
            duration,
            max_vel,
            ..Trip::default()
        };
        let stop = |device: &str, start: i64, duration: i64, place_id| Stop {
            user: "u".into(),
            device: device.into(),
            start,
            duration,
            place_id,
            ..Stop::default()
        };
        let fill = |s: &mut Stats| {
            // 2023-11-14 22:13:20 and 23:59:59 UTC, then 2023-11-15.
            s.trip(&trip("a", 1_700_000_000, 1000.0, 600, 40.0));
            s.trip(&trip("a", 1_700_006_399, 500.5, 60, 55.0));
            s.trip(&trip("a", 1_700_006_400, 10.0, 5, 9.0));
            s.trip(&trip("b", 1_700_000_000, 1.0, 1, 1.0));
            s.stop(&Stop {
                place: Some("Depot".into()),
                ..stop("a", 1_700_001_000, 300, Some(1_690_000_000))
            });
            s.stop(&stop("a", 1_700_090_000, 100, Some(1_690_000_000)));
            s.stop(&stop("b", 1_700_001_000, 50, None));
            let d = 1_700_000_000 / 86_400;
            s.present("u", "a", d, "FR", "Paris, Ile-de-France");
            s.present("u", "b", d, "FR", "Paris, Ile-de-France");
            s.present("u", "a", d + 1, "FR", "");
            s.present("u", "a", d + 1, "DE", "Kehl, Baden-Wurttemberg");
        };
        let mut days = Stats::new(Period::Day, false);
        fill(&mut days);
        let got = days.finish();
        assert_eq!(got.len(), 3);
        assert_eq!(
            got[0],
            Stat {
                user: "u".into(),
                device: Some("a".into()),
                period: "2023-11-14".into(),
                distance: 1500.5,
                moving_s: 660,
                trips: 2,
                max_vel: 55.0,
                stops: 1,
                stop_s: 300,
                countries: vec![("FR".into(), 1)],
                cities: vec![("Paris, Ile-de-France".into(), "FR".into(), 1)],
                places: vec![("a".into(), 1_690_000_000, Some("Depot".into()), 1, 300)],
            }
        );
        assert_eq!(
            DaySummary::from(&got[1]),
            DaySummary {
                user: "u".into(),
                device: "a".into(),
                day: "2023-11-15".into(),
                distance: 10.0,
                driving_s: 5,
                trips: 1,
                stops: 1,
                max_vel: 9.0
            }
        );
        assert_eq!(got[1].countries, [("DE".into(), 1), ("FR".into(), 1)]);
        assert_eq!(
            (got[2].device.as_deref(), got[2].distance),
            (Some("b"), 1.0)
        );

        // The user's devices together over the whole window: Paris counts
        // one day though both devices were there.
        let mut all = Stats::new(Period::All, true);
        fill(&mut all);
        let got = all.finish();
        assert_eq!(got.len(), 1);
        let s = &got[0];
        assert_eq!(
            (s.device.as_deref(), s.period.as_str(), s.trips, s.stops),
            (None, "all", 4, 3)
        );
        assert_eq!(s.countries, [("FR".into(), 2), ("DE".into(), 1)]);
        assert_eq!(
            s.cities,
            [
                ("Kehl, Baden-Wurttemberg".into(), "DE".into(), 1),
                ("Paris, Ile-de-France".into(), "FR".into(), 1)
            ]
        );
        assert_eq!(
            s.places,
            [("a".into(), 1_690_000_000, Some("Depot".into()), 2, 400)]
        );
    }
}
