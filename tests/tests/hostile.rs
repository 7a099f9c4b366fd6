//! The attacker's tests: what a device or a client can send, tried as an
//! attacker would, against real serve processes and a real browser.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use otstream_tests::browser::Browser;
use otstream_tests::{Serve, root};
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

fn get(url: &str) -> (u16, Vec<(String, String)>, String) {
    let resp = match ureq::get(url).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{url}: {e}"),
    };
    let headers = resp
        .headers_names()
        .into_iter()
        .map(|n| {
            let v = resp.header(&n).unwrap_or_default().to_owned();
            (n, v)
        })
        .collect();
    (resp.status(), headers, resp.into_string().unwrap())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
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
    let (status, headers, _) = get(&format!("{}/map", serve.url));
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
    let (_, headers, _) = get(&format!("{}/api/v1/devices", serve.url));
    assert_eq!(
        header(&headers, "content-security-policy"),
        Some("default-src 'none'; frame-ancestors 'none'; sandbox")
    );
    assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));

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
