//! Any bytes, over HTTP or MQTT, with or without a key: the decoder returns
//! records or an error, and never panics, overflows or reads out of bounds.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use otstream_decode::{DecodeConfig, Decoder, KeyRing};
use otstream_model::{IdentityHints, RawMessage, Transport};

fn keys() -> Arc<KeyRing> {
    static KEYS: OnceLock<Arc<KeyRing>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut k = KeyRing::new();
        k.insert("*", "fuzz");
        Arc::new(k)
    })
    .clone()
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the transport, so both identity paths are reached.
    let (mode, payload) = data.split_first().map_or((0, data), |(m, p)| (*m, p));
    let hints = if mode & 1 == 0 {
        IdentityHints { mqtt_topic: Some("owntracks/fuzz/dev".into()), ..Default::default() }
    } else {
        IdentityHints { x_limit_u: Some("fuzz".into()), ..Default::default() }
    };
    let msg = RawMessage {
        received_at: 1,
        transport: if mode & 1 == 0 { Transport::Mqtt } else { Transport::Http },
        hints,
        remote_addr: None,
        payload: payload.to_vec(),
    };
    let mut decoder = Decoder::new(DecodeConfig { max_depth: 16, ..Default::default() }, keys());
    let mut out = Vec::new();
    if decoder.decode(&msg, &mut out).is_ok() {
        for r in &out {
            // Serializing what was decoded must not fail either.
            assert!(!r.to_json().is_empty());
        }
    }
});
