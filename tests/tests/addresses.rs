//! Street addresses from an external geocoder: a real HTTP server on
//! loopback answering as Nominatim does (Nominatim itself needs a planet
//! import; its answers' shape is what matters here), behind serve with the
//! embedded store and with ClickHouse. Stops and trips' ends get their
//! address, each geohash cell is asked once ever (across a restart), a
//! 503 is retried, and requests keep to the rate limit.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use otstream_tests::receiver::{Receiver, Seen};
use otstream_tests::{Serve, ch_eventually, clickhouse_url, rows, unique_db, wait_until};

const HOME: (f64, f64) = (52.52, 13.40);
const M_PER_DEG_LAT: f64 = 111_195.08;

/// `m` metres east of home, or north with `north`.
fn away(m: f64, north: bool) -> (f64, f64) {
    if north {
        (HOME.0 + m / M_PER_DEG_LAT, HOME.1)
    } else {
        (
            HOME.0,
            HOME.1 + m / (M_PER_DEG_LAT * HOME.0.to_radians().cos()),
        )
    }
}

/// What the stand-in Nominatim answers: an address at home and at the
/// customer 3 km east, nothing elsewhere (its "Unable to geocode").
fn nominatim(target: &str) -> String {
    let arg = |k: &str| {
        target
            .split(['?', '&'])
            .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    let (lat, lon) = (arg("lat"), arg("lon"));
    let near = |(a, b): (f64, f64)| (lat - a).abs() < 0.001 && (lon - b).abs() < 0.001;
    if near(HOME) {
        r#"{"place_id":1,"display_name":"1, Depotstraße, Mitte, Berlin, 10117, Deutschland"}"#
            .into()
    } else if near(away(3000.0, false)) {
        r#"{"place_id":2,"display_name":"7, Kundenweg, Friedrichshain, Berlin, 10243, Deutschland"}"#
            .into()
    } else {
        r#"{"error":"Unable to geocode"}"#.into()
    }
}

const DEPOT: &str = "1, Depotstraße, Mitte, Berlin, 10117, Deutschland";
const CUSTOMER: &str = "7, Kundenweg, Friedrichshain, Berlin, 10243, Deutschland";

/// A day's round: ten minutes at home, 3 km out (east, or north), five
/// minutes there, back, and five minutes at home again.
fn round(t0: i64, north: bool) -> Vec<(i64, (f64, f64))> {
    let mut out = Vec::new();
    let mut t = t0;
    for _ in 0..=10 {
        out.push((t, HOME));
        t += 60;
    }
    t -= 60;
    for i in 1..=12 {
        t += 15;
        out.push((t, away(f64::from(i) * 250.0, north)));
    }
    for _ in 0..5 {
        t += 60;
        out.push((t, away(3000.0, north)));
    }
    for i in (0..12).rev() {
        t += 15;
        out.push((t, away(f64::from(i) * 250.0, north)));
    }
    for _ in 0..5 {
        t += 60;
        out.push((t, HOME));
    }
    out
}

fn post_round(serve: &Serve, device: &str, t0: i64, north: bool) {
    for (tst, (lat, lon)) in round(t0, north) {
        let moving = (lat, lon) != HOME && (lat, lon) != away(3000.0, north);
        let vel = if moving { 60 } else { 0 };
        let body = format!(
            r#"{{"_type":"location","lat":{lat},"lon":{lon},"tst":{tst},"tid":"vn","acc":8,"vel":{vel}}}"#
        );
        let a = serve.post(
            "/pub",
            &[("X-Limit-U", "fleet"), ("X-Limit-D", device)],
            body.as_bytes(),
        );
        assert_eq!(a.status, 200, "{}", a.body);
    }
}

fn config(dir: &std::path::Path, port: u16) -> std::path::PathBuf {
    let path = dir.join("otstream.toml");
    std::fs::write(
        &path,
        format!(
            r#"[geocode.addresses]
url = "http://127.0.0.1:{port}"
provider = "nominatim"
per_second = 2
interval_s = 1
"#
        ),
    )
    .unwrap();
    path
}

#[test]
fn stops_and_trip_ends_get_addresses_each_cell_asked_once_within_the_rate() {
    let dir = tempfile::tempdir().unwrap();
    let seen = Arc::new(Mutex::new(Seen {
        fail_next: 1,
        respond: Some(nominatim),
        ..Seen::default()
    }));
    let _geocoder = Receiver::start(0, seen.clone()).unwrap();
    let config = config(dir.path(), _geocoder.port);
    let data = dir.path().join("data");
    let args = ["--config", config.to_str().unwrap()];
    let serve = Serve::start(&data, &args, &[]).unwrap();
    let t0 = otstream_model::raw::now_ms() / 1000 - 6 * 3600;
    // Two vans on the same round: the second's stops are in the cells the
    // first's were asked for.
    post_round(&serve, "van1", t0, false);
    post_round(&serve, "van2", t0 + 3600, false);
    let stops = "SELECT device, start - {t0}, address FROM stops ORDER BY device, start";
    let stops = stops.replace("{t0}", &t0.to_string());
    let trips = format!(
        "SELECT device, start - {t0}, start_address, end_address FROM trips ORDER BY device, start"
    );
    let addressed = |sql: &str| {
        let db = serve.db();
        rows(&db, sql).iter().all(|r| !r.contains("NULL"))
    };
    wait_until(
        "every stop and trip end addressed",
        Duration::from_secs(30),
        || addressed(&stops) && addressed(&trips),
    );
    let db = serve.db();
    assert_eq!(
        rows(&db, &stops),
        [
            format!("van1|0|{DEPOT}"),
            format!("van1|780|{CUSTOMER}"),
            format!("van2|3600|{DEPOT}"),
            format!("van2|4380|{CUSTOMER}"),
        ]
    );
    assert_eq!(
        rows(&db, &trips),
        [
            format!("van1|600|{DEPOT}|{CUSTOMER}"),
            format!("van1|1080|{CUSTOMER}|{DEPOT}"),
            format!("van2|4200|{DEPOT}|{CUSTOMER}"),
            format!("van2|4680|{CUSTOMER}|{DEPOT}"),
        ]
    );
    assert_eq!(
        rows(
            &db,
            "SELECT length(cell), address FROM addresses ORDER BY address"
        ),
        [format!("8|{DEPOT}"), format!("8|{CUSTOMER}")]
    );
    // One 503 (retried), then one request per cell; at most 2 a second.
    let requests = seen.lock().unwrap().requests.clone();
    assert_eq!(
        requests.iter().map(|r| r.accepted).collect::<Vec<_>>(),
        [false, true, true],
        "{requests:?}"
    );
    assert!(
        requests
            .iter()
            .all(|r| r.target.starts_with("/reverse?format=jsonv2&lat="))
    );
    for w in requests.windows(2) {
        let gap = w[1].at - w[0].at;
        assert!(
            gap >= Duration::from_millis(490),
            "{gap:?} between requests"
        );
    }

    // Restarted, a third van goes north to a field nobody has an address
    // for: its home is answered from the cache, the field asked once.
    serve.kill();
    let serve = Serve::start(&data, &args, &[]).unwrap();
    post_round(&serve, "van3", t0 + 7200, true);
    let van3 =
        format!("SELECT start - {t0}, address FROM stops WHERE device = 'van3' ORDER BY start");
    wait_until("van3's stops addressed", Duration::from_secs(30), || {
        let got = rows(&serve.db(), &van3);
        got.len() == 2
            && got
                .iter()
                .all(|r| r.matches('|').count() == 1 && !r.ends_with("|NULL"))
            && rows(
                &serve.db(),
                "SELECT count(*) FROM stops WHERE address IS NULL",
            ) == ["0"]
    });
    assert_eq!(
        rows(&serve.db(), &van3),
        [format!("7200|{DEPOT}"), "7980|".to_owned()]
    );
    let asked: Vec<bool> = seen
        .lock()
        .unwrap()
        .requests
        .iter()
        .map(|r| r.accepted)
        .collect();
    assert_eq!(
        asked,
        [false, true, true, true],
        "the field alone was asked"
    );
    assert_eq!(
        rows(
            &serve.db(),
            "SELECT count(*) FROM addresses WHERE address = ''"
        ),
        ["1"]
    );
}

/// With ClickHouse as the store: the rows are written again with their
/// address, one version newer, and `FINAL` reads them addressed.
#[test]
fn clickhouse_stops_and_trips_get_addresses() {
    let url = clickhouse_url();
    let db = unique_db("addr");
    let dir = tempfile::tempdir().unwrap();
    let seen = Arc::new(Mutex::new(Seen {
        respond: Some(nominatim),
        ..Seen::default()
    }));
    let geocoder = Receiver::start(0, seen.clone()).unwrap();
    let config = config(dir.path(), geocoder.port);
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--clickhouse-url",
        url.as_str(),
    ];
    let env = [
        ("OTSTREAM_CLICKHOUSE__DATABASE", db.as_str()),
        ("OTSTREAM_CLICKHOUSE__PERIOD_MS", "20"),
    ];
    let serve = Serve::start(dir.path(), &args, &env).unwrap();
    let t0 = otstream_model::raw::now_ms() / 1000 - 6 * 3600;
    post_round(&serve, "van1", t0, false);
    serve.wait_shipped();
    ch_eventually(
        &url,
        &db,
        &format!("SELECT toInt64(start) - {t0}, address, points FROM stops FINAL ORDER BY start"),
        &[format!("0\t{DEPOT}\t11"), format!("780\t{CUSTOMER}\t6")],
        30,
    );
    ch_eventually(
        &url,
        &db,
        &format!(
            "SELECT toInt64(start) - {t0}, start_address, end_address, points FROM trips FINAL ORDER BY start"
        ),
        &[
            format!("600\t{DEPOT}\t{CUSTOMER}\t13"),
            format!("1080\t{CUSTOMER}\t{DEPOT}\t13"),
        ],
        30,
    );
    ch_eventually(
        &url,
        &db,
        "SELECT length(cell), address FROM addresses FINAL ORDER BY address",
        &[format!("8\t{DEPOT}"), format!("8\t{CUSTOMER}")],
        30,
    );
    assert_eq!(seen.lock().unwrap().requests.len(), 2);
}
