//! Trip detection measured against the fleet's ground truth.
//!
//! In: the true trips ([`TruthTrip`], from a fleet with phones) and the
//! detected ones, both per device. Out: a [`Score`]: precision, recall,
//! and the median errors of the matched pairs' start, end and distance.
//! Pure.
//!
//! A detected trip matches a true trip of the same device when their time
//! spans overlap by at least half of their union (intersection over
//! union, 0.5): a trip cut in half, or two trips merged into one, is not a
//! match. Pairs are taken greedily, best overlap first, one to one.

use std::collections::HashMap;

use crate::fleet::TruthTrip;

/// A trip as a detector saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Detected {
    /// The device.
    pub device: String,
    /// Departure, UNIX seconds.
    pub start: i64,
    /// Arrival, UNIX seconds.
    pub end: i64,
    /// Metres.
    pub distance_m: f64,
}

/// How well the detected trips match the truth.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Score {
    /// True trips.
    pub truth: usize,
    /// Detected trips.
    pub detected: usize,
    /// Matched pairs.
    pub matched: usize,
    /// Matched detected trips over detected trips.
    pub precision: f64,
    /// Matched true trips over true trips.
    pub recall: f64,
    /// Median of |detected start - true start| over the pairs, seconds.
    pub start_error_s: f64,
    /// Median of |detected end - true end|, seconds.
    pub end_error_s: f64,
    /// Median of |detected distance - true distance| / true distance.
    pub distance_error: f64,
}

/// Scores `detected` against `truth`, both over the same devices and time.
pub fn score(truth: &[TruthTrip], detected: &[Detected]) -> Score {
    let mut by_device: HashMap<&str, (Vec<&TruthTrip>, Vec<&Detected>)> = HashMap::new();
    for t in truth {
        by_device.entry(&t.device).or_default().0.push(t);
    }
    for d in detected {
        by_device.entry(&d.device).or_default().1.push(d);
    }
    let (mut starts, mut ends, mut distances) = (Vec::new(), Vec::new(), Vec::new());
    for (ts, ds) in by_device.values() {
        let mut pairs: Vec<(f64, usize, usize)> = Vec::new();
        for (i, t) in ts.iter().enumerate() {
            for (j, d) in ds.iter().enumerate() {
                let inter = t.end.min(d.end) - t.start.max(d.start);
                let union = t.end.max(d.end) - t.start.min(d.start);
                if inter > 0 && union > 0 {
                    let iou = inter as f64 / union as f64;
                    if iou >= 0.5 {
                        pairs.push((iou, i, j));
                    }
                }
            }
        }
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        let (mut t_used, mut d_used) = (vec![false; ts.len()], vec![false; ds.len()]);
        for (_, i, j) in pairs {
            if t_used[i] || d_used[j] {
                continue;
            }
            (t_used[i], d_used[j]) = (true, true);
            let (t, d) = (ts[i], ds[j]);
            starts.push((d.start - t.start).abs() as f64);
            ends.push((d.end - t.end).abs() as f64);
            distances.push((d.distance_m - t.distance_m).abs() / t.distance_m.max(1.0));
        }
    }
    let matched = starts.len();
    let ratio = |n: usize| {
        if n == 0 {
            1.0
        } else {
            matched as f64 / n as f64
        }
    };
    Score {
        truth: truth.len(),
        detected: detected.len(),
        matched,
        precision: ratio(detected.len()),
        recall: ratio(truth.len()),
        start_error_s: median(&mut starts),
        end_error_s: median(&mut ends),
        distance_error: median(&mut distances),
    }
}

/// Detected trips with a true rest of `min_rest_s` or more inside them:
/// trips that ran through a stop (a rest is the time a device spent
/// between two true trips, or before its first, or after its last). The
/// failure it counts: a short move within a stop opening a trip that the
/// rest after it does not close.
pub fn rests_inside(truth: &[TruthTrip], detected: &[Detected], min_rest_s: i64) -> usize {
    let mut trips: HashMap<&str, Vec<(i64, i64)>> = HashMap::new();
    for t in truth {
        trips.entry(&t.device).or_default().push((t.start, t.end));
    }
    for v in trips.values_mut() {
        v.sort_unstable();
    }
    detected
        .iter()
        .filter(|d| {
            let ts = trips.get(d.device.as_str()).map_or(&[][..], Vec::as_slice);
            // The rests: before the first trip, between two, after the last.
            let starts = std::iter::once(i64::MIN).chain(ts.iter().map(|t| t.1));
            let ends = ts.iter().map(|t| t.0).chain(std::iter::once(i64::MAX));
            starts
                .zip(ends)
                .any(|(from, to)| d.end.min(to).saturating_sub(d.start.max(from)) >= min_rest_s)
        })
        .count()
}

/// A location as a device sent it: what a detector is given.
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    /// The device (the `X-Limit-D` header, or the topic's last level).
    pub device: String,
    /// UNIX seconds.
    pub tst: i64,
    /// Degrees.
    pub lat: f64,
    /// Degrees.
    pub lon: f64,
    /// Reported speed, km/h.
    pub vel: Option<f64>,
    /// Reported accuracy, metres.
    pub acc: Option<f64>,
}

/// The locations among `messages`, in their order; other types skipped.
pub fn locations<'a>(
    messages: impl IntoIterator<Item = &'a otstream_model::RawMessage>,
) -> Vec<Sent> {
    messages
        .into_iter()
        .filter_map(|m| {
            let v: serde_json::Value = serde_json::from_slice(&m.payload).ok()?;
            if v["_type"] != "location" {
                return None;
            }
            let device = match (&m.hints.x_limit_d, &m.hints.mqtt_topic) {
                (Some(d), _) => d.clone(),
                (None, Some(t)) => t.rsplit('/').next()?.to_owned(),
                (None, None) => return None,
            };
            Some(Sent {
                device,
                tst: v["tst"].as_i64()?,
                lat: v["lat"].as_f64()?,
                lon: v["lon"].as_f64()?,
                vel: v["vel"].as_f64(),
                acc: v["acc"].as_f64(),
            })
        })
        .collect()
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::Kind;

    fn truth(device: &str, start: i64, end: i64, distance_m: f64) -> TruthTrip {
        TruthTrip {
            user: "u".into(),
            device: device.into(),
            kind: Kind::Drive,
            start,
            end,
            distance_m,
        }
    }

    fn detected(device: &str, start: i64, end: i64, distance_m: f64) -> Detected {
        Detected {
            device: device.into(),
            start,
            end,
            distance_m,
        }
    }

    #[test]
    fn a_trip_through_a_rest_of_a_stop_s_length_is_counted() {
        let t = [
            truth("a", 1000, 2000, 5_000.0),
            truth("a", 3000, 4000, 5_000.0),
        ];
        let d = [
            // The trips, a minute off at each end: no rest inside.
            detected("a", 1060, 1940, 5_000.0),
            detected("a", 2940, 4060, 5_000.0),
            // From a walk at 500 through the rest before the first trip.
            detected("a", 500, 2000, 5_000.0),
            // Through the 1,000 s rest between them.
            detected("a", 1000, 4000, 10_000.0),
            // 179 s into the rest after the last: under the threshold.
            detected("a", 3000, 4179, 5_000.0),
            // A device without true trips rests all day.
            detected("b", 0, 180, 50.0),
        ];
        assert_eq!(rests_inside(&t, &d, 180), 3);
        assert_eq!(rests_inside(&t, &d[..2], 180), 0);
    }

    #[test]
    fn matches_by_overlap_per_device_one_to_one() {
        let t = [
            truth("a", 0, 1000, 10_000.0),
            truth("a", 2000, 3000, 5_000.0),
            truth("b", 0, 1000, 1_000.0),
        ];
        let d = [
            // Late by 30 s, early by 10 s, 2% long: a match.
            detected("a", 30, 990, 10_200.0),
            // Half of the second trip only: IoU 0.4, no match.
            detected("a", 2000, 2400, 2_000.0),
            // The right times on the wrong device: no match.
            detected("c", 0, 1000, 1_000.0),
            // Exact.
            detected("b", 0, 1000, 1_000.0),
            // A second detection of the same trip: the first took it.
            detected("b", 10, 1000, 900.0),
        ];
        let s = score(&t, &d);
        assert_eq!((s.truth, s.detected, s.matched), (3, 5, 2));
        assert_eq!(s.precision, 0.4);
        assert_eq!(s.recall, 2.0 / 3.0);
        assert_eq!((s.start_error_s, s.end_error_s), (15.0, 5.0));
        assert!((s.distance_error - 0.01).abs() < 1e-12);
    }
}
