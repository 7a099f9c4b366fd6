use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use otstream_tests::{
    PrivateClickHouse, Serve, ch, ch_eventually, ch_lines, clickhouse_url, run, testdata, unique_db,
};
use serde_json::Value;

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// `SELECT` as tab-separated lines.
fn select(url: &str, db: &str, sql: &str) -> Vec<String> {
    ch_lines(url, db, sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn serve_on(url: &str, db: &str, dir: &std::path::Path, extra_env: &[(&str, &str)]) -> Serve {
    let mut env = vec![
        ("OTSTREAM_CLICKHOUSE__DATABASE", db),
        ("OTSTREAM_CLICKHOUSE__PERIOD_MS", "100"),
    ];
    env.extend_from_slice(extra_env);
    let keys = testdata("keys.toml");
    Serve::start(
        dir,
        &["--clickhouse-url", url, "--keys", keys.to_str().unwrap()],
        &env,
    )
    .unwrap()
}

fn location(tst: u64, lat: f64, lon: f64) -> Vec<u8> {
    format!(r#"{{"_type":"location","lat":{lat},"lon":{lon},"tst":{tst},"tid":"ld","batt":50,"acc":12,"vel":30}}"#).into_bytes()
}

/// Waits until `sql` returns `want`, ClickHouse batching being asynchronous
/// to the test (the 200 came after the insert; FINAL settles the count).
fn eventually(url: &str, db: &str, sql: &str, want: &[&str]) {
    ch_eventually(url, db, sql, want, 30);
}

#[test]
fn migrate_is_idempotent_and_every_column_has_a_comment() {
    let url = clickhouse_url();
    let db = unique_db("migrate");
    let first = run(
        &["migrate", "--clickhouse-url", &url, "--database", &db],
        b"",
    )
    .unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let version = ch(&url, None, "SELECT version()").unwrap();
    let major_minor: Vec<&str> = version.trim().split('.').take(2).collect();
    assert_eq!(
        String::from_utf8_lossy(&first.stdout).trim(),
        format!(
            "ClickHouse {}: applied migrations [1, 2, 3, 4, 5, 6, 7, 8, 9] in database {db}",
            major_minor.join(".")
        )
    );
    let second = run(
        &["migrate", "--clickhouse-url", &url, "--database", &db],
        b"",
    )
    .unwrap();
    assert!(String::from_utf8_lossy(&second.stdout).contains("schema up to date"));
    // A migration cut short after its first ALTER (a process stopped, a
    // sink's start that stopped waiting) is applied again from its start:
    // the column it added is not an error.
    ch(
        &url,
        Some(&db),
        "ALTER TABLE schema_migrations DELETE WHERE version = 8",
    )
    .unwrap();
    ch_eventually(
        &url,
        &db,
        "SELECT count() FROM schema_migrations WHERE version = 8",
        &["0"],
        30,
    );
    let again = run(
        &["migrate", "--clickhouse-url", &url, "--database", &db],
        b"",
    )
    .unwrap();
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("applied migrations [8]"),
        "{}{}",
        String::from_utf8_lossy(&again.stdout),
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(
        select(
            &url,
            &db,
            "SELECT version, name FROM schema_migrations ORDER BY version"
        ),
        [
            "1\ttables",
            "2\tdevice_state",
            "3\tstop_place",
            "4\tfilters_events",
            "5\tplaces",
            "6\taddresses",
            "7\th3",
            "8\tvisits",
            "9\tpresence"
        ]
    );
    assert_eq!(
        select(
            &url,
            &db,
            &format!("SELECT name FROM system.tables WHERE database = '{db}' ORDER BY name")
        ),
        [
            "addresses",
            "beacons",
            "cards",
            "configurations",
            "dead_letters",
            "device_events",
            "device_state",
            "events",
            "last_positions",
            "last_positions_mv",
            "positions",
            "presence",
            "presence_mv",
            "schema_migrations",
            "steps",
            "stops",
            "transitions",
            "trips",
            "waypoints"
        ]
    );
    assert_eq!(
        select(
            &url,
            &db,
            &format!(
                "SELECT table, name FROM system.columns WHERE database = '{db}' AND comment = '' AND table NOT IN ('last_positions_mv', 'presence_mv')"
            )
        ),
        Vec::<String>::new(),
        "every column has a comment with its unit"
    );
}

/// Every record type of the spec examples lands in its table with exact
/// values, and the same messages posted again count once with FINAL.
#[test]
fn every_record_type_lands_with_exact_values_and_duplicates_collapse() {
    let url = clickhouse_url();
    let db = unique_db("records");
    let dir = tempdir();
    let serve = serve_on(&url, &db, dir.path(), &[]);
    let spec = std::fs::read_to_string(testdata("spec-examples.ndjson")).unwrap();
    for round in 0..2 {
        for (i, line) in spec.lines().enumerate() {
            let rec: Value = serde_json::from_str(line).unwrap();
            let (user, device) = match rec["topic"].as_str() {
                Some(t) => {
                    let p: Vec<&str> = t.split('/').collect();
                    (p[1].to_owned(), p[2].to_owned())
                }
                None => ("web".to_owned(), "client".to_owned()),
            };
            let headers = [("X-Limit-U", user.as_str()), ("X-Limit-D", device.as_str())];
            let a = serve.post("/pub", &headers, rec["payload"].to_string().as_bytes());
            let want = if i + 1 == 22 || i + 1 == 25 { 400 } else { 200 };
            assert_eq!(a.status, want, "round {round}, line {}: {}", i + 1, a.body);
        }
    }
    serve.wait_shipped();
    eventually(&url, &db, "SELECT count() FROM positions FINAL", &["5"]);
    assert_eq!(
        select(
            &url,
            &db,
            "SELECT user, device, tid, toUInt32(tst), lat, lon, acc, alt, vac, vel, cog, batt, t, conn, p, transport, extra FROM positions FINAL ORDER BY user, device, tst"
        ),
        [
            "greg\tphone\tuser\t1\t45\t90\t60\t27\t4\t0\t248\t92\tu\t\\N\t101.3977584838867\thttp\t",
            "jane\tiphone\tJJ\t1497508651\t48.85833\t2.29513\t5\t167\t21\t61\t271\t41\tu\t\\N\t71\thttp\t",
            "jane\tphone\tYY\t1376715317\t48.85833\t2.29451\t75\t13\t10\t54\t270\t80\tc\tw\t101.2\thttp\t{\"desc\":\"Home\",\"event\":\"enter\",\"rad\":100}",
            "jane\tphone\t\\N\t1406803894\t48.85833\t2.29451\t\\N\t160\t\\N\t12\t0\t\\N\tt\t\\N\t\\N\thttp\t{\"dist\":189,\"trip\":279122}",
            "web\tclient\tJJ\t1497476456\t48.85833\t2.29513\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\thttp\t",
        ]
    );
    assert_eq!(
        select(&url, &db, "SELECT count() FROM positions FINAL"),
        ["5"]
    );
    assert_eq!(
        select(
            &url,
            &db,
            "SELECT user, device, tid, toUInt32(tst), toUInt32(wtst), lat, lon, acc, event, desc, t, source FROM transitions FINAL"
        ),
        [
            "jane\tphone\tJP\t1427634603\t1425042603\t12.34\t44.5\t130\tenter\tmy Indian restaurant\tb\tdevice"
        ]
    );
    assert_eq!(
        select(
            &url,
            &db,
            "SELECT toUInt32(tst), lat, lon, rad, desc, uuid, major, minor, extra FROM waypoints FINAL ORDER BY tst, desc"
        ),
        [
            "1385997757\t48.85833\t2.29451\t100\tFree text entered on device\tCA271EAE-5FA8-4E80-8F08-2A302A95A959\t17\t1\t{\"shared\":true}",
            "1385997757\t48.858\t2.295\t100\tblabla\t\\N\t\\N\t\\N\t{\"shared\":true}",
            "1430398091\t46.517295754\t9.87121582\t500\tCheese fondue\t\\N\t\\N\t\\N\t{\"_creator\":\"OTwpDraw\"}",
            "1433598071\t47.580231298\t9.525146484\t25186\tI went swimming here\t\\N\t\\N\t\\N\t{\"_creator\":\"OTwpDraw\"}",
        ]
    );
    assert_eq!(
        select(
            &url,
            &db,
            "SELECT user, device, name, face FROM cards FINAL"
        ),
        ["jane\tphone\tJane Jolie\tiV1CFEVkMhmCIKBUKh3 ... ghAAAAABJRU5ErkJggg=="]
    );
    assert_eq!(
        select(
            &url,
            &db,
            "SELECT event, toUInt32(tst), extra FROM device_events FINAL WHERE event != 'cmd' OR extra LIKE '%reportLocation%' ORDER BY event"
        ),
        [
            "cmd\t0\t{\"action\":\"reportLocation\"}",
            "lwt\t1380738247\t"
        ]
    );
    assert_eq!(
        select(
            &url,
            &db,
            "SELECT count() FROM device_events FINAL WHERE event = 'cmd'"
        ),
        ["11"]
    );
    assert_eq!(
        select(
            &url,
            &db,
            "SELECT toUInt32(tst), steps, toUInt32(from), toUInt32(to) FROM steps FINAL"
        ),
        ["1400455130\t1234\t1400455130\t1400458000"]
    );
    assert_eq!(
        select(
            &url,
            &db,
            "SELECT toUInt32(tst), uuid, major, minor, acc, rssi, prox FROM beacons FINAL"
        ),
        ["1399028969\tCA271EAE-5FA8-4E80-8F08-2A302A95A959\t1\t1\t3\t-61\t2"]
    );
    let config = select(
        &url,
        &db,
        "SELECT mode, host, port, username, device_id, waypoints, position(config, 'secr3t') FROM configurations FINAL",
    );
    assert_eq!(config, ["0\tbroker.my.net\t8883\tjane\tphone\t1\t0"]);
    // Each POST of a bad payload is a receipt of its own (its own
    // received_at): two rounds, two dead letters each. What collapses is
    // one receipt written twice, as a retried insert writes it.
    assert_eq!(
        select(
            &url,
            &db,
            "SELECT user, device, kind, field, count() FROM dead_letters FINAL GROUP BY user, device, kind, field ORDER BY kind"
        ),
        [
            "jane\tphone\tbad_ciphertext\tdata\t2",
            "web\tclient\tmissing_field\ttst\t2"
        ]
    );
    assert_eq!(
        select(
            &url,
            &db,
            "SELECT user, device, toUInt32(tst) FROM last_positions FINAL WHERE user = 'jane' AND device = 'phone'"
        ),
        ["jane\tphone\t1406803894"]
    );
    // Both rounds were inserted; FINAL counts each once.
    let raw: u64 = select(&url, &db, "SELECT count() FROM positions")[0]
        .parse()
        .unwrap();
    assert!(raw >= 5, "{raw}");
}

/// A row ClickHouse refuses for its content (a materialized view used as a
/// data check throws for it) becomes a dead letter; its neighbours are
/// stored and every sender gets its 200.
#[test]
fn rows_clickhouse_rejects_go_to_dead_letters_and_neighbours_are_stored() {
    let url = clickhouse_url();
    let db = unique_db("rejects");
    let m = run(
        &["migrate", "--clickhouse-url", &url, "--database", &db],
        b"",
    )
    .unwrap();
    assert!(m.status.success());
    ch(
        &url,
        Some(&db),
        "CREATE TABLE guard (x UInt8) ENGINE = Null",
    )
    .unwrap();
    ch(&url, Some(&db), &format!("CREATE MATERIALIZED VIEW guard_mv TO {db}.guard AS SELECT throwIf(lat = 66.6) AS x FROM {db}.positions")).unwrap();
    let dir = tempdir();
    let serve = serve_on(
        &url,
        &db,
        dir.path(),
        &[("OTSTREAM_CLICKHOUSE__PERIOD_MS", "500")],
    );
    let answers: Vec<u16> = std::thread::scope(|s| {
        let hs: Vec<_> = [
            (1_700_000_001u64, 52.5),
            (1_700_000_002, 66.6),
            (1_700_000_003, 52.6),
        ]
        .into_iter()
        .map(|(tst, lat)| {
            let serve = &serve;
            s.spawn(move || {
                serve
                    .post(
                        "/",
                        &[("X-Limit-U", "ann"), ("X-Limit-D", "car")],
                        &location(tst, lat, 13.4),
                    )
                    .status
            })
        })
        .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(answers, [200, 200, 200]);
    serve.wait_shipped();
    assert_eq!(
        select(
            &url,
            &db,
            "SELECT toUInt32(tst), lat FROM positions FINAL WHERE lat != 66.6 ORDER BY tst"
        ),
        ["1700000001\t52.5", "1700000003\t52.6"]
    );
    let dead = select(
        &url,
        &db,
        "SELECT user, device, kind, position(message, 'throwIf') > 0, position(payload, '\"lat\":66.6') > 0 FROM dead_letters FINAL",
    );
    assert_eq!(dead, ["ann\tcar\trejected\t1\t1"]);
}

/// The README's analyst queries run on both server generations, with the
/// values an independent computation gives.
#[test]
fn readme_queries_run_and_give_the_expected_answers() {
    let url = clickhouse_url();
    let db = unique_db("readme");
    let dir = tempdir();
    let serve = serve_on(&url, &db, dir.path(), &[]);
    let jane = [("X-Limit-U", "jane"), ("X-Limit-D", "phone")];
    let bob = [("X-Limit-U", "bob"), ("X-Limit-D", "car")];
    // Jane walks a line north through a day; Bob drives east.
    let jane_track: Vec<(u64, f64, f64)> = (0..5)
        .map(|i| (1_700_000_000 + i * 600, 52.50 + i as f64 * 0.01, 13.40))
        .collect();
    let bob_track: Vec<(u64, f64, f64)> = (0..4)
        .map(|i| (1_700_000_000 + i * 900, 48.10, 11.50 + i as f64 * 0.02))
        .collect();
    for (tst, lat, lon) in &jane_track {
        assert_eq!(
            serve.post("/", &jane, &location(*tst, *lat, *lon)).status,
            200
        );
    }
    for (tst, lat, lon) in &bob_track {
        assert_eq!(
            serve.post("/", &bob, &location(*tst, *lat, *lon)).status,
            200
        );
    }
    for (tst, event) in [
        (1_700_000_100u64, "enter"),
        (1_700_000_700, "leave"),
        (1_700_001_000, "enter"),
        (1_700_001_300, "leave"),
    ] {
        let body = format!(
            r#"{{"_type":"transition","lat":52.5,"lon":13.4,"tst":{tst},"wtst":1690000000,"event":"{event}","desc":"Home"}}"#
        );
        assert_eq!(serve.post("/", &jane, body.as_bytes()).status, 200);
    }
    assert_eq!(serve.post("/", &jane, b"not json").status, 400);
    serve.wait_shipped();

    let readme = std::fs::read_to_string(otstream_tests::root().join("README.md")).unwrap();
    let section = readme
        .split("<!-- analyst-queries:begin -->")
        .nth(1)
        .unwrap()
        .split("<!-- analyst-queries:end -->")
        .next()
        .unwrap();
    let queries: Vec<String> = section
        .split("```sql")
        .skip(1)
        .map(|b| b.split("```").next().unwrap().trim().to_owned())
        .collect();
    assert_eq!(queries.len(), 10, "the README promises ten queries");
    let answers: Vec<Vec<String>> = queries.iter().map(|q| select(&url, &db, q)).collect();
    for (q, a) in queries.iter().zip(&answers) {
        assert!(!a.is_empty(), "no rows from {q}");
    }
    // 1. Last position of each device.
    assert_eq!(
        answers[0],
        [
            "bob\tcar\t2023-11-14 22:58:20\t48.1\t11.56\t50",
            "jane\tphone\t2023-11-14 22:53:20\t52.54\t13.4\t50"
        ]
        .map(|s| s.to_owned())
        .to_vec()
        .iter()
        .map(|s| fix_tz(&url, s))
        .collect::<Vec<_>>()
    );
    // 2. Daily distance, against an independent great-circle sum.
    let km = |track: &[(u64, f64, f64)]| {
        track
            .windows(2)
            .map(|w| great_circle_m(w[0].1, w[0].2, w[1].1, w[1].2))
            .sum::<f64>()
            / 1000.0
    };
    for (row, want) in answers[1].iter().zip([km(&bob_track), km(&jane_track)]) {
        let got: f64 = row.split('\t').nth(3).unwrap().parse().unwrap();
        assert!((got - want).abs() / want < 0.01, "{row}: want {want:.3} km");
    }
    // 3. Inside Home: 600 s, then 300 s.
    assert_eq!(answers[2], ["jane\tphone\tHome\t900"]);
    // 4. Both devices are silent (their fixes are from 2023).
    assert_eq!(answers[3].len(), 2);
    // 6. Nine fixes over HTTP from two devices.
    assert!(
        answers[5]
            .iter()
            .all(|r| r.ends_with("\thttp\t9\t2") || r.contains("\thttp\t")),
        "{:?}",
        answers[5]
    );
    assert_eq!(
        answers[5]
            .iter()
            .map(|r| r.split('\t').nth(2).unwrap().parse::<u64>().unwrap())
            .sum::<u64>(),
        9
    );
    // 10. The one dead letter.
    assert_eq!(
        answers[9],
        ["invalid_json\t1\tpayload is not valid JSON: unexpected \\'n\\' at byte 0"]
    );
}

/// The server's local rendering of a UTC `DateTime`.
fn fix_tz(url: &str, row: &str) -> String {
    let mut parts: Vec<String> = row.split('\t').map(str::to_owned).collect();
    let utc = parts[2].clone();
    let local = ch(
        url,
        None,
        &format!("SELECT toDateTime(toDateTime('{utc}', 'UTC')) FORMAT TSV"),
    )
    .unwrap();
    parts[2] = local.trim().to_owned();
    parts.join("\t")
}

/// Haversine on ClickHouse's sphere (greatCircleDistance's radius).
fn great_circle_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let r = 6_372_797.560_856;
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * r * a.sqrt().asin()
}

/// Phones posting a fix at a time on 4 threads, as the apps do: what got
/// a 200 (`user\tdevice\ttst`), and every status seen.
struct Phones {
    acked: Arc<Mutex<Vec<String>>>,
    statuses: Arc<Mutex<BTreeMap<u16, u64>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Phones {
    fn start(url: &str, first_tst: u64) -> Phones {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let statuses = Arc::new(Mutex::new(BTreeMap::<u16, u64>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..4u64)
            .map(|t| {
                let (acked, statuses, stop) = (acked.clone(), statuses.clone(), stop.clone());
                let url = format!("{url}/pub");
                std::thread::spawn(move || {
                    let device = format!("d{t}");
                    let headers = [("X-Limit-U", "fleet"), ("X-Limit-D", device.as_str())];
                    let mut tst = first_tst;
                    while !stop.load(Ordering::Relaxed) {
                        tst += 1;
                        let a = otstream_tests::post(&url, &headers, &location(tst, 52.5, 13.4));
                        *statuses.lock().unwrap().entry(a.status).or_default() += 1;
                        match a.status {
                            200 => acked
                                .lock()
                                .unwrap()
                                .push(format!("fleet\t{device}\t{tst}")),
                            503 => {
                                assert_eq!(a.retry_after.as_deref(), Some("1"), "{}", a.body);
                                std::thread::sleep(Duration::from_millis(100));
                            }
                            s => panic!("unexpected status {s}: {}", a.body),
                        }
                    }
                })
            })
            .collect();
        Phones {
            acked,
            statuses,
            stop,
            threads,
        }
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits until `n` fixes have a 200, for at most 60 s.
    fn wait_for(&self, n: usize, serve: &Serve) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.acked() < n {
            assert!(
                Instant::now() < deadline,
                "stalled at {} acknowledged ({:?}):\n{}",
                self.acked(),
                self.statuses.lock().unwrap(),
                serve.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops them; what was acknowledged, and the count of each status.
    fn stop(self) -> (Vec<String>, BTreeMap<u16, u64>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let acked = self.acked.lock().unwrap().clone();
        let statuses = self.statuses.lock().unwrap().clone();
        (acked, statuses)
    }
}

/// ClickHouse down: `serve` acknowledges from its local buffer and goes
/// on answering 200; SIGKILLed meanwhile and restarted (ClickHouse still
/// down) it starts and keeps what it had; a full buffer answers 503; once
/// ClickHouse is back every acknowledged fix is there exactly once.
#[test]
fn clickhouse_outage_is_buffered_and_every_acknowledged_fix_lands_once() {
    let server = PrivateClickHouse::start().unwrap();
    let db = unique_db("outage");
    let dir = tempdir();
    let env = [
        ("OTSTREAM_BUS__CAPACITY", "200"),
        ("OTSTREAM_HTTP__SEND_TIMEOUT_MS", "200"),
        ("OTSTREAM_HTTP__ACK_TIMEOUT_MS", "2000"),
        ("OTSTREAM_CLICKHOUSE__RETRY_MAX_MS", "1000"),
        ("OTSTREAM_CLICKHOUSE__INSERT_TIMEOUT_MS", "3000"),
    ];
    let serve = serve_on(&server.url, &db, dir.path(), &env);
    let phones = Phones::start(&serve.url, 1_700_000_000);
    phones.wait_for(200, &serve);
    ch_eventually(
        &server.url,
        &db,
        "SELECT count() > 0 FROM positions",
        &["1"],
        30,
    );
    server.stop().unwrap();
    // Acknowledged as fast as before: nothing waits for ClickHouse.
    let at_stop = phones.acked();
    phones.wait_for(at_stop + 400, &serve);
    let (mut acked, statuses) = phones.stop();
    assert_eq!(statuses.get(&503), None, "{statuses:?}");
    let waiting = serve.metric("otstream_buffer_rows").expect("buffer gauge");
    assert!(waiting >= 400.0, "{waiting} rows buffered");

    // SIGKILL while ClickHouse is down; the restart resumes from the buffer
    // (and its device state), and one of 1,000 bytes is full already.
    serve.kill();
    let small = [env.as_slice(), &[("OTSTREAM_BUFFER__MAX_BYTES", "1000")]].concat();
    let serve = serve_on(&server.url, &db, dir.path(), &small);
    let full = otstream_tests::post(
        &format!("{}/pub", serve.url),
        &[("X-Limit-U", "fleet"), ("X-Limit-D", "d9")],
        &location(1_700_100_000, 52.5, 13.4),
    );
    assert_eq!(
        (full.status, full.retry_after.as_deref()),
        (503, Some("1")),
        "{}",
        full.body
    );

    // ClickHouse back: the buffer ships, makes room, and 200s return. Its
    // file write-locked by someone else meanwhile: the shipper's delete is
    // refused and retried, never the end of shipping.
    let lock = rusqlite::Connection::open(dir.path().join("buffer.db")).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    server.restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !serve.log().contains("buffer delete failed; retrying") {
        assert!(
            Instant::now() < deadline,
            "the shipper's delete never met the lock:\n{}",
            serve.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    lock.execute_batch("COMMIT").unwrap();
    drop(lock);
    let phones = Phones::start(&serve.url, 1_700_200_000);
    phones.wait_for(100, &serve);
    let (more, _) = phones.stop();
    acked.extend(more);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stored = select(
            &server.url,
            &db,
            "SELECT user, device, toUInt32(tst), count() FROM positions FINAL GROUP BY user, device, tst",
        );
        let once: BTreeSet<String> = stored
            .iter()
            .filter(|r| r.ends_with("\t1"))
            .map(|r| r.rsplit_once('\t').unwrap().0.to_owned())
            .collect();
        assert_eq!(once.len(), stored.len(), "FINAL must give each fix once");
        let missing = acked.iter().filter(|k| !once.contains(*k)).count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} acknowledged fixes missing:\n{}",
            acked.len(),
            serve.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
