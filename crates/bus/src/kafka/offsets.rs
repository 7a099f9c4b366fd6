//! Which offsets of a consumer may be committed: pure bookkeeping, no I/O.
//!
//! A message's offset is committed once it and every earlier message of
//! its partition have settled downstream. A failure rewinds the partition
//! to the failed message; until that message is read again nothing at or
//! past it is committed, whatever settles meanwhile.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::AckStatus;

/// A topic and partition.
pub(crate) type Tp = (Arc<str>, i32);

#[derive(Debug, Default)]
struct Part {
    /// Received and not settled, with how many copies (a message read
    /// again after a rewind may be in flight twice).
    outstanding: BTreeMap<i64, u32>,
    /// After the highest offset delivered.
    next: i64,
    /// Last offset committed (the next to read).
    committed: i64,
    /// Rewound to this offset, not read again yet.
    rewound_to: Option<i64>,
}

impl Part {
    fn pending(&self) -> usize {
        self.outstanding.values().map(|&n| n as usize).sum()
    }

    fn point(&self) -> i64 {
        let mut p = self.next;
        if let Some((&o, _)) = self.outstanding.first_key_value() {
            p = p.min(o);
        }
        if let Some(r) = self.rewound_to {
            p = p.min(r);
        }
        p
    }
}

/// The received and settled offsets of every partition a consumer reads.
#[derive(Debug, Default)]
pub(crate) struct Offsets {
    parts: HashMap<Tp, Part>,
    in_flight: usize,
}

impl Offsets {
    /// Messages received and not yet settled.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Messages of one partition received and not yet settled.
    pub(crate) fn pending(&self, topic: &str, partition: i32) -> usize {
        self.parts
            .iter()
            .filter(|((t, p), _)| **t == *topic && *p == partition)
            .map(|(_, part)| part.pending())
            .sum()
    }

    /// A message was handed to the stage.
    pub(crate) fn received(&mut self, tp: Tp, offset: i64) {
        let part = self.parts.entry(tp).or_default();
        *part.outstanding.entry(offset).or_default() += 1;
        if part.rewound_to == Some(offset) {
            part.rewound_to = None;
        }
        self.in_flight += 1;
    }

    /// A message settled. Returns the offset to rewind the partition to
    /// when this failure needs a rewind.
    pub(crate) fn settled(&mut self, tp: &Tp, offset: i64, status: AckStatus) -> Option<i64> {
        let part = self.parts.get_mut(tp)?;
        match part.outstanding.get_mut(&offset) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                part.outstanding.remove(&offset);
            }
            // Forgotten with a revoked partition.
            None => return None,
        }
        self.in_flight = self.in_flight.saturating_sub(1);
        match status {
            AckStatus::Delivered => {
                part.next = part.next.max(offset + 1);
                None
            }
            // An earlier rewind reads this one again anyway.
            AckStatus::Failed if part.rewound_to.is_some_and(|r| r <= offset) => None,
            AckStatus::Failed => {
                part.rewound_to = Some(offset);
                Some(offset)
            }
        }
    }

    /// The partitions whose commit point moved, with the point; marks them
    /// committed.
    pub(crate) fn take_commits(&mut self) -> Vec<(Tp, i64)> {
        let mut out = Vec::new();
        for (tp, part) in &mut self.parts {
            let point = part.point();
            if point > part.committed {
                part.committed = point;
                out.push((tp.clone(), point));
            }
        }
        out
    }

    /// Stops tracking partitions taken away; returns the commit point of
    /// each that has one beyond what is committed.
    pub(crate) fn revoke(&mut self, tps: &[(String, i32)]) -> Vec<(Tp, i64)> {
        let mut out = Vec::new();
        self.parts.retain(|tp, part| {
            if !tps.iter().any(|(t, p)| **t == *tp.0 && *p == tp.1) {
                return true;
            }
            self.in_flight = self.in_flight.saturating_sub(part.pending());
            let point = part.point();
            if point > part.committed {
                out.push((tp.clone(), point));
            }
            false
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp() -> Tp {
        (Arc::from("raw"), 0)
    }

    #[test]
    fn commits_the_run_of_settled_offsets() {
        let mut o = Offsets::default();
        for off in 10..15 {
            o.received(tp(), off);
        }
        assert_eq!(o.in_flight(), 5);
        o.settled(&tp(), 12, AckStatus::Delivered);
        o.settled(&tp(), 10, AckStatus::Delivered);
        assert_eq!(o.take_commits(), vec![(tp(), 11)]);
        assert_eq!(o.take_commits(), vec![]);
        o.settled(&tp(), 11, AckStatus::Delivered);
        assert_eq!(o.take_commits(), vec![(tp(), 13)]);
        o.settled(&tp(), 14, AckStatus::Delivered);
        o.settled(&tp(), 13, AckStatus::Delivered);
        assert_eq!(o.take_commits(), vec![(tp(), 15)]);
        assert_eq!(o.in_flight(), 0);
        assert_eq!(o.pending("raw", 0), 0);
    }

    #[test]
    fn a_failure_holds_the_commit_point_until_read_again_and_delivered() {
        let mut o = Offsets::default();
        for off in 0..5 {
            o.received(tp(), off);
        }
        o.settled(&tp(), 0, AckStatus::Delivered);
        assert_eq!(o.settled(&tp(), 1, AckStatus::Failed), Some(1));
        // Later ones in flight before the rewind settle either way.
        assert_eq!(o.settled(&tp(), 3, AckStatus::Failed), None);
        o.settled(&tp(), 2, AckStatus::Delivered);
        o.settled(&tp(), 4, AckStatus::Delivered);
        assert_eq!(o.take_commits(), vec![(tp(), 1)]);
        // Read again from 1: nothing past 1 until 1 is delivered.
        o.received(tp(), 1);
        o.received(tp(), 2);
        assert_eq!(o.take_commits(), vec![]);
        o.settled(&tp(), 2, AckStatus::Delivered);
        assert_eq!(o.take_commits(), vec![]);
        o.settled(&tp(), 1, AckStatus::Delivered);
        assert_eq!(o.take_commits(), vec![(tp(), 5)]);
    }

    #[test]
    fn an_earlier_failure_moves_the_rewind_back() {
        let mut o = Offsets::default();
        for off in 0..4 {
            o.received(tp(), off);
        }
        assert_eq!(o.settled(&tp(), 2, AckStatus::Failed), Some(2));
        assert_eq!(o.settled(&tp(), 1, AckStatus::Failed), Some(1));
        o.settled(&tp(), 0, AckStatus::Delivered);
        o.settled(&tp(), 3, AckStatus::Delivered);
        assert_eq!(o.take_commits(), vec![(tp(), 1)]);
    }

    #[test]
    fn copies_in_flight_twice_are_counted() {
        let mut o = Offsets::default();
        o.received(tp(), 7);
        assert_eq!(o.settled(&tp(), 7, AckStatus::Failed), Some(7));
        o.received(tp(), 8);
        o.received(tp(), 7);
        o.received(tp(), 8);
        assert_eq!(o.pending("raw", 0), 3);
        o.settled(&tp(), 8, AckStatus::Delivered);
        o.settled(&tp(), 7, AckStatus::Delivered);
        // The second copy of 8 is still out.
        assert_eq!(o.take_commits(), vec![(tp(), 8)]);
        o.settled(&tp(), 8, AckStatus::Delivered);
        assert_eq!(o.take_commits(), vec![(tp(), 9)]);
    }

    #[test]
    fn revoking_returns_the_point_and_forgets_the_partition() {
        let mut o = Offsets::default();
        let other: Tp = (Arc::from("raw"), 1);
        o.received(tp(), 3);
        o.received(tp(), 4);
        o.received(other.clone(), 9);
        o.settled(&tp(), 3, AckStatus::Delivered);
        let points = o.revoke(&[("raw".into(), 0)]);
        assert_eq!(points, vec![(tp(), 4)]);
        assert_eq!(o.in_flight(), 1);
        // A late settle of a forgotten partition changes nothing.
        assert_eq!(o.settled(&tp(), 4, AckStatus::Failed), None);
        assert_eq!(o.in_flight(), 1);
        assert_eq!(o.pending("raw", 1), 1);
    }
}
