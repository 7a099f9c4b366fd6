//! Decoder behaviour, message by message, with exact expected records.

use std::sync::Arc;

use otstream_model::{IdentityHints, RawMessage, Record, Transport};

use crate::{DecodeConfig, DecodeError, Decoder, ErrorKind, KeyRing};

const RECEIVED: i64 = 1_700_000_000_000;

fn mqtt(topic: &str) -> IdentityHints {
    IdentityHints {
        mqtt_topic: Some(topic.into()),
        ..Default::default()
    }
}

fn http() -> IdentityHints {
    IdentityHints::default()
}

fn message(hints: IdentityHints, payload: &[u8]) -> RawMessage {
    let transport = if hints.mqtt_topic.is_some() {
        Transport::Mqtt
    } else {
        Transport::Http
    };
    RawMessage {
        received_at: RECEIVED,
        transport,
        hints,
        remote_addr: None,
        payload: payload.to_vec(),
    }
}

fn decoder() -> Decoder {
    let mut keys = KeyRing::new();
    keys.insert("greg", "s3cretkey");
    keys.insert("jane/phone", "123");
    Decoder::new(DecodeConfig::default(), Arc::new(keys))
}

fn decode_with(
    d: &mut Decoder,
    hints: IdentityHints,
    payload: &str,
) -> Result<Vec<String>, DecodeError> {
    let mut out = Vec::new();
    d.decode(&message(hints, payload.as_bytes()), &mut out)?;
    Ok(out.iter().map(Record::to_json).collect())
}

fn decode(hints: IdentityHints, payload: &str) -> Result<Vec<String>, DecodeError> {
    decode_with(&mut decoder(), hints, payload)
}

fn one(hints: IdentityHints, payload: &str) -> String {
    let mut v = decode(hints, payload).unwrap_or_else(|e| panic!("{payload}: {e}"));
    assert_eq!(v.len(), 1, "{v:?}");
    v.remove(0)
}

fn err(hints: IdentityHints, payload: &[u8]) -> DecodeError {
    let mut out = Vec::new();
    let e = decoder()
        .decode(&message(hints, payload), &mut out)
        .unwrap_err();
    assert!(out.is_empty());
    e
}

const J: &str = r#""user":"jane","device":"phone""#;
const M: &str = r#""received_at":1700000000000,"transport":"mqtt","topic":"owntracks/jane/phone""#;

#[test]
fn location_full_ios() {
    let got = one(
        mqtt("owntracks/jane/phone"),
        r#"{"_type":"location","acc":5,"alt":84,"batt":34,"bs":1,"cog":277,"conn":"m","lat":-25.762245,"lon":126.074502,"m":2,"p":100.477,"tid":"AA","t":"b","tst":1721896446,"vac":3,"vel":79}"#,
    );
    assert_eq!(
        got,
        format!(
            r#"{{"type":"position",{J},"tid":"AA",{M},"tst":1721896446,"lat":-25.762245,"lon":126.074502,"acc":5,"alt":84,"vac":3,"vel":79,"cog":277,"batt":34,"bs":1,"t":"b","conn":"m","p":100.477,"m":2}}"#
        )
    );
}

#[test]
fn location_android_extended_with_leaked_fields() {
    // Android's ParserTest fixture: alt 0.0 as float, _id, inregions.
    let got = one(
        mqtt("owntracks/jane/phone"),
        r#"{"_type":"location","tid":"s5","acc":1600,"alt":0.0,"batt":99,"bs":3,"cog":56,"conn":"w","_id":"inputTestId","lat":52.3153748,"lon":5.0408462,"t":"p","tst":1514455575,"vac":0,"inregions":["Testregion1","Testregion2"],"qos":1,"retained":true,"created_at":1709037052}"#,
    );
    assert_eq!(
        got,
        format!(
            r#"{{"type":"position",{J},"tid":"s5",{M},"tst":1514455575,"lat":52.3153748,"lon":5.0408462,"acc":1600,"alt":0,"vac":0,"cog":56,"batt":99,"bs":3,"t":"p","conn":"w","created_at":1709037052,"inregions":["Testregion1","Testregion2"],"extra":"{{\"_id\":\"inputTestId\",\"qos\":1,\"retained\":true}}"}}"#
        )
    );
}

#[test]
fn numbers_as_strings_are_parsed() {
    let got = one(
        http(),
        r#"{"_type":"location","lat":"48.85833","lon":"2.29513","tst":"1497476456","acc":"5","batt":"42","vel":"12","tid":"JJ"}"#,
    );
    assert_eq!(
        got,
        r#"{"type":"position","user":"_tid","device":"JJ","tid":"JJ","received_at":1700000000000,"transport":"http","tst":1497476456,"lat":48.85833,"lon":2.29513,"acc":5,"vel":12,"batt":42}"#
    );
}

#[test]
fn floats_in_integer_fields_are_truncated() {
    let got = one(
        http(),
        r#"{"_type":"location","lat":48.85833,"lon":2.29513,"tst":1497476456.0,"acc":4.7,"alt":167.10000610351562,"vel":5.6,"cog":271.5,"vac":1.7,"batt":41.0,"tid":"JJ"}"#,
    );
    assert!(
        got.contains(r#""tst":1497476456,"lat":48.85833,"lon":2.29513,"acc":4,"alt":167,"vac":1,"vel":5,"cog":271,"batt":41"#),
        "{got}"
    );
}

#[test]
fn minus_one_sentinels_mean_unknown() {
    let got = one(
        mqtt("owntracks/jjolie/phone"),
        r#"{"cog":-1,"batt":-1,"lon":2.29513,"acc":5,"vel":-1,"vac":-1,"lat":48.85833,"t":"u","tst":1441984413,"alt":-1,"_type":"location","tid":"JJ"}"#,
    );
    assert_eq!(
        got,
        r#"{"type":"position","user":"jjolie","device":"phone","tid":"JJ","received_at":1700000000000,"transport":"mqtt","topic":"owntracks/jjolie/phone","tst":1441984413,"lat":48.85833,"lon":2.29513,"acc":5,"t":"u"}"#
    );
}

#[test]
fn wifi_names_in_either_case() {
    let upper = one(
        http(),
        r#"{"_type":"location","lat":1,"lon":2,"tst":3,"tid":"aa","SSID":"Home","BSSID":"b0:f2:8:45:94:33"}"#,
    );
    let lower = one(
        http(),
        r#"{"_type":"location","lat":1,"lon":2,"tst":3,"tid":"aa","ssid":"Home","bssid":"b0:f2:8:45:94:33"}"#,
    );
    assert_eq!(upper, lower);
    assert!(
        upper.ends_with(r#""ssid":"Home","bssid":"b0:f2:8:45:94:33"}"#),
        "{upper}"
    );
}

#[test]
fn minimal_location_omits_absent_fields() {
    let got = one(
        mqtt("owntracks/jane/phone"),
        r#"{"_type":"location","lat":0,"lon":0,"tst":1}"#,
    );
    assert_eq!(
        got,
        format!(r#"{{"type":"position",{J},{M},"tst":1,"lat":0.0,"lon":0.0}}"#)
    );
}

#[test]
fn unusable_optional_values_are_kept_not_fatal() {
    for (batt, extra) in [
        ("true", r#"{\"batt\":true}"#),
        (
            r#"{"description":"the battery is empty"}"#,
            r#"{\"batt\":{\"description\":\"the battery is empty\"}}"#,
        ),
        ("[]", r#"{\"batt\":[]}"#),
    ] {
        let got = one(
            mqtt("owntracks/jane/phone"),
            &format!(
                r#"{{"_type":"location","tst":1707470410,"lat":51.4,"lon":8.3,"vel":100,"batt":{batt}}}"#
            ),
        );
        assert!(
            got.ends_with(&format!(r#""vel":100,"extra":"{extra}"}}"#)),
            "{got}"
        );
    }
    let got = one(
        mqtt("owntracks/jane/phone"),
        r#"{"_type":"location","tst":1707470410,"lat":51.4,"lon":8.3,"batt":null}"#,
    );
    assert!(!got.contains("batt") && !got.contains("extra"), "{got}");
}

#[test]
fn unknown_fields_are_kept_verbatim() {
    let got = one(
        mqtt("owntracks/jjolie/phone"),
        r#"{"_type":"location","lat":48.85833,"lon":3.29513,"tid":"JJ","tst":1495010110,"_geoprec":3,"addr":"Some place or other","cc":"JP","beverage":"tea","motionactivities":["stationary"],"image":"/9j/\u00e9"}"#,
    );
    assert!(
        got.ends_with(r#""extra":"{\"_geoprec\":3,\"addr\":\"Some place or other\",\"cc\":\"JP\",\"beverage\":\"tea\",\"motionactivities\":[\"stationary\"],\"image\":\"/9j/é\"}"}"#),
        "{got}"
    );
}

#[test]
fn milliseconds_become_seconds() {
    let got = one(
        http(),
        r#"{"_type":"location","lat":48.85833,"lon":2.29513,"tst":1497476456000,"tid":"JJ"}"#,
    );
    assert!(got.contains(r#""tst":1497476456,"#), "{got}");
}

#[test]
fn transition() {
    let got = one(
        mqtt("owntracks/username/device/event"),
        r#"{"_type":"transition","acc":3,"desc":"myregion","event":"leave","lat":52.71234,"lon":-1.61234123,"t":"l","tid":"ce","tst":1603209966,"wtst":1558351273,"rid":"f7676c","created_at":1701264373}"#,
    );
    assert_eq!(
        got,
        r#"{"type":"transition","user":"username","device":"device","tid":"ce","received_at":1700000000000,"transport":"mqtt","topic":"owntracks/username/device/event","tst":1603209966,"wtst":1558351273,"lat":52.71234,"lon":-1.61234123,"acc":3,"event":"leave","desc":"myregion","rid":"f7676c","t":"l","source":"device","extra":"{\"created_at\":1701264373}"}"#
    );
    let e = err(
        http(),
        br#"{"_type":"transition","lat":1,"lon":2,"tst":3,"tid":"x","event":"inside"}"#,
    );
    assert_eq!(
        (e.kind, e.field.as_deref()),
        (ErrorKind::InvalidValue, Some("event"))
    );
    assert_eq!(
        e.message,
        r#"field `event`: "inside" is neither "enter" nor "leave""#
    );
    let e = err(
        http(),
        br#"{"_type":"transition","lat":"61.19","lon":2,"tst":3,"tid":"x"}"#,
    );
    assert_eq!(
        (e.kind, e.field.as_deref()),
        (ErrorKind::MissingField, Some("event"))
    );
}

#[test]
fn waypoint_with_string_numbers() {
    let got = one(
        mqtt("owntracks/jane/phone/waypoint"),
        r#"{"_type":"waypoint","desc":"My favorite coffee shop (Delaville)","lat":48.87069,"lon":2.34916,"rad":"50","tst":"1385997757","rid":"f7676c","wtst":1610104395}"#,
    );
    assert_eq!(
        got,
        r#"{"type":"waypoint","user":"jane","device":"phone","received_at":1700000000000,"transport":"mqtt","topic":"owntracks/jane/phone/waypoint","tst":1385997757,"lat":48.87069,"lon":2.34916,"rad":50,"desc":"My favorite coffee shop (Delaville)","rid":"f7676c","extra":"{\"wtst\":1610104395}"}"#
    );
    // Valid per the OwnTracks schema: a waypoint with nothing but its type.
    let got = one(
        mqtt("owntracks/jane/phone/waypoint"),
        r#"{"_type":"waypoint"}"#,
    );
    assert_eq!(
        got,
        r#"{"type":"waypoint","user":"jane","device":"phone","received_at":1700000000000,"transport":"mqtt","topic":"owntracks/jane/phone/waypoint"}"#
    );
}

#[test]
fn waypoints_yield_one_record_each_with_inherited_fields() {
    let got = decode(
        mqtt("owntracks/greg/phone/waypoints"),
        r#"{"_type":"waypoints","_creator":"test","waypoints":[{"_type":"waypoint","tst":3,"lat":47,"lon":9,"rad":10,"desc":"exp_wayp1"},{"_type":"waypoint","tst":4,"lat":3,"lon":9,"rad":500,"desc":"exp_wayp2"}]}"#,
    )
    .unwrap();
    let m = r#""user":"greg","device":"phone","received_at":1700000000000,"transport":"mqtt","topic":"owntracks/greg/phone/waypoints""#;
    assert_eq!(
        got,
        [
            format!(
                r#"{{"type":"waypoint",{m},"tst":3,"lat":47.0,"lon":9.0,"rad":10,"desc":"exp_wayp1","extra":"{{\"_creator\":\"test\"}}"}}"#
            ),
            format!(
                r#"{{"type":"waypoint",{m},"tst":4,"lat":3.0,"lon":9.0,"rad":500,"desc":"exp_wayp2","extra":"{{\"_creator\":\"test\"}}"}}"#
            ),
        ]
    );
    let e = err(
        http(),
        br#"{"_type":"waypoints","tid":"x","waypoints":[{"lat":1},{"lat":91}]}"#,
    );
    assert_eq!(
        (e.kind, e.field.as_deref()),
        (ErrorKind::OutOfRange, Some("waypoints[1].lat"))
    );
    let e = err(
        http(),
        br#"{"_type":"waypoints","tid":"x","waypoints":[1]}"#,
    );
    assert_eq!(
        (e.kind, e.field.as_deref()),
        (ErrorKind::InvalidType, Some("waypoints[0]"))
    );
    assert_eq!(
        decode(http(), r#"{"_type":"waypoints","tid":"x","waypoints":[]}"#)
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn card() {
    let got = one(
        mqtt("owntracks/user/device/info"),
        r#"{"_type":"card","face":"iVBORw0KGgo=","name":"MyName!","tid":"overridden-topic"}"#,
    );
    assert_eq!(
        got,
        r#"{"type":"card","user":"user","device":"device","tid":"overridden-topic","received_at":1700000000000,"transport":"mqtt","topic":"owntracks/user/device/info","name":"MyName!","face":"iVBORw0KGgo="}"#
    );
}

#[test]
fn lwt_with_and_without_tst() {
    let base = r#"{"type":"device_event","user":"jane","device":"phone","received_at":1700000000000,"transport":"mqtt","topic":"owntracks/jane/phone","event":"lwt""#;
    assert_eq!(
        one(mqtt("owntracks/jane/phone"), r#"{"_type":"lwt"}"#),
        format!("{base}}}")
    );
    assert_eq!(
        one(
            mqtt("owntracks/jane/phone"),
            r#"{"tst":"1440363922","_type":"lwt"}"#
        ),
        format!(r#"{base},"tst":1440363922}}"#)
    );
}

#[test]
fn status_keeps_its_report() {
    let got = one(
        http(),
        r#"{"_type":"status","_id":"642b4ff4","android":{"hib":1,"bo":1,"flavour":"gms","loc":0,"ps":0,"version":420504022,"wifi":1},"topic":"owntracks/user1/user1/status"}"#,
    );
    assert_eq!(
        got,
        r#"{"type":"device_event","user":"user1","device":"user1","received_at":1700000000000,"transport":"http","topic":"owntracks/user1/user1/status","event":"status","extra":"{\"_id\":\"642b4ff4\",\"android\":{\"hib\":1,\"bo\":1,\"flavour\":\"gms\",\"loc\":0,\"ps\":0,\"version\":420504022,\"wifi\":1}}"}"#
    );
}

#[test]
fn steps_and_beacon() {
    let got = one(
        mqtt("owntracks/jane/phone/step"),
        r#"{"_type":"steps","distance":1234,"floorsdown":1,"floorsup":2,"from":1699920000,"steps":1500,"to":1700000000,"tst":1700000000}"#,
    );
    assert_eq!(
        got,
        r#"{"type":"steps","user":"jane","device":"phone","received_at":1700000000000,"transport":"mqtt","topic":"owntracks/jane/phone/step","tst":1700000000,"steps":1500,"from":1699920000,"to":1700000000,"distance":1234,"floorsup":2,"floorsdown":1}"#
    );
    let got = one(
        mqtt("owntracks/jane/phone/step"),
        r#"{"_type":"steps","from":1700002800,"steps":-1,"to":1700058960,"tst":1700058962}"#,
    );
    assert!(!got.contains(r#""steps":"#), "-1 steps is unknown: {got}");
    let got = one(
        mqtt("owntracks/jane/phone/beacon"),
        r#"{"_type":"beacon","acc":2,"desc":"Office","major":1,"minor":2,"prox":2,"rssi":-70,"tid":"jj","tst":1700000000,"uuid":"E2C56DB5-DFFB-48D2-B060-D0F5A71096E0"}"#,
    );
    assert_eq!(
        got,
        r#"{"type":"beacon","user":"jane","device":"phone","tid":"jj","received_at":1700000000000,"transport":"mqtt","topic":"owntracks/jane/phone/beacon","tst":1700000000,"uuid":"E2C56DB5-DFFB-48D2-B060-D0F5A71096E0","major":1,"minor":2,"acc":2,"rssi":-70,"prox":2,"desc":"Office"}"#
    );
}

#[test]
fn configuration_without_secrets_and_with_its_waypoints() {
    let got = decode(
        mqtt("owntracks/jane/phone/dump"),
        r#"{"_type":"configuration","auth":true,"username":"jjolie","password":"s1kr3t","host":"mybroker.example.org","port":8883,"deviceId":"phone","mode":0,"url":"https://jj:pw@h.example/pub","waypoints":[{"_type":"waypoint","desc":"work","lat":51.5,"lon":-0.02,"rad":150,"tst":1505910709000}],"encryptionKey":"k"}"#,
    )
    .unwrap();
    let m = r#""user":"jane","device":"phone","received_at":1700000000000,"transport":"mqtt","topic":"owntracks/jane/phone/dump""#;
    assert_eq!(
        got,
        [
            format!(
                r#"{{"type":"configuration",{m},"mode":0,"host":"mybroker.example.org","port":8883,"url":"https://h.example/pub","username":"jjolie","device_id":"phone","waypoints":1,"config":"{{\"auth\":true,\"username\":\"jjolie\",\"host\":\"mybroker.example.org\",\"port\":8883,\"deviceId\":\"phone\",\"mode\":0,\"url\":\"https://h.example/pub\",\"waypoints\":[{{\"_type\":\"waypoint\",\"desc\":\"work\",\"lat\":51.5,\"lon\":-0.02,\"rad\":150,\"tst\":1505910709000}}]}}"}}"#
            ),
            format!(
                r#"{{"type":"waypoint",{m},"tst":1505910709,"lat":51.5,"lon":-0.02,"rad":150,"desc":"work"}}"#
            ),
        ]
    );
    assert!(!got.concat().contains("s1kr3t") && !got.concat().contains(":pw@"));
}

#[test]
fn commands_are_stored_without_secrets() {
    let got = one(
        mqtt("owntracks/jane/phone/cmd"),
        r#"{"_type":"cmd","action":"setConfiguration","configuration":{"_type":"configuration","host":"newHost","password":"x"}}"#,
    );
    assert_eq!(
        got,
        r#"{"type":"command","user":"jane","device":"phone","received_at":1700000000000,"transport":"mqtt","topic":"owntracks/jane/phone/cmd","action":"setConfiguration","extra":"{\"configuration\":{\"_type\":\"configuration\",\"host\":\"newHost\"}}"}"#
    );
    let e = err(mqtt("owntracks/jane/phone/cmd"), br#"{"_type":"cmd"}"#);
    assert_eq!(
        (e.kind, e.field.as_deref()),
        (ErrorKind::MissingField, Some("action"))
    );
}

#[test]
fn unknown_types_are_stored_not_refused() {
    let got = one(
        mqtt("owntracks/greg/phone/unsupported"),
        r#"{"_type":"unsupported","tst":1}"#,
    );
    assert_eq!(
        got,
        r#"{"type":"unknown","user":"greg","device":"phone","received_at":1700000000000,"transport":"mqtt","topic":"owntracks/greg/phone/unsupported","kind":"unsupported","tst":1}"#
    );
    let got = one(
        mqtt("owntracks/jane/phone/request"),
        r#"{"_type":"request","request":"tours"}"#,
    );
    assert!(
        got.contains(r#""kind":"request","extra":"{\"request\":\"tours\"}""#),
        "{got}"
    );
}

#[test]
fn arrays_and_empty_bodies() {
    let got = decode(http(), r#"[{"_type":"location","lat":8,"lon":9,"tst":1000,"tid":"ab"},{"_type":"lwt","tst":1000,"tid":"ab"}]"#).unwrap();
    assert_eq!(got.len(), 2);
    assert!(
        got[0].starts_with(r#"{"type":"position""#)
            && got[1].starts_with(r#"{"type":"device_event""#)
    );
    for empty in ["", "\n\n", "[]", " \r\n"] {
        assert_eq!(
            decode(http(), empty).unwrap(),
            Vec::<String>::new(),
            "{empty:?}"
        );
    }
    let e = err(http(), br#"[{"_type":"lwt","tid":"a"},3]"#);
    assert_eq!(e.kind, ErrorKind::NotAnObject);
    assert_eq!(
        e.message,
        "array element 1: expected a JSON object, found a number"
    );
}

#[test]
fn bom_is_skipped() {
    let got = one(
        http(),
        "\u{feff}{\"_type\":\"location\",\"lat\":1.5,\"lon\":2.5,\"tst\":1700000000,\"tid\":\"aa\"}\r\n",
    );
    assert!(
        got.contains(r#""tst":1700000000,"lat":1.5,"lon":2.5"#),
        "{got}"
    );
}

#[test]
fn rejections_name_the_field_and_the_reason() {
    let cases: [(&[u8], ErrorKind, Option<&str>, &str); 12] = [
        (
            br#"{"_type":"location","lat":95.5,"lon":2,"tst":1,"tid":"x"}"#,
            ErrorKind::OutOfRange,
            Some("lat"),
            "field `lat`: 95.5 is outside -90..=90",
        ),
        (
            br#"{"_type":"location","lat":45,"lon":-180.5,"tst":1,"tid":"x"}"#,
            ErrorKind::OutOfRange,
            Some("lon"),
            "field `lon`: -180.5 is outside -180..=180",
        ),
        (
            br#"{"_type":"location","lon":2,"tst":1,"tid":"x"}"#,
            ErrorKind::MissingField,
            Some("lat"),
            "missing required field `lat`",
        ),
        (
            br#"{"_type":"location","lat":null,"lon":2,"tst":1,"tid":"x"}"#,
            ErrorKind::MissingField,
            Some("lat"),
            "missing required field `lat`",
        ),
        (
            br#"{"_type":"location","lat":1,"lon":2,"tid":"x"}"#,
            ErrorKind::MissingField,
            Some("tst"),
            "missing required field `tst`",
        ),
        (
            br#"{"_type":"location","lat":1,"lon":2,"tst":0,"tid":"x"}"#,
            ErrorKind::OutOfRange,
            Some("tst"),
            "field `tst`: 0 is not a time after 1970-01-01 (UNIX seconds)",
        ),
        (
            br#"{"_type":"location","lat":true,"lon":2,"tst":1,"tid":"x"}"#,
            ErrorKind::InvalidType,
            Some("lat"),
            "field `lat`: expected a number, found a boolean",
        ),
        (
            br#"{"some":"invalid message"}"#,
            ErrorKind::MissingType,
            Some("_type"),
            "missing `_type`: cannot tell what kind of message this is",
        ),
        (
            br#"{"_type":null,"tst":1}"#,
            ErrorKind::MissingType,
            Some("_type"),
            "missing `_type`: cannot tell what kind of message this is",
        ),
        (
            br#"{"_type":7}"#,
            ErrorKind::InvalidType,
            Some("_type"),
            "field `_type`: expected a string, found a number",
        ),
        (
            br#""""#,
            ErrorKind::NotAnObject,
            None,
            "expected a JSON object, found a string",
        ),
        (
            b"null",
            ErrorKind::NotAnObject,
            None,
            "expected a JSON object, found null",
        ),
    ];
    for (payload, kind, field, message) in cases {
        let e = err(http(), payload);
        assert_eq!(
            (e.kind, e.field.as_deref(), e.message.as_str()),
            (kind, field, message),
            "{}",
            String::from_utf8_lossy(payload)
        );
    }
}

#[test]
fn malformed_bytes_are_refused() {
    let e = err(http(), b"not json");
    assert_eq!(
        (e.kind, e.message.as_str()),
        (
            ErrorKind::InvalidJson,
            "payload is not valid JSON: unexpected 'n' at byte 0"
        )
    );
    let e = err(http(), br#"{"_type":"lwt""#);
    assert_eq!(
        e.message,
        "payload is not valid JSON: unexpected '\"' at byte 9"
    );
    assert_eq!(
        err(http(), b"--$this is bad json#--{\"_type\":\"lwt\"}").kind,
        ErrorKind::InvalidJson
    );
    assert_eq!(
        err(http(), b"{\"_type\":\"location\",\"lat\":xxx}").kind,
        ErrorKind::InvalidJson
    );
    let e = err(
        http(),
        b"{\"_type\":\"card\",\"name\":\"\xff\xfe\",\"tid\":\"a\"}",
    );
    assert_eq!(
        (e.kind, e.message.as_str()),
        (ErrorKind::InvalidUtf8, "payload is not valid UTF-8")
    );
    let deep = format!("{}{}", "[".repeat(40), "]".repeat(40));
    assert_eq!(err(http(), deep.as_bytes()).kind, ErrorKind::TooDeep);
    let big = format!(
        r#"{{"_type":"card","tid":"a","name":"{}"}}"#,
        "x".repeat(300 * 1024)
    );
    let e = err(http(), big.as_bytes());
    assert_eq!(e.kind, ErrorKind::TooLarge);
    assert_eq!(
        e.message,
        format!(
            "payload of {} bytes exceeds the limit of 262144 bytes",
            big.len()
        )
    );
}

#[test]
fn nesting_up_to_the_limit_is_accepted() {
    let mut d = Decoder::new(
        DecodeConfig {
            max_depth: 4,
            ..Default::default()
        },
        Arc::default(),
    );
    let ok = r#"{"_type":"cmd","tid":"a","action":"x","a":{"b":[1]}}"#;
    assert_eq!(decode_with(&mut d, http(), ok).unwrap().len(), 1);
    let too_deep = r#"{"_type":"cmd","tid":"a","action":"x","a":{"b":[{"c":[]}]}}"#;
    assert_eq!(
        decode_with(&mut d, http(), too_deep).unwrap_err().kind,
        ErrorKind::TooDeep
    );
    // The decoder is still usable after an error.
    assert_eq!(decode_with(&mut d, http(), ok).unwrap().len(), 1);
}

// Ciphertexts below were produced by PyNaCl (libsodium), not by our own
// sealing code: Home Assistant's test vector (key "s3cretkey") and the
// Android app's EncryptionProviderTest vector (key "123").
const HA_ENCRYPTED: &str = r#"{"_type":"encrypted","data":"9eos/tbvVxo80WpWQYhYdMfIcMeGTG6ilW64S1JNMKGoiihUKLh5hPbwvrAmra5KQZQiJHLJ9KvtnOvgKh0iBbL94wiRCdKZrGttdovJCEejEi5WnpRO0Q3EWhUS1mai6vvaOcUtXXr0nxmpLSlzU11EYUVeY5PFLwNnJ8cVe0MtD0fEwrkQry8zT8f3ndyB0SUwyKgJ0HLSYjuMZ21jvXjjx6R5A3Ue5ufn5kh2C1lOh2qmzxGUkPPMtvI6mD7nb0SwwOjrnEVMAKdFxIG3Siyx9PA="}"#;
const ANDROID_ENCRYPTED: &str = r#"{"_type":"encrypted","_id":"0571e18d","data":"aUiEKyGnskRz383od0mu4uqxTIxeZUddBVxKEmsdv1FFSH2y0NwqLP1tTqOmxaFhGv0bNX1DT7o81FW9Yaxpla6Byvr6CZV3t2skQv8nlxiIv1ZpQWM1bqHE0JFHwD3/yRx9bLHRF3j67kWcO6o2D/xn4ma8Fd4u86NPobFkRIzIhJljphEZyDCGugp7H3FkydGvgEkljb1/P1K91E/ij+m73wFplvTQm8ba5eWSFlQHDdY2B7QwbVPrKarHJLrm1+Y29+HD4Wg6TNhBJZLvdsmek6AcZLB+bq7Q84tUWoLrKp3aiyJZZX70q4HbVI3skkmDWMuMP2cDmsY9bvBjh1ZWAGlOq5VS1dWIlu6OWgWN9VdDbLzP+s2ykeFXrGs="}"#;

#[test]
fn encrypted_from_an_independent_implementation() {
    let got = one(mqtt("owntracks/greg/phone"), HA_ENCRYPTED);
    assert_eq!(
        got,
        r#"{"type":"position","user":"greg","device":"phone","tid":"user","received_at":1700000000000,"transport":"mqtt","topic":"owntracks/greg/phone","tst":1,"lat":45.0,"lon":90.0,"acc":60,"alt":27,"vac":4,"vel":0,"cog":248,"batt":92,"t":"u","p":101.3977584838867}"#
    );
    // The Android app's own ciphertext; the envelope's _id is not kept (the
    // plaintext carries its own).
    let got = one(mqtt("owntracks/jane/phone"), ANDROID_ENCRYPTED);
    assert_eq!(
        got,
        r#"{"type":"position","user":"jane","device":"phone","tid":"xa","received_at":1700000000000,"transport":"mqtt","topic":"owntracks/jane/phone","tst":1754215100,"lat":50.1182933,"lon":-5.5407733,"acc":5,"alt":5,"vac":0,"vel":0,"cog":0,"batt":100,"bs":0,"conn":"w","m":2,"ssid":"AndroidWifi","bssid":"00:13:10:85:fe:01","created_at":1754215100,"extra":"{\"_id\":\"0d871a61\"}"}"#
    );
}

#[test]
fn encrypted_failures_are_clear() {
    let e = err(mqtt("owntracks/bob/phone"), HA_ENCRYPTED.as_bytes());
    assert_eq!(
        (e.kind, e.message.as_str()),
        (
            ErrorKind::NoKey,
            "encrypted message from bob/phone, and no key is configured for it"
        )
    );
    // Right length, wrong key for greg's data: MAC verification fails.
    let mut keys = KeyRing::new();
    keys.insert("greg", "wrong-key");
    let mut d = Decoder::new(DecodeConfig::default(), Arc::new(keys));
    let e = decode_with(&mut d, mqtt("owntracks/greg/phone"), HA_ENCRYPTED).unwrap_err();
    assert_eq!(
        (e.kind, e.message.as_str()),
        (
            ErrorKind::DecryptFailed,
            "decryption failed: wrong key, or the data was altered"
        )
    );
    // One flipped bit.
    let tampered = HA_ENCRYPTED.replace("9eos/", "9eoS/");
    assert_eq!(
        err(mqtt("owntracks/greg/phone"), tampered.as_bytes()).kind,
        ErrorKind::DecryptFailed
    );
    // Shorter than nonce + MAC, and not base64 at all.
    let e = err(
        mqtt("owntracks/greg/phone"),
        br#"{"_type":"encrypted","data":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#,
    );
    assert_eq!(
        (e.kind, e.message.as_str()),
        (
            ErrorKind::BadCiphertext,
            "field `data`: 30 bytes is shorter than the 24-byte nonce and 16-byte MAC"
        )
    );
    assert_eq!(
        err(
            mqtt("owntracks/greg/phone"),
            br#"{"_type":"encrypted","data":"abcd!?&%"}"#
        )
        .kind,
        ErrorKind::BadCiphertext
    );
    assert_eq!(
        err(mqtt("owntracks/greg/phone"), br#"{"_type":"encrypted"}"#).kind,
        ErrorKind::MissingField
    );
}

#[test]
fn encrypted_inner_inherits_the_envelope_topic_and_nesting_is_refused() {
    let inner = r#"{"_type":"location","lat":1,"lon":2,"tst":3}"#;
    let data = crate::crypto::seal("123", &[9; 24], inner.as_bytes());
    let outer =
        format!(r#"{{"_type":"encrypted","topic":"owntracks/jane/phone","data":"{data}"}}"#);
    let got = one(http(), &outer);
    assert!(got.starts_with(r#"{"type":"position","user":"jane","device":"phone","received_at":1700000000000,"transport":"http","topic":"owntracks/jane/phone","tst":3"#), "{got}");
    let nested = crate::crypto::seal("123", &[1; 24], outer.as_bytes());
    let twice =
        format!(r#"{{"_type":"encrypted","topic":"owntracks/jane/phone","data":"{nested}"}}"#);
    assert_eq!(
        err(http(), twice.as_bytes()).kind,
        ErrorKind::NestedEncryption
    );
    // The zero-length "clear" plaintext yields no records.
    let clear = crate::crypto::seal("123", &[3; 24], b"");
    assert_eq!(
        decode(
            http(),
            &format!(r#"{{"_type":"encrypted","topic":"owntracks/jane/phone","data":"{clear}"}}"#)
        )
        .unwrap()
        .len(),
        0
    );
}

#[test]
fn identity_rules_apply_in_order() {
    let payload = r#"{"_type":"location","lat":1,"lon":2,"tst":3,"tid":"JJ"}"#;
    let who = |hints| {
        let r: serde_json::Value = serde_json::from_str(&one(hints, payload)).unwrap();
        format!(
            "{}/{}",
            r["user"].as_str().unwrap(),
            r["device"].as_str().unwrap()
        )
    };
    assert_eq!(who(mqtt("owntracks/a/b")), "a/b");
    let headers = IdentityHints {
        x_limit_u: Some("Paulus".into()),
        x_limit_d: Some("Pixel".into()),
        ..Default::default()
    };
    assert_eq!(who(headers), "Paulus/Pixel");
    assert_eq!(
        who(IdentityHints {
            auth_user: Some("op".into()),
            ..Default::default()
        }),
        "op/JJ"
    );
    assert_eq!(who(http()), "_tid/JJ");
    let with_topic = r#"{"_type":"location","lat":1,"lon":2,"tst":3,"tid":"JJ","topic":"owntracks/test/iPhone 12 Pro"}"#;
    assert!(one(http(), with_topic).contains(r#""user":"test","device":"iPhone 12 Pro""#));
    let e = err(mqtt("owntracks/short"), payload.as_bytes());
    assert_eq!(e.kind, ErrorKind::Identity);
}

#[test]
fn scratch_is_reused_across_messages_of_different_sizes() {
    let mut d = decoder();
    let small = r#"{"_type":"lwt","tid":"a"}"#;
    let big = format!(
        r#"{{"_type":"card","tid":"a","name":"{}"}}"#,
        "y".repeat(10_000)
    );
    for _ in 0..3 {
        assert_eq!(decode_with(&mut d, http(), small).unwrap().len(), 1);
        assert!(decode_with(&mut d, http(), &big).unwrap()[0].contains(&"y".repeat(10_000)));
    }
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Any bytes either decode or return an error; never a panic.
        #[test]
        fn any_bytes_decode_or_error(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut out = Vec::new();
            let _ = decoder().decode(&message(http(), &bytes), &mut out);
        }

        /// JSON-shaped inputs reach deeper code than random bytes do.
        #[test]
        fn any_json_object_decodes_or_errors(
            kind in prop_oneof![Just("location".to_owned()), Just("transition".to_owned()), Just("waypoints".to_owned()), Just("configuration".to_owned()), Just("cmd".to_owned()), Just("encrypted".to_owned()), "[a-z]{0,8}"],
            fields in proptest::collection::vec(("[a-zA-Z_]{1,8}", any_json()), 0..12),
        ) {
            let mut obj = serde_json::Map::new();
            obj.insert("_type".into(), kind.into());
            for (k, v) in fields { obj.insert(k, v); }
            let bytes = serde_json::to_vec(&obj).unwrap();
            let mut out = Vec::new();
            let _ = decoder().decode(&message(mqtt("owntracks/p/q"), &bytes), &mut out);
        }
    }

    fn any_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(Into::into),
            any::<i64>().prop_map(Into::into),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Into::into),
            "[ -~]{0,12}".prop_map(Into::into),
        ];
        leaf.prop_recursive(4, 24, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                proptest::collection::btree_map("[a-z_]{1,6}", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }
}

#[test]
fn authenticated_users_publish_only_as_themselves() {
    let as_jane = IdentityHints {
        auth_user: Some("jane".into()),
        ..Default::default()
    };
    let own = r#"{"_type":"location","lat":1,"lon":2,"tst":3,"topic":"owntracks/jane/phone"}"#;
    assert!(one(as_jane.clone(), own).contains(r#""user":"jane","device":"phone""#));
    let other = r#"{"_type":"location","lat":1,"lon":2,"tst":3,"topic":"owntracks/bob/phone"}"#;
    let e = err(as_jane, other.as_bytes());
    assert_eq!(
        (e.kind, e.message.as_str()),
        (
            ErrorKind::Forbidden,
            r#"user "jane" may not publish as "bob/phone""#
        )
    );
}

#[test]
fn registry_refuses_unknown_devices() {
    let config = DecodeConfig {
        registry: Some(["jane/phone".to_owned()].into()),
        ..Default::default()
    };
    let mut d = Decoder::new(config, Arc::default());
    let payload = r#"{"_type":"lwt"}"#;
    assert_eq!(
        decode_with(&mut d, mqtt("owntracks/jane/phone"), payload)
            .unwrap()
            .len(),
        1
    );
    let e = decode_with(&mut d, mqtt("owntracks/eve/phone"), payload).unwrap_err();
    assert_eq!(
        (e.kind, e.message.as_str()),
        (
            ErrorKind::UnknownDevice,
            r#"unknown device "eve/phone": not in the device registry"#
        )
    );
}

#[test]
fn a_message_with_no_identity_lands_under_the_default_and_bad_names_are_refused() {
    let bare = r#"{"_type":"location","lat":1,"lon":2,"tst":1}"#;
    // Recorder's rule, by default: owntracks/phone.
    assert!(one(http(), bare).contains(r#""user":"owntracks","device":"phone""#));
    // Without a default: refused, as before.
    let config = DecodeConfig {
        default_user: String::new(),
        default_device: String::new(),
        ..DecodeConfig::default()
    };
    let mut strict = Decoder::new(config, Arc::default());
    let e = strict
        .decode(&message(http(), bare.as_bytes()), &mut Vec::new())
        .unwrap_err();
    assert_eq!(
        (e.kind, e.message.as_str()),
        (
            ErrorKind::Identity,
            "no identity: no MQTT topic, no payload topic, no X-Limit-U header, no authenticated user and no tid"
        )
    );
    // A 200-byte user name, or a control character: 400 invalid_identity.
    let long = IdentityHints {
        x_limit_u: Some("u".repeat(200)),
        x_limit_d: Some("phone".into()),
        ..Default::default()
    };
    let e = err(long, bare.as_bytes());
    assert_eq!(
        (e.kind.code(), e.message.as_str()),
        (
            "invalid_identity",
            "the user name is 200 bytes long, at most 128"
        )
    );
    let e = err(mqtt("owntracks/jane/ph\none"), bare.as_bytes());
    assert_eq!(
        (e.kind.code(), e.message.as_str()),
        (
            "invalid_identity",
            "the device name has a control character"
        )
    );
    // The defaults are checked like any name.
    let bad = DecodeConfig {
        default_device: String::new(),
        ..DecodeConfig::default()
    };
    assert_eq!(
        bad.validate().unwrap_err().to_string(),
        "decode.default_user and decode.default_device are both set or both empty"
    );
}

/// The fast path against the general one: the same records, or the same
/// error, for location-shaped bodies of every kind the fast path reads and
/// declines.
mod fast_path {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    /// What a decoder made of a body: the records, or the error.
    fn outcome(d: &mut Decoder, hints: &IdentityHints, body: &str) -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        d.decode(&message(hints.clone(), body.as_bytes()), &mut out)
            .map(|_| out.iter().map(|r| format!("{r:?}")).collect())
            .map_err(|e| format!("{:?} {:?} {}", e.kind, e.field, e.message))
    }

    /// A value as the apps (and broken clients) write it.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => (-5i64..400).prop_map(|i| i.to_string()),
            1 => any::<i64>().prop_map(|i| i.to_string()),
            1 => prop_oneof![Just(i32::MAX as i64), Just(i32::MIN as i64), Just(i32::MAX as i64 + 1), Just(-1), Just(0), Just(1_709_283_789_000), Just(1_709_283_789_000_000)].prop_map(|i| i.to_string()),
            3 => (-180.0f64..180.0).prop_map(|f| f.to_string()),
            2 => "-?[0-9]{1,3}\\.[0-9]{1,19}",
            1 => prop_oneof![Just("-0"), Just("-0.0"), Just("0.0"), Just("1e2"), Just("5.6"), Just("1E-3"), Just("01"), Just("1."), Just(".5"), Just("-"), Just("12345678901234567890"), Just("1e400")].prop_map(str::to_owned),
            2 => "[ -~]{0,8}".prop_map(|s| serde_json::to_string(&s).unwrap_or_default()),
            1 => prop_oneof![Just(r#""é ü""#), Just(r#""a\"b""#), Just(r#""\u0041""#), Just("\"a\tb\""), Just(r#""42""#), Just(r#""p""#), Just(r#""w""#)].prop_map(str::to_owned),
            1 => prop_oneof![Just("null"), Just("true"), Just("false"), Just("[]"), Just(r#"["home"]"#), Just(r#"[ "a" , "b" ]"#), Just("[1]"), Just(r#"{"a":1}"#)].prop_map(str::to_owned),
        ]
    }

    /// A field: mostly a key with a value of its own type, sometimes any
    /// value at all.
    fn field() -> impl Strategy<Value = (&'static str, String)> {
        let key = prop::sample::select(vec![
            "acc",
            "alt",
            "vac",
            "vel",
            "cog",
            "batt",
            "bs",
            "m",
            "created_at",
            "t",
            "conn",
            "SSID",
            "ssid",
            "BSSID",
            "bssid",
            "topic",
            "tid",
            "p",
            "inregions",
            "inrids",
            "_id",
            "_http",
            "poi",
            "lat",
            "tst",
            "_type",
        ]);
        let typed = (key.clone(), (-5i64..400), "[ -~]{0,8}", -1000.0f64..1000.0).prop_map(
            |(k, i, s, f)| {
                let v = match k {
                    "t" | "conn" | "SSID" | "ssid" | "BSSID" | "bssid" | "topic" | "tid" => {
                        serde_json::to_string(&s).unwrap_or_default()
                    }
                    "p" => f.to_string(),
                    "inregions" | "inrids" => serde_json::to_string(&[s]).unwrap_or_default(),
                    "_http" => (i % 2 == 0).to_string(),
                    _ => i.to_string(),
                };
                (k, v)
            },
        );
        prop_oneof![8 => typed, 1 => (key, value())]
    }

    fn space() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["", "", "", " ", "\n\t ", "\r\n"])
    }

    /// A location-shaped body: mostly a good `_type`, `lat`, `lon` and
    /// `tst`, then fields drawn from the keys above, in any order.
    fn body() -> impl Strategy<Value = String> {
        let head = (
            prop_oneof![8 => Just("\"location\"".to_owned()), 1 => value()],
            prop_oneof![6 => (-90.0f64..90.0).prop_map(|f| f.to_string()), 1 => value()],
            prop_oneof![6 => (-180.0f64..180.0).prop_map(|f| f.to_string()), 1 => value()],
            prop_oneof![6 => (1i64..2_000_000_000).prop_map(|i| i.to_string()), 1 => value()],
        );
        let rest = proptest::collection::vec(field(), 0..6);
        (
            head,
            rest,
            proptest::collection::vec(space(), 64),
            any::<bool>(),
        )
            .prop_map(|((kind, lat, lon, tst), rest, spaces, trailing)| {
                let mut fields = vec![("_type", kind), ("lat", lat), ("lon", lon), ("tst", tst)];
                fields.extend(rest);
                let mut sp = spaces.into_iter().cycle();
                let mut s = format!("{}{{", sp.next().unwrap_or_default());
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        s.push(',');
                    }
                    let (a, b, c) = (sp.next(), sp.next(), sp.next());
                    let (a, b, c) = (
                        a.unwrap_or_default(),
                        b.unwrap_or_default(),
                        c.unwrap_or_default(),
                    );
                    s.push_str(&format!("{a}\"{k}\"{b}:{c}{v}"));
                }
                s.push('}');
                if trailing {
                    s.push_str(sp.next().unwrap_or_default());
                }
                s
            })
    }

    fn hints() -> impl Strategy<Value = IdentityHints> {
        prop_oneof![
            Just(http()),
            Just(mqtt("owntracks/jane/phone")),
            Just(IdentityHints {
                x_limit_u: Some("bob".into()),
                x_limit_d: Some("car".into()),
                ..Default::default()
            }),
            Just(IdentityHints {
                auth_user: Some("jane".into()),
                ..Default::default()
            }),
        ]
    }

    /// Both paths agree on every body, and the generated bodies exercise
    /// both: at least a quarter taken by the fast path, a quarter declined.
    #[test]
    fn the_fast_path_gives_what_the_general_path_gives() {
        // The runner's closure is `Fn`: the decoders and counts are cells.
        let fast = std::cell::RefCell::new(decoder());
        let general = std::cell::RefCell::new(decoder().general_only());
        let (taken, declined) = (std::cell::Cell::new(0u32), std::cell::Cell::new(0u32));
        let mut runner = TestRunner::new(Config {
            cases: 4000,
            ..Config::default()
        });
        runner
            .run(&(body(), hints()), |(body, hints)| {
                let want = outcome(&mut general.borrow_mut(), &hints, &body);
                let got = outcome(&mut fast.borrow_mut(), &hints, &body);
                prop_assert_eq!(&got, &want, "body {}", body);
                let trimmed = body.trim_matches([' ', '\t', '\n', '\r']).as_bytes();
                let counter = match crate::fast::location(
                    trimmed,
                    RECEIVED,
                    Transport::Http,
                    &mut Vec::new(),
                ) {
                    Some(_) => &taken,
                    None => &declined,
                };
                counter.set(counter.get() + 1);
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{e}"));
        let (taken, declined) = (taken.get(), declined.get());
        assert!(
            taken >= 1000 && declined >= 1000,
            "taken {taken}, declined {declined}"
        );
    }

    /// The apps' typical locations are all read by the fast path.
    #[test]
    fn the_apps_typical_locations_take_the_fast_path() {
        for body in [
            r#"{"_type":"location","BSSID":"b0:f2:8:45:94:33","SSID":"Home Wifi","acc":10,"alt":36,"batt":94,"bs":2,"cog":98,"conn":"w","created_at":1709283790,"lat":52.225314,"lon":13.332127,"m":1,"p":100.266,"t":"p","tid":"RO","tst":1709283789,"vac":4,"vel":5}"#,
            r#"{"_type":"location","acc":12,"alt":80,"batt":71,"bs":1,"conn":"w","created_at":1729344894,"lat":57.7133554,"lon":-5.6817552,"m":2,"tid":"01","tst":1729344893,"vac":3,"vel":0,"inregions":["home"],"topic":"owntracks/jane/phone"}"#,
            r#"{"_type":"location","_id":"82486537","acc":12,"lat":57.7,"lon":-5.6,"tst":1729344893,"_http":true,"poi":null}"#,
        ] {
            let mut out = Vec::new();
            let found = crate::fast::location(body.as_bytes(), RECEIVED, Transport::Http, &mut out);
            assert!(found.is_some() && out.len() == 1, "{body}");
        }
        // And the general path's rules hold on it: -1 unknown, ms to s.
        assert_eq!(
            one(
                mqtt("owntracks/jane/phone"),
                r#"{"_type":"location","lat":1.5,"lon":-2,"tst":1700000000123,"acc":-1,"alt":-1,"vel":7}"#
            ),
            format!(
                r#"{{"type":"position",{J},{M},"tst":1700000000,"lat":1.5,"lon":-2.0,"vel":7}}"#
            )
        );
    }
}
