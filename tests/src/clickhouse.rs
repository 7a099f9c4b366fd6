//! The test ClickHouse: its address, queries, waiting for batched rows,
//! and a private server for tests that stop and restart it.

use super::*;

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
