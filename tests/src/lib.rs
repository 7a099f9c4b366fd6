//! Helpers for the end-to-end tests: find (and build, once) the `otstream`
//! binary, run it, and locate test data; one module per service the tests
//! talk to (`serve`, `clickhouse`, `kafka`, `mqtt`, `browser`) and the load
//! tools (`loadgen`), re-exported here. The tests themselves are in
//! tests/e2e.rs, one module per area, and tests/timing.rs, the measurements
//! of time that cargo runs alone.

pub mod browser;
mod clickhouse;
pub mod front;
mod kafka;
mod loadgen;
mod mqtt;
pub mod raw;
pub mod receiver;
mod serve;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};

pub use clickhouse::*;
pub use kafka::*;
pub use loadgen::*;
pub use mqtt::*;
pub use serve::*;

/// The workspace root.
pub fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// A file under testdata/.
pub fn testdata(name: &str) -> PathBuf {
    root().join("testdata").join(name)
}

/// The `otstream` binary of this workspace, built on first use with the
/// same profile the tests were built with.
pub fn otstream_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build().unwrap_or_else(|e| panic!("cannot build otstream: {e:#}")))
}

fn build() -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let release = !cfg!(debug_assertions);
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root())
        .args(["build", "-q", "-p", "otstream-cli", "--bin", "otstream"])
        // Lets a test make a stage fail while running (crates/cli/src/fault.rs).
        .args(["--features", "fault-injection"]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build failed: {status}");
    }
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from);
    let bin = target
        .join(if release { "release" } else { "debug" })
        .join("otstream");
    if !bin.exists() {
        bail!("built, but {} does not exist", bin.display());
    }
    Ok(bin)
}

/// Runs `otstream ARGS` with `stdin` as input and returns its output.
pub fn run(args: &[&str], stdin: &[u8]) -> Result<Output> {
    use std::io::Write;
    let mut child = Command::new(otstream_bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning otstream")?;
    child.stdin.take().context("stdin")?.write_all(stdin)?;
    Ok(child.wait_with_output()?)
}

/// A loopback port free at the time of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// Runs `scripts/SCRIPT CMD DIR` (start or stop a private service); its
/// standard output, trimmed (the address, for `start`).
fn service_script(script: &str, cmd: &str, dir: &Path) -> Result<String> {
    let out = Command::new(root().join("scripts").join(script))
        .arg(cmd)
        .arg(dir)
        .output()?;
    if !out.status.success() {
        bail!(
            "{script} {cmd} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Polls `done` every 100 ms; panics naming `what` unless it holds within
/// `within`.
pub fn wait_until(what: &str, within: std::time::Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "not within {within:?}: {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A GET of `url` with `headers`, whatever its status: the status, the
/// answer's headers, and its body.
pub fn get(url: &str, headers: &[(&str, &str)]) -> (u16, Vec<(String, String)>, String) {
    let mut req = ureq::get(url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let resp = match req.call() {
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
    let status = resp.status();
    (status, headers, resp.into_string().unwrap_or_default())
}

/// The value of the header `name` among `headers` (any case).
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}
