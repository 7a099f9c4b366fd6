//! `otstream import` of real files through the whole pipeline: Recorder
//! `.rec` lines from the corpus and a generated tree of two users over
//! three months, GPX, GeoJSON, both Google Takeout formats; exact counts
//! and values, trips derived, a second import adding nothing, ClickHouse,
//! and memory that stays flat on a 2 GB Takeout file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use otstream_tests::{ch_lines, clickhouse_url, otstream_bin, rows, testdata, unique_db};

/// Runs `otstream import ARGS` and returns its summary (stdout).
fn import(args: &[&str]) -> String {
    let out = std::process::Command::new(otstream_bin())
        .arg("import")
        .arg("--quiet")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "otstream import {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn db(dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.join("otstream.db")).unwrap()
}

/// A drive every day: 30 min at home (a fix a minute), 10 km east at
/// 60 km/h (a fix every 15 s), 30 min at work; `.rec` lines.
fn day(t0: i64, lat: f64, lon: f64) -> Vec<(i64, f64, f64, i32)> {
    let mut out = Vec::new();
    for i in 0..30 {
        out.push((t0 + 60 * i, lat, lon, 0));
    }
    let dlon = 250.0 / (111_195.08 * lat.to_radians().cos());
    for i in 1..=40 {
        out.push((
            t0 + 1800 + 15 * i,
            lat,
            lon + dlon * f64::from(i as i32),
            60,
        ));
    }
    for i in 1..=30 {
        out.push((t0 + 2400 + 60 * i, lat, lon + dlon * 40.0, 0));
    }
    out
}

fn rec_line(tst: i64, topic: &str, payload: &str) -> String {
    let time = time_iso(tst);
    format!("{time}\t{topic:<18}\t{payload}\n")
}

/// `2024-01-05T10:00:00Z` of UNIX seconds (days from the civil calendar).
fn time_iso(t: i64) -> String {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// rec/<user>/<device>/YYYY-MM.rec for two users, three months, a drive
/// on the 1st, 11th and 21st of each month.
fn recorder_tree(root: &Path) -> usize {
    // 2024-01-01T07:00:00Z
    let jan1 = 1_704_092_400;
    let months = [
        (jan1, "2024-01"),
        (jan1 + 31 * 86_400, "2024-02"),
        (jan1 + 60 * 86_400, "2024-03"),
    ];
    let mut fixes = 0;
    for (user, device, lat, lon) in [("jane", "phone", 45.76, 4.83), ("bob", "car", 48.85, 2.35)] {
        let dir = root.join("rec").join(user).join(device);
        std::fs::create_dir_all(&dir).unwrap();
        for (start, name) in months {
            let mut f = std::fs::File::create(dir.join(format!("{name}.rec"))).unwrap();
            for d in [0, 10, 20] {
                for (tst, la, lo, vel) in day(start + d * 86_400, lat, lon) {
                    let payload = format!(
                        r#"{{"_type":"location","lat":{la},"lon":{lo},"tst":{tst},"acc":8,"vel":{vel},"tid":"xx"}}"#
                    );
                    f.write_all(rec_line(tst, "*", &payload).as_bytes())
                        .unwrap();
                    fixes += 1;
                }
            }
        }
    }
    fixes
}

#[test]
fn a_recorder_tree_imports_with_its_trips_and_a_second_import_adds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fixes = recorder_tree(dir.path());
    assert_eq!(fixes, 2 * 3 * 3 * 100);
    let data = dir.path().join("data");
    let data_arg = data.display().to_string();
    let rec = dir.path().join("rec").display().to_string();
    let summary = import(&["--data-dir", &data_arg, &rec]);
    assert!(
        summary.starts_with("imported 1800 points from 6 files in "),
        "{summary}"
    );
    assert!(
        summary.contains("  positions: 1800 stored, 0 of them set aside by the filters\n"),
        "{summary}"
    );
    assert!(summary.contains("  skipped: 0"), "{summary}");
    let conn = db(&data);
    assert_eq!(
        rows(
            &conn,
            "SELECT user, device, count(*), min(tst), max(tst) FROM positions GROUP BY 1, 2 ORDER BY 1"
        ),
        [
            format!(
                "bob|car|900|1704092400|{}",
                1_704_092_400 + 80 * 86_400 + 4200
            ),
            format!(
                "jane|phone|900|1704092400|{}",
                1_704_092_400 + 80 * 86_400 + 4200
            )
        ]
    );
    // Each drive is a trip of 10 km, nine per device.
    assert_eq!(
        rows(
            &conn,
            "SELECT user, count(*), round(min(distance) / 1000), round(max(distance) / 1000) FROM trips GROUP BY 1 ORDER BY 1"
        ),
        ["bob|9|10|10", "jane|9|10|10"]
    );
    // Named by the offline geocoder: positions, trips' ends, stops.
    assert_eq!(
        rows(
            &conn,
            "SELECT user, start_place, start_cc, end_place, end_cc FROM trips GROUP BY 1, 2, 3, 4, 5 ORDER BY 1"
        ),
        [
            "bob|Paris, Ile-de-France|FR|Fontenay-sous-Bois, Ile-de-France|FR",
            "jane|Lyon, Rhone-Alpes|FR|Decines-Charpieu, Rhone-Alpes|FR"
        ]
    );
    assert_eq!(
        rows(
            &conn,
            "SELECT user, cc, count(*), count(place) FROM positions GROUP BY 1, 2 ORDER BY 1"
        ),
        ["bob|FR|900|900", "jane|FR|900|900"]
    );
    assert_eq!(
        rows(
            &conn,
            "SELECT user, place FROM positions WHERE tst = 1704092400 ORDER BY 1"
        ),
        ["bob|Paris, Ile-de-France", "jane|Lyon, Rhone-Alpes"]
    );
    assert_eq!(
        rows(
            &conn,
            "SELECT DISTINCT user, locality, cc FROM stops ORDER BY 1, 2"
        ),
        [
            "bob|Fontenay-sous-Bois, Ile-de-France|FR",
            "bob|Paris, Ile-de-France|FR",
            "jane|Decines-Charpieu, Rhone-Alpes|FR",
            "jane|Lyon, Rhone-Alpes|FR"
        ]
    );
    let again = import(&["--data-dir", &data_arg, &rec]);
    assert!(again.contains("  derived: nothing\n"), "{again}");
    for (table, n) in [("positions", 1800), ("trips", 18)] {
        assert_eq!(
            rows(&conn, &format!("SELECT count(*) FROM {table}")),
            [n.to_string()],
            "{table} after a second import"
        );
    }
}

#[test]
fn corpus_rec_lines_gpx_geojson_and_takeout_land_with_exact_values() {
    let dir = tempfile::tempdir().unwrap();
    // Dawarich's fixture of a Recorder month, rebuilt from the corpus.
    let corpus = std::fs::read_to_string(testdata("corpus/owntracks-payloads.ndjson")).unwrap();
    let rec = dir.path().join("rec/test/iphone/2024-03.rec");
    std::fs::create_dir_all(rec.parent().unwrap()).unwrap();
    let mut f = std::fs::File::create(&rec).unwrap();
    let mut lines = 0;
    for l in corpus.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        if !v["source"]
            .as_str()
            .unwrap()
            .contains("owntracks/2024-03.rec")
        {
            continue;
        }
        let p = &v["payload"];
        let topic = match p["_type"].as_str().unwrap() {
            "transition" => "event",
            "waypoint" => "waypoint",
            _ => "*",
        };
        let tst = p["tst"].as_i64().unwrap_or(1_709_300_000);
        f.write_all(rec_line(tst, topic, &p.to_string()).as_bytes())
            .unwrap();
        lines += 1;
    }
    drop(f);
    assert_eq!(lines, 13);
    let data = dir.path().join("data");
    let data_arg = data.display().to_string();
    let summary = import(&["--data-dir", &data_arg, rec.to_str().unwrap()]);
    assert!(
        summary.starts_with("imported 13 points from 1 files"),
        "{summary}"
    );
    let conn = db(&data);
    assert_eq!(
        rows(
            &conn,
            "SELECT (SELECT count(*) FROM positions), (SELECT count(*) FROM transitions WHERE source = 'device'), (SELECT count(*) FROM waypoints), (SELECT count(*) FROM device_events)"
        ),
        // Nine locations, three of them at one second: one row per
        // (device, tst), the latest received.
        ["7|2|1|1"]
    );
    assert_eq!(
        rows(&conn, "SELECT DISTINCT user, device FROM positions"),
        ["test|iphone"]
    );

    // GPX from a sports app: one track, two segments (a pause), times
    // with and without fractions, Garmin's speed extension ignored.
    let gpx = dir.path().join("run.gpx");
    std::fs::write(
        &gpx,
        r#"<?xml version="1.0" encoding="UTF-8"?>
<gpx creator="StravaGPX" version="1.1" xmlns="http://www.topografix.com/GPX/1/1" xmlns:gpxtpx="http://www.garmin.com/xmlschemas/TrackPointExtension/v1">
 <metadata><time>2024-04-02T06:00:00Z</time></metadata>
 <trk><name>Morning Run</name><type>running</type>
  <trkseg>
   <trkpt lat="45.7640000" lon="4.8357000"><ele>170.2</ele><time>2024-04-02T06:00:00Z</time><extensions><gpxtpx:TrackPointExtension><gpxtpx:hr>120</gpxtpx:hr></gpxtpx:TrackPointExtension></extensions></trkpt>
   <trkpt lat="45.7650000" lon="4.8357000"><ele>171.0</ele><time>2024-04-02T06:00:30.500Z</time></trkpt>
  </trkseg>
  <trkseg>
   <trkpt lat="45.7660000" lon="4.8357000"><ele>172.0</ele><time>2024-04-02T06:05:00Z</time></trkpt>
  </trkseg>
 </trk>
</gpx>"#,
    )
    .unwrap();
    let geojson = dir.path().join("points.geojson");
    std::fs::write(
        &geojson,
        r#"{"type":"FeatureCollection","features":[
          {"type":"Feature","geometry":{"type":"Point","coordinates":[2.35,48.85]},"properties":{"timestamp":"2024-04-03T10:00:00Z"}},
          {"type":"Feature","geometry":{"type":"Point","coordinates":[2.36,48.86]},"properties":{"tst":1712138460}}]}"#,
    )
    .unwrap();
    let takeout = dir.path().join("Records.json");
    std::fs::write(
        &takeout,
        r#"{"locations":[{"latitudeE7":488583300,"longitudeE7":22945000,"accuracy":20,"timestamp":"2024-04-04T10:00:00Z"},{"latitudeE7":488600000,"longitudeE7":22950000,"timestampMs":"1712224860000"}]}"#,
    )
    .unwrap();
    let timeline = dir.path().join("Timeline.json");
    std::fs::write(
        &timeline,
        r#"{"semanticSegments":[{"startTime":"2024-04-05T12:00:00.000+02:00","timelinePath":[{"point":"48.8583300°, 2.2945000°","time":"2024-04-05T12:05:00.000+02:00"}]}],"rawSignals":[{"position":{"LatLng":"48.8610000°, 2.2960000°","accuracyMeters":13,"timestamp":"2024-04-05T10:07:00.000Z"}}]}"#,
    )
    .unwrap();
    for (file, device) in [
        (&gpx, "watch"),
        (&geojson, "geo"),
        (&takeout, "pixel"),
        (&timeline, "pixel"),
    ] {
        import(&[
            "--data-dir",
            &data_arg,
            "--user",
            "jane",
            "--device",
            device,
            file.to_str().unwrap(),
        ]);
    }
    assert_eq!(
        rows(
            &conn,
            "SELECT device, tst, lat, lon, acc, alt FROM positions WHERE user = 'jane' ORDER BY tst"
        ),
        [
            "watch|1712037600|45.764|4.8357|NULL|170",
            "watch|1712037630|45.765|4.8357|NULL|171",
            "watch|1712037900|45.766|4.8357|NULL|172",
            "geo|1712138400|48.85|2.35|NULL|NULL",
            "geo|1712138460|48.86|2.36|NULL|NULL",
            "pixel|1712224800|48.85833|2.2945|20|NULL",
            "pixel|1712224860|48.86|2.295|NULL|NULL",
            "pixel|1712311500|48.85833|2.2945|NULL|NULL",
            "pixel|1712311620|48.861|2.296|13|NULL",
        ]
    );
}

#[test]
fn an_import_into_clickhouse_lands_once() {
    let dir = tempfile::tempdir().unwrap();
    recorder_tree(dir.path());
    let (url, database) = (clickhouse_url(), unique_db("import"));
    let rec = dir.path().join("rec/jane").display().to_string();
    let data = dir.path().join("data").display().to_string();
    let config = dir.path().join("ch.toml");
    std::fs::write(
        &config,
        format!("[clickhouse]\nurl = \"{url}\"\ndatabase = \"{database}\"\n"),
    )
    .unwrap();
    let cfg = config.display().to_string();
    for _ in 0..2 {
        import(&["--config", &cfg, "--data-dir", &data, &rec]);
    }
    let q = |sql: &str| ch_lines(&url, &database, sql).unwrap();
    assert_eq!(
        q("SELECT count(), uniqExact(tst) FROM positions FINAL WHERE user = 'jane'"),
        ["900\t900"]
    );
    assert_eq!(q("SELECT count() FROM trips FINAL"), ["9"]);
    assert_eq!(
        q("SELECT DISTINCT start_place, start_cc FROM trips FINAL"),
        ["Lyon, Rhone-Alpes\tFR"]
    );
}

/// Peak RSS (VmHWM, kB) of a running process.
fn peak_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

#[test]
fn a_2_gb_takeout_file_imports_in_flat_memory() {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("Records.json");
    // 250,000 records, each carrying 8 KB of activity guesses as real
    // exports do (there are fewer of them, but they are as long): 2 GB.
    let records = 250_000u64;
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        let activity: String = (0..120)
            .map(|i| {
                format!(
                    r#"{{"type":"ON_FOOT","confidence":{}}},{{"type":"STILL","confidence":{}}},"#,
                    i % 100,
                    (i * 7) % 100
                )
            })
            .collect::<String>();
        f.write_all(b"{\"locations\":[").unwrap();
        for i in 0..records {
            if i > 0 {
                f.write_all(b",").unwrap();
            }
            write!(
                f,
                r#"{{"latitudeE7":{},"longitudeE7":{},"accuracy":10,"activity":[{{"activity":[{}{{"type":"UNKNOWN","confidence":1}}],"timestamp":"2024-01-01T00:00:00Z"}}],"timestampMs":"{}"}}"#,
                450_000_000 + (i % 1000) as i64 * 10,
                48_000_000 + (i / 1000) as i64 * 10,
                activity,
                1_600_000_000_000u64 + i * 60_000
            )
            .unwrap();
        }
        f.write_all(b"]}").unwrap();
    }
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size > 2_000_000_000, "{size} bytes");
    let data = dir.path().join("data").display().to_string();
    let mut child = std::process::Command::new(otstream_bin())
        .args([
            "import",
            "--quiet",
            "--data-dir",
            &data,
            "--user",
            "big",
            "--device",
            "takeout",
        ])
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut peak = 0;
    let status = loop {
        if let Some(kb) = peak_rss_kb(child.id()) {
            peak = peak.max(kb);
        }
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    assert!(status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.starts_with(&format!("imported {records} points from 1 files")),
        "{summary}"
    );
    assert!(peak > 0 && peak < 200 * 1024, "peak RSS {peak} kB");
    assert_eq!(
        rows(&db(Path::new(&data)), "SELECT count(*) FROM positions"),
        [records.to_string()]
    );
}
