//! Request parameters: the query string (and, for Recorder's API, a
//! form-encoded POST body and the `X-Limit-*` headers), parsed into what
//! a read needs, or an error naming the parameter at fault.

use crate::read::format::days_from_civil;

/// The earliest time a read may name: the UNIX epoch (ClickHouse's
/// `DateTime` starts there).
pub const MIN_TIME: i64 = 0;
/// The latest: the end of ClickHouse's `DateTime` (an unsigned 32-bit
/// count of seconds), which would wrap past it.
pub const MAX_TIME: i64 = u32::MAX as i64;

/// A parameter that cannot be used: answered 400 with the JSON error
/// object naming it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct BadParam {
    /// The parameter.
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl BadParam {
    pub(crate) fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// The parameters of one request, by name; a name given twice keeps
/// its last value, as form decoders commonly do.
#[derive(Debug, Default, Clone)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// Parses `a=1&b=2` (percent- and `+`-decoded).
    pub fn parse(query: &str) -> Self {
        let mut p = Self::default();
        p.extend(query.as_bytes());
        p
    }

    /// Adds the pairs of a form-encoded body or query string.
    pub fn extend(&mut self, form: &[u8]) {
        self.pairs
            .extend(form_urlencoded::parse(form).map(|(k, v)| (k.into_owned(), v.into_owned())));
    }

    /// Sets `name` unless the request named it already (a header that
    /// stands in for a parameter).
    pub fn default_from(&mut self, name: &str, value: Option<&str>) {
        if let (None, Some(v)) = (self.get(name), value) {
            self.pairs.push((name.to_owned(), v.to_owned()));
        }
    }

    /// The value of `name`, if given and not empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// A time parameter, or `default`; within [`MIN_TIME`, `MAX_TIME`].
    pub fn time(&self, name: &'static str, default: i64) -> Result<i64, BadParam> {
        let t = match self.get(name) {
            None => return Ok(default.clamp(MIN_TIME, MAX_TIME)),
            Some(v) => parse_time(v).ok_or_else(|| {
                BadParam::new(
                    name,
                    format!(
                        "{v:?} is not a time: give UNIX seconds or ISO-8601 (2024-05-01, 2024-05-01T08:30:00Z, 2024-05-01T10:30+02:00)"
                    ),
                )
            })?,
        };
        if !(MIN_TIME..=MAX_TIME).contains(&t) {
            return Err(BadParam::new(
                name,
                format!(
                    "{t} is outside the times stored: from 1970-01-01T00:00:00Z (0) to 2106-02-07T06:28:15Z ({MAX_TIME})"
                ),
            ));
        }
        Ok(t)
    }

    /// A positive integer parameter, if given.
    pub fn count(&self, name: &'static str) -> Result<Option<u64>, BadParam> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => match v.parse::<u64>() {
                Ok(n) if n > 0 => Ok(Some(n)),
                _ => Err(BadParam::new(
                    name,
                    format!("{v:?} is not a positive whole number"),
                )),
            },
        }
    }

    /// The window `[from, to]`: each defaults relative to `now`
    /// (`from` to `now - default_span_s`, `to` to `now`); `from` after
    /// `to` is an error.
    pub fn window(&self, now: i64, default_span_s: i64) -> Result<(i64, i64), BadParam> {
        let to = self.time("to", now)?;
        let from = self.time("from", now - default_span_s)?;
        if from > to {
            return Err(BadParam::new(
                "from",
                format!("from ({from}) is after to ({to})"),
            ));
        }
        Ok((from, to))
    }
}

/// A time as UNIX seconds: digits (UNIX seconds, optionally negative), or
/// ISO-8601 from the year down to fractions of a second
/// (`YYYY`, `YYYY-MM`, `YYYY-MM-DD`, then `T`, `t` or a space and
/// `HH[:MM[:SS[.fff]]]`), with `Z` or `±HH[:MM]`; a time without a zone is
/// UTC. Recorder's forms (`2024-05-01`, `2024-05-01T08:30`) are among them.
pub fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i64>() {
        // A bare year is ISO-8601 too; four digits read as one.
        if s.len() != 4 {
            return Some(n);
        }
    }
    let b = s.as_bytes();
    let mut i = 0;
    let num = |i: &mut usize, n: usize| -> Option<i64> {
        let part = b.get(*i..*i + n)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        *i += n;
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let year = num(&mut i, 4)?;
    let (mut month, mut day) = (1u32, 1u32);
    let (mut h, mut m, mut sec) = (0i64, 0i64, 0i64);
    if b.get(i) == Some(&b'-') {
        i += 1;
        month = u32::try_from(num(&mut i, 2)?).ok()?;
        if b.get(i) == Some(&b'-') {
            i += 1;
            day = u32::try_from(num(&mut i, 2)?).ok()?;
            if matches!(b.get(i), Some(b'T' | b't' | b' ')) {
                i += 1;
                h = num(&mut i, 2)?;
                if b.get(i) == Some(&b':') {
                    i += 1;
                    m = num(&mut i, 2)?;
                    if b.get(i) == Some(&b':') {
                        i += 1;
                        sec = num(&mut i, 2)?;
                        if b.get(i) == Some(&b'.') {
                            i += 1;
                            let digits = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
                            if digits == 0 {
                                return None;
                            }
                            i += digits;
                        }
                    }
                }
            }
        }
    }
    let offset = match b.get(i) {
        None => 0,
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(c @ (b'+' | b'-')) => {
            let sign = if *c == b'-' { -1 } else { 1 };
            i += 1;
            let oh = num(&mut i, 2)?;
            if b.get(i) == Some(&b':') {
                i += 1;
            }
            let om = if i < b.len() { num(&mut i, 2)? } else { 0 };
            if i != b.len() {
                return None;
            }
            sign * (oh * 3600 + om * 60)
        }
        Some(_) => return None,
    };
    let valid_day = day >= 1
        && day <= days_in_month(year, month)
        && (1..=12).contains(&month)
        && h < 24
        && m < 60
        && sec < 61;
    if !valid_day {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + sec - offset)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_every_accepted_form() {
        assert_eq!(parse_time("1700000000"), Some(1_700_000_000));
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), Some(1_700_000_000));
        assert_eq!(parse_time("2023-11-14T22:13:20.999Z"), Some(1_700_000_000));
        assert_eq!(parse_time("2023-11-14 22:13:20"), Some(1_700_000_000));
        assert_eq!(parse_time("2023-11-14t22:13:20"), Some(1_700_000_000));
        assert_eq!(parse_time("2023-11-15T00:13:20+02:00"), Some(1_700_000_000));
        assert_eq!(parse_time("2023-11-14T20:13:20-0200"), Some(1_700_000_000));
        assert_eq!(parse_time("2023-11-14T22:13"), Some(1_700_000_000 - 20));
        assert_eq!(
            parse_time("2023-11-14T22"),
            Some(1_700_000_000 - 13 * 60 - 20)
        );
        assert_eq!(parse_time("2023-11-14"), Some(1_699_920_000));
        assert_eq!(parse_time("2023-11"), Some(1_698_796_800));
        assert_eq!(parse_time("2024"), Some(1_704_067_200));
        assert_eq!(parse_time("2024-02-29"), Some(1_709_164_800));
        for bad in [
            "",
            "yesterday",
            "2023-02-29",
            "2023-13-01",
            "2023-11-14T25:00",
            "2023-11-14T22:13:20Q",
            "2023-1-4",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn times_outside_what_is_stored_are_refused_not_wrapped() {
        let t = |q: &str| Params::parse(q).time("from", 0);
        assert_eq!(t("from=0"), Ok(0));
        assert_eq!(t("from=4294967295"), Ok(MAX_TIME));
        assert_eq!(t("from=2106-02-07T06:28:15Z"), Ok(MAX_TIME));
        for bad in [
            "from=-1",
            "from=4294967296",
            "from=2106-02-07T06:28:16Z",
            "from=1969-12-31",
        ] {
            let e = t(bad).unwrap_err();
            assert_eq!(e.field, "from", "{bad}");
            assert!(
                e.message.contains("outside the times stored"),
                "{bad}: {}",
                e.message
            );
        }
        // A default past the bound is clamped, not refused.
        assert_eq!(Params::parse("").time("to", i64::MAX), Ok(MAX_TIME));
    }

    #[test]
    fn window_defaults_and_errors_name_the_parameter() {
        let p = Params::parse("from=2023-11-14&limit=0&format=csv&user=jane+doe");
        assert_eq!(p.get("user"), Some("jane doe"));
        assert_eq!(
            p.window(1_700_000_000, 86_400),
            Ok((1_699_920_000, 1_700_000_000))
        );
        assert_eq!(p.count("limit").unwrap_err().field, "limit");
        let late = Params::parse("from=2030-01-01");
        assert_eq!(late.window(1_700_000_000, 10).unwrap_err().field, "from");
        let bad = Params::parse("to=soon");
        let e = bad.window(0, 10).unwrap_err();
        assert_eq!(e.field, "to");
        assert!(e.message.contains("\"soon\""));
        let mut h = Params::parse("user=a");
        h.default_from("user", Some("b"));
        h.default_from("device", Some("phone"));
        assert_eq!((h.get("user"), h.get("device")), (Some("a"), Some("phone")));
    }
}
