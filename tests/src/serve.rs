//! `otstream serve` as a child process of a test, HTTP requests to it,
//! and rows of its embedded store.

use super::*;

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
        Self::launch(&["serve"], data_dir, None, args, env)
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
        Self::launch(subcommand, data_dir, Some(http), args, env)
    }

    /// A free port can be taken by another test between [`free_port`] and
    /// the process binding it: then the process is started again on
    /// another (the metrics port always; HTTP unless `http` fixes it).
    fn launch(
        subcommand: &[&str],
        data_dir: &Path,
        http: Option<u16>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Serve> {
        let mut attempt = 0;
        loop {
            let (port, metrics) = (http.unwrap_or_else(free_port), free_port());
            match Self::launch_once(subcommand, data_dir, port, metrics, args, env) {
                Err(e) if attempt < 4 => {
                    let text = format!("{e:#}");
                    let in_use = text
                        .lines()
                        .find(|l| l.contains("Address already in use"))
                        .unwrap_or_default();
                    let taken = |p: u16| {
                        in_use.contains(&format!("127.0.0.1:{p}:"))
                            || in_use.contains(&format!("127.0.0.1:{p} "))
                    };
                    if !(taken(metrics) || (http.is_none() && taken(port))) {
                        return Err(e);
                    }
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn launch_once(
        subcommand: &[&str],
        data_dir: &Path,
        http: u16,
        metrics: u16,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Serve> {
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

    /// Waits up to 10 s for `needle` in the log; panics with the log if it
    /// does not come.
    pub fn wait_for_log(&self, needle: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !self.log().contains(needle) {
            assert!(
                std::time::Instant::now() < deadline,
                "no {needle:?} in:\n{}",
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
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

    /// The value of the unlabelled metric `name` on /metrics, if exposed.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let text = ureq::get(&format!("{}/metrics", self.metrics_url))
            .call()
            .ok()?
            .into_string()
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    /// Waits (up to 60 s) until `serve`'s ClickHouse buffer is empty:
    /// everything acknowledged so far is in ClickHouse. Panics, with the
    /// log, otherwise, and when the process has no buffer.
    pub fn wait_shipped(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let rows = self.metric("otstream_buffer_rows");
            if rows == Some(0.0) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "buffer not shipped within 60 s ({rows:?} rows left):\n{}",
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Everything acknowledged is readable: a process writing to the
    /// embedded store committed before it answered; one buffering for
    /// ClickHouse is waited for ([`Serve::wait_shipped`]).
    pub fn settle(&self) {
        if self.metric("otstream_buffer_rows").is_some() {
            self.wait_shipped();
        }
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
