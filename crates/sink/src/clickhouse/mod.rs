//! The ClickHouse sink: batched RowBinary inserts (LZ4), retried until they
//! succeed, acknowledged only after.
//!
//! [`ClickHouseBackend`] is the sink stage's backend ([`crate::run`]): a
//! batch is written when it reaches `max_rows` or `max_bytes`, or
//! `period_ms` after its first record. The
//! defaults follow ClickHouse's advice for MergeTree: tens of thousands of
//! rows and about one insert per table per second. Each table's rows are
//! one INSERT. An insert that fails for a reason that can pass (the server
//! is down, overloaded, a network error, or anything not known to be about
//! the data) is retried with exponential backoff and jitter, holding the
//! batch: nothing more is read, the bus fills, and the ingress answers 503.
//! An insert ClickHouse rejects for the content of its rows is split in
//! halves until the rejected rows are found; those become dead letters and
//! the rest is stored, so one bad row never blocks the stream. If every row
//! is rejected, the problem is the schema, not the data: it is retried, not
//! dead-lettered.
//!
//! Layout: `config` (the `[clickhouse]` section and the errors), `migrate`
//! (server version, migrations, stored state), [`schema`] (the DDL
//! templates), [`rows`] (records as RowBinary rows, per table), `writer`
//! (the backend).

mod config;
mod migrate;
pub mod rows;
pub mod schema;
mod writer;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clickhouse::Client;
use metrics::{Counter, Histogram};
use otstream_bus::Message;
use otstream_model::{DeadLetter, Record, Text};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

pub use config::{ClickHouseConfig, ClickHouseError};
pub use migrate::{MigrateReport, load_states, migrate, server_version};
pub use rows::Table;
pub use schema::{MIGRATIONS, ServerVersion};
pub use writer::ClickHouseBackend;
