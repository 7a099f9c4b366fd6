//! One device's long export, read in parallel slices and handed out in
//! order.
//!
//! ClickHouse 18.16 sorts a whole answer before it sends a row, and a
//! million wide rows take it 1.3 s of CPU, against 0.3 s to read them
//! unsorted. So a long
//! window of one device is cut, along a histogram of its rows over time,
//! into slices of at most about [`SLICE_ROWS`] rows; [`SLICES_IN_FLIGHT`]
//! are read at once, each whole into memory, unsorted, then sorted here
//! (a millisecond a slice) with duplicates removed, and handed out one
//! after the other: while one slice is being
//! encoded and sent, the next is being read on the other core. Memory
//! stays bounded by the slices in flight, whatever the export's size.

use std::collections::VecDeque;
use std::future::Future;

use tokio::sync::mpsc;

use crate::read::native::Key;
use crate::read::{CHUNKS_IN_FLIGHT, Position, Query, QueryError, RowStream};

/// Rows a slice holds at most (unless a single histogram bucket holds
/// more): 25,000 positions are about 10 MB in memory.
pub const SLICE_ROWS: u64 = 25_000;
/// Slices read at once: one being handed out, one being read.
pub const SLICES_IN_FLIGHT: usize = 2;
/// Buckets of the histogram slices are cut from.
pub const HISTOGRAM_BUCKETS: i64 = 4096;

/// What a backend knows of a window before reading it: its row count and
/// first and last `tst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Rows in the window.
    pub rows: u64,
    /// Earliest `tst`.
    pub first: i64,
    /// Latest `tst`.
    pub last: i64,
}

impl Span {
    /// Width, in seconds, of the histogram's buckets over this span.
    pub fn bucket_width(&self) -> i64 {
        ((self.last - self.first + 1) / HISTOGRAM_BUCKETS).max(1)
    }
}

/// Consecutive windows of `[first, last]` holding at most [`SLICE_ROWS`]
/// rows each (a bucket with more is a window of its own), from the row
/// counts of the non-empty buckets of `width` seconds (bucket `b` starts
/// at `first + b * width`), in order.
pub fn group(
    buckets: impl Iterator<Item = (i64, u64)>,
    first: i64,
    last: i64,
    width: i64,
) -> Vec<(i64, i64)> {
    let mut windows = Vec::new();
    let (mut start, mut rows) = (first, 0u64);
    for (bucket, n) in buckets {
        let bucket_start = first + bucket * width;
        if rows > 0 && rows + n > SLICE_ROWS {
            windows.push((start, bucket_start - 1));
            (start, rows) = (bucket_start, 0);
        }
        rows += n;
    }
    windows.push((start, last));
    windows
}

/// Sorts a slice's rows by time and keeps, of rows with the same `tst`,
/// the newest (`received_at`): what ReplacingMergeTree keeps.
pub(crate) fn order(rows: &mut Vec<Key>) {
    rows.sort_unstable_by_key(|k| (k.tst, std::cmp::Reverse(k.received_at)));
    rows.dedup_by_key(|k| k.tst);
}

/// Reads `q`'s `windows` with `read`, [`SLICES_IN_FLIGHT`] at a time, and
/// streams their rows in window order. `read` gives a slice's rows in
/// order, already in chunks, which are sent as they are.
pub fn stream<F, Fut>(q: &Query, windows: Vec<(i64, i64)>, read: F) -> RowStream<Position>
where
    F: Fn(Query) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Vec<Vec<Position>>, QueryError>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let q = q.clone();
    tokio::spawn(async move {
        let mut next = windows.into_iter();
        let mut open = VecDeque::new();
        loop {
            while open.len() < SLICES_IN_FLIGHT {
                let Some((from, to)) = next.next() else { break };
                open.push_back(tokio::spawn(read(Query {
                    from,
                    to,
                    ..q.clone()
                })));
            }
            let Some(current) = open.pop_front() else {
                return;
            };
            let chunks = match current.await {
                Ok(Ok(chunks)) => chunks,
                Ok(Err(e)) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Err(QueryError::Thread(e.to_string()))).await;
                    return;
                }
            };
            for chunk in chunks {
                if tx.send(Ok(chunk)).await.is_err() {
                    return; // nobody reads any more: stop reading.
                }
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_cover_the_window_in_order_and_stay_under_the_bound() {
        // Buckets of 10 s from t=100: 20k, 10k, 30k (alone), empty, 5k, 5k.
        let buckets = [
            (0, 20_000),
            (1, 10_000),
            (2, 30_000),
            (4, 5_000),
            (5, 5_000),
        ];
        let w = group(buckets.into_iter(), 100, 159, 10);
        assert_eq!(w, vec![(100, 109), (110, 119), (120, 139), (140, 159)]);
        assert_eq!(group(std::iter::empty(), 5, 9, 1), vec![(5, 9)]);
    }

    #[test]
    fn order_keeps_the_newest_of_a_time() {
        let p = |tst, received_at| Key::new(tst, received_at);
        let mut rows = vec![p(3, 1), p(1, 5), p(3, 9), p(2, 1), p(1, 2)];
        order(&mut rows);
        let got: Vec<(i64, i64)> = rows.iter().map(|r| (r.tst, r.received_at)).collect();
        assert_eq!(got, [(1, 5), (2, 1), (3, 9)]);
    }

    #[tokio::test]
    async fn slices_come_out_in_window_order_however_fast_each_is_read() {
        let mut q = Query::window(0, 99);
        q.user = Some("u".into());
        let windows = vec![(0, 9), (10, 49), (50, 99)];
        let mut s = stream(&q, windows, |q: Query| async move {
            // The first slice is the slowest to read.
            if q.from == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            // Each slice in chunks of two rows.
            let rows: Vec<Position> = (q.from..=q.to)
                .step_by(5)
                .map(|tst| Position {
                    tst,
                    ..Position::default()
                })
                .collect();
            Ok(rows.chunks(2).map(<[Position]>::to_vec).collect())
        });
        let mut got = Vec::new();
        while let Some(chunk) = s.recv().await {
            got.extend(chunk.unwrap().into_iter().map(|p| p.tst));
        }
        assert_eq!(got, (0..100).step_by(5).collect::<Vec<_>>());
    }
}
