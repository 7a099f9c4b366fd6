//! `otstream fleet`, `replay` and `record` against real servers: what a
//! replay sends is what gets stored, its rate holds, its report agrees with
//! its raw samples, and each recorder keeps exactly what it was sent.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use otstream_model::{RawMessage, RecordingLine};
use otstream_tests::*;
use serde_json::Value;

/// The messages of a recording, in order.
fn read(path: &Path) -> Vec<RawMessage> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| RecordingLine::message(l, 0).unwrap())
        .collect()
}

fn body(m: &RawMessage) -> Value {
    serde_json::from_slice(&m.payload).unwrap()
}

/// A long-running `otstream` command (a recorder) with its stderr in a file.
struct Background {
    child: Child,
    stderr: std::path::PathBuf,
}

impl Background {
    /// Starts `otstream ARGS` and waits until its stderr has a line
    /// starting with `ready`.
    fn start(args: &[&str], dir: &Path, ready: &str) -> Background {
        let stderr = dir.join(format!("stderr-{}", free_port()));
        let child = Command::new(otstream_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let mut bg = Background { child, stderr };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !bg.log().lines().any(|l| l.starts_with(ready)) {
            assert!(
                bg.child.try_wait().unwrap().is_none(),
                "exited: {}",
                bg.log()
            );
            assert!(
                Instant::now() < deadline,
                "not ready after 20 s: {}",
                bg.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        bg
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits for the command to end by itself (its --limit) and returns
    /// what it printed.
    fn wait(mut self, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "{}", self.log());
                return self.log();
            }
            assert!(
                Instant::now() < deadline,
                "still running after {secs} s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What identifies a message apart from when it was received: its
/// identity facts (topic, X-Limit-U, X-Limit-D) and its exact bytes.
type Essence = (Option<String>, Option<String>, Option<String>, Vec<u8>);

fn essence(m: &RawMessage) -> Essence {
    (
        m.hints.mqtt_topic.clone(),
        m.hints.x_limit_u.clone(),
        m.hints.x_limit_d.clone(),
        m.payload.clone(),
    )
}

fn sorted_essences(messages: &[RawMessage]) -> Vec<Essence> {
    let mut v: Vec<_> = messages.iter().map(essence).collect();
    v.sort();
    v
}

/// Replaying a fleet's recording against serve stores exactly the recorded
/// messages: every location, transition, card and lwt, field for field;
/// the report counts them all as acknowledged, and its percentiles are
/// those of its raw samples.
#[test]
fn replay_stores_exactly_the_recorded_messages() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.ndjson");
    fleet(
        &file,
        &["--devices", "30", "--messages", "3000", "--seed", "7"],
    );
    let recorded = read(&file);
    assert_eq!(recorded.len(), 3000);

    let serve = Serve::start(&dir.path().join("data"), &[], &[]).unwrap();
    let samples = dir.path().join("samples.txt");
    let report = replay(&[
        file.to_str().unwrap(),
        "--http",
        &format!("{}/pub", serve.url),
        "--connections",
        "8",
        "--samples",
        samples.to_str().unwrap(),
    ]);
    assert_eq!(report["sent"], 3000, "{report}");
    assert_eq!(report["acknowledged"], 3000, "{report}");
    assert_eq!(report["outcomes"], serde_json::json!({"200": 3000}));

    // Count and content, per table.
    let by_type = |t: &str| -> Vec<&RawMessage> {
        recorded.iter().filter(|m| body(m)["_type"] == t).collect()
    };
    let f = |v: &Value| match v {
        Value::Number(n) if n.is_f64() => n.as_f64().unwrap().to_string(),
        other => other.to_string().trim_matches('"').to_owned(),
    };
    let mut want: Vec<String> = by_type("location")
        .iter()
        .map(|m| {
            let b = body(m);
            format!(
                "fleet|{}|{}|{}|{}|{}|{}|{}",
                m.hints.x_limit_d.as_deref().unwrap(),
                f(&b["tst"]),
                f(&b["lat"]),
                f(&b["lon"]),
                f(&b["acc"]),
                f(&b["vel"]),
                f(&b["batt"])
            )
        })
        .collect();
    want.sort();
    let db = serve.db();
    let got = rows(
        &db,
        "SELECT user, device, tst, lat, lon, acc, vel, batt FROM positions ORDER BY 1,2,3,4,5,6,7,8",
    );
    assert_eq!(got.len(), want.len());
    assert_eq!(got, want);
    let mut want: Vec<String> = by_type("transition")
        .iter()
        .map(|m| {
            let b = body(m);
            format!(
                "{}|{}|{}",
                m.hints.x_limit_d.as_deref().unwrap(),
                f(&b["tst"]),
                f(&b["event"])
            )
        })
        .collect();
    want.sort();
    assert!(!want.is_empty());
    assert_eq!(
        rows(
            &db,
            "SELECT device, tst, event FROM transitions ORDER BY 1,2,3"
        ),
        want
    );
    assert_eq!(
        rows(&db, "SELECT count(*) FROM cards"),
        [by_type("card").len().to_string()]
    );
    assert_eq!(
        rows(
            &db,
            "SELECT count(*) FROM device_events WHERE event = 'lwt'"
        ),
        [by_type("lwt").len().to_string()]
    );
    assert_eq!(rows(&db, "SELECT count(*) FROM dead_letters"), ["0"]);

    // The report's percentiles are those of its raw samples (3 significant
    // digits: within 0.1%).
    let mut raw: Vec<u64> = std::fs::read_to_string(&samples)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    raw.sort_unstable();
    assert_eq!(raw.len(), 3000);
    for (key, q) in [
        ("p50", 0.5),
        ("p90", 0.9),
        ("p99", 0.99),
        ("p99.9", 0.999),
        ("max", 1.0),
    ] {
        let rank = ((q * raw.len() as f64).ceil() as usize).clamp(1, raw.len());
        let exact = raw[rank - 1] as f64;
        let reported = report["latency_ms"][key].as_f64().unwrap() * 1000.0;
        assert!(
            (reported - exact).abs() <= exact * 0.001 + 1.0,
            "{key}: reported {reported} µs, raw samples say {exact} µs"
        );
    }
}

/// `--devices N` multiplies a recording into N devices and `--tst-offset`
/// shifts its timestamps: each copy is stored under its own name.
#[test]
fn replay_multiplies_devices_and_shifts_time() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.ndjson");
    fleet(&file, &["--devices", "4", "--messages", "200"]);
    let recorded = read(&file);
    let serve = Serve::start(&dir.path().join("data"), &[], &[]).unwrap();
    let report = replay(&[
        file.to_str().unwrap(),
        "--http",
        &format!("{}/pub", serve.url),
        "--devices",
        "3",
        "--tst-offset",
        "1000",
    ]);
    assert_eq!(report["acknowledged"], 600, "{report}");
    let first = recorded
        .iter()
        .find(|m| body(m)["_type"] == "location" && m.hints.x_limit_d.as_deref() == Some("d00002"))
        .unwrap();
    let tst = body(first)["tst"].as_i64().unwrap();
    let db = serve.db();
    assert_eq!(
        rows(
            &db,
            &format!(
                "SELECT device FROM positions WHERE tst = {} AND device LIKE 'd00002-%' ORDER BY 1",
                tst + 1000
            )
        ),
        ["d00002-1", "d00002-2", "d00002-3"]
    );
    let locations = recorded
        .iter()
        .filter(|m| body(m)["_type"] == "location")
        .count();
    assert_eq!(
        rows(&db, "SELECT count(*) FROM positions"),
        [(3 * locations).to_string()]
    );
}

/// `record http` keeps exactly what was POSTed: identity headers and bytes.
#[test]
fn record_http_keeps_what_a_replay_sent() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.ndjson");
    fleet(&file, &["--devices", "10", "--messages", "500"]);
    let out = dir.path().join("recorded.ndjson");
    let port = free_port();
    let recorder = Background::start(
        &[
            "record",
            "http",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--out",
            out.to_str().unwrap(),
            "--limit",
            "500",
        ],
        dir.path(),
        "recording POSTs to",
    );
    let report = replay(&[
        file.to_str().unwrap(),
        "--http",
        &format!("http://127.0.0.1:{port}/pub"),
        "--connections",
        "4",
    ]);
    assert_eq!(report["acknowledged"], 500, "{report}");
    let log = recorder.wait(20);
    assert!(log.contains("recorded 500 messages"), "{log}");
    assert_eq!(sorted_essences(&read(&out)), sorted_essences(&read(&file)));
}

/// `replay --mqtt` publishes each message on its topic, and `record mqtt`
/// keeps exactly what the broker delivered.
#[test]
fn replay_over_mqtt_and_record_mqtt() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("lg{}", free_port());
    let file = dir.path().join("fleet.ndjson");
    fleet(
        &file,
        &[
            "--devices",
            "10",
            "--messages",
            "400",
            "--transport",
            "mqtt",
            "--prefix",
            &prefix,
        ],
    );
    let recorded = read(&file);
    assert!(
        recorded
            .iter()
            .all(|m| m.hints.mqtt_topic.as_deref().unwrap().starts_with(&prefix))
    );
    let out = dir.path().join("recorded.ndjson");
    let url = mqtt_url();
    let filter = format!("{prefix}/#");
    let recorder = Background::start(
        &[
            "record",
            "mqtt",
            "--mqtt-url",
            &url,
            "--topic",
            &filter,
            "--client-id",
            &format!("{prefix}-rec"),
            "--out",
            out.to_str().unwrap(),
            "--limit",
            "400",
        ],
        dir.path(),
        "recording",
    );
    let report = replay(&[
        file.to_str().unwrap(),
        "--mqtt",
        &url,
        "--client-id",
        &format!("{prefix}-pub"),
        "--prefix",
        &prefix,
        "--connections",
        "2",
    ]);
    assert_eq!(
        report["outcomes"],
        serde_json::json!({"puback": 400}),
        "{report}"
    );
    recorder.wait(30);
    assert_eq!(sorted_essences(&read(&out)), sorted_essences(&recorded));
}

/// `record kafka` exports the raw topic, and `--from` cuts it in time.
#[test]
fn record_kafka_exports_a_time_range_of_the_raw_topic() {
    let _turn = broker_turn();
    let brokers = kafka_brokers();
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("lg{}.", free_port());
    let config = dir.path().join("otstream.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\ntopic_prefix = \"{prefix}\"\ngroup_prefix = \"{prefix}\"\npartitions = 2\n"
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    create_topics(&config, &brokers);
    let ingress = Serve::start_cmd(
        &["run", "ingress"],
        &dir.path().join("ingress"),
        free_port(),
        &["--config", &config, "--brokers", &brokers],
        &[],
    )
    .unwrap();
    let first = dir.path().join("first.ndjson");
    let second = dir.path().join("second.ndjson");
    fleet(
        &first,
        &["--devices", "5", "--messages", "100", "--seed", "1"],
    );
    fleet(
        &second,
        &[
            "--devices",
            "5",
            "--messages",
            "150",
            "--seed",
            "2",
            "--user",
            "later",
        ],
    );
    let url = format!("{}/pub", ingress.url);
    assert_eq!(
        replay(&[first.to_str().unwrap(), "--http", &url])["acknowledged"],
        100
    );
    std::thread::sleep(Duration::from_millis(200));
    let between = otstream_model::raw::now_ms();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        replay(&[second.to_str().unwrap(), "--http", &url])["acknowledged"],
        150
    );

    let export = |out: &Path, extra: &[&str]| {
        let out_arg = out.display().to_string();
        let mut args = vec![
            "record",
            "kafka",
            "--config",
            &config,
            "--brokers",
            &brokers,
            "--out",
            &out_arg,
        ];
        args.extend(extra);
        let o = run(&args, b"").unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        read(out)
    };
    let all = export(&dir.path().join("all.ndjson"), &[]);
    let both: Vec<RawMessage> = read(&first).into_iter().chain(read(&second)).collect();
    assert_eq!(sorted_essences(&all), sorted_essences(&both));
    // In the order received: each device's messages as sent.
    let order = |ms: &[RawMessage]| -> BTreeMap<String, Vec<Vec<u8>>> {
        let mut by: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
        for m in ms {
            by.entry(format!("{:?}/{:?}", m.hints.x_limit_u, m.hints.x_limit_d))
                .or_default()
                .push(m.payload.clone());
        }
        by
    };
    assert_eq!(order(&all), order(&both));
    let later = export(
        &dir.path().join("later.ndjson"),
        &["--from", &between.to_string()],
    );
    assert_eq!(sorted_essences(&later), sorted_essences(&read(&second)));
}
