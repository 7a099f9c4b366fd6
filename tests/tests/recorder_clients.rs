//! OwnTracks Recorder's clients against otstream: its WebSocket
//! `/ws/last`, `/api/0/last` as Recorder writes it, CORS for a frontend on
//! another origin, and the OwnTracks web frontend itself (a built copy of
//! its release, ../shared/clients/owntracks-frontend) in the real browser.

use std::collections::HashMap;
use std::time::Duration;

use otstream_tests::browser::Browser;
use otstream_tests::front::Front;
use otstream_tests::{Serve, get, header, root, wait_until};
use serde_json::{Value, json};
use tungstenite::client::IntoClientRequest as _;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// A 1x1 transparent PNG: the card's face, and every map tile.
const PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
    0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x00, 0x01, 0x00, 0x00,
    0x05, 0x00, 0x01, 0x0d, 0x0a, 0x2d, 0xb4, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae,
    0x42, 0x60, 0x82,
];

fn face() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(PNG)
}

fn basic(user: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{user}-pw"))
    )
}

fn now_s() -> i64 {
    otstream_model::raw::now_ms() / 1000
}

fn post(serve: &Serve, user: &str, device: &str, auth: Option<&str>, body: Value) {
    let mut headers = vec![("X-Limit-U", user), ("X-Limit-D", device)];
    let auth = auth.map(basic);
    if let Some(a) = &auth {
        headers.push(("Authorization", a));
    }
    let a = serve.post("/pub", &headers, body.to_string().as_bytes());
    assert_eq!(a.status, 200, "{}", a.body);
}

type Socket = WebSocket<MaybeTlsStream<std::net::TcpStream>>;

/// Opens `/ws/last` with `headers`: the socket, or the refusal's status.
fn open(serve: &Serve, headers: &[(&str, &str)]) -> Result<Socket, u16> {
    let mut req = format!("{}/ws/last", serve.url.replace("http://", "ws://"))
        .into_client_request()
        .unwrap();
    for (k, v) in headers {
        let name: tungstenite::http::HeaderName = k.parse().unwrap();
        req.headers_mut().insert(name, v.parse().unwrap());
    }
    match tungstenite::connect(req) {
        Ok((ws, _)) => {
            if let MaybeTlsStream::Plain(s) = ws.get_ref() {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            }
            Ok(ws)
        }
        Err(tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("/ws/last: {e}"),
    }
}

/// The next text message, as JSON (protocol pings are answered and skipped).
fn next_json(ws: &mut Socket) -> Value {
    loop {
        match ws.read().unwrap() {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn ws_last_sends_what_the_client_may_read_as_recorder_does_and_cors_allows_only_listed_origins() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    let lines: Vec<String> = ["jane", "bob"]
        .iter()
        .map(|u| format!("{u}:{}", bcrypt::hash(format!("{u}-pw"), 4).unwrap()))
        .collect();
    std::fs::write(&htpasswd, lines.join("\n")).unwrap();
    let frontend = "https://frontend.example.com";
    let serve = Serve::start(
        &dir.path().join("data"),
        &["--htpasswd", htpasswd.to_str().unwrap()],
        &[
            ("OTSTREAM_API__CORS_ORIGINS", &format!("[{frontend:?}]")),
            ("OTSTREAM_API__MAX_LIVE_STREAMS", "2"),
        ],
    )
    .unwrap();
    let t0 = now_s() - 600;
    post(
        &serve,
        "jane",
        "phone",
        Some("jane"),
        json!({"_type": "card", "name": "Jane", "face": face()}),
    );
    post(
        &serve,
        "jane",
        "phone",
        Some("jane"),
        json!({"_type": "location", "lat": 52.5, "lon": 13.4, "tst": t0, "tid": "jp", "acc": 12, "batt": 80}),
    );
    post(
        &serve,
        "bob",
        "car",
        Some("bob"),
        json!({"_type": "location", "lat": 48.1, "lon": 11.6, "tst": t0, "tid": "bc"}),
    );

    // /api/0/last as Recorder writes it: the topic it would have given an
    // HTTP fix, and the card merged in.
    let (s, _, body) = get(
        &format!("{}/api/0/last", serve.url),
        &[("Authorization", &basic("jane"))],
    );
    assert_eq!(s, 200, "{body}");
    let last: Value = serde_json::from_str(&body).unwrap();
    let jane = &last[0];
    assert_eq!(last.as_array().unwrap().len(), 1);
    for (k, v) in [
        ("_type", json!("location")),
        ("topic", json!("owntracks/jane/phone")),
        ("username", json!("jane")),
        ("device", json!("phone")),
        ("tid", json!("jp")),
        ("tst", json!(t0)),
        ("acc", json!(12)),
        ("batt", json!(80)),
        ("name", json!("Jane")),
        ("face", json!(face())),
    ] {
        assert_eq!(jane[k], v, "{k} in {jane}");
    }

    // The socket: LAST gives the last of each device jane may read; then
    // each location stored, bob's never.
    assert_eq!(open(&serve, &[]).err(), Some(401));
    assert_eq!(
        open(
            &serve,
            &[
                ("Authorization", &basic("jane")),
                ("Origin", "https://evil.example")
            ]
        )
        .err(),
        Some(403)
    );
    let mut ws = open(
        &serve,
        &[("Authorization", &basic("jane")), ("Origin", frontend)],
    )
    .unwrap();
    ws.send(Message::text("LAST")).unwrap();
    let got = next_json(&mut ws);
    assert_eq!(got, *jane);
    post(
        &serve,
        "bob",
        "car",
        Some("bob"),
        json!({"_type": "location", "lat": 48.2, "lon": 11.6, "tst": t0 + 60}),
    );
    post(
        &serve,
        "jane",
        "phone",
        Some("jane"),
        json!({"_type": "location", "lat": 52.51, "lon": 13.41, "tst": t0 + 60, "tid": "jp"}),
    );
    let got = next_json(&mut ws);
    assert_eq!(
        (
            &got["_type"],
            &got["topic"],
            &got["username"],
            &got["device"],
            &got["tst"],
            &got["lat"]
        ),
        (
            &json!("location"),
            &json!("owntracks/jane/phone"),
            &json!("jane"),
            &json!("phone"),
            &json!(t0 + 60),
            &json!(52.51)
        ),
        "{got}"
    );
    // Sockets count in the live budget: two open, the third is 503.
    let second = open(&serve, &[("Authorization", &basic("jane"))]).unwrap();
    assert_eq!(
        open(&serve, &[("Authorization", &basic("jane"))]).err(),
        Some(503)
    );
    drop(second);
    ws.close(None).unwrap();

    // CORS: the listed origin's preflight and reads are allowed, any
    // other gets no allow header.
    let preflight = |origin: &str| {
        let resp = ureq::request("OPTIONS", &format!("{}/api/0/last", serve.url))
            .set("Origin", origin)
            .set("Access-Control-Request-Method", "GET")
            .set("Access-Control-Request-Headers", "authorization")
            .call();
        match resp {
            Ok(r) | Err(ureq::Error::Status(_, r)) => (
                r.status(),
                r.header("access-control-allow-origin").map(str::to_owned),
                r.header("access-control-allow-headers").map(str::to_owned),
            ),
            Err(e) => panic!("{e}"),
        }
    };
    let (s, allow, headers) = preflight(frontend);
    assert_eq!((s, allow.as_deref()), (204, Some(frontend)));
    assert!(headers.unwrap().contains("Authorization"));
    assert_eq!(preflight("https://evil.example"), (403, None, None));
    let (_, h, _) = get(
        &format!("{}/api/0/last", serve.url),
        &[("Authorization", &basic("jane")), ("Origin", frontend)],
    );
    assert_eq!(header(&h, "access-control-allow-origin"), Some(frontend));
    assert_eq!(header(&h, "access-control-allow-credentials"), Some("true"));
    let (_, h, _) = get(
        &format!("{}/api/0/last", serve.url),
        &[
            ("Authorization", &basic("jane")),
            ("Origin", "https://evil.example"),
        ],
    );
    assert_eq!(header(&h, "access-control-allow-origin"), None);

    // At shutdown, an open socket is closed with "going away", promptly.
    // (The closed sockets' places come back as the server sees them go.)
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut ws = loop {
        match open(&serve, &[("Authorization", &basic("jane"))]) {
            Ok(ws) => break ws,
            Err(503) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(s) => panic!("/ws/last: {s}"),
        }
    };
    let stopping = std::time::Instant::now();
    let stopped = std::thread::spawn(move || serve.interrupt().unwrap());
    let close = loop {
        match ws.read() {
            Ok(Message::Close(frame)) => break frame.map(|f| u16::from(f.code)),
            Ok(_) => continue,
            Err(e) => panic!("no close frame: {e}"),
        }
    };
    assert_eq!(close, Some(1001));
    assert!(stopped.join().unwrap(), "serve did not exit cleanly");
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "{:?}",
        stopping.elapsed()
    );

    // `*` where reads are trusted by address is refused outright.
    let out = otstream_tests::run(&["check-config"], b"").unwrap();
    assert!(out.status.success());
    let out = std::process::Command::new(otstream_tests::otstream_bin())
        .args(["check-config"])
        .env("OTSTREAM_API__CORS_ORIGINS", r#"["*"]"#)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("api.cors_origins = [\"*\"] needs http.htpasswd"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_owntracks_frontend_shows_a_fix_posted_while_it_is_open_without_a_reload() {
    let dist = root().join("../shared/clients/owntracks-frontend/dist");
    assert!(
        dist.join("index.html").exists(),
        "the OwnTracks frontend's build is not at {}",
        dist.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(&dir.path().join("data"), &[], &[]).unwrap();
    let t0 = now_s() - 300;
    post(
        &serve,
        "jane",
        "phone",
        None,
        json!({"_type": "card", "name": "Jane", "face": face()}),
    );
    post(
        &serve,
        "jane",
        "phone",
        None,
        json!({"_type": "location", "lat": 52.5, "lon": 13.4, "tst": t0, "tid": "jp", "acc": 30}),
    );
    post(
        &serve,
        "bob",
        "car",
        None,
        json!({"_type": "location", "lat": 52.52, "lon": 13.45, "tst": t0, "tid": "bc", "acc": 30}),
    );

    // Served as its nginx template serves it: one origin, /api/ and /ws/
    // passed to otstream; its config points the map at local tiles.
    let mut overrides = HashMap::new();
    overrides.insert(
        "/config/config.js".to_owned(),
        b"window.owntracks = window.owntracks || {};\nwindow.owntracks.config = { map: { url: '/tiles/{z}/{x}/{y}.png' } };\n".to_vec(),
    );
    overrides.insert("/tiles/".to_owned(), PNG.to_vec());
    let upstream = serve.url.trim_start_matches("http://").parse().unwrap();
    let front = Front::start(dist, overrides, upstream).unwrap();
    let mut b = Browser::start(1280, 800).unwrap();
    b.navigate(&front.url).unwrap();
    let markers = "document.querySelectorAll('.leaflet-marker-icon').length";
    b.wait_for(&format!("{markers} === 2"), Duration::from_secs(20))
        .unwrap();
    // Once its socket is open, a fix of a third device appears by itself.
    wait_until("the frontend's /ws/last", Duration::from_secs(20), || {
        serve.metric(r#"otstream_api_requests_total{endpoint="recorder_ws",status="101"}"#)
            == Some(1.0)
    });
    post(
        &serve,
        "ann",
        "watch",
        None,
        json!({"_type": "location", "lat": 52.51, "lon": 13.425, "tst": t0 + 200, "tid": "aw", "acc": 30}),
    );
    b.wait_for(&format!("{markers} === 3"), Duration::from_secs(10))
        .unwrap();
    // Jane's popup shows her card: the name and the face.
    let mut shown = false;
    for i in 0..3 {
        b.eval(&format!(
            "document.querySelectorAll('.leaflet-marker-icon')[{i}].click(); true"
        ))
        .unwrap();
        let jane = "Array.from(document.querySelectorAll('.leaflet-popup-content')).some(p => p.textContent.includes('Jane') && p.querySelector('img[src^=\"data:image/png;base64,\"]'))";
        if b.wait_for(jane, Duration::from_secs(2)).is_ok() {
            shown = true;
            break;
        }
    }
    assert!(shown, "no marker's popup showed Jane's card with her face");
    std::thread::sleep(Duration::from_millis(400)); // the popup's fade-in
    b.screenshot(&root().join("target/screenshots/recorder-frontend.png"))
        .unwrap();
    let errors = b.errors().unwrap();
    assert!(
        errors.is_empty(),
        "the frontend reported errors: {errors:#?}"
    );
}
