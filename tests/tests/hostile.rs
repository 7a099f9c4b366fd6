//! The attacker's tests: what a device or a client can send, tried as an
//! attacker would, against real serve processes and a real browser.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use otstream_tests::browser::Browser;
use otstream_tests::raw::{quantile, request_from};
use otstream_tests::{Serve, get, header, root};
use serde_json::{Value, json};

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Markup that would show itself twice if it ever became markup: an
/// element of class `pwn` in the page, and (without the page's policy) a
/// script run setting `window.__pwned`.
fn xss(tag: &str) -> String {
    format!(
        "{tag}<img src=x class=pwn onerror=\"window.__pwned=1\"><script class=pwn>window.__pwned=2</script>"
    )
}

/// The same for a user or device name, which cannot hold a `/`.
fn xss_id(tag: &str) -> String {
    format!("{tag}<img src=x class=pwn onerror=\"window.__pwned=3\">")
}

#[test]
fn device_text_in_every_field_the_apps_send_is_shown_as_text_never_run_in_the_map() {
    let dir = tempfile::tempdir().unwrap();
    let fences = dir.path().join("fences.geojson");
    let (lat, lon) = (52.52, 13.405);
    std::fs::write(
        &fences,
        json!({"type": "FeatureCollection", "features": [{"type": "Feature",
            "properties": {"id": xss("fence-id"), "name": xss("fence"), "radius": 300},
            "geometry": {"type": "Point", "coordinates": [lon + 0.02, lat]}}]})
        .to_string(),
    )
    .unwrap();
    let serve = Serve::start(
        &dir.path().join("data"),
        &["--fences", fences.to_str().unwrap()],
        &[("OTSTREAM_API__TILE_URL", "")],
    )
    .unwrap();
    // The identity itself is the attacker's: user and device names.
    let (user, device) = (xss_id("u"), xss_id("d"));
    let ids = [("X-Limit-U", user.as_str()), ("X-Limit-D", device.as_str())];
    let now = now_s();
    let post = |body: Value| {
        let a = serve.post("/pub", &ids, body.to_string().as_bytes());
        assert_eq!(a.status, 200, "{body}: {}", a.body);
    };
    post(
        json!({"_type": "location", "lat": lat, "lon": lon, "tst": now - 120, "tid": xss("t"),
        "SSID": xss("ssid"), "BSSID": xss("bssid"), "inregions": [xss("inregion")], "inrids": [xss("inrid")],
        "batt": 50, "acc": 10}),
    );
    post(json!({"_type": "card", "name": xss("card"), "face": xss("face")}));
    post(json!({"_type": "waypoints", "waypoints": [
        {"_type": "waypoint", "desc": xss("region"), "rid": xss("rid"), "lat": lat + 0.01, "lon": lon, "rad": 200, "tst": now - 9000}]}));
    post(
        json!({"_type": "waypoint", "desc": xss("waypoint"), "lat": lat - 0.01, "lon": lon, "rad": 100, "tst": now - 8000}),
    );
    post(
        json!({"_type": "transition", "event": "leave", "desc": xss("transition"), "lat": lat, "lon": lon,
        "tst": now - 100, "wtst": now - 9000, "acc": 10, "t": "c"}),
    );
    post(json!({"_type": "lwt", "tst": now - 90}));
    post(json!({"_type": "status", "android": {"hib": xss("status")}}));

    // The page's answer carries a policy that would stop a slip.
    let (status, headers, _) = get(&format!("{}/map", serve.url), &[]);
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "content-security-policy"),
        Some(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )
    );
    assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));
    assert_eq!(header(&headers, "referrer-policy"), Some("no-referrer"));
    assert_eq!(header(&headers, "x-frame-options"), Some("DENY"));
    let (_, headers, _) = get(&format!("{}/api/v1/devices", serve.url), &[]);
    assert_eq!(
        header(&headers, "content-security-policy"),
        Some("default-src 'none'; frame-ancestors 'none'; sandbox")
    );
    assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));

    // Loopback reads are trusted only when they name a loopback host and
    // came through no proxy: a DNS-rebinding page (its own host name) or a
    // local reverse proxy (forwarding headers) reads nothing.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = std::net::IpAddr::from([127, 0, 0, 1]);
    for (headers, want) in [
        (vec![], 200),
        (vec![("Host", "localhost:5144")], 200),
        (vec![("Host", "evil.example:5144")], 403),
        (vec![("Host", "127.0.0.1.evil.example")], 403),
        (vec![("X-Forwarded-For", "203.0.113.9")], 403),
        (vec![("Forwarded", "for=203.0.113.9")], 403),
        (vec![("X-Real-IP", "203.0.113.9")], 403),
    ] {
        let (status, _) = rt.block_on(request_from(
            local,
            server_addr(&serve),
            "GET",
            "/api/v1/devices",
            &headers,
            b"",
        ));
        assert_eq!(status, want, "{headers:?}");
    }

    let mut b = Browser::start(1280, 800).unwrap();
    b.navigate(&format!("{}/map", serve.url)).unwrap();
    b.wait_for(
        "document.body.dataset.loaded === '1' && document.body.dataset.waypoints === '2'",
        Duration::from_secs(10),
    )
    .unwrap();
    b.wait_for(
        "document.getElementById('status').textContent === 'live'",
        Duration::from_secs(10),
    )
    .unwrap();
    // Every tooltip the page binds opens on a hover: hover everything.
    b.eval("document.querySelectorAll('.leaflet-interactive').forEach(e => e.dispatchEvent(new MouseEvent('mouseover', {bubbles: true}))); true").unwrap();
    // A fix into the device's own region: the server's transition, named
    // by the region's description, opens the marker's tooltip by itself.
    post(
        json!({"_type": "location", "lat": lat + 0.01, "lon": lon, "tst": now - 10, "tid": xss("t"), "acc": 10}),
    );
    b.wait_for(
        "Array.from(document.querySelectorAll('.leaflet-tooltip')).some(t => t.textContent.includes(' · enter region<img'))",
        Duration::from_secs(10),
    )
    .unwrap();
    b.eval("document.querySelector('#devices li').click(); true")
        .unwrap();
    b.wait_for(
        "document.getElementById('detail-title').textContent.startsWith('card<img')",
        Duration::from_secs(10),
    )
    .unwrap();

    // Nothing became markup, nothing ran; the text is there as text.
    assert_eq!(
        b.eval("document.querySelectorAll('.pwn').length").unwrap(),
        json!(0)
    );
    assert_eq!(b.eval("typeof window.__pwned").unwrap(), json!("undefined"));
    let shown = b.eval("document.body.innerText").unwrap();
    let shown = shown.as_str().unwrap();
    for text in [xss("card"), format!("{user}/{device}"), xss("inregion")] {
        assert!(
            shown.contains(&text),
            "{text:?} not shown as text in:\n{shown}"
        );
    }
    let tooltips = b
        .eval("Array.from(document.querySelectorAll('.leaflet-tooltip')).map(t => t.textContent)")
        .unwrap();
    let tooltips = tooltips.to_string();
    for text in [
        xss("fence"),
        xss("region"),
        xss("waypoint"),
        format!("{user}/{device}"),
    ] {
        let quoted = serde_json::to_string(&text).unwrap();
        assert!(
            tooltips.contains(&quoted[1..quoted.len() - 1]),
            "{text:?} not in a tooltip as text: {tooltips}"
        );
    }
    let shot = root().join("target/screenshots/hostile-map.png");
    b.screenshot(&shot).unwrap();
    let errors = b.errors().unwrap();
    assert!(errors.is_empty(), "the page reported errors: {errors:#?}");
}

fn basic(cred: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(cred)
    )
}

fn server_addr(serve: &Serve) -> std::net::SocketAddr {
    serve.url.trim_start_matches("http://").parse().unwrap()
}

/// Phones posting their fixes one after another for `span`, each from
/// `source` with its (already verified) credentials; their latencies.
async fn phones_posting(
    server: std::net::SocketAddr,
    source: std::net::IpAddr,
    auth: &str,
    span: Duration,
    tst0: i64,
) -> Vec<Duration> {
    phones_posting_until(server, source, auth, span, tst0, Default::default()).await
}

/// [`phones_posting`] on a thread and runtime of its own: the phone's
/// latencies are the server's, not the test's own tasks' (400 guesses
/// being spawned on the test's runtime would delay the phone's client).
fn phone_thread(
    server: std::net::SocketAddr,
    source: std::net::IpAddr,
    auth: String,
    span: Duration,
    tst0: i64,
) -> std::thread::JoinHandle<Vec<Duration>> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(phones_posting(server, source, &auth, span, tst0))
    })
}

/// [`phones_posting`], stopped early once `stop` is set.
async fn phones_posting_until(
    server: std::net::SocketAddr,
    source: std::net::IpAddr,
    auth: &str,
    span: Duration,
    tst0: i64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<Duration> {
    let started = std::time::Instant::now();
    let mut latencies = Vec::new();
    let mut i = 0;
    while started.elapsed() < span && !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let body =
            json!({"_type": "location", "lat": 52.5, "lon": 13.4, "tst": tst0 + i, "tid": "ph"})
                .to_string();
        let (status, took) = request_from(
            source,
            server,
            "POST",
            "/pub",
            &[
                ("Authorization", auth),
                ("X-Limit-U", "fleet"),
                ("X-Limit-D", "phone"),
            ],
            body.as_bytes(),
        )
        .await;
        assert_eq!(status, 200, "a phone's fix was not taken");
        latencies.push(took);
        i += 1;
    }
    latencies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_guesses_is_counted_before_bcrypt_and_never_locks_out_the_owner_or_slows_phones()
{
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    // bcrypt at cost 10, as `htpasswd -B` makes it.
    let hash = bcrypt::hash("s3cret", 10).unwrap();
    std::fs::write(&htpasswd, format!("jane:{hash}\nfleet:{hash}\n")).unwrap();
    let serve = Serve::start(
        &dir.path().join("data"),
        &["--htpasswd", htpasswd.to_str().unwrap()],
        &[],
    )
    .unwrap();
    let server = server_addr(&serve);
    let phone = std::net::IpAddr::from([127, 0, 0, 3]);
    let fleet = basic("fleet:s3cret");
    let now = now_s();
    // The phone's credentials are verified once.
    let warm = phones_posting(
        server,
        phone,
        &fleet,
        Duration::from_millis(200),
        now - 20_000,
    )
    .await;
    assert!(!warm.is_empty());
    // The exact statuses and counts hold in every trial. The phones' p99
    // must stay within twice the same trial's baseline plus 5 ms, in one
    // of three trials: accepting and refusing 400 connections at once is
    // work on a 2-core machine that the phones share (their p99 goes from
    // 1.5 ms to 3-5 ms here; benches/login_burst.sh measures it, see
    // BENCHMARKS.md), where a server that checked every guess (400 bcrypt
    // runs, 20 s of CPU) kept them waiting for seconds. Twice the baseline
    // alone failed one CI run in three on this noise.
    let mut trials = Vec::new();
    for trial in 0..3u8 {
        let attacker = std::net::IpAddr::from([127, 0, 1, trial]);
        let owner = std::net::IpAddr::from([127, 0, 2, trial]);
        let tst0 = now - 19_000 + i64::from(trial) * 5_000;
        let checked_before = metric0(&serve, "otstream_auth_checks_total{outcome=\"failed\"}");
        let mut baseline = phone_thread(server, phone, fleet.clone(), Duration::from_secs(1), tst0)
            .join()
            .unwrap();
        // 400 wrong passwords for jane at once from one address, while
        // the phone goes on posting.
        let wrong = basic("jane:guess");
        let guesses: Vec<_> = (0..400)
            .map(|_| {
                let wrong = wrong.clone();
                tokio::spawn(async move {
                    request_from(
                        attacker,
                        server,
                        "POST",
                        "/pub",
                        &[("Authorization", wrong.as_str())],
                        b"{}",
                    )
                    .await
                    .0
                })
            })
            .collect();
        let during = phone_thread(
            server,
            phone,
            fleet.clone(),
            Duration::from_secs(2),
            tst0 + 1_000,
        );
        let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
        for g in guesses {
            *statuses.entry(g.await.unwrap()).or_default() += 1;
        }
        let during = tokio::task::spawn_blocking(move || during.join().unwrap())
            .await
            .unwrap();
        let checked = statuses.get(&401).copied().unwrap_or(0);
        // Only refusals: ten checks (a few more as the bucket refills
        // while the burst lands), the rest 429 unchecked.
        assert_eq!(
            statuses.keys().copied().collect::<Vec<_>>(),
            [401, 429],
            "{statuses:?}"
        );
        assert!((10..=14).contains(&checked), "{statuses:?}");
        // Every bcrypt run is counted: no more ran than were answered 401.
        let failed = metric0(&serve, "otstream_auth_checks_total{outcome=\"failed\"}");
        assert_eq!(failed - checked_before, checked as f64);
        // The owner, from elsewhere, right after the burst: let in.
        let (status, _) = request_from(
            owner,
            server,
            "POST",
            "/pub",
            &[
                ("Authorization", basic("jane:s3cret").as_str()),
                ("X-Limit-D", "phone"),
            ],
            json!({"_type": "location", "lat": 52.5, "lon": 13.4, "tst": tst0})
                .to_string()
                .as_bytes(),
        )
        .await;
        assert_eq!(
            status, 200,
            "the owner was locked out by a third party's guesses"
        );
        // An unknown user costs one check, as a known one does.
        let (status, _) = request_from(
            owner,
            server,
            "POST",
            "/pub",
            &[("Authorization", basic("nobody:x").as_str())],
            b"{}",
        )
        .await;
        assert_eq!(status, 401);
        assert_eq!(
            metric0(&serve, "otstream_auth_checks_total{outcome=\"failed\"}"),
            failed + 1.0
        );
        baseline.extend(
            phone_thread(
                server,
                phone,
                fleet.clone(),
                Duration::from_secs(1),
                tst0 + 3_000,
            )
            .join()
            .unwrap(),
        );
        let (p99_base, p99_during) = (quantile(&baseline, 0.99), quantile(&during, 0.99));
        eprintln!(
            "trial {trial}: phones' baseline p50 {:?} p99 {p99_base:?} ({} fixes), during the burst p50 {:?} p99 {p99_during:?} ({} fixes); guesses {statuses:?}",
            quantile(&baseline, 0.5),
            baseline.len(),
            quantile(&during, 0.5),
            during.len()
        );
        trials.push((p99_base, p99_during));
        if p99_during <= p99_base * 2 + Duration::from_millis(5) {
            return;
        }
    }
    panic!(
        "the phones' p99 passed twice the baseline plus 5 ms during each burst (baseline, during): {trials:?}"
    );
}

/// GET `path` with an `Authorization` header: status and body.
fn get_with(serve: &Serve, path: &str, auth: &str) -> (u16, String) {
    let resp = match ureq::get(&format!("{}{path}", serve.url))
        .set("Authorization", auth)
        .call()
    {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{path}: {e}"),
    };
    (resp.status(), resp.into_string().unwrap())
}

/// `user/device` of each row of a JSON array answer.
fn device_keys(body: &str) -> Vec<String> {
    let rows: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    rows.as_array()
        .unwrap()
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["user"].as_str().unwrap(),
                d["device"].as_str().unwrap()
            )
        })
        .collect()
}

/// What `otstream` prints for `args` (it must succeed).
fn printed(args: &[&str]) -> String {
    let out = otstream_tests::run(args, b"").unwrap();
    assert!(
        out.status.success(),
        "otstream {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn a_fleet_reads_by_role_token_and_share_link_and_a_revoked_or_forged_token_reads_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let pw: Vec<String> = ["acme", "other", "dispatch", "boss"]
        .iter()
        .map(|u| format!("{u}:{}", bcrypt::hash(format!("{u}-pw"), 4).unwrap()))
        .collect();
    std::fs::write(path("htpasswd"), pw.join("\n")).unwrap();
    std::fs::write(path("secret"), printed(&["token", "secret"])).unwrap();
    std::fs::write(path("revoked"), "# revoked tokens\n").unwrap();
    let fence = |id: &str, props: Value| {
        let mut p = json!({"id": id, "radius": 100});
        p.as_object_mut()
            .unwrap()
            .extend(props.as_object().unwrap().clone());
        json!({"type": "Feature", "properties": p, "geometry": {"type": "Point", "coordinates": [13.4, 52.5]}})
    };
    std::fs::write(
        path("fences.geojson"),
        json!({"type": "FeatureCollection", "features": [
            fence("depot", json!({})),
            fence("acme-yard", json!({"user": "acme"})),
            fence("other-home", json!({"user": "other", "device": "phone"})),
        ]})
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        path("otstream.toml"),
        format!(
            r#"[http]
htpasswd = {htpasswd:?}

[access]
groups = {{ vans = ["acme/van1", "acme/van2"] }}
viewers = {{ dispatch = ["vans"] }}
admins = ["boss"]
token_secret_file = {secret:?}
revoked_file = {revoked:?}

[api]
tile_url = ""
"#,
            htpasswd = path("htpasswd"),
            secret = path("secret"),
            revoked = path("revoked"),
        ),
    )
    .unwrap();
    let config = path("otstream.toml");
    let serve = Serve::start(
        &dir.path().join("data"),
        &["--config", &config, "--fences", &path("fences.geojson")],
        &[],
    )
    .unwrap();
    let now = now_s();
    for (user, device) in [
        ("acme", "van1"),
        ("acme", "van2"),
        ("acme", "car"),
        ("other", "phone"),
    ] {
        let a = serve.post(
            "/pub",
            &[
                ("Authorization", &basic(&format!("{user}:{user}-pw"))),
                ("X-Limit-U", user),
                ("X-Limit-D", device),
            ],
            json!({"_type": "location", "lat": 52.5, "lon": 13.4, "tst": now - 60})
                .to_string()
                .as_bytes(),
        );
        assert_eq!(a.status, 200, "{}", a.body);
    }

    // A viewer reads its group and never publishes; the admin reads all.
    let dispatch = basic("dispatch:dispatch-pw");
    let (s, body) = get_with(&serve, "/api/v1/devices", &dispatch);
    assert_eq!(
        (s, device_keys(&body)),
        (200, vec!["acme/van1".into(), "acme/van2".into()])
    );
    assert_eq!(
        get_with(&serve, "/api/v1/positions?user=acme&device=car", &dispatch).0,
        403
    );
    let a = serve.post(
        "/pub",
        &[("Authorization", &dispatch)],
        b"{\"_type\":\"location\",\"lat\":1,\"lon\":2,\"tst\":5}",
    );
    assert_eq!(a.status, 403, "{}", a.body);
    let (_, body) = get_with(&serve, "/api/v1/devices", &basic("boss:boss-pw"));
    assert_eq!(
        device_keys(&body),
        ["acme/car", "acme/van1", "acme/van2", "other/phone"]
    );

    // Fences: those for everyone and those that apply to the reader.
    let fence_ids = |auth: &str| {
        let (s, body) = get_with(&serve, "/api/v1/fences", auth);
        assert_eq!(s, 200, "{body}");
        let doc: Value = serde_json::from_str(&body).unwrap();
        let mut ids: Vec<String> = doc["features"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["properties"]["id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(fence_ids(&basic("acme:acme-pw")), ["acme-yard", "depot"]);
    assert_eq!(fence_ids(&basic("other:other-pw")), ["depot", "other-home"]);

    // A token for Home Assistant: one device, last position only.
    let ha = format!(
        "Bearer {}",
        printed(&[
            "token",
            "create",
            "--id",
            "ha",
            "--devices",
            "acme/van1",
            "--last-only",
            "--expires",
            "1h",
            "--config",
            &config
        ])
    );
    let (s, body) = get_with(&serve, "/api/v1/devices", &ha);
    assert_eq!((s, device_keys(&body)), (200, vec!["acme/van1".into()]));
    assert_eq!(
        get_with(&serve, "/api/v1/positions?user=acme&device=van1", &ha).0,
        403
    );
    assert_eq!(
        serve.post("/pub", &[("Authorization", &ha)], b"{}").status,
        403
    );
    // A tracker's token publishes as acme, and reads nothing.
    let tracker = format!(
        "Bearer {}",
        printed(&[
            "token",
            "create",
            "--id",
            "tracker",
            "--publish",
            "acme",
            "--expires",
            "1h",
            "--config",
            &config
        ])
    );
    let a = serve.post(
        "/pub",
        &[
            ("Authorization", &tracker),
            ("X-Limit-U", "acme"),
            ("X-Limit-D", "van3"),
        ],
        json!({"_type": "location", "lat": 52.5, "lon": 13.4, "tst": now - 30})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(get_with(&serve, "/api/v1/devices", &tracker).0, 403);
    // A forged token (claims edited, signature kept) is refused.
    let forged = {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let token = ha.trim_start_matches("Bearer ");
        let parts: Vec<&str> = token.split('.').collect();
        let mut claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
        claims["devices"] = json!(["*"]);
        format!(
            "Bearer {}.{}.{}",
            parts[0],
            b64.encode(claims.to_string()),
            parts[2]
        )
    };
    assert_eq!(get_with(&serve, "/api/v1/devices", &forged).0, 401);

    // A share link: one device, opened without a password, read-only.
    let link = printed(&[
        "share",
        "--device",
        "acme/van2",
        "--expires",
        "4h",
        "--id",
        "customer",
        "--url",
        &serve.url,
        "--config",
        &config,
    ]);
    let (page, token) = link.split_once('#').unwrap();
    assert_eq!(page, format!("{}/share", serve.url));
    let shared = format!("Bearer {token}");
    let (s, body) = get_with(&serve, "/api/v1/devices", &shared);
    assert_eq!((s, device_keys(&body)), (200, vec!["acme/van2".into()]));
    for path in [
        "/api/v1/positions?user=acme&device=van2",
        "/api/v1/fences",
        "/api/0/list",
        "/api/v1/summary",
    ] {
        assert_eq!(get_with(&serve, path, &shared).0, 403, "{path}");
    }
    assert_eq!(
        serve
            .post("/pub", &[("Authorization", &shared)], b"{}")
            .status,
        403
    );
    let mut b = Browser::start(1024, 700).unwrap();
    b.navigate(&link).unwrap();
    b.wait_for(
        "document.body.dataset.loaded === '1'",
        Duration::from_secs(10),
    )
    .unwrap();
    b.wait_for(
        "document.getElementById('status').textContent.startsWith('shared until ')",
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(
        b.eval("Array.from(document.querySelectorAll('#devices li')).map(l => l.dataset.key)")
            .unwrap(),
        json!(["acme/van2"])
    );
    b.screenshot(&root().join("target/screenshots/share.png"))
        .unwrap();
    let errors = b.errors().unwrap();
    assert!(
        errors.is_empty(),
        "the shared page reported errors: {errors:#?}"
    );

    // Streams opened with the token before it is revoked: a socket and
    // a live feed.
    let mut ws = {
        use tungstenite::client::IntoClientRequest as _;
        let mut req = format!("{}/ws/last", serve.url.replace("http://", "ws://"))
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("authorization", ha.parse().unwrap());
        let (ws, _) = tungstenite::connect(req).unwrap();
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        }
        ws
    };
    let feed = ureq::get(&format!("{}/api/v1/live", serve.url))
        .set("Authorization", &ha)
        .timeout(Duration::from_secs(20))
        .call()
        .unwrap();
    let mut feed = std::io::BufReader::new(feed.into_reader());

    // Revoked: the next read after the list changes is refused.
    std::fs::write(path("revoked"), "# revoked tokens\nha\ncustomer\n").unwrap();
    otstream_tests::wait_until("the revocation to be read", Duration::from_secs(5), || {
        get_with(&serve, "/api/v1/devices", &ha).0 == 401
    });
    assert_eq!(get_with(&serve, "/api/v1/devices", &shared).0, 401);
    assert_eq!(
        get_with(&serve, "/api/v1/devices", &basic("boss:boss-pw")).0,
        200
    );
    // The open streams end too (they check again every 5 s): the socket
    // with a policy close, the feed with a last `revoked` event.
    let close = loop {
        match ws.read() {
            Ok(tungstenite::Message::Close(f)) => break f.map(|f| u16::from(f.code)),
            Ok(_) => continue,
            Err(e) => panic!("/ws/last was not closed: {e}"),
        }
    };
    assert_eq!(close, Some(1008));
    let mut line = String::new();
    loop {
        line.clear();
        use std::io::BufRead as _;
        let n = feed.read_line(&mut line).unwrap();
        assert!(n > 0, "the live feed ended without saying it was revoked");
        if line.trim() == "event: revoked" {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_regions_keeps_the_device_state_bounded_and_other_phones_answered() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(&dir.path().join("data"), &[], &[]).unwrap();
    let server = server_addr(&serve);
    let phone = std::net::IpAddr::from([127, 0, 0, 3]);
    let attacker = std::net::IpAddr::from([127, 0, 0, 2]);
    let now = now_s();
    let anonymous = "Basic Zmxvb2Q6eA=="; // not checked without htpasswd
    let mut baseline = phones_posting(
        server,
        phone,
        anonymous,
        Duration::from_secs(1),
        now - 30_000,
    )
    .await;
    let rss_before = serve.rss_kib();
    // Six waypoints messages of 3,200 new regions each (244 KB), one
    // after another, while the phone posts.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let during = tokio::spawn(phones_posting_until(
        server,
        phone,
        anonymous,
        Duration::from_secs(60),
        now - 29_000,
        stop.clone(),
    ));
    let mut answers = Vec::new();
    for m in 0..6 {
        let regions: Vec<Value> = (0..3_200)
            .map(|i| {
                json!({"desc": format!("r{i}"), "lat": 52 + i % 7, "lon": 13, "rad": 100,
                    "tst": now - 20_000 + i64::from(i), "rid": format!("{m}-{i}")})
            })
            .collect();
        let body = json!({"_type": "waypoints", "waypoints": regions}).to_string();
        let (status, took) = request_from(
            attacker,
            server,
            "POST",
            "/pub",
            &[("X-Limit-U", "mallory"), ("X-Limit-D", "flood")],
            body.as_bytes(),
        )
        .await;
        answers.push((status, body.len(), took));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let during = during.await.unwrap();
    baseline.extend(
        phones_posting(
            server,
            phone,
            anonymous,
            Duration::from_secs(1),
            now - 25_000,
        )
        .await,
    );
    let rss_after = serve.rss_kib();
    let (p99_base, p99_during) = (quantile(&baseline, 0.99), quantile(&during, 0.99));
    eprintln!(
        "flood: {answers:?}; phones p99 {p99_base:?} -> {p99_during:?} ({} fixes during); rss {rss_before} -> {rss_after} KiB",
        during.len()
    );
    assert!(answers.iter().all(|a| a.0 == 200), "{answers:?}");
    assert_eq!(
        metric0(
            &serve,
            "otstream_rejected_total{stage=\"geofence\",reason=\"too_many_regions\"}"
        ),
        f64::from(6 * 3_200 - 256)
    );
    // Every region is stored as a waypoint; the first 256 are the
    // device's regions, in one snapshot of under 100 bytes each.
    let db = serve.db();
    let stored: i64 = db
        .query_row(
            "SELECT count(*) FROM waypoints WHERE user = 'mallory'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stored, 6 * 3_200);
    let state: String = db
        .query_row(
            "SELECT state FROM device_state WHERE user = 'mallory' AND device = 'flood' AND kind = 'waypoints'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let regions: Vec<Value> = serde_json::from_str(&state).unwrap();
    assert_eq!(regions.len(), 256);
    assert_eq!(regions[255]["id"], "wp:0-255");
    assert!(state.len() < 256 * 100, "{} bytes of state", state.len());
    // Memory: the messages came and went (serve grew to 900 MB before).
    assert!(
        rss_after < rss_before + 64 * 1024,
        "serve grew from {rss_before} to {rss_after} KiB"
    );
    // Each message is linear work (before, each cost more than the last:
    // 44 s of CPU for six, and 503s for every phone), and a phone waits
    // for at most the one message stored with its fix, never for the
    // flood: the bound is twice the baseline plus one message's time.
    let slowest = answers.iter().map(|a| a.2).max().unwrap();
    assert!(slowest < Duration::from_secs(1), "{answers:?}");
    assert!(
        p99_during <= p99_base * 2 + slowest,
        "phones p99 {p99_base:?} -> {p99_during:?}, a flood message took {slowest:?}"
    );
}

/// A series of /metrics (`name{labels}` as written); 0 when absent.
fn metric0(serve: &Serve, series: &str) -> f64 {
    serve.metric(series).unwrap_or(0.0)
}

/// Opens a connection from `source` and sends `head` (a request's start,
/// or nothing); the open stream.
async fn open(
    source: std::net::IpAddr,
    server: std::net::SocketAddr,
    head: &str,
) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt as _;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(std::net::SocketAddr::new(source, 0)).unwrap();
    let mut stream = socket.connect(server).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// The status line's code of what `stream` answers first.
async fn status_of(stream: &mut tokio::net::TcpStream) -> u16 {
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n])
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_streams_idle_connections_and_the_metrics_listener_meet_their_budgets() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("otstream.toml");
    let hook = "http://127.0.0.1:9/services/T000/B000/hook-secret-in-the-path";
    std::fs::write(
        &config,
        format!(
            "[http]\nmax_connections = 4\nheader_timeout_ms = 1000\n[api]\nmax_live_streams = 3\n\
             [[events.webhooks]]\nurl = {hook:?}\n"
        ),
    )
    .unwrap();
    let serve = Serve::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
        &[],
    )
    .unwrap();
    let server = server_addr(&serve);
    let local = std::net::IpAddr::from([127, 0, 0, 1]);
    let live = format!("GET /api/v1/live HTTP/1.1\r\nHost: {server}\r\n\r\n");
    // Three live streams: their own budget, out of the listener's four
    // connection places; the fourth stream is refused, not queued.
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut s = open(local, server, &live).await;
        assert_eq!(status_of(&mut s).await, 200);
        streams.push(s);
    }
    let mut fourth = open(local, server, &live).await;
    assert_eq!(status_of(&mut fourth).await, 503);
    // Phones are still answered: the streams hold no connection place.
    let phone = std::net::IpAddr::from([127, 0, 0, 3]);
    for i in 0..8 {
        let body = json!({"_type": "location", "lat": 52.5, "lon": 13.4, "tst": now_s() - 100 + i});
        let (status, _) = request_from(
            phone,
            server,
            "POST",
            "/pub",
            &[("X-Limit-U", "fleet"), ("X-Limit-D", "phone")],
            body.to_string().as_bytes(),
        )
        .await;
        assert_eq!(status, 200);
    }
    // Four connections that never send a request fill the listener; they
    // are cut off after the header timeout, and the phone is answered.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(open(std::net::IpAddr::from([127, 0, 0, 2]), server, "").await);
    }
    let started = std::time::Instant::now();
    let (status, _) = request_from(
        phone,
        server,
        "POST",
        "/pub",
        &[("X-Limit-U", "fleet"), ("X-Limit-D", "phone")],
        json!({"_type": "location", "lat": 52.5, "lon": 13.4, "tst": now_s() - 10})
            .to_string()
            .as_bytes(),
    )
    .await;
    assert_eq!(status, 200);
    let waited = started.elapsed();
    assert!(
        (Duration::from_millis(800)..Duration::from_secs(5)).contains(&waited),
        "the phone waited {waited:?} behind four idle connections"
    );
    drop(idle);

    // The metrics listener: 64 connections at most, idle ones cut off
    // after 10 s; its labels never carry a webhook's URL.
    let metrics: std::net::SocketAddr = serve
        .metrics_url
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let mut idle = Vec::new();
    for _ in 0..64 {
        idle.push(open(local, metrics, "").await);
    }
    let started = std::time::Instant::now();
    let (status, _) = request_from(local, metrics, "GET", "/metrics", &[], b"").await;
    let waited = started.elapsed();
    assert_eq!(status, 200);
    assert!(
        (Duration::from_secs(8)..Duration::from_secs(20)).contains(&waited),
        "/metrics answered after {waited:?} behind 64 idle connections"
    );
    drop(idle);
    let text = ureq::get(&format!("{}/metrics", serve.metrics_url))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        !text.contains("hook-secret"),
        "a webhook's URL in the metrics"
    );
    assert!(
        text.contains("route=\"webhook-"),
        "no webhook route in the metrics"
    );
    drop(streams);
}
