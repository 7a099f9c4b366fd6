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

/// The ClickHouse cluster started by scripts/test.sh
/// (scripts/clickhouse-cluster.sh: a ZooKeeper and four servers, two
/// shards of two replicas, named `otstream`). Panics (the test fails, it
/// never skips) when it is not there. One test at a time has it: a test
/// that takes a server or ZooKeeper away would fail another's DDL.
pub struct Cluster {
    dir: PathBuf,
    /// The servers' HTTP interfaces: shard 1's two replicas, then shard 2's.
    pub urls: Vec<String>,
    /// Set once a server or ZooKeeper was taken away: then every server
    /// is restarted when the test lets the cluster go, pass or fail.
    disturbed: std::cell::Cell<bool>,
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.disturbed.get() {
            let _ = service_script("zookeeper.sh", "start", &self.dir.join("zk"));
            self.restart_all();
        }
    }
}

/// The cluster's servers, as scripts/clickhouse-cluster.sh names them.
pub const CLUSTER_NODES: [&str; 4] = ["s1r1", "s1r2", "s2r1", "s2r2"];

impl Cluster {
    /// The running cluster, once no other test has it.
    pub fn get() -> Cluster {
        static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
        let dir = std::env::var("OTSTREAM_TEST_CLICKHOUSE_CLUSTER").unwrap_or_else(|_| {
            panic!(
                "OTSTREAM_TEST_CLICKHOUSE_CLUSTER is not set: this test needs a real ClickHouse \
                 cluster; run scripts/test.sh, which starts one (scripts/clickhouse-cluster.sh)"
            )
        });
        let dir = PathBuf::from(dir);
        let urls = CLUSTER_NODES
            .iter()
            .map(|n| {
                std::fs::read_to_string(dir.join(n).join("url"))
                    .unwrap_or_else(|e| panic!("cluster server {n}: {e}"))
                    .trim()
                    .to_owned()
            })
            .collect();
        Cluster {
            dir,
            urls,
            disturbed: std::cell::Cell::new(false),
            _turn: turn,
        }
    }

    /// SIGKILLs server `node` (one of [`CLUSTER_NODES`]).
    pub fn kill(&self, node: &str) {
        self.disturbed.set(true);
        let pid = std::fs::read_to_string(self.dir.join(node).join("pid"))
            .unwrap_or_else(|e| panic!("{node}'s pid: {e}"));
        let status = Command::new("kill")
            .args(["-9", pid.trim()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -9 {node}");
        let _ = std::fs::remove_file(self.dir.join(node).join("pid"));
    }

    /// Starts server `node` again, same port and data; waits until it answers.
    pub fn start(&self, node: &str) {
        service_script("clickhouse.sh", "start", &self.dir.join(node))
            .unwrap_or_else(|e| panic!("{node}: {e:#}"));
    }

    /// Restarts every server: after a test that took ZooKeeper or a
    /// server away, so that the next test's DDL finds every server's DDL
    /// worker running (18.16's can stop for good after such an outage).
    /// Errors are printed, not raised: it runs when a test ends.
    fn restart_all(&self) {
        for node in CLUSTER_NODES {
            let dir = self.dir.join(node);
            let again = service_script("clickhouse.sh", "stop", &dir)
                .and_then(|_| service_script("clickhouse.sh", "start", &dir));
            if let Err(e) = again {
                eprintln!("restarting cluster server {node}: {e:#}");
            }
        }
    }

    /// Creates `db` on the cluster (`otstream migrate --cluster`), as an
    /// operator does before starting the stages: a first migration takes
    /// about 20 s there.
    pub fn migrate(&self, db: &str) {
        let out = run(
            &[
                "migrate",
                "--clickhouse-url",
                &self.urls[0],
                "--cluster",
                "otstream",
                "--database",
                db,
            ],
            b"",
        )
        .expect("otstream migrate");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!(
                "ClickHouse 18.16: applied migrations [1, 2, 3, 4, 5, 6, 7, 8, 9] in database {db} on cluster otstream"
            ),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Takes ZooKeeper away (the replicated tables turn read-only).
    pub fn stop_zookeeper(&self) {
        self.disturbed.set(true);
        service_script("zookeeper.sh", "stop", &self.dir.join("zk")).expect("stop zookeeper");
    }

    /// Brings ZooKeeper back, same port and data.
    pub fn start_zookeeper(&self) {
        service_script("zookeeper.sh", "start", &self.dir.join("zk")).expect("start zookeeper");
    }

    /// What each server holds of `table` in `db` once its replica caught
    /// up, `FINAL`: `sql` over `{table}_local`, per server.
    pub fn per_server(&self, db: &str, table: &str, sql: &str) -> Vec<Vec<String>> {
        self.urls
            .iter()
            .map(|u| {
                ch(u, Some(db), &format!("SYSTEM SYNC REPLICA {table}_local"))
                    .unwrap_or_else(|e| panic!("{u}: sync {table}_local: {e}"));
                ch_lines(u, db, &sql.replace("{table}", &format!("{table}_local")))
                    .unwrap_or_else(|e| panic!("{u}: {sql}: {e}"))
            })
            .collect()
    }
}
