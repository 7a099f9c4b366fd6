//! Benchmark inputs: realistic messages as the apps send them.

use otstream_model::{IdentityHints, RawMessage, Transport};

/// A typical iOS location over MQTT, extended data on: 250 bytes.
pub const LOCATION: &str = r#"{"_type":"location","BSSID":"b0:f2:8:45:94:33","SSID":"Home Wifi","acc":10,"alt":36,"batt":94,"bs":2,"cog":98,"conn":"w","created_at":1709283790,"lat":52.225314,"lon":13.332127,"m":1,"p":100.266,"t":"p","tid":"RO","tst":1709283789,"vac":4,"vel":5}"#;

/// An Android location: fewer fields, leaked `_id`.
pub const LOCATION_ANDROID: &str = r#"{"_type":"location","_id":"82486537","acc":12,"alt":80,"batt":71,"bs":1,"conn":"w","created_at":1729344894,"lat":57.7133554,"lon":-5.6817552,"m":2,"tid":"01","tst":1729344893,"vac":3,"vel":0}"#;

/// A region transition.
pub const TRANSITION: &str = r#"{"_type":"transition","acc":10,"desc":"Home","event":"enter","lat":51.123456,"lon":6.654321,"rid":"6da9cf","t":"c","tid":"jj","tst":1700000000,"wtst":1690000000}"#;

/// An lwt as the broker publishes it.
pub const LWT: &str = r#"{"_type":"lwt","tst":1700000000}"#;

/// A card with a 2 KB face (base64 PNG).
pub fn card() -> String {
    let face: String = "iVBORw0KGgoAAAANSUhEUgAAACgAAAAoCAYAAACM/rhtAAABIElEQVRYhe2XsQ2D"
        .chars()
        .cycle()
        .take(2048)
        .collect();
    format!(r#"{{"_type":"card","name":"Jane Jolie","face":"{face}","tid":"JJ"}}"#)
}

/// A message as the MQTT ingress would hand it over.
pub fn mqtt(payload: &str) -> RawMessage {
    RawMessage {
        received_at: 1_709_283_790_123,
        transport: Transport::Mqtt,
        hints: IdentityHints {
            mqtt_topic: Some("owntracks/jane/phone".to_owned()),
            ..Default::default()
        },
        remote_addr: None,
        payload: payload.as_bytes().to_vec(),
    }
}

/// A realistic stream of 100 messages: 85 locations (iOS and Android field
/// sets), 8 transitions, 4 lwts, 3 cards.
pub fn mixed() -> Vec<RawMessage> {
    let card = card();
    (0..100)
        .map(|i| match i % 25 {
            0 | 12 => mqtt(TRANSITION),
            6 => mqtt(LWT),
            18 if i < 75 => mqtt(&card),
            n if n % 2 == 0 => mqtt(LOCATION_ANDROID),
            _ => mqtt(LOCATION),
        })
        .collect()
}
