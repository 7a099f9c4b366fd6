//! Retention for the embedded store: rows older than a table's limit are
//! deleted by a background job, a little at a time, so that ingest never
//! waits for it.
//!
//! In: the `[retention]` section and the store's file. Out: fewer rows.
//! Guarantee: exactly the rows older than the limit when a pass starts
//! are gone when it ends (a row's age is its event time where it has one:
//! `tst` of positions and transitions, `start` of trips and stops; its
//! `received_at` otherwise). Each delete is one short transaction over a
//! bounded range of rowids, so the sink's commits, which wait for SQLite's
//! write lock, wait at most that long. ClickHouse keeps its own TTL
//! (`otstream migrate --retention-days`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use otstream_bus::Stage;
use otstream_model::ConfigError;
use otstream_model::raw::now_ms;
use rusqlite::{Connection, OpenFlags};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::store::{DB_FILE, StoreError};

/// Rowids per delete transaction.
const CHUNK: i64 = 5_000;

/// Each table retention may touch, with the column that dates a row and
/// whether it counts seconds (else milliseconds).
const DATED: [(&str, &str, bool); 11] = [
    ("positions", "tst", true),
    ("transitions", "tst", true),
    ("trips", "start", true),
    ("stops", "start", true),
    ("waypoints", "received_at", false),
    ("cards", "received_at", false),
    ("device_events", "received_at", false),
    ("steps", "received_at", false),
    ("beacons", "received_at", false),
    ("configurations", "received_at", false),
    ("dead_letters", "received_at", false),
];

/// The `[retention]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Days each table keeps (`positions = 365`); a table not named keeps
    /// everything.
    #[serde(default)]
    pub days: BTreeMap<String, u32>,
    /// Days dead letters are kept, unless `days` names the table.
    #[serde(default = "default_dead_letter_days")]
    pub dead_letter_days: u32,
    /// Seconds between passes.
    #[serde(default = "default_interval_s")]
    pub interval_s: u64,
}

fn default_dead_letter_days() -> u32 {
    30
}
fn default_interval_s() -> u64 {
    3600
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            days: BTreeMap::new(),
            dead_letter_days: default_dead_letter_days(),
            interval_s: default_interval_s(),
        }
    }
}

impl RetentionConfig {
    /// Checks every named table is one retention knows.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for table in self.days.keys() {
            if !DATED.iter().any(|(t, _, _)| t == table) {
                let known: Vec<&str> = DATED.iter().map(|(t, _, _)| *t).collect();
                return Err(ConfigError::new(
                    "retention.days",
                    format!(
                        "retention.days: no table {table:?} (one of {})",
                        known.join(", ")
                    ),
                ));
            }
        }
        if self.interval_s == 0 {
            return Err(ConfigError::new(
                "retention.interval_s",
                "retention.interval_s must be at least 1",
            ));
        }
        Ok(())
    }

    /// (table, column, in seconds, days) for every table with a limit.
    fn limits(&self) -> Vec<(&'static str, &'static str, bool, u32)> {
        DATED
            .iter()
            .filter_map(|&(table, column, seconds)| {
                let days = match self.days.get(table) {
                    Some(d) => Some(*d),
                    None if table == "dead_letters" => Some(self.dead_letter_days),
                    None => None,
                };
                days.map(|d| (table, column, seconds, d))
            })
            .collect()
    }
}

/// The retention job over the store in a data directory.
pub struct Retention {
    config: RetentionConfig,
    path: PathBuf,
}

impl Retention {
    /// The job for the store in `data_dir` (opened at each pass).
    pub fn new(config: RetentionConfig, data_dir: &Path) -> Self {
        Retention {
            config,
            path: data_dir.join(DB_FILE),
        }
    }
    /// Deletes, table by table and chunk by chunk, what is older than its
    /// limit as of now (on the blocking pool: SQLite waits).
    async fn pass(&self, shutdown: &CancellationToken) -> Result<(), StoreError> {
        let (limits, path, stop) = (self.config.limits(), self.path.clone(), shutdown.clone());
        tokio::task::spawn_blocking(move || pass(&path, &limits, &stop))
            .await
            .map_err(|e| StoreError::Thread(e.to_string()))?
    }
}

impl Stage<(), ()> for Retention {
    /// Runs a pass now and every `interval_s` until `shutdown`. A pass
    /// that fails is reported and tried again at the next interval.
    type Error = StoreError;

    async fn run(
        self,
        _input: (),
        _output: (),
        shutdown: CancellationToken,
    ) -> Result<(), StoreError> {
        if self.config.limits().is_empty() {
            shutdown.cancelled().await;
            return Ok(());
        }
        let mut tick = tokio::time::interval(Duration::from_secs(self.config.interval_s));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            if let Err(e) = self.pass(&shutdown).await {
                tracing::warn!(error = %e, "retention pass failed; trying again at the next interval");
                metrics::counter!("otstream_errors_total", "stage" => "retention", "error_code" => e.code()).increment(1);
            }
        }
    }
}

fn pass(
    path: &Path,
    limits: &[(&'static str, &'static str, bool, u32)],
    stop: &CancellationToken,
) -> Result<(), StoreError> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let now_ms = now_ms();
    for &(table, column, seconds, days) in limits {
        let age_ms = i64::from(days) * 86_400_000;
        let cutoff = if seconds {
            (now_ms - age_ms) / 1000
        } else {
            now_ms - age_ms
        };
        let (mut from, last): (i64, i64) = conn.query_row(
            &format!("SELECT coalesce(min(rowid), 0), coalesce(max(rowid), -1) FROM {table}"),
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let deleted = metrics::counter!("otstream_retention_deleted_rows_total", "table" => table);
        let mut delete = conn.prepare(&format!(
            "DELETE FROM {table} WHERE rowid BETWEEN ?1 AND ?2 AND {column} < ?3"
        ))?;
        while from <= last {
            if stop.is_cancelled() {
                return Ok(());
            }
            let to = last.min(from.saturating_add(CHUNK - 1));
            // One short transaction each; a pause after it lets the
            // sink's commit take the write lock first.
            deleted.increment(delete.execute([from, to, cutoff])? as u64);
            from = to.saturating_add(1);
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_name_their_tables_and_dead_letters_default_to_thirty_days() {
        let mut config = RetentionConfig::default();
        assert_eq!(
            config.limits(),
            [("dead_letters", "received_at", false, 30)]
        );
        config.days.insert("positions".into(), 365);
        config.days.insert("dead_letters".into(), 7);
        assert_eq!(
            config.limits(),
            [
                ("positions", "tst", true, 365),
                ("dead_letters", "received_at", false, 7)
            ]
        );
        assert_eq!(config.validate(), Ok(()));
        config.days.insert("device_state".into(), 1);
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "retention.days: no table \"device_state\" (one of positions, transitions, trips, stops, waypoints, cards, device_events, steps, beacons, configurations, dead_letters)"
        );
    }
}
