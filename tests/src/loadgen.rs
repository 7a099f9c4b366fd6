//! The load tools as tests drive them: `otstream fleet` writes a recording,
//! `otstream replay` sends one and answers its JSON report.

use std::path::Path;

use serde_json::Value;

use super::run;

/// `otstream fleet ... --out FILE`.
pub fn fleet(out: &Path, args: &[&str]) {
    let mut all = vec!["fleet", "--out"];
    let out = out.display().to_string();
    all.push(&out);
    all.extend(args);
    let o = run(&all, b"").expect("otstream fleet runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// `otstream replay ARGS` run to the end; its JSON report.
pub fn replay(args: &[&str]) -> Value {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let report = dir.path().join("report.json");
    let report_arg = report.display().to_string();
    let mut all = vec!["replay", "--quiet", "--report-json", &report_arg];
    all.extend(args);
    let o = run(&all, b"").expect("otstream replay runs");
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let report = std::fs::read_to_string(report).expect("replay wrote its report");
    serde_json::from_str(&report).expect("the report is JSON")
}
