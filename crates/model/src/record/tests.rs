use super::*;

#[test]
fn has_key_agrees_with_key() {
    let state = |user: &str, device: &str| {
        Record::State(StateSnapshot {
            user: user.into(),
            device: device.into(),
            kind: "geofence".into(),
            state: String::new(),
            updated_at: 0,
        })
    };
    let r = state("jane", "phone");
    assert_eq!(r.key(), "jane/phone");
    assert!(r.has_key("jane/phone"));
    for other in [
        "jane/phon",
        "jane/phones",
        "janephone",
        "jane:phone",
        "jan/ephone",
        "",
        "/",
    ] {
        assert!(!r.has_key(other), "{other}");
    }
    // A slash inside a name: only the exact split is the key.
    let r = state("a/b", "c");
    assert!(r.has_key("a/b/c"));
    assert!(!state("a", "b/c").has_key("a/b/d"));
    assert!(state("", "").has_key("/"));
}

#[test]
fn json_form_is_tagged_flat_and_omits_absent_fields() {
    let r = Record::DeviceEvent(DeviceEvent {
        meta: Meta {
            user: "jane".into(),
            device: "phone".into(),
            tid: None,
            received_at: 5,
            transport: Transport::Mqtt,
            topic: Some("owntracks/jane/phone".into()),
        },
        event: "lwt".into(),
        tst: None,
        extra: None,
    });
    let json = r.to_json();
    assert_eq!(
        json,
        r#"{"type":"device_event","user":"jane","device":"phone","received_at":5,"transport":"mqtt","topic":"owntracks/jane/phone","event":"lwt"}"#
    );
    assert_eq!(serde_json::from_str::<Record>(&json).unwrap(), r);
    assert_eq!(r.type_name(), "device_event");
}
