//! JSON: otstream's row objects (named like the tables' columns),
//! Recorder's location objects, devices and summaries. Texts that need no
//! escaping are copied as they are; integers with itoa, floats with ryu.

use crate::read::rows::{DaySummary, Device, Position};
use crate::read::stats::Stat;

use super::dates::push_iso8601;

/// A JSON object being written member by member; members absent from
/// `fields` (Recorder's `fields=` projection), when given, are left out.
pub(crate) struct Obj<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
    fields: Option<&'a [String]>,
}

impl<'a> Obj<'a> {
    pub(crate) fn open(out: &'a mut Vec<u8>, fields: Option<&'a [String]>) -> Self {
        out.push(b'{');
        Self {
            out,
            first: true,
            fields,
        }
    }

    // The members are inlined where they are called with literal keys, so
    // each key's length is a constant and its copy is a few moves rather
    // than a call to memcpy: an export writes twenty keys a row.
    #[inline(always)]
    pub(crate) fn key(&mut self, k: &str) -> bool {
        if self.fields.is_some_and(|f| !f.iter().any(|x| x == k)) {
            return false;
        }
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(k.as_bytes());
        self.out.extend_from_slice(b"\":");
        true
    }

    #[inline(always)]
    pub(crate) fn str(&mut self, k: &str, v: &str) {
        if self.key(k) {
            json_str(self.out, v);
        }
    }

    #[inline(always)]
    pub(crate) fn opt_str(&mut self, k: &str, v: Option<&str>) {
        if let Some(v) = v {
            self.str(k, v);
        }
    }

    #[inline(always)]
    pub(crate) fn int(&mut self, k: &str, v: i64) {
        if self.key(k) {
            int(self.out, v);
        }
    }

    #[inline(always)]
    pub(crate) fn opt_int(&mut self, k: &str, v: Option<i32>) {
        if let Some(v) = v {
            self.int(k, v.into());
        }
    }

    #[inline(always)]
    pub(crate) fn float(&mut self, k: &str, v: f64) {
        if self.key(k) {
            float(self.out, v);
        }
    }

    pub(crate) fn list<S: AsRef<str>>(&mut self, k: &str, v: &[S]) {
        if !v.is_empty() && self.key(k) {
            self.out.push(b'[');
            for (i, s) in v.iter().enumerate() {
                if i > 0 {
                    self.out.push(b',');
                }
                json_str(self.out, s.as_ref());
            }
            self.out.push(b']');
        }
    }

    /// A member whose value the caller writes next, unfiltered.
    pub(crate) fn raw(&mut self, k: &str) -> &mut Vec<u8> {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(k.as_bytes());
        self.out.extend_from_slice(b"\":");
        self.out
    }

    pub(crate) fn close(self) {
        self.out.push(b'}');
    }
}

pub(crate) fn json_str(out: &mut Vec<u8>, s: &str) {
    // Most texts (names, ids, triggers) need no escaping: copied as they
    // are, without serde_json's per-byte escape table walk.
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    // Writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

pub(crate) fn int(out: &mut Vec<u8>, v: i64) {
    // Most integer columns (acc, alt, vel, cog, batt) are under 1000.
    if (0..1000).contains(&v) {
        let v = v as u16;
        if v >= 100 {
            out.push(b'0' + (v / 100) as u8);
        }
        if v >= 10 {
            out.push(b'0' + (v / 10 % 10) as u8);
        }
        out.push(b'0' + (v % 10) as u8);
        return;
    }
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

pub(crate) fn float(out: &mut Vec<u8>, v: f64) {
    if v.is_finite() {
        out.extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
}

/// What the fix itself says, from `acc` to `inrids`, as JSON members;
/// `wifi` names the Wi-Fi members (Recorder keeps the apps' `SSID`).
pub(crate) fn fix_members(o: &mut Obj<'_>, p: &Position, wifi: [&str; 2]) {
    o.opt_int("acc", p.acc);
    o.opt_int("alt", p.alt);
    o.opt_int("vac", p.vac);
    o.opt_int("vel", p.vel);
    o.opt_int("cog", p.cog);
    o.opt_int("batt", p.batt);
    o.opt_int("bs", p.bs);
    o.opt_str("t", p.t.as_deref());
    o.opt_str("conn", p.conn.as_deref());
    if let Some(v) = p.p {
        o.float("p", v);
    }
    o.opt_int("m", p.m);
    o.opt_str(wifi[0], p.ssid.as_deref());
    o.opt_str(wifi[1], p.bssid.as_deref());
    if let Some(v) = p.created_at {
        o.int("created_at", v);
    }
    o.list("inregions", &p.inregions);
    o.list("inrids", &p.inrids);
}

/// The columns of a position, as JSON members (all but `lat`/`lon` when
/// `coordinates` is false: GeoJSON carries them in the geometry).
pub(crate) fn position_members(o: &mut Obj<'_>, p: &Position, coordinates: bool) {
    o.str("user", &p.user);
    o.str("device", &p.device);
    o.opt_str("tid", p.tid.as_deref());
    o.int("tst", p.tst);
    if coordinates {
        o.float("lat", p.lat);
        o.float("lon", p.lon);
    }
    fix_members(o, p, ["ssid", "bssid"]);
    o.opt_str("topic", p.topic.as_deref());
    o.int("received_at", p.received_at);
}

/// One position as Recorder writes a location: the payload's own fields
/// (`_type`, `tid`, `tst`, `lat`, `lon`, ...) plus `topic`, `isorcv`,
/// `isotst`, `disptst`, `username` and `device`. A fix that came without
/// a topic (over HTTP) gets the one Recorder gives it,
/// `owntracks/<user>/<device>`: its web frontend keys devices by it.
pub fn recorder_location(out: &mut Vec<u8>, p: &Position, fields: Option<&[String]>) {
    let mut o = Obj::open(out, fields);
    recorder_members(&mut o, p);
    o.close();
}

/// A device's last position as Recorder's `/api/0/last` writes it: the
/// location ([`recorder_location`]) with the device's card merged in
/// (`name`, `face`).
pub fn recorder_last(out: &mut Vec<u8>, d: &Device, fields: Option<&[String]>) {
    let mut o = Obj::open(out, fields);
    recorder_members(&mut o, &d.last);
    o.opt_str("name", d.name.as_deref());
    o.opt_str("face", d.face.as_deref());
    o.close();
}

pub(crate) fn recorder_members(o: &mut Obj<'_>, p: &Position) {
    o.str("_type", "location");
    o.opt_str("tid", p.tid.as_deref());
    o.int("tst", p.tst);
    o.float("lat", p.lat);
    o.float("lon", p.lon);
    fix_members(o, p, ["SSID", "BSSID"]);
    match p.topic.as_deref() {
        Some(topic) => o.str("topic", topic),
        None => {
            if o.key("topic") {
                json_str(o.out, &format!("owntracks/{}/{}", p.user, p.device));
            }
        }
    }
    for (key, t, sep, zulu) in [
        ("isorcv", p.received_at.div_euclid(1000), b'T', true),
        ("isotst", p.tst, b'T', true),
        ("disptst", p.tst, b' ', false),
    ] {
        if o.key(key) {
            o.out.push(b'"');
            push_iso8601(o.out, t, sep, zulu);
            o.out.push(b'"');
        }
    }
    o.str("username", &p.user);
    o.str("device", &p.device);
}

/// `/api/v1/devices`: each device's last fix, card name and when it was
/// last seen.
pub fn devices_json(devices: &[Device]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 * devices.len() + 2);
    out.push(b'[');
    for (i, d) in devices.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        device_json(&mut out, d);
    }
    out.push(b']');
    out
}

/// One device as `/api/v1/devices` and the live feed write it.
pub fn device_json(out: &mut Vec<u8>, d: &Device) {
    let p = &d.last;
    let mut o = Obj::open(out, None);
    o.str("user", &p.user);
    o.str("device", &p.device);
    o.opt_str("tid", p.tid.as_deref());
    o.opt_str("name", d.name.as_deref());
    o.float("lat", p.lat);
    o.float("lon", p.lon);
    o.int("tst", p.tst);
    o.opt_int("acc", p.acc);
    o.opt_int("batt", p.batt);
    o.opt_int("vel", p.vel);
    let regions = o.raw("inregions");
    regions.push(b'[');
    for (i, s) in p.inregions.iter().enumerate() {
        if i > 0 {
            regions.push(b',');
        }
        json_str(regions, s);
    }
    regions.push(b']');
    o.int("seen", p.received_at);
    o.close();
}

/// A position as the live feed sends it.
pub fn position_json(out: &mut Vec<u8>, p: &Position) {
    let mut o = Obj::open(out, None);
    position_members(&mut o, p, true);
    o.close();
}

/// `/api/v1/stats`: each device's (or user's) figures per period.
pub fn stats_json(stats: &[Stat]) -> Vec<u8> {
    let mut out = Vec::with_capacity(400 * stats.len() + 2);
    out.push(b'[');
    for (i, s) in stats.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let mut o = Obj::open(&mut out, None);
        o.str("user", &s.user);
        o.opt_str("device", s.device.as_deref());
        o.str("period", &s.period);
        o.float("distance", s.distance);
        o.int("moving_s", s.moving_s);
        o.int("trips", s.trips.into());
        o.float("max_vel", s.max_vel);
        o.int("stops", s.stops.into());
        o.int("stop_s", s.stop_s);
        let out = o.raw("countries");
        out.push(b'[');
        for (j, (cc, days)) in s.countries.iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            let mut c = Obj::open(out, None);
            c.str("cc", cc);
            c.int("days", (*days).into());
            c.close();
        }
        out.extend_from_slice(b"],\"cities\":[");
        for (j, (name, cc, days)) in s.cities.iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            let mut c = Obj::open(out, None);
            c.str("name", name);
            c.str("cc", cc);
            c.int("days", (*days).into());
            c.close();
        }
        out.extend_from_slice(b"],\"places\":[");
        for (j, (device, id, name, visits, dwell)) in s.places.iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            let mut c = Obj::open(out, None);
            c.str("device", device);
            c.int("id", *id);
            c.opt_str("name", name.as_deref());
            c.int("visits", (*visits).into());
            c.int("dwell_s", *dwell);
            c.close();
        }
        out.extend_from_slice(b"]}");
    }
    out.push(b']');
    out
}

/// `/api/v1/summary`.
pub fn summary_json(days: &[DaySummary]) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 * days.len() + 2);
    out.push(b'[');
    for (i, d) in days.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let mut o = Obj::open(&mut out, None);
        o.str("user", &d.user);
        o.str("device", &d.device);
        o.str("day", &d.day);
        o.float("distance", d.distance);
        o.int("driving_s", d.driving_s);
        o.int("trips", d.trips.into());
        o.int("stops", d.stops.into());
        o.float("max_vel", d.max_vel);
        o.close();
    }
    out.push(b']');
    out
}
