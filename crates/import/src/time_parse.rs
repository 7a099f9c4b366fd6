//! Times as history files write them.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// UNIX seconds from RFC 3339 / ISO 8601 text (`2024-01-05T10:00:00Z`,
/// fractions and offsets allowed), or from a number: seconds, or
/// milliseconds when it is larger than any second of this millennium.
pub fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(n) = s.parse::<f64>() {
        return Some(from_number(n));
    }
    OffsetDateTime::parse(s, &Rfc3339)
        .ok()
        .map(OffsetDateTime::unix_timestamp)
}

/// Seconds, or milliseconds when above 10^11 (the year 5138 in seconds).
pub fn from_number(n: f64) -> i64 {
    if n.abs() >= 1e11 {
        (n / 1000.0).floor() as i64
    } else {
        n.floor() as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_with_fractions_and_offsets_numbers_in_seconds_or_ms() {
        assert_eq!(parse_time("2024-01-05T10:00:00Z"), Some(1_704_448_800));
        assert_eq!(parse_time("2024-01-05T10:00:00.750Z"), Some(1_704_448_800));
        assert_eq!(parse_time("2024-01-05T11:00:00+01:00"), Some(1_704_448_800));
        assert_eq!(parse_time("1704448800"), Some(1_704_448_800));
        assert_eq!(parse_time("1704448800123"), Some(1_704_448_800));
        assert_eq!(parse_time("yesterday"), None);
    }
}
