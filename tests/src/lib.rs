//! Helpers for the end-to-end tests: find (and build, once) the `otstream`
//! binary, run it, and locate test data. The tests themselves are in
//! tests/e2e.rs, one module per area.

pub mod browser;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};

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

/// `otstream topics create --config CONFIG --brokers BROKERS`, which must
/// succeed; what it printed (one `topic\tcreated|exists` line per topic).
pub fn create_topics(config: &str, brokers: &str) -> String {
    let out = run(
        &["topics", "create", "--config", config, "--brokers", brokers],
        b"",
    )
    .unwrap_or_else(|e| panic!("topics create: {e:#}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "topics create: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A loopback port free at the time of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// An `otstream serve` process on free loopback ports, with its own data
/// directory, stopped (SIGKILL) when dropped.
pub struct Serve {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// `http://127.0.0.1:PORT` of /metrics, /healthz, /readyz.
    pub metrics_url: String,
    /// The data directory (kept across restarts of the same test).
    pub data_dir: PathBuf,
    log: PathBuf,
}

/// One HTTP answer.
#[derive(Debug)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// The body, as text.
    pub body: String,
    /// `Retry-After`, if any.
    pub retry_after: Option<String>,
    /// `Content-Type`, if any.
    pub content_type: Option<String>,
}

impl Serve {
    /// Starts `otstream serve` with `args` and `env` on fresh ports in
    /// `data_dir`, and waits until /readyz says ready.
    pub fn start(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<Serve> {
        Self::start_cmd(&["serve"], data_dir, free_port(), args, env)
    }

    /// Starts `otstream SUBCOMMAND...` (`serve`, `run decode`, ...) as
    /// [`Serve::start`] does, with HTTP on `http` (so that a restarted
    /// ingress comes back where its clients are).
    pub fn start_cmd(
        subcommand: &[&str],
        data_dir: &Path,
        http: u16,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Serve> {
        let metrics = free_port();
        let log = data_dir.with_extension(format!("{metrics}.log"));
        let log_file = std::fs::File::create(&log)?;
        let mut cmd = Command::new(otstream_bin());
        cmd.args(subcommand)
            .args(["--http-addr", &format!("127.0.0.1:{http}")])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics}")])
            .args(["--data-dir", &data_dir.display().to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().context("spawning otstream serve")?;
        let mut serve = Serve {
            child,
            url: format!("http://127.0.0.1:{http}"),
            metrics_url: format!("http://127.0.0.1:{metrics}"),
            data_dir: data_dir.to_owned(),
            log,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if let Ok(r) = ureq::get(&format!("{}/readyz", serve.metrics_url)).call() {
                if r.status() == 200 {
                    return Ok(serve);
                }
            }
            if let Some(status) = serve.child.try_wait()? {
                bail!(
                    "otstream {subcommand:?} exited with {status}:\n{}",
                    serve.log()
                );
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "otstream {subcommand:?} not ready after 20 s:\n{}",
                    serve.log()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory, KiB (Linux: VmRSS of /proc/PID/status).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_else(|e| panic!("cannot read the status of {}: {e}", self.pid()));
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in /proc/{}/status", self.pid()))
    }

    /// What the process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// POSTs `body` to `path` with `headers`.
    pub fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
        post(&format!("{}{path}", self.url), headers, body)
    }

    /// The store, opened read-only alongside the running process.
    pub fn db(&self) -> rusqlite::Connection {
        let path = self.data_dir.join("otstream.db");
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()))
    }

    /// Sends SIGINT and waits for the process to exit; returns whether it
    /// exited successfully.
    pub fn interrupt(mut self) -> Result<bool> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-INT", &pid]).status()?;
        let status = self.child.wait()?;
        Ok(status.success())
    }

    /// Waits up to `within` for the process to exit on its own; its status,
    /// or `None` if it is still running.
    pub fn wait_exit(&mut self, within: std::time::Duration) -> Result<Option<ExitStatus>> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if std::time::Instant::now() > deadline {
                return Ok(None);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Injects the fault this process was started for (creates
    /// `fault_file`: crates/cli/src/fault.rs) and waits for what must
    /// follow: /readyz no longer 200 within 10 s, then the process exiting
    /// by itself, non-zero, within `exit_within`. Returns its log.
    pub fn inject_fault(&mut self, fault_file: &Path, exit_within: std::time::Duration) -> String {
        std::fs::write(fault_file, b"").expect("writing the fault file");
        let ready = format!("{}/readyz", self.metrics_url);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while matches!(ureq::get(&ready).call(), Ok(r) if r.status() == 200) {
            assert!(
                std::time::Instant::now() < deadline,
                "still ready:\n{}",
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let status = self
            .wait_exit(exit_within)
            .expect("waiting for the process")
            .unwrap_or_else(|| panic!("still running:\n{}", self.log()));
        assert!(!status.success(), "{status}\n{}", self.log());
        self.log()
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// POSTs `body` to `url` with `headers`; connection errors are status 0.
pub fn post(url: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let mut req = ureq::post(url).timeout(std::time::Duration::from_secs(30));
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let resp = match req.send_bytes(body) {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => {
            return Answer {
                status: 0,
                body: e.to_string(),
                retry_after: None,
                content_type: None,
            };
        }
    };
    let status = resp.status();
    let retry_after = resp.header("retry-after").map(str::to_owned);
    let content_type = resp.header("content-type").map(str::to_owned);
    let body = resp.into_string().unwrap_or_default();
    Answer {
        status,
        body,
        retry_after,
        content_type,
    }
}

/// Rows of a query as `|`-joined text, NULL spelled out.
pub fn rows(conn: &rusqlite::Connection, sql: &str) -> Vec<String> {
    let mut stmt = conn.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let n = stmt.column_count();
    let mapped = stmt
        .query_map([], |row| {
            Ok((0..n)
                .map(|i| match row.get_ref(i) {
                    Ok(rusqlite::types::ValueRef::Null) | Err(_) => "NULL".to_owned(),
                    Ok(rusqlite::types::ValueRef::Integer(v)) => v.to_string(),
                    Ok(rusqlite::types::ValueRef::Real(v)) => v.to_string(),
                    Ok(rusqlite::types::ValueRef::Text(v) | rusqlite::types::ValueRef::Blob(v)) => {
                        String::from_utf8_lossy(v).into_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join("|"))
        })
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    mapped
        .map(|r| r.unwrap_or_else(|e| panic!("{sql}: {e}")))
        .collect()
}

/// The ClickHouse started by scripts/test.sh. Panics (the test fails, it
/// never skips) when it is not there.
pub fn clickhouse_url() -> String {
    std::env::var("OTSTREAM_TEST_CLICKHOUSE_URL").unwrap_or_else(|_| {
        panic!(
            "OTSTREAM_TEST_CLICKHOUSE_URL is not set: this test needs a real ClickHouse; \
             run scripts/test.sh, which installs and starts one"
        )
    })
}

/// A database name no other test uses.
pub fn unique_db(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs `sql` on ClickHouse at `url` (in `db` when given); the body on
/// success, ClickHouse's error text otherwise.
pub fn ch(url: &str, db: Option<&str>, sql: &str) -> std::result::Result<String, String> {
    let mut req = ureq::post(url).timeout(std::time::Duration::from_secs(60));
    if let Some(db) = db {
        req = req.query("database", db);
    }
    match req.send_string(sql) {
        Ok(r) => r.into_string().map_err(|e| e.to_string()),
        Err(ureq::Error::Status(_, r)) => Err(r.into_string().unwrap_or_default()),
        Err(e) => Err(e.to_string()),
    }
}

/// A `SELECT` on ClickHouse at `url` in `db`, as tab-separated lines.
pub fn ch_lines(url: &str, db: &str, sql: &str) -> std::result::Result<Vec<String>, String> {
    ch(url, Some(db), &format!("{sql} FORMAT TSV"))
        .map(|out| out.lines().map(str::to_owned).collect())
}

/// Waits (up to `secs`) until `sql` returns exactly `want`: ClickHouse
/// sinks batch asynchronously to the test. Panics with what it got.
pub fn ch_eventually<S: AsRef<str> + std::fmt::Debug>(
    url: &str,
    db: &str,
    sql: &str,
    want: &[S],
    secs: u64,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let got = ch_lines(url, db, sql);
        if got.as_ref().is_ok_and(|g| {
            g.iter()
                .map(String::as_str)
                .eq(want.iter().map(AsRef::as_ref))
        }) {
            return;
        }
        let shown = got.map(|g| g.into_iter().take(5).collect::<Vec<_>>());
        assert!(
            std::time::Instant::now() < deadline,
            "{sql}: got {shown:?}, want {} rows starting {:?}",
            want.len(),
            want.iter().take(5).collect::<Vec<_>>()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
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

/// A Tansu broker of the test's own (the one scripts/test.sh installed),
/// via scripts/tansu.sh, with fresh storage; stopped when dropped. Tests
/// that run whole pipelines each get one, so that groups, producers and
/// topics of one test never weigh on another's broker.
pub struct PrivateTansu {
    dir: tempfile::TempDir,
    /// `127.0.0.1:PORT`
    pub brokers: String,
}

impl PrivateTansu {
    /// Starts a new broker. Fails when Tansu is not installed.
    pub fn start() -> Result<Self> {
        // The test command's broker being set says Tansu is installed.
        kafka_brokers();
        let dir = tempfile::tempdir()?;
        let brokers = service_script("tansu.sh", "start", dir.path())?;
        Ok(Self { dir, brokers })
    }
}

impl Drop for PrivateTansu {
    fn drop(&mut self) {
        let _ = service_script("tansu.sh", "stop", self.dir.path());
    }
}

/// A ClickHouse server of the test's own (so that it can be stopped), via
/// scripts/clickhouse.sh; stopped when dropped.
pub struct PrivateClickHouse {
    dir: tempfile::TempDir,
    /// Its HTTP interface.
    pub url: String,
}

impl PrivateClickHouse {
    /// Starts a new server.
    pub fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let url = Self::script("start", dir.path())?;
        Ok(Self { dir, url })
    }

    fn script(cmd: &str, dir: &Path) -> Result<String> {
        service_script("clickhouse.sh", cmd, dir)
    }

    /// Stops it (its data stays).
    pub fn stop(&self) -> Result<()> {
        Self::script("stop", self.dir.path()).map(|_| ())
    }

    /// Starts it again on the same port with the same data.
    pub fn restart(&self) -> Result<()> {
        Self::script("start", self.dir.path()).map(|_| ())
    }
}

impl Drop for PrivateClickHouse {
    fn drop(&mut self) {
        let _ = Self::script("stop", self.dir.path());
    }
}

/// The Mosquitto started by scripts/test.sh. Panics (the test fails, it
/// never skips) when it is not there.
pub fn mqtt_url() -> String {
    std::env::var("OTSTREAM_TEST_MQTT_URL").unwrap_or_else(|_| {
        panic!(
            "OTSTREAM_TEST_MQTT_URL is not set: this test needs a real MQTT broker; \
             run scripts/test.sh, which installs and starts Mosquitto"
        )
    })
}

/// Publishes `messages` (topic, payload) with QoS 1 as a real MQTT client
/// and returns, for each, whether the broker acknowledged it (PUBACK).
pub fn publish_qos1(url: &str, client_id: &str, messages: &[(String, Vec<u8>)]) -> Vec<bool> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    rt.block_on(async {
        use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
        let rest = url.trim_start_matches("mqtt://");
        let (host, port) = rest.rsplit_once(':').unwrap_or((rest, "1883"));
        let mut opts = MqttOptions::new(client_id, host, port.parse().unwrap_or(1883));
        opts.set_keep_alive(std::time::Duration::from_secs(30))
            .set_inflight(100);
        let (client, mut eventloop) = AsyncClient::new(opts, 10);
        let mut acked = vec![false; messages.len()];
        let mut sent_order = std::collections::VecDeque::new();
        let mut by_pkid = std::collections::HashMap::new();
        let publisher = {
            let client = client.clone();
            let messages = messages.to_vec();
            tokio::spawn(async move {
                for (topic, payload) in messages {
                    if client
                        .publish(topic, QoS::AtLeastOnce, false, payload)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            })
        };
        let mut outgoing = 0usize;
        let mut done = 0usize;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
        while done < messages.len() {
            let event = match tokio::time::timeout_at(deadline, eventloop.poll()).await {
                Ok(Ok(e)) => e,
                Ok(Err(e)) => panic!("mqtt publisher: {e}"),
                Err(_) => panic!(
                    "mqtt publisher: {done} of {} acknowledged after 120 s",
                    messages.len()
                ),
            };
            match event {
                Event::Outgoing(Outgoing::Publish(pkid)) => {
                    sent_order.push_back(pkid);
                    by_pkid.insert(pkid, outgoing);
                    outgoing += 1;
                }
                Event::Incoming(Packet::PubAck(a)) => {
                    if let Some(i) = by_pkid.remove(&a.pkid) {
                        acked[i] = true;
                        done += 1;
                    }
                }
                _ => {}
            }
        }
        let _ = publisher.await;
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), eventloop.poll()).await;
        acked
    })
}

/// The Kafka-protocol broker (Tansu) started by scripts/test.sh. Panics
/// (the test fails, it never skips) when it is not there.
pub fn kafka_brokers() -> String {
    std::env::var("OTSTREAM_TEST_KAFKA_BROKERS").unwrap_or_else(|_| {
        panic!("OTSTREAM_TEST_KAFKA_BROKERS is not set: this test needs a real Kafka-protocol broker; run scripts/test.sh, which installs and starts Tansu")
    })
}

/// Tests that load the broker take turns. Tansu 0.6 has two known faults
/// under load: its SQLite storage task panics when an idempotent producer
/// asks to bump its epoch (`InitProducerId` with an existing id is a
/// `todo!()`), which librdkafka does after a request times out; from then
/// on every request fails. One pipeline at a time keeps it responsive.
pub fn broker_turn() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
