//! Dates of UNIX times, UTC, written in place (an export writes one to
//! three a row), and the civil calendar both ways.

use std::io::Write as _;

/// `YYYY-MM-DD` of a UNIX time, UTC.
pub fn day(t: i64) -> String {
    let (y, m, d) = civil(t.div_euclid(86_400));
    format!("{y:04}-{m:02}-{d:02}")
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a UNIX time, UTC (Recorder's `isotst`).
pub fn iso8601(t: i64) -> String {
    let mut out = Vec::with_capacity(20);
    push_iso8601(&mut out, t, b'T', true);
    String::from_utf8(out).unwrap_or_default()
}

/// Appends `YYYY-MM-DD{sep}HH:MM:SS` and, with `zulu`, `Z`: digits
/// written in place, since an export writes one to three of these a row.
pub(crate) fn push_iso8601(out: &mut Vec<u8>, t: i64, sep: u8, zulu: bool) {
    let (y, m, d) = civil(t.div_euclid(86_400));
    let secs = t.rem_euclid(86_400);
    if !(0..=9999).contains(&y) {
        let _ = write!(
            out,
            "{y:04}-{m:02}-{d:02}{}{:02}:{:02}:{:02}{}",
            sep as char,
            secs / 3600,
            secs / 60 % 60,
            secs % 60,
            if zulu { "Z" } else { "" }
        );
        return;
    }
    let (y, secs) = (y as u32, secs as u32);
    let mut b = *b"0000-00-00T00:00:00Z";
    let digits = [
        (0, y / 1000),
        (1, y / 100 % 10),
        (2, y / 10 % 10),
        (3, y % 10),
        (5, m / 10),
        (6, m % 10),
        (8, d / 10),
        (9, d % 10),
        (11, secs / 36_000),
        (12, secs / 3600 % 10),
        (14, secs / 600 % 6),
        (15, secs / 60 % 10),
        (17, secs % 60 / 10),
        (18, secs % 10),
    ];
    for (i, v) in digits {
        b[i] = b'0' + v as u8;
    }
    b[10] = sep;
    out.extend_from_slice(&b[..if zulu { 20 } else { 19 }]);
}

/// Year, month, day of a count of days since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`, exact over the whole proleptic calendar).
pub fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Days since 1970-01-01 of a civil date (`days_from_civil`).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}
