use super::*;

fn ctx(identity: Option<(&str, &str)>) -> Context {
    Context {
        received_at: 7,
        identity: identity.map(|(u, d)| Identity {
            user: u.into(),
            device: d.into(),
        }),
        topic_prefix: "owntracks".into(),
        bytes_read: None,
    }
}

/// What the file gives: each message as `topic-or-user/device payload`,
/// each skip as `skip: why`.
fn items(path: &Path, format: Format, ctx: &Context) -> Vec<String> {
    let mut out = Vec::new();
    read(path, format, ctx, &mut |item| {
        out.push(match item {
            Item::Message(m) => {
                let who = match (&m.hints.mqtt_topic, &m.hints.x_limit_u, &m.hints.x_limit_d) {
                    (Some(t), _, _) => t.clone(),
                    (None, Some(u), Some(d)) => format!("{u}/{d}"),
                    _ => "?".into(),
                };
                format!("{who} {}", String::from_utf8_lossy(&m.payload))
            }
            Item::Skipped(why) => format!("skip: {why}"),
        });
        true
    })
    .unwrap();
    out
}

fn file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn recorder_lines_keep_their_payload_and_take_the_device_from_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let p = file(
        dir.path(),
        "rec/jane/phone/2023-02.rec",
        "2023-02-20T18:46:22Z\t*                 \t{\"_type\":\"location\",\"lat\":22.0687934,\"lon\":24.7941786,\"tst\":1676918782,\"_http\":true}\n\
         2023-02-20T18:50:00Z\tevent             \t{\"_type\":\"transition\",\"event\":\"enter\",\"desc\":\"Home\",\"tst\":1676919000,\"lat\":22.06,\"lon\":24.79,\"acc\":10,\"t\":\"c\",\"wtst\":1}\n\
         \n\
         garbage\n",
    );
    assert_eq!(detect(&p, b""), Some(Format::Rec));
    assert_eq!(
        items(&p, Format::Auto, &ctx(None)),
        [
            r#"owntracks/jane/phone {"_type":"location","lat":22.0687934,"lon":24.7941786,"tst":1676918782,"_http":true}"#,
            r#"owntracks/jane/phone/event {"_type":"transition","event":"enter","desc":"Home","tst":1676919000,"lat":22.06,"lon":24.79,"acc":10,"t":"c","wtst":1}"#,
            "skip: rec line: not TIME<TAB>TOPIC<TAB>PAYLOAD",
        ]
    );
    // --user/--device win over the path.
    assert!(
        items(&p, Format::Rec, &ctx(Some(("bob", "car"))))[0].starts_with("owntracks/bob/car ")
    );
}

#[test]
fn gpx_tracks_of_several_segments_routes_and_waypoints_with_and_without_fractions() {
    let dir = tempfile::tempdir().unwrap();
    let p = file(
        dir.path(),
        "ride.gpx",
        r#"<?xml version="1.0" encoding="UTF-8"?>
<gpx version="1.1" creator="OsmAnd 4.6" xmlns="http://www.topografix.com/GPX/1/1">
  <wpt lat="45.75" lon="4.85"><name>no time</name></wpt>
  <wpt lat="45.76" lon="4.86"><time>2024-05-01T08:00:00Z</time></wpt>
  <trk><name>ride</name>
    <trkseg>
      <trkpt lat="45.7600" lon="4.8350"><ele>170.4</ele><time>2024-05-01T08:10:00Z</time><hdop>1.2</hdop><extensions><speed>5.0</speed></extensions></trkpt>
      <trkpt lat="45.7610" lon="4.8360"><ele>171</ele><time>2024-05-01T08:10:05.250Z</time></trkpt>
    </trkseg>
    <trkseg>
      <trkpt lat="45.7700" lon="4.8400"><time>2024-05-01T09:00:00+02:00</time></trkpt>
    </trkseg>
  </trk>
  <rte><rtept lat="45.78" lon="4.85"><time>2024-05-01T10:00:00Z</time></rtept></rte>
</gpx>"#,
    );
    assert_eq!(
        items(&p, Format::Auto, &ctx(Some(("jane", "bike")))),
        [
            r#"jane/bike {"_type":"location","tst":1714551000,"lat":45.76,"lon":4.835,"acc":6,"alt":170}"#,
            r#"jane/bike {"_type":"location","tst":1714551005,"lat":45.761,"lon":4.836,"alt":171}"#,
            r#"jane/bike {"_type":"location","tst":1714546800,"lat":45.77,"lon":4.84}"#,
            r#"jane/bike {"_type":"location","tst":1714557600,"lat":45.78,"lon":4.85}"#,
            "skip: GPX point without a time",
            r#"jane/bike {"_type":"location","tst":1714550400,"lat":45.76,"lon":4.86}"#,
        ]
    );
    // A GPX file needs a device.
    let e = read(&p, Format::Gpx, &ctx(None), &mut |_| true).unwrap_err();
    assert!(e.to_string().contains("give --user and --device"), "{e}");
}

#[test]
fn geojson_points_with_each_time_property() {
    let dir = tempfile::tempdir().unwrap();
    let p = file(
        dir.path(),
        "track.geojson",
        r#"{"type":"FeatureCollection","features":[
          {"type":"Feature","geometry":{"type":"Point","coordinates":[2.35,48.85,35]},"properties":{"timestamp":"2024-01-05T10:00:00Z","accuracy":12}},
          {"type":"Feature","geometry":{"type":"Point","coordinates":[2.36,48.86]},"properties":{"tst":1704448860,"speed":10}},
          {"type":"Feature","geometry":{"type":"Point","coordinates":[2.37,48.87]},"properties":{"time":1704448920000}},
          {"type":"Feature","geometry":{"type":"Point","coordinates":[2.38,48.88]},"properties":{}},
          {"type":"Feature","geometry":{"type":"LineString","coordinates":[[2.3,48.8],[2.4,48.9]]},"properties":{}}
        ]}"#,
    );
    assert_eq!(
        items(&p, Format::Auto, &ctx(Some(("jane", "phone")))),
        [
            r#"jane/phone {"_type":"location","tst":1704448800,"lat":48.85,"lon":2.35,"acc":12,"alt":35}"#,
            r#"jane/phone {"_type":"location","tst":1704448860,"lat":48.86,"lon":2.36,"vel":36}"#,
            r#"jane/phone {"_type":"location","tst":1704448920,"lat":48.87,"lon":2.37}"#,
            "skip: GeoJSON Point without a time (timestamp, time or tst)",
            "skip: GeoJSON feature that is not a Point",
        ]
    );
}

#[test]
fn takeout_records_and_the_timeline_export() {
    let dir = tempfile::tempdir().unwrap();
    let records = file(
        dir.path(),
        "Records.json",
        r#"{"locations":[
          {"latitudeE7":488583300,"longitudeE7":22945000,"accuracy":20,"velocity":3,"altitude":40,"heading":90,"activity":[{"activity":[{"type":"STILL","confidence":100}],"timestamp":"2024-01-05T10:00:00Z"}],"source":"WIFI","timestamp":"2024-01-05T10:00:00.123Z"},
          {"latitudeE7":488600000,"longitudeE7":22950000,"timestampMs":"1704448860000"},
          {"latitudeE7":-338688197,"longitudeE7":4292000000,"timestamp":"2024-01-05T10:02:00Z"},
          {"latitudeE7":488600000,"longitudeE7":22950000}
        ]}"#,
    );
    assert_eq!(
        items(&records, Format::Auto, &ctx(Some(("jane", "pixel")))),
        [
            r#"jane/pixel {"_type":"location","tst":1704448800,"lat":48.85833,"lon":2.2945,"acc":20,"alt":40,"vel":11,"cog":90}"#,
            r#"jane/pixel {"_type":"location","tst":1704448860,"lat":48.86,"lon":2.295}"#,
            r#"jane/pixel {"_type":"location","tst":1704448920,"lat":-33.8688197,"lon":-0.2967296}"#,
            "skip: Takeout record without a usable time and position",
        ]
    );
    let timeline = file(
        dir.path(),
        "Timeline.json",
        r#"{"semanticSegments":[
            {"startTime":"2024-01-05T11:00:00.000+01:00","endTime":"2024-01-05T12:00:00.000+01:00","visit":{"topCandidate":{"placeLocation":{"latLng":"48.8583°, 2.2945°"}}}},
            {"startTime":"2024-01-05T12:00:00.000+01:00","endTime":"2024-01-05T13:00:00.000+01:00","timelinePath":[
              {"point":"48.8583300°, 2.2945000°","time":"2024-01-05T12:05:00.000+01:00"},
              {"point":"48.8600000°, 2.2950000°","time":"2024-01-05T12:06:00.000+01:00"}]}],
          "rawSignals":[
            {"position":{"LatLng":"48.8610000°, 2.2960000°","accuracyMeters":13,"altitudeMeters":41.5,"source":"WIFI","timestamp":"2024-01-05T11:07:00.000Z","speedMetersPerSecond":1.5}},
            {"wifiScan":{"deliveryTime":"2024-01-05T11:08:00.000Z","devicesRecords":[]}}],
          "userLocationProfile":{"frequentPlaces":[]}}"#,
    );
    assert_eq!(
        items(&timeline, Format::Takeout, &ctx(Some(("jane", "pixel")))),
        [
            r#"jane/pixel {"_type":"location","tst":1704452700,"lat":48.85833,"lon":2.2945}"#,
            r#"jane/pixel {"_type":"location","tst":1704452760,"lat":48.86,"lon":2.295}"#,
            r#"jane/pixel {"_type":"location","tst":1704452820,"lat":48.861,"lon":2.296,"acc":13,"alt":42,"vel":5}"#,
        ]
    );
}

#[test]
fn recordings_and_stopping_midway() {
    let dir = tempfile::tempdir().unwrap();
    let p = file(
        dir.path(),
        "capture.ndjson",
        "{\"received_at\":5,\"transport\":\"mqtt\",\"topic\":\"owntracks/jane/phone\",\"payload\":{\"_type\":\"location\",\"lat\":1,\"lon\":2,\"tst\":3}}\n\
         {\"transport\":\"http\",\"headers\":{\"X-Limit-U\":\"bob\",\"X-Limit-D\":\"car\"},\"payload\":{\"_type\":\"location\",\"lat\":1,\"lon\":2,\"tst\":4}}\n\
         not json\n",
    );
    let got = items(&p, Format::Auto, &ctx(None));
    assert_eq!(got.len(), 3);
    assert_eq!(
        got[0],
        r#"owntracks/jane/phone {"_type":"location","lat":1,"lon":2,"tst":3}"#
    );
    assert_eq!(
        got[1],
        r#"bob/car {"_type":"location","lat":1,"lon":2,"tst":4}"#
    );
    assert!(got[2].starts_with("skip: recording line: "), "{}", got[2]);
    // An importer that stops takes no more.
    let mut n = 0;
    read(&p, Format::Recording, &ctx(None), &mut |_| {
        n += 1;
        false
    })
    .unwrap();
    assert_eq!(n, 1);
}
