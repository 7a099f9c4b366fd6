//! The typical location, read in one pass over its bytes.
//!
//! Most messages are a flat `location` object the apps wrote themselves:
//! known keys, integers, plain decimals and short strings without
//! escapes. For those, building simd-json's tape and then walking
//! it costs more than reading the bytes once, field by field, straight
//! into a [`Position`]. [`location`] does that, other keys' plain values
//! (strings, integers, booleans, null: Android's `_id`, Recorder's
//! `_http`) copied into `extra`, and declines (returns `None`) at the first
//! thing it was not written for: another `_type`, an escape, a null in a
//! column, a float in an integer field, a number as a string, a repeated
//! known key, an array or object or float in `extra`, a value out of
//! range, anything after the object. A declined message goes
//! through the general path, which also words every error; so this path
//! never refuses anything, and a differential property test holds it to
//! the general path's records, field for field.

use otstream_model::record::{Meta, Position};
use otstream_model::{Record, Text, Transport};

use crate::normalize::non_negative;
use crate::tape::as_seconds;

/// The identity facts a location read by the fast path carried.
pub(crate) struct Found<'i> {
    pub topic: Option<&'i str>,
    pub tid: Option<&'i str>,
}

/// Reads `body` (trimmed, without a byte order mark) as a flat `location`
/// object and appends its position to `out`, or declines and leaves `out`
/// as it was. `Meta`'s identity is left empty for the caller.
pub(crate) fn location<'i>(
    body: &'i [u8],
    received_at: i64,
    transport: Transport,
    out: &mut Vec<Record>,
) -> Option<Found<'i>> {
    let meta = Meta {
        user: Text::default(),
        device: Text::default(),
        tid: None,
        received_at,
        transport,
        topic: None,
    };
    // Built in place: a position is ~400 bytes, and moving it out of a
    // return value and into the vector was 6 % of the fast path.
    out.push(Record::Position(Position::at(meta, 0, 0.0, 0.0)));
    let found = match out.last_mut() {
        Some(Record::Position(p)) => fill(body, p),
        _ => None,
    };
    if found.is_none() {
        out.pop();
    }
    found
}

fn fill<'i>(body: &'i [u8], p: &mut Position) -> Option<Found<'i>> {
    // One UTF-8 check of the whole body (ASCII-fast in std) instead of one
    // per string: every slice taken below starts and ends at an ASCII
    // delimiter, so it is a valid `str` too.
    let text = std::str::from_utf8(body).ok()?;
    let mut s = Scan { text, i: 0 };
    let (mut lat, mut lon, mut tst) = (None, None, None);
    let (mut topic, mut tid, mut located) = (None, None, false);
    let mut seen = 0u32;
    let mut extra: Vec<u8> = Vec::new();
    s.ws();
    s.eat(b'{')?;
    s.ws();
    loop {
        let key = s.key()?;
        s.ws();
        s.eat(b':')?;
        s.ws();
        // Each key has a bit: a repeated key declines (the general path's
        // rule, the last one wins, is not worth copying here).
        let bit = |n: u32| -> Option<u32> { (seen & (1 << n) == 0).then_some(1 << n) };
        seen |= match key {
            b"_type" => {
                located = s.string()? == "location";
                if !located {
                    return None;
                }
                bit(0)?
            }
            b"lat" => {
                lat = Some(coord(s.number()?, 90.0)?);
                bit(1)?
            }
            b"lon" => {
                lon = Some(coord(s.number()?, 180.0)?);
                bit(2)?
            }
            b"tst" => {
                tst = Some(as_seconds(s.integer()?)).filter(|t| *t > 0);
                tst?;
                bit(3)?
            }
            b"acc" => {
                p.acc = non_negative(Some(s.int32()?));
                bit(4)?
            }
            // -1 is the unknown-altitude sentinel; other negatives are real.
            b"alt" => {
                p.alt = Some(s.int32()?).filter(|a| *a != -1);
                bit(5)?
            }
            b"vac" => {
                p.vac = non_negative(Some(s.int32()?));
                bit(6)?
            }
            b"vel" => {
                p.vel = non_negative(Some(s.int32()?));
                bit(7)?
            }
            b"cog" => {
                p.cog = non_negative(Some(s.int32()?));
                bit(8)?
            }
            b"batt" => {
                p.batt = non_negative(Some(s.int32()?));
                bit(9)?
            }
            b"bs" => {
                p.bs = Some(s.int32()?);
                bit(10)?
            }
            b"m" => {
                p.m = Some(s.int32()?);
                bit(11)?
            }
            b"t" => {
                p.t = Some(Text::from(s.string()?));
                bit(12)?
            }
            b"conn" => {
                p.conn = Some(Text::from(s.string()?));
                bit(13)?
            }
            b"p" => {
                p.p = Some(number_value(s.number()?)?);
                bit(14)?
            }
            b"SSID" | b"ssid" => {
                p.ssid = Some(Text::from(s.string()?));
                bit(15)?
            }
            b"BSSID" | b"bssid" => {
                p.bssid = Some(Text::from(s.string()?));
                bit(16)?
            }
            b"created_at" => {
                p.created_at = Some(as_seconds(s.integer()?));
                bit(17)?
            }
            b"inregions" => {
                p.inregions = s.strings()?;
                bit(18)?
            }
            b"inrids" => {
                p.inrids = s.strings()?;
                bit(19)?
            }
            b"topic" => {
                topic = Some(s.string()?);
                bit(20)?
            }
            b"tid" => {
                tid = Some(s.string()?);
                bit(21)?
            }
            // Any other key goes to `extra`, as the general path writes it
            // back; repeated, each copy, as there.
            _ => {
                extra.push(if extra.is_empty() { b'{' } else { b',' });
                extra.push(b'"');
                extra.extend_from_slice(key);
                extra.extend_from_slice(b"\":");
                s.scalar_into(&mut extra)?;
                0
            }
        };
        s.ws();
        match s.next()? {
            b',' => s.ws(),
            b'}' => break,
            _ => return None,
        }
    }
    s.ws();
    if s.i != body.len() || !located {
        return None;
    }
    (p.lat, p.lon, p.tst) = (lat?, lon?, tst?);
    p.meta.tid = tid.map(Text::from);
    if !extra.is_empty() {
        extra.push(b'}');
        // Made of slices of the validated body and ASCII: always UTF-8.
        p.extra = Some(String::from_utf8(extra).ok()?);
    }
    Some(Found { topic, tid })
}

/// A JSON number as written, and its value when it is an integer of at
/// most 18 digits (always an `i64`; longer ones decline rather than copy
/// simd-json's choice between `i64`, `u64` and `f64`).
struct Number<'i> {
    text: &'i str,
    /// No fraction, no exponent.
    integral: bool,
    /// The value of a decimal without exponent, when Clinger's fast path
    /// gives it: its digits, read as one integer, are exact in an `f64`
    /// (at most 2^53) and its fraction has at most 22 digits, so the value
    /// is that integer divided by an exact power of ten, which one IEEE
    /// division rounds correctly: the value `str::parse` gives, without
    /// its general algorithm.
    decimal: Option<f64>,
    int: Option<i64>,
}

/// The general path's `number`: an integer goes through `i64` (so `-0` is
/// `0.0`, as simd-json's integer node gives), anything else is parsed as
/// written, correctly rounded like simd-json's.
fn number_value(n: Number<'_>) -> Option<f64> {
    if n.integral {
        return n.int.map(|i| i as f64);
    }
    if let Some(f) = n.decimal {
        return Some(f);
    }
    n.text.parse::<f64>().ok().filter(|f| f.is_finite())
}

/// The powers of ten an `f64` holds exactly.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

fn coord(n: Number<'_>, limit: f64) -> Option<f64> {
    number_value(n).filter(|f| (-limit..=limit).contains(f))
}

/// A cursor over the body.
struct Scan<'i> {
    text: &'i str,
    i: usize,
}

impl<'i> Scan<'i> {
    #[inline]
    fn bytes(&self) -> &'i [u8] {
        self.text.as_bytes()
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.i).copied()
    }

    #[inline]
    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    #[inline]
    fn eat(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    /// JSON's four whitespace bytes.
    #[inline]
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// A key: a string without escapes, as bytes.
    #[inline]
    fn key(&mut self) -> Option<&'i [u8]> {
        let (start, end) = self.plain()?;
        Some(&self.bytes()[start..end])
    }

    /// A string without escapes or control characters.
    #[inline]
    fn string(&mut self) -> Option<&'i str> {
        let (start, end) = self.plain()?;
        self.text.get(start..end)
    }

    /// The bounds of a string's contents, the cursor past its closing
    /// quote; an escape or a control character declines.
    #[inline]
    fn plain(&mut self) -> Option<(usize, usize)> {
        self.eat(b'"')?;
        let start = self.i;
        let end = start + stop(&self.bytes()[start..])?;
        if self.bytes()[end] != b'"' {
            return None;
        }
        self.i = end + 1;
        Some((start, end))
    }

    /// A number by JSON's grammar: `-?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?`.
    fn number(&mut self) -> Option<Number<'i>> {
        let start = self.i;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.i += 1;
        }
        let first = self.i;
        // Every digit, read as one integer: wrapping, as past 19 digits it
        // is not used.
        let mut m = 0u64;
        match self.next()? {
            b'0' => {}
            d @ b'1'..=b'9' => {
                m = u64::from(d - b'0');
                while let Some(d @ b'0'..=b'9') = self.peek() {
                    m = m.wrapping_mul(10).wrapping_add(u64::from(d - b'0'));
                    self.i += 1;
                }
            }
            _ => return None,
        }
        let int_digits = self.i - first;
        let mut fraction = 0;
        if self.peek() == Some(b'.') {
            self.i += 1;
            let from = self.i;
            while let Some(d @ b'0'..=b'9') = self.peek() {
                m = m.wrapping_mul(10).wrapping_add(u64::from(d - b'0'));
                self.i += 1;
            }
            fraction = self.i - from;
            if fraction == 0 {
                return None;
            }
        }
        let mut exponent = false;
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            self.some_digits()?;
            exponent = true;
        }
        let integral = fraction == 0 && !exponent;
        // The one place the sign is applied, to either value.
        fn signed<T: std::ops::Neg<Output = T>>(negative: bool, v: T) -> T {
            if negative { -v } else { v }
        }
        Some(Number {
            text: self.text.get(start..self.i)?,
            integral,
            // At most 18 digits: always an i64.
            int: (integral && int_digits <= 18).then(|| signed(negative, m as i64)),
            decimal: (fraction > 0
                && !exponent
                && int_digits + fraction <= 19
                && fraction < POW10.len()
                && m <= 1 << 53)
                .then(|| signed(negative, m as f64 / POW10[fraction])),
        })
    }

    #[inline]
    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
    }

    #[inline]
    fn some_digits(&mut self) -> Option<()> {
        let start = self.i;
        self.digits();
        (self.i > start).then_some(())
    }

    /// An integer literal; a fraction or an exponent declines.
    fn integer(&mut self) -> Option<i64> {
        self.number()?.int
    }

    /// An integer literal that fits 32 bits (a wider one would go to
    /// `extra` on the general path).
    fn int32(&mut self) -> Option<i32> {
        i32::try_from(self.integer()?).ok()
    }

    /// A value kept in `extra`, written as the general path writes it
    /// back: a plain string, `true`, `false`, `null` or an integer
    /// (canonical already, but `-0`, which is written `0`). Floats (which
    /// serde_json may write differently than sent), arrays and objects
    /// decline.
    fn scalar_into(&mut self, out: &mut Vec<u8>) -> Option<()> {
        let start = self.i;
        match self.peek()? {
            b'"' => {
                self.plain()?;
            }
            b't' | b'f' | b'n' => {
                let word = [&b"true"[..], b"false", b"null"]
                    .into_iter()
                    .find(|w| self.bytes()[start..].starts_with(w))?;
                self.i += word.len();
            }
            _ => {
                let n = self.number()?;
                if n.int.is_none() || n.text == "-0" {
                    return None;
                }
            }
        }
        out.extend_from_slice(&self.bytes()[start..self.i]);
        Some(())
    }

    /// An array of plain strings.
    fn strings(&mut self) -> Option<Vec<Text>> {
        self.eat(b'[')?;
        self.ws();
        let mut out = Vec::new();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Some(out);
        }
        loop {
            out.push(Text::from(self.string()?));
            self.ws();
            match self.next()? {
                b',' => self.ws(),
                b']' => return Some(out),
                _ => return None,
            }
        }
    }
}

/// Where the first quote, backslash or control character is, eight bytes
/// at a time (the classic SWAR tests: for each the lowest flagged byte is
/// exact); the string scan was the fast path's hottest loop byte by byte.
#[inline]
fn stop(b: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let zero = |v: u64| v.wrapping_sub(LO) & !v & HI;
    let mut chunks = b.chunks_exact(8);
    let mut at = 0;
    for chunk in chunks.by_ref() {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let v = u64::from_le_bytes(word);
        let hits = zero(v ^ (LO * u64::from(b'"')))
            | zero(v ^ (LO * u64::from(b'\\')))
            | (v.wrapping_sub(LO * 0x20) & !v & HI);
        if hits != 0 {
            return Some(at + (hits.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .map(|i| at + i)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        /// The eight-at-a-time scan finds what the byte-by-byte one does,
        /// on bytes rich in the three it looks for.
        #[test]
        fn stop_is_the_first_quote_backslash_or_control(
            bytes in proptest::collection::vec(prop_oneof![Just(b'"'), Just(b'\\'), Just(0x1f_u8), Just(0x20_u8), Just(0x7f_u8), Just(0x80_u8), Just(0xff_u8), any::<u8>(), b'a'..=b'z'], 0..40)
        ) {
            let want = bytes.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20);
            prop_assert_eq!(super::stop(&bytes), want);
        }

        /// Clinger's fast path gives what `str::parse` gives, bit for bit
        /// (the sign of zero included), or leaves the number to it.
        #[test]
        fn decimal_is_parse(
            negative in any::<bool>(),
            int in prop_oneof![Just(0u64), 0..1000u64, any::<u64>()],
            frac in "[0-9]{1,24}",
        ) {
            let text = format!("{}{int}.{frac}", if negative { "-" } else { "" });
            let want: f64 = text.parse().unwrap_or(f64::NAN);
            if let Some(got) = decimal(&text) {
                prop_assert_eq!(got.to_bits(), want.to_bits(), "{}", text);
            }
        }
    }

    /// What the scanner's fast path makes of `text`, if it takes it.
    fn decimal(text: &str) -> Option<f64> {
        let mut scan = super::Scan { text, i: 0 };
        let n = scan.number()?;
        assert_eq!(scan.i, text.len());
        n.decimal
    }

    #[test]
    fn decimal_takes_the_coordinates_phones_send_and_leaves_long_ones() {
        assert_eq!(decimal("52.225314"), Some(52.225314));
        assert_eq!(decimal("-5.6817552"), Some(-5.6817552));
        assert_eq!(decimal("-0.0").map(f64::to_bits), Some((-0.0f64).to_bits()));
        // 9007199254740993 (2^53 + 1) is not exact in an f64.
        assert_eq!(decimal("900719925474099.3"), None);
        assert_eq!(decimal("0.12345678901234567890"), None);
        assert_eq!(decimal("1.5e3"), None);
        assert_eq!(decimal("15"), None);
    }
}
