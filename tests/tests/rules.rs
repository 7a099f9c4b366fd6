//! Rules through the real binary: a van's morning (a depot, a fast road, a
//! customer) against a rules file of every per-device kind, with a SIGKILL
//! in the middle of a run above the speed limit and a broken rules file
//! written while serving; then `otstream rules test` over the same store
//! must give the same rule events the live pipeline stored.

use std::collections::BTreeSet;

use otstream_tests::{Serve, rows, run};

/// The van reaches the customer at T0 + 779: Friday 2026-12-04, 08:00:00
/// in Berlin (07:00:00Z), the second a weekday schedule opens.
const T0: i64 = 1_796_366_821;
const HOME: (f64, f64) = (52.52, 13.40);
const M_PER_DEG_LAT: f64 = 111_195.08;
const DEVICE: [(&str, &str); 2] = [("X-Limit-U", "fleet"), ("X-Limit-D", "van1")];

fn east(m: f64) -> (f64, f64) {
    (
        HOME.0,
        HOME.1 + m / (M_PER_DEG_LAT * HOME.0.to_radians().cos()),
    )
}

/// A 150 m depot at home, a 200 m customer 3 km east.
fn fence_file() -> String {
    let (lat, lon) = east(3000.0);
    format!(
        r#"{{"type":"FeatureCollection","features":[
{{"type":"Feature","properties":{{"id":"depot","name":"Depot","radius":150}},"geometry":{{"type":"Point","coordinates":[{},{}]}}}},
{{"type":"Feature","properties":{{"id":"customer","name":"Customer","radius":200}},"geometry":{{"type":"Point","coordinates":[{lon},{lat}]}}}}]}}"#,
        HOME.1, HOME.0
    )
}

const RULES: &str = r#"
[[rules]]
name = "depot-5"
kind = "dwell"
min_s = 300
fences = ["Depot"]

[[rules]]
name = "depot-10"            # the van leaves after 599 s: one second short
kind = "dwell"
min_s = 600
fences = ["Depot"]

[[rules]]
name = "fast"
kind = "overspeed"
max_kmh = 90
min_s = 30

[[rules]]
name = "idle-10"
kind = "idle"
min_s = 600
devices = ["fleet/van1"]

[[rules]]
name = "customer-hours"
kind = "enter"
fences = ["Customer"]
schedule = { days = ["mon", "tue", "wed", "thu", "fri"], from = "08:00", to = "18:00", tz = "Europe/Berlin" }

[[rules]]
name = "customer-night"
kind = "enter"
fences = ["Customer"]
schedule = { from = "18:00", to = "08:00", tz = "Europe/Berlin" }

[[rules]]
name = "van2-dwell"
kind = "dwell"
min_s = 60
devices = ["fleet/van2"]

[[rules]]
name = "night-in"            # Saturday night, past midnight, over the end of summer time
kind = "enter"
fences = ["Depot"]
devices = ["fleet/van2"]
schedule = { days = ["sat"], from = "22:00", to = "02:30", tz = "Europe/Berlin" }
"#;

/// The night of Saturday 2026-10-24 in Berlin, when summer time ends
/// (03:00 CEST is 02:00 CET, at 01:00Z), and van2's entries into the
/// depot, each 30 s after a fix a kilometre away: 21:59 CEST (not yet),
/// 22:00:00 CEST (the schedule opens), 02:29 CEST (Sunday, still
/// Saturday's period), 02:30:00 CEST (closed), 02:15 CET (the hour again:
/// open by the wall clock), 02:30 CET (closed). The second-exact edges are
/// the unit tests' (`rules::tests`).
const NIGHT: [i64; 6] = [
    1_792_871_940,
    1_792_872_000,
    1_792_888_140,
    1_792_888_200,
    1_792_890_900,
    1_792_891_800,
];

/// `(tst, (lat, lon), vel)`: ten minutes less a second at the depot, three
/// kilometres east at 100 km/h (by `vel`; 60 km/h by distance), sixteen
/// minutes at the customer, and away.
fn track() -> Vec<(i64, (f64, f64), i32)> {
    let mut out: Vec<(i64, (f64, f64), i32)> = (0..10).map(|k| (T0 + 60 * k, HOME, 0)).collect();
    out.push((T0 + 599, HOME, 0));
    for i in 1..=12 {
        let vel = if i == 12 { 0 } else { 100 };
        out.push((T0 + 599 + 15 * i, east(250.0 * i as f64), vel));
    }
    for j in 1..=16 {
        out.push((T0 + 779 + 60 * j, east(3000.0), 0));
    }
    for i in 1..=3 {
        out.push((T0 + 1739 + 15 * i, east(3000.0 - 250.0 * i as f64), 60));
    }
    out
}

fn post(serve: &Serve, fixes: &[(i64, (f64, f64), i32)]) {
    post_as(serve, &DEVICE, fixes);
}

fn post_as(serve: &Serve, device: &[(&str, &str)], fixes: &[(i64, (f64, f64), i32)]) {
    for (t, (lat, lon), vel) in fixes {
        let body = format!(
            r#"{{"_type":"location","lat":{lat},"lon":{lon},"tst":{t},"tid":"vn","acc":8,"vel":{vel}}}"#
        );
        let a = serve.post("/pub", device, body.as_bytes());
        assert_eq!(a.status, 200, "{}\n{}", a.body, serve.log());
    }
}

/// The ids `otstream rules test --ndjson` prints for `args`, in its order.
fn backtest_ids(args: &[&str]) -> Vec<String> {
    let mut all = vec!["rules", "test", "--ndjson"];
    all.extend_from_slice(args);
    let out = run(&all, b"").unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[test]
fn every_rule_kind_fires_exactly_through_a_crash_and_a_bad_reload_and_the_back_test_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let fences = dir.path().join("fences.geojson");
    let rules = dir.path().join("rules.toml");
    let live_rules = dir.path().join("live-rules.toml");
    std::fs::write(&fences, fence_file()).unwrap();
    std::fs::write(&rules, RULES).unwrap();
    std::fs::write(&live_rules, RULES).unwrap();
    let data = dir.path().join("data");
    let args = [
        "--fences",
        fences.to_str().unwrap(),
        "--rules",
        live_rules.to_str().unwrap(),
    ];
    let env = [("OTSTREAM_GEOFENCE__RELOAD_MS", "100")];
    let track = track();
    // The kill comes 15 s into the run above the limit (its first fix is
    // T0 + 614): the overspeed fires at T0 + 644 only if the run's start
    // survived in the stored state.
    let cut = 13;
    assert_eq!(track[cut - 1].0, T0 + 629);

    let serve = Serve::start(&data, &args, &env).unwrap();
    post(&serve, &track[..cut]);
    serve.kill();
    let serve = Serve::start(&data, &args, &env).unwrap();
    // A broken file while serving: said, and the rules in use kept.
    std::fs::write(
        &live_rules,
        "[[rules]]\nname = \"x\"\nkind = \"teleport\"\n",
    )
    .unwrap();
    serve.wait_for_log("rules file changed but cannot be used");
    assert!(
        serve.log().contains("unknown kind \\\"teleport\\\"")
            || serve.log().contains("unknown kind \"teleport\"")
    );
    post(&serve, &track[cut..]);
    let night: Vec<(i64, (f64, f64), i32)> = NIGHT
        .iter()
        .flat_map(|t| [(t - 30, east(1000.0), 0), (*t, HOME, 0)])
        .collect();
    post_as(
        &serve,
        &[("X-Limit-U", "fleet"), ("X-Limit-D", "van2")],
        &night,
    );

    let stops = rows(
        &serve.db(),
        &format!(
            "SELECT start FROM stops WHERE start > {} ORDER BY start",
            T0 + 600
        ),
    );
    assert_eq!(stops.len(), 1, "the customer's stop: {stops:?}");
    let arrival: i64 = stops[0].parse().unwrap();
    let idle_at = track
        .iter()
        .map(|f| f.0)
        .find(|t| *t >= arrival + 600)
        .unwrap();
    let expected = vec![
        format!("{}|enter:fleet/van2:{}:Depot#night-in", NIGHT[1], NIGHT[1]),
        format!("{}|enter:fleet/van2:{}:Depot#night-in", NIGHT[2], NIGHT[2]),
        format!("{}|enter:fleet/van2:{}:Depot#night-in", NIGHT[4], NIGHT[4]),
        format!("{}|dwell:fleet/van1:{}:Depot#depot-5", T0 + 300, T0 + 300),
        format!("{}|overspeed:fleet/van1:{}#fast", T0 + 644, T0 + 644),
        format!(
            "{}|enter:fleet/van1:{}:Customer#customer-hours",
            T0 + 779,
            T0 + 779
        ),
        format!("{idle_at}|idle:fleet/van1:{idle_at}#idle-10"),
    ];
    let db = serve.db();
    assert_eq!(
        rows(
            &db,
            "SELECT tst, id FROM events WHERE id LIKE '%#%' ORDER BY tst, id"
        ),
        expected,
        "{}",
        serve.log()
    );
    let body = rows(
        &db,
        &format!(
            "SELECT body FROM events WHERE id = 'dwell:fleet/van1:{}:Depot#depot-5'",
            T0 + 300
        ),
    );
    let body: serde_json::Value = serde_json::from_str(&body[0]).unwrap();
    assert_eq!(
        (&body["kind"], &body["rule"], &body["since"], &body["fence"]),
        (
            &serde_json::json!("dwell"),
            &serde_json::json!("depot-5"),
            &serde_json::json!(T0),
            &serde_json::json!("Depot")
        )
    );
    let speed = rows(
        &db,
        &format!(
            "SELECT body FROM events WHERE id = 'overspeed:fleet/van1:{}#fast'",
            T0 + 644
        ),
    );
    let speed: serde_json::Value = serde_json::from_str(&speed[0]).unwrap();
    assert_eq!(
        (&speed["since"], &speed["speed"]),
        (&serde_json::json!(T0 + 614), &serde_json::json!(100.0))
    );
    assert!(serve.interrupt().unwrap());

    // The back-test over the same store gives what the live pipeline stored.
    let data_dir = data.to_str().unwrap();
    let (rules_arg, fences_arg) = (rules.to_str().unwrap(), fences.to_str().unwrap());
    let fired: BTreeSet<String> = backtest_ids(&[
        "--data-dir",
        data_dir,
        "--rules",
        rules_arg,
        "--fences",
        fences_arg,
    ])
    .into_iter()
    .collect();
    let stored: BTreeSet<String> = expected
        .iter()
        .map(|l| l.split_once('|').unwrap().1.to_owned())
        .collect();
    assert_eq!(fired, stored);

    // The report, against rules that have only the ten-minute dwell.
    let current = dir.path().join("current.toml");
    std::fs::write(
        &current,
        "[[rules]]\nname = \"depot-10\"\nkind = \"dwell\"\nmin_s = 600\nfences = [\"Depot\"]\n",
    )
    .unwrap();
    let out = run(
        &[
            "rules",
            "test",
            "--data-dir",
            data_dir,
            "--rules",
            rules_arg,
            "--fences",
            fences_arg,
            "--against",
            current.to_str().unwrap(),
        ],
        b"",
    )
    .unwrap();
    let report = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counts: Vec<&str> = report
        .lines()
        .skip_while(|l| !l.starts_with("rule "))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect();
    assert_eq!(
        counts,
        [
            "depot-5                  dwell               1        0       +1",
            "depot-10                 dwell               0        0       +0",
            "fast                     overspeed           1        0       +1",
            "idle-10                  idle                1        0       +1",
            "customer-hours           enter               1        0       +1",
            "customer-night           enter               0        0       +0",
            "van2-dwell               dwell               0        0       +0",
            "night-in                 enter               3        0       +3",
        ],
        "{report}"
    );
    assert!(
        report.contains("\nonly with the new rules: 7\n"),
        "{report}"
    );
    assert!(
        report.contains("\nonly with the current rules: 0\n"),
        "{report}"
    );
    assert!(
        report.contains(
            "  fleet/van1                     customer-hours 1, depot-5 1, fast 1, idle-10 1\n  fleet/van2                     night-in 3\n"
        ),
        "{report}"
    );
}

/// Two vans a proximity rule compares: they come near within 100 m, stay
/// near inside the hysteresis (150 m) through a SIGKILL of the server
/// between the two, part past it, and come near again; the back-test of
/// the store says the same.
#[test]
fn two_vans_come_near_and_part_with_hysteresis_through_a_crash_and_the_back_test_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[[rules]]\nname = \"close\"\nkind = \"proximity\"\nwithin_m = 100\nleave_m = 150\ndevices = [\"fleet/van1\", \"fleet/van2\"]\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let args = ["--rules", rules.to_str().unwrap()];
    let t = T0 + 86_400;
    let van = |d: &'static str| [("X-Limit-U", "fleet"), ("X-Limit-D", d)];
    let serve = Serve::start(&data, &args, &[]).unwrap();
    post_as(&serve, &van("van1"), &[(t, east(0.0), 0)]);
    post_as(
        &serve,
        &van("van2"),
        &[
            (t + 10, east(300.0), 0),
            (t + 20, east(101.0), 0),
            (t + 30, east(99.0), 0),
        ],
    );
    serve.kill();
    let serve = Serve::start(&data, &args, &[]).unwrap();
    // 140 m apart: still near (the pair's state survived the kill).
    post_as(&serve, &van("van1"), &[(t + 40, east(-41.0), 0)]);
    // 151 m: apart.
    post_as(&serve, &van("van2"), &[(t + 50, east(110.0), 0)]);
    post_as(&serve, &van("van1"), &[(t + 60, east(60.0), 0)]);
    let expected = vec![
        format!(
            "proximity:fleet/van2:{}:fleet/van1:near#close|true|99",
            t + 30
        ),
        format!(
            "proximity:fleet/van2:{}:fleet/van1:apart#close|false|151",
            t + 50
        ),
        format!(
            "proximity:fleet/van1:{}:fleet/van2:near#close|true|50",
            t + 60
        ),
    ];
    let db = serve.db();
    let stored: Vec<String> = rows(
        &db,
        "SELECT id, body FROM events WHERE kind = 'proximity' ORDER BY tst",
    )
    .into_iter()
    .map(|r| {
        let (id, body) = r.split_once('|').unwrap();
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["rule"], "close");
        format!(
            "{id}|{}|{}",
            body["near"],
            body["distance"].as_f64().unwrap().round()
        )
    })
    .collect();
    assert_eq!(stored, expected, "{}", serve.log());
    assert_eq!(
        rows(
            &db,
            "SELECT user, device FROM device_state WHERE kind = 'proximity'"
        ),
        ["~near|close"]
    );
    assert!(serve.interrupt().unwrap());

    let fired = backtest_ids(&[
        "--data-dir",
        data.to_str().unwrap(),
        "--rules",
        rules.to_str().unwrap(),
    ]);
    let ids: Vec<String> = expected
        .iter()
        .map(|e| e.split('|').next().unwrap().to_owned())
        .collect();
    assert_eq!(fired, ids);
}

/// Rules over a simulated fleet's phones, with their noise, outliers and
/// late fixes (the phones send no regions of their own, and there are no
/// operator fences: the dwell is the van's test above).
const FLEET_RULES: &str = r#"
[[rules]]
name = "idle-15"
kind = "idle"
min_s = 900
[[rules]]
name = "fast"
kind = "overspeed"
max_kmh = 50
min_s = 20
[[rules]]
name = "morning-stops"
kind = "stop_started"
schedule = { from = "06:00", to = "10:00", tz = "Europe/Berlin" }
[[rules]]
name = "trips"
kind = "trip_ended"
debounce_s = 1800
"#;

/// What the live pipeline (an import: decode, filters, geofence, sink)
/// stored for a simulated fleet equals what `rules test` says of the
/// same store and of the recording itself, and every rule fired.
#[test]
fn the_back_test_of_a_fleets_morning_equals_what_the_live_pipeline_stored() {
    let dir = tempfile::tempdir().unwrap();
    let (rules, recording) = (
        dir.path().join("rules.toml"),
        dir.path().join("fleet.ndjson"),
    );
    std::fs::write(&rules, FLEET_RULES).unwrap();
    let data = dir.path().join("data");
    let (rules, recording, data) = (
        rules.to_str().unwrap(),
        recording.to_str().unwrap(),
        data.to_str().unwrap(),
    );
    let ok = |args: &[&str]| -> String {
        let out = run(args, b"").unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    ok(&[
        "fleet",
        "--devices",
        "40",
        "--hours",
        "12",
        "--messages",
        "10000000",
        "--phones",
        "--quiet",
        "-o",
        recording,
    ]);
    let out = std::process::Command::new(otstream_tests::otstream_bin())
        .args([
            "import",
            "--quiet",
            "--data-dir",
            data,
            "--format",
            "recording",
            recording,
        ])
        .env("OTSTREAM_GEOFENCE__RULES", rules)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stored: BTreeSet<String> = rows(
        &rusqlite::Connection::open(dir.path().join("data/otstream.db")).unwrap(),
        "SELECT id FROM events WHERE id LIKE '%#%'",
    )
    .into_iter()
    .collect();
    let ids = |ndjson: String| -> BTreeSet<String> {
        ndjson
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    let from_store = ids(ok(&[
        "rules",
        "test",
        "--rules",
        rules,
        "--data-dir",
        data,
        "--ndjson",
    ]));
    let from_recording = ids(ok(&[
        "rules", "test", "--rules", rules, recording, "--ndjson",
    ]));
    let fired: BTreeSet<&str> = stored
        .iter()
        .filter_map(|id| id.rsplit_once('#'))
        .map(|(_, r)| r)
        .collect();
    assert_eq!(
        fired,
        BTreeSet::from(["fast", "idle-15", "morning-stops", "trips"])
    );
    assert_eq!(from_store, stored);
    assert_eq!(from_recording, stored);
}
