//! Reading simd-json's tape: objects as key/value pairs, lenient number and
//! string coercion, and writing a subtree back out as JSON for `extra`.
//!
//! The tape is a flat array of nodes; an object or array node counts the
//! nodes beneath it, so skipping a subtree is one addition and walking an
//! object never allocates.

use std::borrow::Cow;

use otstream_model::Text;
use simd_json::StaticNode;
use simd_json::tape::Node;

use crate::error::{DecodeError, ErrorKind};

/// A value on the tape: its head node followed by its subtree.
#[derive(Clone, Copy)]
pub(crate) struct Val<'t, 'i>(pub &'t [Node<'i>]);

/// Number of nodes a value occupies, head included.
#[inline]
pub(crate) fn span(head: &Node<'_>) -> usize {
    match head {
        Node::Object { count, .. } | Node::Array { count, .. } => 1 + count,
        _ => 1,
    }
}

impl<'t, 'i> Val<'t, 'i> {
    #[inline]
    pub fn head(&self) -> &'t Node<'i> {
        &self.0[0]
    }

    #[inline]
    pub fn is_null(&self) -> bool {
        matches!(self.head(), Node::Static(StaticNode::Null))
    }

    #[inline]
    pub fn as_str(&self) -> Option<&'i str> {
        match self.head() {
            Node::String(s) => Some(s),
            _ => None,
        }
    }

    /// The object's fields, if this is an object.
    #[inline]
    pub fn as_object(&self) -> Option<Fields<'t, 'i>> {
        match self.head() {
            Node::Object { len, count } => Some(Fields {
                nodes: &self.0[1..=*count],
                left: *len,
            }),
            _ => None,
        }
    }

    /// The array's elements, if this is an array.
    #[inline]
    pub fn as_array(&self) -> Option<Elements<'t, 'i>> {
        match self.head() {
            Node::Array { len, count } => Some(Elements {
                nodes: &self.0[1..=*count],
                left: *len,
            }),
            _ => None,
        }
    }

    /// A JSON type name for error messages.
    pub fn type_name(&self) -> &'static str {
        match self.head() {
            Node::String(_) => "a string",
            Node::Object { .. } => "an object",
            Node::Array { .. } => "an array",
            Node::Static(StaticNode::Null) => "null",
            Node::Static(StaticNode::Bool(_)) => "a boolean",
            Node::Static(_) => "a number",
        }
    }
}

/// Iterator over an object's `(key, value)` pairs.
pub(crate) struct Fields<'t, 'i> {
    nodes: &'t [Node<'i>],
    left: usize,
}

impl Fields<'_, '_> {
    /// An object with no fields.
    pub fn empty() -> Self {
        Fields {
            nodes: &[],
            left: 0,
        }
    }
}

impl<'t, 'i> Iterator for Fields<'t, 'i> {
    type Item = (&'i str, Val<'t, 'i>);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let key = match self.nodes.first()? {
            Node::String(k) => *k,
            // simd-json only produces string keys; an impossible tape ends
            // the walk instead of panicking.
            _ => return None,
        };
        let n = span(self.nodes.get(1)?);
        let value = Val(self.nodes.get(1..1 + n)?);
        self.nodes = &self.nodes[1 + n..];
        Some((key, value))
    }
}

/// Iterator over an array's elements.
pub(crate) struct Elements<'t, 'i> {
    nodes: &'t [Node<'i>],
    left: usize,
}

impl<'t, 'i> Iterator for Elements<'t, 'i> {
    type Item = Val<'t, 'i>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let n = span(self.nodes.first()?);
        let value = Val(self.nodes.get(..n)?);
        self.nodes = &self.nodes[n..];
        Some(value)
    }
}

/// The outcome of reading an optional field leniently.
pub(crate) enum Lenient<T> {
    /// Absent or null.
    Null,
    /// A usable value.
    Value(T),
    /// Present but unusable (wrong JSON type, unparsable string): the caller
    /// keeps it verbatim in `extra` rather than losing the whole message.
    Unusable,
}

impl<T> Lenient<T> {
    #[cfg(test)]
    pub fn ok(self) -> Option<T> {
        match self {
            Lenient::Value(v) => Some(v),
            _ => None,
        }
    }
}

/// Reads a number, accepting numbers sent as strings ("42", " 4.5 ").
#[inline]
pub(crate) fn number(v: Val<'_, '_>) -> Lenient<f64> {
    match v.head() {
        Node::Static(StaticNode::F64(f)) => Lenient::Value(*f),
        Node::Static(StaticNode::I64(i)) => Lenient::Value(*i as f64),
        Node::Static(StaticNode::U64(u)) => Lenient::Value(*u as f64),
        Node::Static(StaticNode::Null) => Lenient::Null,
        Node::String(s) => match s.trim().parse::<f64>() {
            Ok(f) if f.is_finite() => Lenient::Value(f),
            _ => Lenient::Unusable,
        },
        _ => Lenient::Unusable,
    }
}

/// Reads an integer. Floats are truncated toward zero (the Android app's
/// rule: vel 5.6 is 5); strings are parsed. Values beyond i64 are unusable.
#[inline]
pub(crate) fn integer(v: Val<'_, '_>) -> Lenient<i64> {
    match v.head() {
        Node::Static(StaticNode::I64(i)) => Lenient::Value(*i),
        Node::Static(StaticNode::U64(u)) => {
            i64::try_from(*u).map_or(Lenient::Unusable, Lenient::Value)
        }
        Node::String(s) => {
            let s = s.trim();
            match s.parse::<i64>() {
                Ok(i) => Lenient::Value(i),
                Err(_) => float_to_int(s.parse::<f64>().unwrap_or(f64::NAN)),
            }
        }
        _ => match number(v) {
            Lenient::Value(f) => float_to_int(f),
            Lenient::Null => Lenient::Null,
            Lenient::Unusable => Lenient::Unusable,
        },
    }
}

#[inline]
fn float_to_int(f: f64) -> Lenient<i64> {
    // 2^63 bounds: anything outside cannot be an i64.
    if f.is_finite() && f > -9.223_372_036_854_775e18 && f < 9.223_372_036_854_775e18 {
        Lenient::Value(f.trunc() as i64)
    } else {
        Lenient::Unusable
    }
}

/// Reads a 32-bit integer column, leniently.
#[inline]
pub(crate) fn int32(v: Val<'_, '_>) -> Lenient<i32> {
    match integer(v) {
        Lenient::Value(i) => i32::try_from(i).map_or(Lenient::Unusable, Lenient::Value),
        Lenient::Null => Lenient::Null,
        Lenient::Unusable => Lenient::Unusable,
    }
}

/// Reads a time in UNIX seconds (see [`as_seconds`]).
#[inline]
pub(crate) fn seconds(v: Val<'_, '_>) -> Lenient<i64> {
    match integer(v) {
        Lenient::Value(t) => Lenient::Value(as_seconds(t)),
        other => other,
    }
}

/// A time sent as an integer, in UNIX seconds. Some Android builds send
/// milliseconds (a waypoint `tst` of 1505910709000); anything past 1e11 s
/// (year 5138) is taken as milliseconds, or microseconds past 1e14.
#[inline]
pub(crate) fn as_seconds(mut t: i64) -> i64 {
    while t > 100_000_000_000 {
        t /= 1000;
    }
    t
}

/// Reads a string column; other scalars are unusable (kept in extra).
#[inline]
pub(crate) fn string<T: for<'a> From<&'a str>>(v: Val<'_, '_>) -> Lenient<T> {
    match v.head() {
        Node::String(s) => Lenient::Value(T::from(s)),
        Node::Static(StaticNode::Null) => Lenient::Null,
        _ => Lenient::Unusable,
    }
}

/// Reads an array of strings (`inregions`, `inrids`).
pub(crate) fn strings(v: Val<'_, '_>) -> Lenient<Vec<Text>> {
    if v.is_null() {
        return Lenient::Null;
    }
    let Some(items) = v.as_array() else {
        return Lenient::Unusable;
    };
    let mut out = Vec::new();
    for item in items {
        match item.as_str() {
            Some(s) => out.push(Text::from(s)),
            None => return Lenient::Unusable,
        }
    }
    Lenient::Value(out)
}

/// Reads a required number and checks its range, naming the field in errors.
pub(crate) fn required_coord(
    v: Option<Val<'_, '_>>,
    field: &'static str,
    limit: f64,
) -> Result<f64, DecodeError> {
    let v = v.ok_or_else(|| missing(field))?;
    match number(v) {
        Lenient::Value(f) if (-limit..=limit).contains(&f) => Ok(f),
        Lenient::Value(f) => Err(DecodeError::field(
            ErrorKind::OutOfRange,
            field,
            format!("field `{field}`: {f} is outside -{limit}..={limit}"),
        )),
        Lenient::Null => Err(missing(field)),
        Lenient::Unusable => Err(wrong_type(field, "a number", v)),
    }
}

/// Reads a required time in UNIX seconds, which must be after the epoch.
pub(crate) fn required_seconds(
    v: Option<Val<'_, '_>>,
    field: &'static str,
) -> Result<i64, DecodeError> {
    let v = v.ok_or_else(|| missing(field))?;
    match seconds(v) {
        Lenient::Value(t) if t > 0 => Ok(t),
        Lenient::Value(t) => Err(DecodeError::field(
            ErrorKind::OutOfRange,
            field,
            format!("field `{field}`: {t} is not a time after 1970-01-01 (UNIX seconds)"),
        )),
        Lenient::Null => Err(missing(field)),
        Lenient::Unusable => Err(wrong_type(field, "a UNIX time in seconds", v)),
    }
}

pub(crate) fn missing(field: &'static str) -> DecodeError {
    DecodeError::field(
        ErrorKind::MissingField,
        field,
        format!("missing required field `{field}`"),
    )
}

pub(crate) fn wrong_type(
    field: impl Into<Cow<'static, str>>,
    expected: &str,
    v: Val<'_, '_>,
) -> DecodeError {
    let field = field.into();
    let message = format!(
        "field `{field}`: expected {expected}, found {}",
        v.type_name()
    );
    DecodeError::field(ErrorKind::InvalidType, field, message)
}

/// Keys whose values are secrets: never stored, at any depth.
pub(crate) const SECRET_KEYS: [&str; 6] = [
    "password",
    "passphrase",
    "encryptionKey",
    "watsonAuthToken",
    "tlsClientCrtPassword",
    "secret",
];

/// Removes `user:password@` from a URL, as configurations may carry one.
pub(crate) fn strip_url_credentials(url: &str) -> Cow<'_, str> {
    let Some(scheme_end) = url.find("://") else {
        return Cow::Borrowed(url);
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => Cow::Owned(format!("{}{}", &url[..scheme_end + 3], &rest[at + 1..])),
        None => Cow::Borrowed(url),
    }
}

/// Collects fields into a JSON object string, lazily: nothing is allocated
/// for a message that has no field to keep.
#[derive(Default)]
pub(crate) struct JsonObject {
    buf: Vec<u8>,
    /// Drop secret keys (at any depth) and URL credentials.
    redact: bool,
}

impl JsonObject {
    pub fn redacting() -> Self {
        Self {
            buf: Vec::new(),
            redact: true,
        }
    }

    /// Appends `key: value`, the value written back as JSON.
    pub fn push(&mut self, key: &str, v: Val<'_, '_>) {
        if self.redact && SECRET_KEYS.contains(&key) {
            return;
        }
        self.buf.push(if self.buf.is_empty() { b'{' } else { b',' });
        write_str(&mut self.buf, key);
        self.buf.push(b':');
        if self.redact && key == "url" {
            if let Some(url) = v.as_str() {
                write_str(&mut self.buf, &strip_url_credentials(url));
                return;
            }
        }
        write_value(&mut self.buf, v.0, self.redact);
    }

    /// The object, or `None` when no field was pushed.
    pub fn finish(mut self) -> Option<String> {
        if self.buf.is_empty() {
            return None;
        }
        self.buf.push(b'}');
        // Built only from &str pieces and ASCII punctuation: valid UTF-8.
        String::from_utf8(self.buf).ok()
    }

    /// The object, `{}` when empty.
    pub fn finish_or_empty(self) -> String {
        self.finish().unwrap_or_else(|| "{}".to_owned())
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    // serde_json's escaping is exact and writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Writes the value whose head is `nodes[0]`; returns the nodes consumed.
fn write_value(out: &mut Vec<u8>, nodes: &[Node<'_>], redact: bool) -> usize {
    let Some(head) = nodes.first() else { return 0 };
    match head {
        Node::String(s) => {
            write_str(out, s);
            1
        }
        Node::Static(s) => {
            let _ = match s {
                StaticNode::I64(i) => serde_json::to_writer(&mut *out, i),
                StaticNode::U64(u) => serde_json::to_writer(&mut *out, u),
                StaticNode::F64(f) => serde_json::to_writer(&mut *out, f),
                StaticNode::Bool(b) => serde_json::to_writer(&mut *out, b),
                StaticNode::Null => serde_json::to_writer(&mut *out, &()),
            };
            1
        }
        Node::Array { len, .. } => {
            out.push(b'[');
            let mut i = 1;
            for n in 0..*len {
                if n > 0 {
                    out.push(b',');
                }
                i += write_value(out, &nodes[i..], redact);
            }
            out.push(b']');
            i
        }
        Node::Object { len, .. } => {
            out.push(b'{');
            let mut i = 1;
            let mut first = true;
            for _ in 0..*len {
                let key = match nodes.get(i) {
                    Some(Node::String(k)) => *k,
                    _ => break,
                };
                let vspan = nodes.get(i + 1).map_or(0, span);
                if redact && SECRET_KEYS.contains(&key) {
                    i += 1 + vspan;
                    continue;
                }
                if !first {
                    out.push(b',');
                }
                first = false;
                write_str(out, key);
                out.push(b':');
                i += 1 + write_value(out, &nodes[i + 1..], redact);
            }
            out.push(b'}');
            i
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_tape<R>(json: &str, f: impl FnOnce(Val<'_, '_>) -> R) -> R {
        let mut bytes = json.as_bytes().to_vec();
        let tape = simd_json::to_tape(&mut bytes).unwrap();
        f(Val(&tape.0))
    }

    #[test]
    fn writes_subtrees_back_verbatim() {
        let json = r#"{"a":{"b":[1,-2,3.5,"x\"y",null,true,{}],"c":[]},"d":"é\n","e":18446744073709551615}"#;
        let out = with_tape(json, |v| {
            let mut o = JsonObject::default();
            for (k, v) in v.as_object().unwrap() {
                o.push(k, v);
            }
            o.finish().unwrap()
        });
        assert_eq!(out, json);
    }

    #[test]
    fn redaction_removes_secrets_at_any_depth_and_url_credentials() {
        let json = r#"{"password":"x","c":{"passphrase":"y","keep":1,"encryptionKey":"z"},"url":"https://u:p@host:8083/pub?x=1"}"#;
        let out = with_tape(json, |v| {
            let mut o = JsonObject::redacting();
            for (k, v) in v.as_object().unwrap() {
                o.push(k, v);
            }
            o.finish().unwrap()
        });
        assert_eq!(out, r#"{"c":{"keep":1},"url":"https://host:8083/pub?x=1"}"#);
    }

    #[test]
    fn coercions() {
        with_tape(
            r#"["1497476456", 5.6, -1.7, "4.5", true, null, 1e300, "x"]"#,
            |v| {
                let items: Vec<_> = v.as_array().unwrap().collect();
                assert_eq!(integer(items[0]).ok(), Some(1_497_476_456));
                assert_eq!(integer(items[1]).ok(), Some(5));
                assert_eq!(integer(items[2]).ok(), Some(-1));
                assert_eq!(integer(items[3]).ok(), Some(4));
                assert!(matches!(integer(items[4]), Lenient::Unusable));
                assert!(matches!(integer(items[5]), Lenient::Null));
                assert!(matches!(integer(items[6]), Lenient::Unusable));
                assert!(matches!(number(items[7]), Lenient::Unusable));
                assert_eq!(number(items[3]).ok(), Some(4.5));
            },
        );
        with_tape("[1505910709000, 1700000000000000, 9999]", |v| {
            let t: Vec<_> = v.as_array().unwrap().map(|x| seconds(x).ok()).collect();
            assert_eq!(t, [Some(1_505_910_709), Some(1_700_000_000), Some(9999)]);
        });
    }

    #[test]
    fn url_credentials() {
        assert_eq!(strip_url_credentials("http://a:b@h/p@x"), "http://h/p@x");
        assert_eq!(strip_url_credentials("http://h:1/p"), "http://h:1/p");
        assert_eq!(strip_url_credentials("nonsense"), "nonsense");
    }
}
