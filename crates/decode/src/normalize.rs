//! One function per `_type`: fields to columns, everything else to `extra`.
//!
//! Required fields are few and are the ones without which a row means
//! nothing (a position needs `lat`, `lon` and `tst`). Optional fields are read
//! leniently: a value of an unusable type is kept verbatim in `extra` rather
//! than costing the whole message, because phones do send `"batt": true`.

use otstream_model::record::{
    Beacon, Card, Command, Configuration, DeviceEvent, Meta, Position, Steps, Transition, Unknown,
    Waypoint,
};
use otstream_model::{Record, Text};

use crate::error::{DecodeError, ErrorKind};
use crate::tape::{
    self, JsonObject, Lenient, Val, int32, integer, missing, number, required_coord,
    required_seconds, seconds, string, strip_url_credentials, wrong_type,
};

/// Keys consumed before normalization (type dispatch and identity); they
/// are columns of [`Meta`], not extras, when they hold strings.
fn is_meta_key(key: &str, v: Val<'_, '_>) -> bool {
    matches!(key, "_type" | "topic" | "tid") && (v.as_str().is_some() || v.is_null())
}

/// Takes a lenient column value; an unusable one goes to `extra`.
#[inline]
fn col<T>(l: Lenient<T>, key: &str, v: Val<'_, '_>, extra: &mut JsonObject) -> Option<T> {
    match l {
        Lenient::Value(x) => Some(x),
        Lenient::Null => None,
        Lenient::Unusable => {
            extra.push(key, v);
            None
        }
    }
}

/// The apps send -1 (and iOS omits negatives) for an unknown accuracy,
/// speed, course or battery level.
#[inline]
pub(crate) fn non_negative(x: Option<i32>) -> Option<i32> {
    x.filter(|x| *x >= 0)
}

pub(crate) fn normalize(
    kind: &str,
    obj: Val<'_, '_>,
    meta: Meta,
    out: &mut Vec<Record>,
) -> Result<(), DecodeError> {
    match kind {
        "location" => out.push(Record::Position(position(obj, meta)?)),
        "transition" => out.push(Record::Transition(transition(obj, meta)?)),
        "waypoint" => out.push(Record::Waypoint(waypoint(obj, meta, &[])?)),
        "waypoints" => waypoints(obj, meta, out)?,
        "card" => out.push(Record::Card(card(obj, meta))),
        "lwt" | "status" => out.push(Record::DeviceEvent(device_event(kind, obj, meta))),
        "steps" => out.push(Record::Steps(steps(obj, meta))),
        "beacon" => out.push(Record::Beacon(beacon(obj, meta))),
        "configuration" => configuration(obj, meta, out)?,
        "cmd" => out.push(Record::Command(command(obj, meta)?)),
        _ => out.push(Record::Unknown(unknown(kind, obj, meta))),
    }
    Ok(())
}

fn position(obj: Val<'_, '_>, meta: Meta) -> Result<Position, DecodeError> {
    let (mut lat, mut lon, mut tst) = (None, None, None);
    let mut extra = JsonObject::default();
    let mut p = Position::at(meta, 0, 0.0, 0.0);
    for (k, v) in fields(obj) {
        let x = &mut extra;
        match k {
            "lat" => lat = Some(v),
            "lon" => lon = Some(v),
            "tst" => tst = Some(v),
            "acc" => p.acc = non_negative(col(int32(v), k, v, x)),
            // -1 is the unknown-altitude sentinel; other negatives are real
            // (the Dead Sea shore is at -430 m).
            "alt" => p.alt = col(int32(v), k, v, x).filter(|a| *a != -1),
            "vac" => p.vac = non_negative(col(int32(v), k, v, x)),
            "vel" => p.vel = non_negative(col(int32(v), k, v, x)),
            "cog" => p.cog = non_negative(col(int32(v), k, v, x)),
            "batt" => p.batt = non_negative(col(int32(v), k, v, x)),
            "bs" => p.bs = col(int32(v), k, v, x),
            "t" => p.t = col(string(v), k, v, x),
            "conn" => p.conn = col(string(v), k, v, x),
            "p" => p.p = col(number(v), k, v, x),
            "m" => p.m = col(int32(v), k, v, x),
            "SSID" | "ssid" => p.ssid = col(string(v), k, v, x),
            "BSSID" | "bssid" => p.bssid = col(string(v), k, v, x),
            "created_at" => p.created_at = col(seconds(v), k, v, x),
            "inregions" => p.inregions = col(tape::strings(v), k, v, x).unwrap_or_default(),
            "inrids" => p.inrids = col(tape::strings(v), k, v, x).unwrap_or_default(),
            _ if is_meta_key(k, v) => {}
            _ => x.push(k, v),
        }
    }
    p.lat = required_coord(lat, "lat", 90.0)?;
    p.lon = required_coord(lon, "lon", 180.0)?;
    p.tst = required_seconds(tst, "tst")?;
    p.extra = extra.finish();
    Ok(p)
}

fn transition(obj: Val<'_, '_>, meta: Meta) -> Result<Transition, DecodeError> {
    let (mut lat, mut lon, mut tst, mut event) = (None, None, None, None);
    let mut extra = JsonObject::default();
    let mut t = Transition {
        meta,
        tst: 0,
        wtst: None,
        lat: 0.0,
        lon: 0.0,
        acc: None,
        event: Text::default(),
        desc: None,
        rid: None,
        t: None,
        source: Text::const_new("device"),
        extra: None,
    };
    for (k, v) in fields(obj) {
        let x = &mut extra;
        match k {
            "lat" => lat = Some(v),
            "lon" => lon = Some(v),
            "tst" => tst = Some(v),
            "event" => event = Some(v),
            "wtst" => t.wtst = col(seconds(v), k, v, x),
            "acc" => t.acc = non_negative(col(int32(v), k, v, x)),
            "desc" => t.desc = col(string(v), k, v, x),
            "rid" => t.rid = col(string(v), k, v, x),
            "t" => t.t = col(string(v), k, v, x),
            _ if is_meta_key(k, v) => {}
            _ => x.push(k, v),
        }
    }
    t.lat = required_coord(lat, "lat", 90.0)?;
    t.lon = required_coord(lon, "lon", 180.0)?;
    t.tst = required_seconds(tst, "tst")?;
    let event = event
        .filter(|v| !v.is_null())
        .ok_or_else(|| missing("event"))?;
    t.event = match event.as_str() {
        Some(e) if e.eq_ignore_ascii_case("enter") => Text::const_new("enter"),
        Some(e) if e.eq_ignore_ascii_case("leave") => Text::const_new("leave"),
        Some(e) => {
            return Err(DecodeError::field(
                ErrorKind::InvalidValue,
                "event",
                format!("field `event`: {e:?} is neither \"enter\" nor \"leave\""),
            ));
        }
        None => return Err(wrong_type("event", "\"enter\" or \"leave\"", event)),
    };
    t.extra = extra.finish();
    Ok(t)
}

/// A waypoint; `inherited` are fields of an enclosing `waypoints` message
/// (such as `_creator`) that belong in every waypoint's `extra`.
fn waypoint(
    obj: Val<'_, '_>,
    meta: Meta,
    inherited: &[(&str, Val<'_, '_>)],
) -> Result<Waypoint, DecodeError> {
    let mut extra = JsonObject::default();
    for (k, v) in inherited {
        extra.push(k, *v);
    }
    let mut w = Waypoint {
        meta,
        tst: None,
        lat: None,
        lon: None,
        rad: None,
        desc: None,
        rid: None,
        uuid: None,
        major: None,
        minor: None,
        extra: None,
    };
    for (k, v) in fields(obj) {
        let x = &mut extra;
        match k {
            "tst" => w.tst = col(seconds(v), k, v, x),
            "lat" if !v.is_null() => w.lat = Some(required_coord(Some(v), "lat", 90.0)?),
            "lon" if !v.is_null() => w.lon = Some(required_coord(Some(v), "lon", 180.0)?),
            "rad" => w.rad = col(int32(v), k, v, x),
            "desc" => w.desc = col(string(v), k, v, x),
            "rid" => w.rid = col(string(v), k, v, x),
            "uuid" => w.uuid = col(string(v), k, v, x),
            "major" => w.major = col(int32(v), k, v, x),
            "minor" => w.minor = col(int32(v), k, v, x),
            "lat" | "lon" => {}
            _ if is_meta_key(k, v) => {}
            _ => x.push(k, v),
        }
    }
    w.extra = extra.finish();
    Ok(w)
}

/// Emits one waypoint record per entry of the `waypoints` array in `list`.
fn waypoint_list(
    list: Val<'_, '_>,
    meta: &Meta,
    inherited: &[(&str, Val<'_, '_>)],
    out: &mut Vec<Record>,
) -> Result<u32, DecodeError> {
    let Some(items) = list.as_array() else {
        return Err(wrong_type("waypoints", "an array", list));
    };
    let mut n = 0;
    for (i, item) in items.enumerate() {
        if item.as_object().is_none() {
            return Err(wrong_type(format!("waypoints[{i}]"), "an object", item));
        }
        let w = waypoint(item, meta.clone(), inherited)
            .map_err(|e| e.within(&format!("waypoints[{i}]")))?;
        out.push(Record::Waypoint(w));
        n += 1;
    }
    Ok(n)
}

fn waypoints(obj: Val<'_, '_>, meta: Meta, out: &mut Vec<Record>) -> Result<(), DecodeError> {
    let mut list = None;
    let mut inherited = Vec::new();
    for (k, v) in fields(obj) {
        match k {
            "waypoints" => list = Some(v),
            _ if is_meta_key(k, v) => {}
            _ => inherited.push((k, v)),
        }
    }
    let list = list
        .filter(|v| !v.is_null())
        .ok_or_else(|| missing("waypoints"))?;
    waypoint_list(list, &meta, &inherited, out)?;
    Ok(())
}

fn card(obj: Val<'_, '_>, meta: Meta) -> Card {
    let mut extra = JsonObject::default();
    let mut c = Card {
        meta,
        name: None,
        face: None,
        extra: None,
    };
    for (k, v) in fields(obj) {
        let x = &mut extra;
        match k {
            "name" => c.name = col(string(v), k, v, x),
            "face" => c.face = col(string(v), k, v, x),
            _ if is_meta_key(k, v) => {}
            _ => x.push(k, v),
        }
    }
    c.extra = extra.finish();
    c
}

fn device_event(kind: &str, obj: Val<'_, '_>, meta: Meta) -> DeviceEvent {
    let mut extra = JsonObject::default();
    let mut e = DeviceEvent {
        meta,
        event: Text::from(kind),
        tst: None,
        extra: None,
    };
    for (k, v) in fields(obj) {
        match k {
            "tst" => e.tst = col(seconds(v), k, v, &mut extra),
            _ if is_meta_key(k, v) => {}
            _ => extra.push(k, v),
        }
    }
    e.extra = extra.finish();
    e
}

fn steps(obj: Val<'_, '_>, meta: Meta) -> Steps {
    let mut extra = JsonObject::default();
    let mut s = Steps {
        meta,
        tst: None,
        steps: None,
        from: None,
        to: None,
        distance: None,
        floorsup: None,
        floorsdown: None,
        extra: None,
    };
    for (k, v) in fields(obj) {
        let x = &mut extra;
        match k {
            "tst" => s.tst = col(seconds(v), k, v, x),
            // -1: the device cannot count steps for that period.
            "steps" => s.steps = col(integer(v), k, v, x).filter(|n| *n >= 0),
            "from" => s.from = col(seconds(v), k, v, x),
            "to" => s.to = col(seconds(v), k, v, x),
            "distance" => s.distance = col(integer(v), k, v, x),
            "floorsup" => s.floorsup = col(integer(v), k, v, x),
            "floorsdown" => s.floorsdown = col(integer(v), k, v, x),
            _ if is_meta_key(k, v) => {}
            _ => x.push(k, v),
        }
    }
    s.extra = extra.finish();
    s
}

fn beacon(obj: Val<'_, '_>, meta: Meta) -> Beacon {
    let mut extra = JsonObject::default();
    let mut b = Beacon {
        meta,
        tst: None,
        uuid: None,
        major: None,
        minor: None,
        acc: None,
        rssi: None,
        prox: None,
        desc: None,
        extra: None,
    };
    for (k, v) in fields(obj) {
        let x = &mut extra;
        match k {
            "tst" => b.tst = col(seconds(v), k, v, x),
            "uuid" => b.uuid = col(string(v), k, v, x),
            "major" => b.major = col(int32(v), k, v, x),
            "minor" => b.minor = col(int32(v), k, v, x),
            "acc" => b.acc = col(int32(v), k, v, x),
            "rssi" => b.rssi = col(int32(v), k, v, x),
            "prox" => b.prox = col(int32(v), k, v, x),
            "desc" => b.desc = col(string(v), k, v, x),
            _ if is_meta_key(k, v) => {}
            _ => x.push(k, v),
        }
    }
    b.extra = extra.finish();
    b
}

fn configuration(obj: Val<'_, '_>, meta: Meta, out: &mut Vec<Record>) -> Result<(), DecodeError> {
    // Settings that do not parse are still in `config`; a column is only a
    // convenience, so there is no separate extra here.
    let mut ignored = JsonObject::default();
    let mut config = JsonObject::redacting();
    let mut c = Configuration {
        meta,
        mode: None,
        host: None,
        port: None,
        url: None,
        username: None,
        device_id: None,
        waypoints: 0,
        config: String::new(),
    };
    let first = out.len();
    for (k, v) in fields(obj) {
        let x = &mut ignored;
        match k {
            // `topic` is what iOS adds to every HTTP message: transport
            // metadata (the topic column), not a setting.
            "_type" => continue,
            "topic" if is_meta_key(k, v) => continue,
            "mode" => c.mode = col(int32(v), k, v, x),
            "host" => c.host = col(string(v), k, v, x),
            "port" => c.port = col(int32(v), k, v, x),
            "url" => c.url = v.as_str().map(|u| Text::from(strip_url_credentials(u))),
            "username" => c.username = col(string(v), k, v, x),
            "deviceId" => c.device_id = col(string(v), k, v, x),
            "waypoints" if !v.is_null() => c.waypoints = waypoint_list(v, &c.meta, &[], out)?,
            _ => {}
        }
        config.push(k, v);
    }
    c.config = config.finish_or_empty();
    // The configuration row first, then its waypoints.
    out.insert(first, Record::Configuration(c));
    Ok(())
}

fn command(obj: Val<'_, '_>, meta: Meta) -> Result<Command, DecodeError> {
    let mut extra = JsonObject::redacting();
    let mut action = None;
    let mut tst = None;
    for (k, v) in fields(obj) {
        match k {
            "action" => action = Some(v),
            "tst" => tst = col(seconds(v), k, v, &mut extra),
            _ if is_meta_key(k, v) => {}
            _ => extra.push(k, v),
        }
    }
    let action = action
        .filter(|v| !v.is_null())
        .ok_or_else(|| missing("action"))?;
    let action = action
        .as_str()
        .ok_or_else(|| wrong_type("action", "a string", action))?;
    Ok(Command {
        meta,
        action: Text::from(action),
        tst,
        extra: extra.finish(),
    })
}

fn unknown(kind: &str, obj: Val<'_, '_>, meta: Meta) -> Unknown {
    let mut extra = JsonObject::default();
    let mut tst = None;
    for (k, v) in fields(obj) {
        match k {
            "tst" => tst = col(seconds(v), k, v, &mut extra),
            _ if is_meta_key(k, v) => {}
            _ => extra.push(k, v),
        }
    }
    Unknown {
        meta,
        kind: Text::from(kind),
        tst,
        extra: extra.finish(),
    }
}

fn fields<'t, 'i>(obj: Val<'t, 'i>) -> tape::Fields<'t, 'i> {
    // Callers pass objects only (checked by the decoder); an empty iterator
    // is the safe answer for anything else.
    obj.as_object().unwrap_or_else(tape::Fields::empty)
}
