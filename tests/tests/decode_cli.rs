use otstream_tests::{run, testdata};

fn stdout_of(args: &[&str], stdin: &[u8]) -> (String, String) {
    let out = run(args, stdin).expect("otstream runs");
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8(out.stdout).expect("utf-8"),
        String::from_utf8(out.stderr).expect("utf-8"),
    )
}

/// Every example of the OwnTracks payload spec (and Traccar's HTTP notes),
/// made concrete, decodes to the reviewed records.
#[test]
fn spec_examples_print_the_expected_records() {
    let keys = testdata("keys.toml");
    let input = testdata("spec-examples.ndjson");
    let (got, summary) = stdout_of(
        &[
            "decode",
            "--keys",
            keys.to_str().unwrap(),
            input.to_str().unwrap(),
        ],
        b"",
    );
    let expected = std::fs::read_to_string(testdata("spec-examples.expected.ndjson")).unwrap();
    for (n, (g, e)) in got.lines().zip(expected.lines()).enumerate() {
        assert_eq!(g, e, "output line {}", n + 1);
    }
    assert_eq!(got.lines().count(), expected.lines().count());
    assert_eq!(
        summary.trim_end(),
        "decoded 26 lines: 26 records (beacon=1 card=1 command=11 configuration=1 device_event=1 position=5 steps=1 transition=1 waypoint=4), 2 errors (bad_ciphertext=1 missing_field=1)"
    );
    assert!(
        !got.contains("secr3t"),
        "configuration secrets must not be printed"
    );
}

/// Bare payloads on stdin, as an operator pipes them in.
#[test]
fn bare_payloads_from_stdin_with_a_topic() {
    let input = concat!(
        r#"{"_type":"location","lat":52.5,"lon":13.4,"tst":1700000000,"batt":"80"}"#,
        "\n",
        r#"{"_type":"location","lat":91,"lon":13.4,"tst":1700000000}"#,
        "\n",
    );
    let (got, summary) = stdout_of(
        &["decode", "--topic", "owntracks/ann/car"],
        input.as_bytes(),
    );
    let lines: Vec<serde_json::Value> = got
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["type"], "position");
    assert_eq!(lines[0]["user"], "ann");
    assert_eq!(lines[0]["device"], "car");
    assert_eq!(lines[0]["batt"], 80);
    assert_eq!(lines[0]["input_line"], 1);
    assert_eq!(
        lines[1],
        serde_json::json!({"error": {"kind": "out_of_range", "field": "lat", "message": "field `lat`: 91 is outside -90..=90"}, "input_line": 2})
    );
    assert_eq!(
        summary.trim_end(),
        "decoded 2 lines: 1 records (position=1), 1 errors (out_of_range=1)"
    );
}

/// A missing key file is a failure of the tool, not of a payload.
#[test]
fn unreadable_key_file_fails_with_a_clear_message() {
    let out = run(&["decode", "--keys", "/nonexistent/keys.toml"], b"").unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("otstream: cannot read key file /nonexistent/keys.toml:"),
        "{err}"
    );
}
