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
//! Layout: `migrate` (server version, migrations, stored state), [`rows`]
//! (records as RowBinary rows, per table), `writer` (the backend),
//! [`buffer`] (the local buffer `serve` puts in front of it, and the
//! [`buffer::Shipper`] that drains it: built with the backend by
//! [`buffer::open`], run as a unit of the topology). The
//! `[clickhouse]` section, its errors and the DDL are the schema's
//! (`otstream_schema::clickhouse`).

pub mod buffer;
mod migrate;
pub mod rows;
mod writer;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clickhouse::Client;
use metrics::{Counter, Histogram};
use otstream_bus::Message;
use otstream_model::{DeadLetter, Record, Text};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

pub use migrate::{MigrateReport, load_states, migrate, server_version};
pub use otstream_schema::Table;
pub use otstream_schema::clickhouse::{self as schema, ClickHouseConfig, ClickHouseError};
pub use otstream_schema::clickhouse::{MIGRATIONS, ServerVersion};
pub use writer::ClickHouseBackend;
