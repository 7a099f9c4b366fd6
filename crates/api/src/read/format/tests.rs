use super::json::{int, json_str};
use super::*;

#[test]
fn texts_and_integers_as_serde_json_writes_them() {
    for s in [
        "",
        "jane",
        "Café ☕",
        "a\"b",
        "back\\slash",
        "tab\there",
        "\u{1}",
        "\u{7f}",
        "line\n",
    ] {
        let mut out = Vec::new();
        json_str(&mut out, s);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            serde_json::to_string(s).unwrap()
        );
    }
    for v in [
        0,
        7,
        9,
        10,
        99,
        100,
        999,
        1000,
        -1,
        -999,
        i64::MIN,
        i64::MAX,
        1_700_000_000,
    ] {
        let mut out = Vec::new();
        int(&mut out, v);
        assert_eq!(String::from_utf8(out).unwrap(), v.to_string());
    }
}

fn fix(device: &str, tst: i64) -> Position {
    Position {
        user: "jane".into(),
        device: device.into(),
        tid: Some("JJ".into()),
        tst,
        lat: 48.85833,
        lon: 2.29513,
        alt: Some(35),
        batt: Some(41),
        inregions: vec!["home".into()],
        received_at: tst * 1000 + 123,
        ..Position::default()
    }
}

fn encode(format: Format, shape: Shape, rows: &[Position]) -> String {
    let mut e = PositionEncoder::new(format, shape, None);
    let mut out = Vec::new();
    e.begin(&mut out);
    for r in rows {
        e.row(r, &mut out);
    }
    e.end(&mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn calendar_round_trips() {
    assert_eq!(iso8601(1_497_508_651), "2017-06-15T06:37:31Z");
    assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
    assert_eq!(iso8601(253_402_300_799), "9999-12-31T23:59:59Z");
    assert_eq!(iso8601(253_402_300_800), "10000-01-01T00:00:00Z");
    assert_eq!(iso8601(-1), "1969-12-31T23:59:59Z");
    assert_eq!(day(-1), "1969-12-31");
    assert_eq!(civil(days_from_civil(2024, 2, 29)), (2024, 2, 29));
    for d in [-800_000, -1, 0, 59, 60, 11_016, 20_000, 2_932_896] {
        let (y, m, dd) = civil(d);
        assert_eq!(days_from_civil(y, m, dd), d);
    }
}

#[test]
fn every_format_of_two_devices() {
    let rows = [
        fix("a", 1_700_000_000),
        fix("a", 1_700_000_010),
        fix("b", 1_700_000_020),
    ];
    let json: serde_json::Value =
        serde_json::from_str(&encode(Format::Json, Shape::Otstream, &rows)).unwrap();
    assert_eq!(json[2]["device"], "b");
    assert_eq!(json[0]["inregions"][0], "home");
    assert_eq!(json[0]["received_at"], 1_700_000_000_123i64);
    let geo: serde_json::Value =
        serde_json::from_str(&encode(Format::GeoJson, Shape::Otstream, &rows)).unwrap();
    assert_eq!(geo["features"][1]["geometry"]["coordinates"][0], 2.29513);
    assert_eq!(geo["features"][1]["properties"]["tst"], 1_700_000_010);
    let line: serde_json::Value =
        serde_json::from_str(&encode(Format::LineString, Shape::Otstream, &rows)).unwrap();
    assert_eq!(line["features"].as_array().unwrap().len(), 2);
    assert_eq!(
        line["features"][0]["geometry"]["coordinates"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let rec: serde_json::Value =
        serde_json::from_str(&encode(Format::Json, Shape::Recorder, &rows)).unwrap();
    assert_eq!(rec["count"], 3);
    assert_eq!(rec["status"], 200);
    assert_eq!(rec["data"][0]["isotst"], "2023-11-14T22:13:20Z");
    assert_eq!(rec["data"][0]["disptst"], "2023-11-14 22:13:20");
    assert_eq!(rec["data"][0]["_type"], "location");
    let empty: serde_json::Value =
        serde_json::from_str(&encode(Format::LineString, Shape::Otstream, &[])).unwrap();
    assert_eq!(empty["features"].as_array().unwrap().len(), 0);
    let gpx = encode(Format::Gpx, Shape::Otstream, &rows);
    assert_eq!(gpx.matches("<trk>").count(), 2);
    assert!(gpx.contains("<trkpt lat=\"48.85833\" lon=\"2.29513\"><ele>35</ele><time>2023-11-14T22:13:20Z</time></trkpt>"));
    let csv = encode(Format::Csv, Shape::Otstream, &rows);
    assert_eq!(csv.lines().count(), 4);
    assert_eq!(
        csv.lines().nth(1).unwrap(),
        "jane,a,JJ,1700000000,2023-11-14T22:13:20Z,48.85833,2.29513,,35,,,,41,,,,,,,,,\"[\"\"home\"\"]\",,,1700000000123"
    );
}

#[test]
fn recorder_fields_project_the_location() {
    let mut out = Vec::new();
    let fields = vec!["tst".to_owned(), "isotst".to_owned()];
    recorder_location(&mut out, &fix("a", 1_700_000_000), Some(&fields));
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "{\"tst\":1700000000,\"isotst\":\"2023-11-14T22:13:20Z\"}"
    );
}

/// Parquet comes out as it is encoded (a row group at a time, the magic
/// with the first), and parquet's own reader reads back every row with its types.
#[test]
fn parquet_streams_row_groups_and_reads_back_typed() {
    use ::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use arrow_array::Array as _;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, Int32Type, TimestampMillisecondType};

    let n = parquet::ROW_GROUP + 10;
    let rows: Vec<Position> = (0..n)
        .map(|i| Position {
            user: "jane".into(),
            device: "phone".into(),
            tst: 1_700_000_000 + i as i64,
            lat: 48.0 + i as f64 * 1e-6,
            lon: 11.0,
            batt: (i % 2 == 0).then_some(80),
            inregions: if i == 1 {
                vec!["Home".into(), "Gym <b>".into()]
            } else {
                vec![]
            },
            received_at: 1_700_000_000_000 + i as i64,
            ..Position::default()
        })
        .collect();
    let mut enc = parquet::ParquetEncoder::<Position>::new();
    let mut out = Vec::new();
    enc.begin(&mut out);
    for r in &rows[..parquet::ROW_GROUP] {
        enc.row(r, &mut out);
    }
    let first_group = out.len();
    assert!(
        first_group > 4 && out.starts_with(b"PAR1"),
        "the first row group is out before the end"
    );
    for r in &rows[parquet::ROW_GROUP..] {
        enc.row(r, &mut out);
    }
    assert_eq!(out.len(), first_group, "the rest waits for its row group");
    enc.end(&mut out);
    assert_eq!(enc.content_type(), "application/vnd.apache.parquet");

    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(out))
        .unwrap()
        .build()
        .unwrap();
    let batches: Vec<_> = reader.map(Result::unwrap).collect();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), n);
    let b = &batches[0];
    let schema = b.schema();
    assert_eq!(
        schema
            .field_with_name("tst")
            .unwrap()
            .data_type()
            .to_string(),
        "Timestamp(ms, \"UTC\")"
    );
    let tst = b
        .column_by_name("tst")
        .unwrap()
        .as_primitive::<TimestampMillisecondType>();
    assert_eq!(tst.value(1), 1_700_000_001_000);
    let received = b
        .column_by_name("received_at")
        .unwrap()
        .as_primitive::<TimestampMillisecondType>();
    assert_eq!(received.value(3), 1_700_000_000_003);
    let lat = b
        .column_by_name("lat")
        .unwrap()
        .as_primitive::<Float64Type>();
    assert_eq!(lat.value(2), 48.0 + 2.0 * 1e-6);
    let batt = b
        .column_by_name("batt")
        .unwrap()
        .as_primitive::<Int32Type>();
    assert_eq!((batt.value(0), batt.is_null(1)), (80, true));
    let regions = b.column_by_name("inregions").unwrap().as_list::<i32>();
    let second = regions.value(1);
    let names = second.as_string::<i32>();
    assert_eq!(
        (names.value(0), names.value(1), regions.value(0).len()),
        ("Home", "Gym <b>", 0)
    );
}
