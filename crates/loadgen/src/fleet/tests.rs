use super::*;

fn body(m: &RawMessage) -> Value {
    serde_json::from_slice(&m.payload).unwrap()
}

#[test]
fn same_config_same_messages_in_time_order() {
    let config = FleetConfig {
        devices: 20,
        messages: 5_000,
        ..Default::default()
    };
    let a: Vec<_> = Fleet::new(config.clone()).collect();
    let b: Vec<_> = Fleet::new(config).collect();
    assert_eq!(a.len(), 5_000);
    assert_eq!(a, b);
    assert!(
        a.windows(2)
            .all(|w| w[0].received_at / 1000 <= w[1].received_at / 1000)
    );
}

#[test]
fn the_mix_real_apps_send() {
    let config = FleetConfig {
        devices: 40,
        messages: 60_000,
        transport: Transport::Mqtt,
        ..Default::default()
    };
    let all: Vec<_> = Fleet::new(config).collect();
    let kind = |m: &RawMessage| body(m)["_type"].as_str().unwrap().to_owned();
    let count = |k: &str| all.iter().filter(|m| kind(m) == k).count();
    assert_eq!(count("card"), 40, "one card per device");
    assert!(count("transition") > 40, "devices leave and reach home");
    assert!(count("lwt") >= 1);
    assert!(count("location") > 50_000);
    // Each card on /info, each transition on /event, with the device's name.
    for m in &all {
        let topic = m.hints.mqtt_topic.as_deref().unwrap();
        match kind(m).as_str() {
            "card" => assert!(topic.ends_with("/info"), "{topic}"),
            "transition" => assert!(topic.ends_with("/event"), "{topic}"),
            _ => assert_eq!(topic.split('/').count(), 3, "{topic}"),
        }
    }
    // iOS sends its topic and pressure; Android does not.
    let loc = |device: &str| {
        all.iter()
            .find(|m| kind(m) == "location" && m.hints.mqtt_topic.as_deref() == Some(device))
            .map(body)
            .unwrap()
    };
    let ios = loc("owntracks/fleet/d00001");
    assert_eq!(ios["topic"], "owntracks/fleet/d00001");
    assert!(ios["p"].is_number());
    let android = loc("owntracks/fleet/d00000");
    assert!(android.get("topic").is_none() && android.get("p").is_none());
    // Drivers and walkers both: speeds over 25 km/h and under 7.
    let speeds: Vec<i64> = all
        .iter()
        .filter(|m| kind(m) == "location")
        .map(|m| body(m)["vel"].as_i64().unwrap())
        .collect();
    assert!(speeds.iter().any(|&v| v > 25) && speeds.iter().any(|&v| (1..7).contains(&v)));
}

#[test]
fn phones_send_noise_and_outliers_and_the_truth_is_kept() {
    let config = FleetConfig {
        devices: 10,
        messages: u64::MAX,
        duration_s: Some(6 * 3600),
        phones: true,
        ..Default::default()
    };
    let mut fleet = Fleet::new(config.clone());
    let all: Vec<_> = fleet.by_ref().collect();
    let again: Vec<_> = Fleet::new(config).collect();
    assert_eq!(all, again, "deterministic");
    let fixes: Vec<Value> = all
        .iter()
        .map(body)
        .filter(|b| b["_type"] == "location")
        .collect();
    let acc = |b: &Value| b["acc"].as_i64().unwrap();
    // Cell fixes, and Wi-Fi fixes claiming 50 to 80 m, among GPS ones.
    assert!(fixes.iter().any(|b| acc(b) >= 1000));
    assert!(fixes.iter().any(|b| (50..80).contains(&acc(b))));
    assert!(fixes.iter().filter(|b| acc(b) < 16).count() > fixes.len() / 2);
    // Every trip ended within the run, and none is shorter than a
    // destination can be near; every way of moving is there.
    let last = config_start() + 6 * 3600;
    let truth = fleet.truth();
    assert!(truth.len() >= 30, "{}", truth.len());
    for t in truth {
        assert!(t.start < t.end && t.end < last, "{t:?}");
        assert!(t.distance_m >= 300.0, "{t:?}");
    }
    let all_kinds = [Kind::Walk, Kind::Cycle, Kind::Drive, Kind::Transit];
    assert!(all_kinds.iter().all(|k| truth.iter().any(|t| t.kind == *k)));
}

fn config_start() -> i64 {
    FleetConfig::default().start_ms / 1000
}

#[test]
fn tracks_are_continuous() {
    let config = FleetConfig {
        devices: 5,
        messages: 3_000,
        ..Default::default()
    };
    let mut last: std::collections::HashMap<String, (i64, Point)> = Default::default();
    for m in Fleet::new(config) {
        let b = body(&m);
        if b["_type"] != "location" {
            continue;
        }
        let p = Point::new(b["lon"].as_f64().unwrap(), b["lat"].as_f64().unwrap());
        let tst = b["tst"].as_i64().unwrap();
        let dev = m.hints.x_limit_d.clone().unwrap();
        if let Some((t0, p0)) = last.insert(dev, (tst, p)) {
            assert!(tst > t0, "tst strictly increases per device");
            // No jumps: at most 25 m/s (90 km/h) since the last fix.
            let speed = Haversine.distance(p0, p) / (tst - t0) as f64;
            assert!(speed <= 25.5, "{speed} m/s");
        }
    }
}
