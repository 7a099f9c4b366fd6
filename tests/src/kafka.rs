//! The test Kafka-protocol broker (Tansu): its address, topics, a
//! private broker per pipeline test, and turns on the shared one.

use super::*;

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
