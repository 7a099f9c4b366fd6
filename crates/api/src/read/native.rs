//! Positions from ClickHouse's Native format: blocks of columns, parsed
//! from one buffer and turned into rows in one pass.
//!
//! Why not RowBinary, as the other reads: on ClickHouse 18.16, writing a
//! million positions as RowBinary costs the server 0.8 s of CPU against
//! 0.2 s to read them, since it serializes value by value; Native writes
//! whole columns (0.35 s in all). Why not the `clickhouse` crate's own
//! Native reader: it reads value by value through async calls and cost
//! otstream more CPU than the RowBinary decoding it replaced (measured,
//! BENCHMARKS.md). A slice's answer (a few MB) is whole in memory before
//! it is sorted anyway, so it is parsed here, synchronously, from one
//! buffer: fixed-width columns are used where they lie, strings are
//! borrowed, and each row is built once.
//!
//! The layout (client protocol revision 0, what HTTP answers): a block is
//! its column count and row count (varuints), then per column its name,
//! its type (strings: varuint length, bytes) and its data. Fixed-width
//! values lie back to back, little-endian; a `String` is a varuint length
//! and bytes; a `Nullable(T)` is one byte per row (1: NULL) before T's
//! data for every row; an `Array(T)` is each row's end offset (UInt64)
//! into the elements that follow. `LowCardinality` has a layout of its
//! own: the query casts such columns to `String`.

use crate::read::rows::{Position, Str};
use crate::read::{CHUNK_ROWS, QueryError, slices};

/// The columns of [`crate::read::sqlite::POSITION_COLUMNS`] as this parser
/// reads them (`user` and `device` are `LowCardinality` on current
/// servers).
pub(crate) const POSITION_COLUMNS: &str = "toString(user) AS user_s, toString(device) AS device_s, tid, tst, lat, lon, acc, alt, vac, vel, cog, batt, bs, t, conn, p, m, ssid, bssid, created_at, inregions, inrids, topic, received_at";

fn shape(what: impl Into<String>) -> QueryError {
    QueryError::Shape(what.into())
}

/// A reading position in the answer.
struct Cursor<'a> {
    b: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], QueryError> {
        if n > self.b.len() {
            return Err(shape("the Native answer ends inside a block"));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }

    fn varuint(&mut self) -> Result<usize, QueryError> {
        // Lengths of short texts: one byte.
        if let Some((&byte, rest)) = self.b.split_first()
            && byte < 0x80
        {
            self.b = rest;
            return Ok(byte.into());
        }
        let mut v: u64 = 0;
        for i in 0..10 {
            let (&byte, rest) = self
                .b
                .split_first()
                .ok_or_else(|| shape("the Native answer ends inside a block"))?;
            self.b = rest;
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return usize::try_from(v).map_err(|_| shape("a length too large"));
            }
        }
        Err(shape("a varuint longer than ten bytes"))
    }

    fn str(&mut self) -> Result<&'a str, QueryError> {
        let n = self.varuint()?;
        std::str::from_utf8(self.take(n)?).map_err(|_| shape("a string that is not UTF-8"))
    }

    /// `n` strings. Where their bytes and lengths are all ASCII (short
    /// texts in English: nearly always), the run is checked as UTF-8 once
    /// and cut into strings, rather than each string checked on its own.
    fn strs(&mut self, n: usize) -> Result<Vec<&'a str>, QueryError> {
        let start = self.b;
        let mut spans = Vec::with_capacity(n);
        for _ in 0..n {
            let len = self.varuint()?;
            let at = start.len() - self.b.len();
            self.take(len)?;
            spans.push((at, at + len));
        }
        let run = &start[..start.len() - self.b.len()];
        if run.is_ascii() {
            let text = std::str::from_utf8(run).map_err(|_| shape("a string that is not UTF-8"))?;
            return spans
                .into_iter()
                .map(|(a, b)| text.get(a..b).ok_or_else(|| shape("a string cut")))
                .collect();
        }
        spans
            .into_iter()
            .map(|(a, b)| {
                std::str::from_utf8(&run[a..b]).map_err(|_| shape("a string that is not UTF-8"))
            })
            .collect()
    }
}

/// One column of a block, checked against its row count.
enum Column<'a> {
    /// Fixed-width little-endian values, `width` bytes each.
    Fixed {
        width: usize,
        data: &'a [u8],
        nulls: Option<&'a [u8]>,
    },
    Str {
        values: Vec<&'a str>,
        nulls: Option<&'a [u8]>,
    },
    /// `Array(String)`: each row's end offset, and the elements.
    StrArray {
        ends: &'a [u8],
        values: Vec<&'a str>,
    },
}

impl<'a> Column<'a> {
    fn read(c: &mut Cursor<'a>, ty: &str, rows: usize) -> Result<Self, QueryError> {
        let (inner, nulls) = match nullable(ty) {
            Some(inner) => (inner, Some(c.take(rows)?)),
            None => (ty, None),
        };
        let width = match inner {
            "String" => {
                return Ok(Column::Str {
                    values: c.strs(rows)?,
                    nulls,
                });
            }
            "Array(String)" if nulls.is_none() => {
                let ends = c.take(rows * 8)?;
                let total = ends.last_chunk::<8>().map_or(0, |e| u64::from_le_bytes(*e));
                let total = usize::try_from(total).map_err(|_| shape("an array too large"))?;
                return Ok(Column::StrArray {
                    ends,
                    values: c.strs(total)?,
                });
            }
            "Int32" | "UInt32" => 4,
            t if is_datetime(t) => 4,
            "Float64" | "Int64" | "UInt64" => 8,
            // Milliseconds in eight bytes, as UInt64 before 20.1.
            t if is_millis(t) => 8,
            other => return Err(shape(format!("a column of type {other}"))),
        };
        Ok(Column::Fixed {
            width,
            data: c.take(rows * width)?,
            nulls,
        })
    }

    fn is_null(nulls: Option<&[u8]>, i: usize) -> bool {
        nulls.is_some_and(|n| n[i] != 0)
    }

    fn fixed<const N: usize>(&self, i: usize) -> Option<[u8; N]> {
        match self {
            Column::Fixed { width, data, nulls } if *width == N => {
                if Self::is_null(*nulls, i) {
                    return None;
                }
                data[i * N..i * N + N].try_into().ok()
            }
            _ => None,
        }
    }

    fn f64(&self, i: usize) -> Option<f64> {
        self.fixed::<8>(i).map(f64::from_le_bytes)
    }

    fn i32(&self, i: usize) -> Option<i32> {
        self.fixed::<4>(i).map(i32::from_le_bytes)
    }

    /// A `DateTime` (unsigned seconds) as UNIX seconds.
    fn secs(&self, i: usize) -> Option<i64> {
        self.fixed::<4>(i).map(|b| u32::from_le_bytes(b).into())
    }

    fn i64(&self, i: usize) -> Option<i64> {
        self.fixed::<8>(i).map(i64::from_le_bytes)
    }

    fn str(&self, i: usize) -> Option<&'a str> {
        match self {
            Column::Str { values, nulls } if !Self::is_null(*nulls, i) => Some(values[i]),
            _ => None,
        }
    }

    fn list(&self, i: usize) -> Vec<Str> {
        let Column::StrArray { ends, values } = self else {
            return Vec::new();
        };
        let end = |k: usize| -> usize {
            let b: [u8; 8] = ends[k * 8..k * 8 + 8].try_into().unwrap_or([0; 8]);
            usize::try_from(u64::from_le_bytes(b)).unwrap_or(usize::MAX)
        };
        let start = if i == 0 { 0 } else { end(i - 1) };
        let end = end(i);
        if start == end {
            return Vec::new();
        }
        values
            .get(start..end)
            .map_or_else(Vec::new, |v| v.iter().map(|s| Str::from(*s)).collect())
    }
}

/// What each of the 24 columns must be: the accessor used on it cannot
/// find another shape.
const KINDS: [&str; 24] = [
    "String",
    "String",
    "Nullable(String)",
    "DateTime",
    "Float64",
    "Float64",
    "Nullable(Int32)",
    "Nullable(Int32)",
    "Nullable(Int32)",
    "Nullable(Int32)",
    "Nullable(Int32)",
    "Nullable(Int32)",
    "Nullable(Int32)",
    "Nullable(String)",
    "Nullable(String)",
    "Nullable(Float64)",
    "Nullable(Int32)",
    "Nullable(String)",
    "Nullable(String)",
    "Nullable(DateTime)",
    "Array(String)",
    "Array(String)",
    "Nullable(String)",
    "milliseconds",
];

/// `T` of `Nullable(T)`.
fn nullable(ty: &str) -> Option<&str> {
    ty.strip_prefix("Nullable(")
        .and_then(|t| t.strip_suffix(')'))
}

/// `DateTime`, with or without a time zone (seconds, four bytes).
fn is_datetime(ty: &str) -> bool {
    ty.starts_with("DateTime") && !ty.starts_with("DateTime64")
}

/// Milliseconds in eight bytes: `DateTime64(3)` (any zone), or an integer.
fn is_millis(ty: &str) -> bool {
    matches!(ty, "UInt64" | "Int64") || ty.starts_with("DateTime64(3")
}

fn kind_matches(want: &str, ty: &str) -> bool {
    match want {
        "DateTime" => is_datetime(ty),
        "Nullable(DateTime)" => nullable(ty).is_some_and(is_datetime),
        "milliseconds" => is_millis(ty),
        _ => want == ty,
    }
}

/// The rows of a Native answer whose columns are [`POSITION_COLUMNS`], in
/// time order, of rows with the same `tst` only the newest
/// ([`slices::order`]), in chunks of [`CHUNK_ROWS`]. The order is found on
/// the time columns alone and each row is built once, straight into its
/// chunk: rows (400 bytes each) are never sorted nor copied.
pub(crate) fn positions(answer: &[u8]) -> Result<Vec<Vec<Position>>, QueryError> {
    let mut c = Cursor { b: answer };
    let mut blocks: Vec<[Column<'_>; 24]> = Vec::new();
    let mut keys: Vec<Key> = Vec::new();
    while !c.b.is_empty() {
        let columns = c.varuint()?;
        let rows = c.varuint()?;
        if columns != KINDS.len() {
            return Err(shape(format!(
                "a positions block of {columns} columns, not 24"
            )));
        }
        let mut cols = Vec::with_capacity(columns);
        for want in KINDS {
            let _name = c.str()?;
            let ty = c.str()?;
            if !kind_matches(want, ty) {
                return Err(shape(format!(
                    "a column of type {ty} where {want} was asked for"
                )));
            }
            cols.push(Column::read(&mut c, ty, rows)?);
        }
        let cols: [Column<'_>; 24] = cols
            .try_into()
            .map_err(|_| shape("a positions block without its 24 columns"))?;
        let block = u32::try_from(blocks.len()).map_err(|_| shape("too many blocks"))?;
        keys.reserve(rows);
        for i in 0..rows {
            keys.push(Key {
                tst: cols[3].secs(i).unwrap_or_default(),
                received_at: cols[23].i64(i).unwrap_or_default(),
                block,
                row: u32::try_from(i).map_err(|_| shape("too many rows"))?,
            });
        }
        blocks.push(cols);
    }
    slices::order(&mut keys);
    let mut chunks = Vec::with_capacity(keys.len().div_ceil(CHUNK_ROWS));
    for run in keys.chunks(CHUNK_ROWS) {
        let mut chunk = Vec::with_capacity(run.len());
        for k in run {
            let cols = blocks
                .get(k.block as usize)
                .ok_or_else(|| shape("a row of no block"))?;
            chunk.push(row(cols, k.row as usize));
        }
        chunks.push(chunk);
    }
    Ok(chunks)
}

/// Where a row lies and what orders it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Key {
    pub(crate) tst: i64,
    pub(crate) received_at: i64,
    block: u32,
    row: u32,
}

impl Key {
    #[cfg(test)]
    pub(crate) fn new(tst: i64, received_at: i64) -> Self {
        Key {
            tst,
            received_at,
            block: 0,
            row: 0,
        }
    }
}

/// Row `i` of a block whose columns were checked against [`KINDS`].
fn row(cols: &[Column<'_>; 24], i: usize) -> Position {
    let [
        user,
        device,
        tid,
        tst,
        lat,
        lon,
        acc,
        alt,
        vac,
        vel,
        cog,
        batt,
        bs,
        t,
        conn,
        p,
        m,
        ssid,
        bssid,
        created_at,
        inregions,
        inrids,
        topic,
        received_at,
    ] = cols;
    Position {
        user: user.str(i).unwrap_or_default().into(),
        device: device.str(i).unwrap_or_default().into(),
        tid: tid.str(i).map(Str::from),
        tst: tst.secs(i).unwrap_or_default(),
        lat: lat.f64(i).unwrap_or_default(),
        lon: lon.f64(i).unwrap_or_default(),
        acc: acc.i32(i),
        alt: alt.i32(i),
        vac: vac.i32(i),
        vel: vel.i32(i),
        cog: cog.i32(i),
        batt: batt.i32(i),
        bs: bs.i32(i),
        t: t.str(i).map(Str::from),
        conn: conn.str(i).map(Str::from),
        p: p.f64(i),
        m: m.i32(i),
        ssid: ssid.str(i).map(Str::from),
        bssid: bssid.str(i).map(Str::from),
        created_at: created_at.secs(i),
        inregions: inregions.list(i),
        inrids: inrids.list(i),
        topic: topic.str(i).map(Str::from),
        received_at: received_at.i64(i).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varuint(out: &mut Vec<u8>, mut v: u64) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        varuint(out, s.len() as u64);
        out.extend_from_slice(s.as_bytes());
    }

    /// A block of two rows as ClickHouse 18.16 writes it: the second row
    /// with every nullable column NULL and its arrays empty.
    fn block() -> Vec<u8> {
        let mut b = Vec::new();
        varuint(&mut b, 24);
        varuint(&mut b, 2);
        let header = |b: &mut Vec<u8>, name: &str, ty: &str| {
            string(b, name);
            string(b, ty);
        };
        header(&mut b, "user_s", "String");
        string(&mut b, "jane");
        string(&mut b, "jane");
        header(&mut b, "device_s", "String");
        string(&mut b, "phone");
        string(&mut b, "phone");
        header(&mut b, "tid", "Nullable(String)");
        b.extend_from_slice(&[0, 1]);
        string(&mut b, "ph");
        string(&mut b, "");
        header(&mut b, "tst", "DateTime");
        b.extend_from_slice(&1_700_000_000u32.to_le_bytes());
        b.extend_from_slice(&1_700_000_010u32.to_le_bytes());
        for (name, v) in [("lat", [48.85, -33.5]), ("lon", [2.35, 151.25])] {
            header(&mut b, name, "Float64");
            for x in v {
                b.extend_from_slice(&f64::to_le_bytes(x));
            }
        }
        for (k, name) in ["acc", "alt", "vac", "vel", "cog", "batt", "bs"]
            .iter()
            .enumerate()
        {
            header(&mut b, name, "Nullable(Int32)");
            b.extend_from_slice(&[0, 1]);
            b.extend_from_slice(&(k as i32 - 2).to_le_bytes());
            b.extend_from_slice(&0i32.to_le_bytes());
        }
        for (name, v) in [("t", "u"), ("conn", "w")] {
            header(&mut b, name, "Nullable(String)");
            b.extend_from_slice(&[0, 1]);
            string(&mut b, v);
            string(&mut b, "");
        }
        header(&mut b, "p", "Nullable(Float64)");
        b.extend_from_slice(&[0, 1]);
        b.extend_from_slice(&101.25f64.to_le_bytes());
        b.extend_from_slice(&0f64.to_le_bytes());
        header(&mut b, "m", "Nullable(Int32)");
        b.extend_from_slice(&[0, 1]);
        b.extend_from_slice(&2i32.to_le_bytes());
        b.extend_from_slice(&0i32.to_le_bytes());
        for (name, v) in [("ssid", "Café ☕"), ("bssid", "aa:bb")] {
            header(&mut b, name, "Nullable(String)");
            b.extend_from_slice(&[0, 1]);
            string(&mut b, v);
            string(&mut b, "");
        }
        header(&mut b, "created_at", "Nullable(DateTime)");
        b.extend_from_slice(&[0, 1]);
        b.extend_from_slice(&1_699_999_999u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        header(&mut b, "inregions", "Array(String)");
        b.extend_from_slice(&2u64.to_le_bytes());
        b.extend_from_slice(&2u64.to_le_bytes());
        string(&mut b, "Home");
        string(&mut b, "Depot");
        header(&mut b, "inrids", "Array(String)");
        b.extend_from_slice(&1u64.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
        string(&mut b, "r1");
        header(&mut b, "topic", "Nullable(String)");
        b.extend_from_slice(&[0, 1]);
        string(&mut b, "owntracks/jane/phone");
        string(&mut b, "");
        header(&mut b, "received_at", "UInt64");
        b.extend_from_slice(&1_700_000_000_123u64.to_le_bytes());
        b.extend_from_slice(&1_700_000_010_456u64.to_le_bytes());
        b
    }

    #[test]
    fn rows_of_a_block_with_every_column_and_nulls() {
        let mut answer = block();
        // Two blocks in one answer.
        answer.extend_from_slice(&block());
        let rows: Vec<Position> = positions(&answer).unwrap().concat();
        let full = Position {
            user: "jane".into(),
            device: "phone".into(),
            tid: Some("ph".into()),
            tst: 1_700_000_000,
            lat: 48.85,
            lon: 2.35,
            acc: Some(-2),
            alt: Some(-1),
            vac: Some(0),
            vel: Some(1),
            cog: Some(2),
            batt: Some(3),
            bs: Some(4),
            t: Some("u".into()),
            conn: Some("w".into()),
            p: Some(101.25),
            m: Some(2),
            ssid: Some("Café ☕".into()),
            bssid: Some("aa:bb".into()),
            created_at: Some(1_699_999_999),
            inregions: vec!["Home".into(), "Depot".into()],
            inrids: vec!["r1".into()],
            topic: Some("owntracks/jane/phone".into()),
            received_at: 1_700_000_000_123,
        };
        let bare = Position {
            user: "jane".into(),
            device: "phone".into(),
            tst: 1_700_000_010,
            lat: -33.5,
            lon: 151.25,
            received_at: 1_700_000_010_456,
            ..Position::default()
        };
        // In time order, the two copies of each row one (the last block's,
        // with the same received_at: equal rows).
        assert_eq!(rows, [full, bare]);
    }

    #[test]
    fn a_cut_or_unexpected_answer_is_an_error_never_a_panic() {
        let answer = block();
        for cut in [1, 10, answer.len() / 2, answer.len() - 1] {
            let err = positions(&answer[..cut]).unwrap_err();
            assert!(matches!(err, QueryError::Shape(_)), "{err}");
        }
        let mut other = Vec::new();
        varuint(&mut other, 1);
        varuint(&mut other, 1);
        string(&mut other, "x");
        string(&mut other, "UInt8");
        other.push(7);
        assert_eq!(
            positions(&other).unwrap_err().to_string(),
            "clickhouse answered an unexpected shape: a positions block of 1 columns, not 24"
        );
        let mut wrong_type = block();
        let at = wrong_type
            .windows(8)
            .position(|w| w == b"DateTime")
            .unwrap();
        wrong_type[at..at + 8].copy_from_slice(b"DateTimX");
        assert_eq!(
            positions(&wrong_type).unwrap_err().to_string(),
            "clickhouse answered an unexpected shape: a column of type DateTimX where DateTime was asked for"
        );
    }
}
