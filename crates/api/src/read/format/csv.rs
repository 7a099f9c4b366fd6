//! CSV: a header, then one line a row, each field through `csv-core`'s
//! writer (quoted where it needs to be, RFC 4180). Text cells a
//! spreadsheet would run as a formula are neutralised first.

use csv_core::{WriteResult, Writer};

use crate::read::rows::Position;

use super::dates::push_iso8601;
use super::json::json_str;

/// The columns, in the order [`Csv::row`] writes them.
pub(crate) const HEADER: &str = "user,device,tid,tst,isotst,lat,lon,acc,alt,vac,vel,cog,batt,bs,t,conn,p,m,ssid,bssid,created_at,inregions,inrids,topic,received_at\n";

/// Rows of positions as CSV lines.
#[derive(Default)]
pub(crate) struct Csv {
    w: Writer,
    /// One cell's text, reused.
    cell: Vec<u8>,
    /// The row's next field is its first.
    first: bool,
}

/// Runs a `csv-core` write into `out`, growing it until the write fits.
fn put(out: &mut Vec<u8>, mut write: impl FnMut(&mut [u8]) -> (WriteResult, usize)) {
    let mut room = 16;
    loop {
        let start = out.len();
        out.resize(start + room, 0);
        let (res, n) = write(&mut out[start..]);
        out.truncate(start + n);
        if let WriteResult::InputEmpty = res {
            return;
        }
        room *= 2;
    }
}

impl Csv {
    /// Appends `p` as one line.
    pub(crate) fn row(&mut self, out: &mut Vec<u8>, p: &Position) {
        self.first = true;
        self.text(out, &p.user);
        self.text(out, &p.device);
        self.text(out, p.tid.as_deref().unwrap_or(""));
        self.int(out, Some(p.tst));
        self.cell.clear();
        push_iso8601(&mut self.cell, p.tst, b'T', true);
        self.cell_field(out);
        self.float(out, Some(p.lat));
        self.float(out, Some(p.lon));
        for v in [p.acc, p.alt, p.vac, p.vel, p.cog, p.batt, p.bs] {
            self.int(out, v.map(i64::from));
        }
        self.text(out, p.t.as_deref().unwrap_or(""));
        self.text(out, p.conn.as_deref().unwrap_or(""));
        self.float(out, p.p);
        self.int(out, p.m.map(i64::from));
        self.text(out, p.ssid.as_deref().unwrap_or(""));
        self.text(out, p.bssid.as_deref().unwrap_or(""));
        self.int(out, p.created_at);
        self.list(out, &p.inregions);
        self.list(out, &p.inrids);
        self.text(out, p.topic.as_deref().unwrap_or(""));
        self.int(out, Some(p.received_at));
        let w = &mut self.w;
        put(out, |buf| w.terminator(buf));
    }

    /// Writes `self.cell` as the next field.
    fn cell_field(&mut self, out: &mut Vec<u8>) {
        let (w, mut input) = (&mut self.w, self.cell.as_slice());
        if !std::mem::take(&mut self.first) {
            put(out, |buf| w.delimiter(buf));
        }
        put(out, |buf| {
            let (res, nin, nout) = w.field(input, buf);
            input = &input[nin..];
            (res, nout)
        });
    }

    /// A text cell. One a spreadsheet would read as a formula (starting
    /// with `=`, `+`, `-`, `@`, a tab or a carriage return: a device may
    /// call itself `=HYPERLINK(...)`) gets a leading `'`, which
    /// spreadsheets show as text (OWASP's CSV injection advice).
    fn text(&mut self, out: &mut Vec<u8>, s: &str) {
        self.cell.clear();
        if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
            self.cell.push(b'\'');
        }
        self.cell.extend_from_slice(s.as_bytes());
        self.cell_field(out);
    }

    fn int(&mut self, out: &mut Vec<u8>, v: Option<i64>) {
        self.cell.clear();
        if let Some(v) = v {
            self.cell
                .extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
        }
        self.cell_field(out);
    }

    fn float(&mut self, out: &mut Vec<u8>, v: Option<f64>) {
        self.cell.clear();
        if let Some(v) = v.filter(|v| v.is_finite()) {
            self.cell
                .extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes());
        }
        self.cell_field(out);
    }

    /// A list as a JSON array in one cell (empty when the list is).
    fn list<S: AsRef<str>>(&mut self, out: &mut Vec<u8>, v: &[S]) {
        self.cell.clear();
        if !v.is_empty() {
            self.cell.push(b'[');
            for (i, x) in v.iter().enumerate() {
                if i > 0 {
                    self.cell.push(b',');
                }
                json_str(&mut self.cell, x.as_ref());
            }
            self.cell.push(b']');
        }
        self.cell_field(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_text_a_spreadsheet_would_run_is_neutralised() {
        let cell = |s: &str| {
            let (mut out, mut csv) = (Vec::new(), Csv::default());
            csv.first = true;
            csv.text(&mut out, s);
            // The record's end closes a quoted field.
            put(&mut out, |buf| csv.w.terminator(buf));
            assert_eq!(out.pop(), Some(b'\n'));
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            cell("=HYPERLINK(\"http://x\",\"y\")"),
            "\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\""
        );
        assert_eq!(cell("+1"), "'+1");
        assert_eq!(cell("-2+3"), "'-2+3");
        assert_eq!(cell("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(cell("\tx"), "'\tx");
        assert_eq!(cell("jane"), "jane");
        assert_eq!(cell("a,b"), "\"a,b\"");
    }
}
