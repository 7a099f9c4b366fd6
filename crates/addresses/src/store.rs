//! Where the rows needing an address are, and where addresses go: the
//! embedded store (SQLite, through its own connection) or ClickHouse.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use otstream_schema::quote_ident;
use rusqlite::{Connection, OpenFlags, params};
use serde::Deserialize;

use crate::AddressError;

/// Which address a row lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// `stops.address`.
    Stop,
    /// `trips.start_address`.
    TripStart,
    /// `trips.end_address`.
    TripEnd,
}

impl Target {
    fn of(k: u8) -> Target {
        match k {
            0 => Target::Stop,
            1 => Target::TripStart,
            _ => Target::TripEnd,
        }
    }

    fn table(self) -> &'static str {
        match self {
            Target::Stop => "stops",
            Target::TripStart | Target::TripEnd => "trips",
        }
    }

    fn column(self) -> &'static str {
        match self {
            Target::Stop => "address",
            Target::TripStart => "start_address",
            Target::TripEnd => "end_address",
        }
    }
}

/// A row without its address yet.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    /// Which address.
    pub target: Target,
    /// The row's key: user, device, start (UNIX s).
    pub user: String,
    /// See `user`.
    pub device: String,
    /// See `user`.
    pub start: i64,
    /// Where the address is wanted.
    pub lat: f64,
    /// See `lat`.
    pub lon: f64,
}

/// The store the rows are in.
pub enum Rows {
    /// The embedded store.
    Sqlite(Arc<Mutex<Connection>>),
    /// A ClickHouse database, with the columns of `stops` and `trips`.
    ClickHouse(Box<ClickHouse>),
}

/// ClickHouse's side.
pub struct ClickHouse {
    client: clickhouse::Client,
    /// The database's name as given, and quoted.
    name: String,
    db: String,
    /// Each table's columns, and whether `received_at` is DateTime64:
    /// read at first use, so that serve starts while ClickHouse is down.
    columns: tokio::sync::OnceCell<Columns>,
}

type Columns = HashMap<&'static str, (Vec<String>, bool)>;

/// The pending rows, newest first (what people look at first).
const SQLITE_PENDING: &str = "SELECT 0, user, device, start, lat, lon FROM stops WHERE address IS NULL \
     UNION ALL SELECT 1, user, device, start, start_lat, start_lon FROM trips WHERE start_address IS NULL \
     UNION ALL SELECT 2, user, device, start, end_lat, end_lon FROM trips WHERE end_address IS NULL \
     ORDER BY 4 DESC LIMIT ?1";

#[derive(clickhouse::Row, Deserialize)]
struct ChPending {
    k: u8,
    user: String,
    device: String,
    start: i64,
    lat: f64,
    lon: f64,
}

#[derive(clickhouse::Row, Deserialize)]
struct ChCached {
    cell: String,
    address: String,
}

#[derive(clickhouse::Row, Deserialize)]
struct ChColumn {
    name: String,
    #[serde(rename = "type")]
    ty: String,
}

impl ClickHouse {
    async fn columns(&self) -> Result<&Columns, AddressError> {
        self.columns
            .get_or_try_init(|| async {
                let mut columns = HashMap::new();
                for table in ["stops", "trips"] {
                    let cols = self
                        .client
                        .query("SELECT name, type FROM system.columns WHERE database = ? AND table = ? AND default_kind NOT IN ('MATERIALIZED', 'ALIAS')")
                        .bind(&self.name)
                        .bind(table)
                        .fetch_all::<ChColumn>()
                        .await?;
                    let dt64 = cols
                        .iter()
                        .any(|c| c.name == "received_at" && c.ty.starts_with("DateTime64"));
                    columns.insert(table, (cols.into_iter().map(|c| c.name).collect(), dt64));
                }
                Ok(columns)
            })
            .await
    }
}

fn blocking<T: Send + 'static>(
    conn: &Arc<Mutex<Connection>>,
    f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
) -> impl Future<Output = Result<T, AddressError>> {
    let conn = conn.clone();
    async move {
        tokio::task::spawn_blocking(move || {
            let mut c = conn.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut c)
        })
        .await
        .map_err(|e| AddressError::Store(format!("store thread: {e}")))?
        .map_err(|e| AddressError::Store(e.to_string()))
    }
}

impl Rows {
    /// The embedded store in `data_dir` (made by the sink: its schema is
    /// the sink's).
    pub fn sqlite(data_dir: &Path) -> Result<Rows, AddressError> {
        let path = data_dir.join(otstream_schema::DB_FILE);
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .and_then(|c| {
            // The sink holds the write lock for one commit at a time.
            c.busy_timeout(Duration::from_secs(5))?;
            Ok(c)
        })
        .map_err(|e| AddressError::Store(format!("{}: {e}", path.display())))?;
        Ok(Rows::Sqlite(Arc::new(Mutex::new(conn))))
    }

    /// The ClickHouse database `db` (migrated: `addresses` exists).
    pub fn clickhouse(client: clickhouse::Client, db: &str) -> Rows {
        Rows::ClickHouse(Box::new(ClickHouse {
            client,
            name: db.to_owned(),
            db: quote_ident(db),
            columns: tokio::sync::OnceCell::new(),
        }))
    }

    /// Every cell asked before, with its address ('' for none).
    pub async fn cached(&self) -> Result<HashMap<String, String>, AddressError> {
        match self {
            Rows::Sqlite(c) => {
                blocking(c, |c| {
                    let mut stmt = c.prepare("SELECT cell, address FROM addresses")?;
                    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                    rows.collect()
                })
                .await
            }
            Rows::ClickHouse(ch) => Ok(ch
                .client
                .query(&format!(
                    "SELECT cell, address FROM {}.addresses FINAL",
                    ch.db
                ))
                .fetch_all::<ChCached>()
                .await?
                .into_iter()
                .map(|r| (r.cell, r.address))
                .collect()),
        }
    }

    /// Up to `limit` rows lacking an address, newest first.
    pub async fn pending(&self, limit: usize) -> Result<Vec<Pending>, AddressError> {
        let limit = limit as i64;
        match self {
            Rows::Sqlite(c) => {
                blocking(c, move |c| {
                    let mut stmt = c.prepare_cached(SQLITE_PENDING)?;
                    let rows = stmt.query_map([limit], |r| {
                        Ok(Pending {
                            target: Target::of(r.get(0)?),
                            user: r.get(1)?,
                            device: r.get(2)?,
                            start: r.get(3)?,
                            lat: r.get(4)?,
                            lon: r.get(5)?,
                        })
                    })?;
                    rows.collect()
                })
                .await
            }
            Rows::ClickHouse(ch) => {
                let db = &ch.db;
                let sql = format!(
                    "SELECT k, user, device, start, lat, lon FROM (\
                     SELECT toUInt8(0) AS k, toString(user) AS user, toString(device) AS device, toInt64(start) AS start, lat, lon FROM {db}.stops FINAL WHERE isNull(address) \
                     UNION ALL SELECT toUInt8(1) AS k, toString(user) AS user, toString(device) AS device, toInt64(start) AS start, start_lat AS lat, start_lon AS lon FROM {db}.trips FINAL WHERE isNull(start_address) \
                     UNION ALL SELECT toUInt8(2) AS k, toString(user) AS user, toString(device) AS device, toInt64(start) AS start, end_lat AS lat, end_lon AS lon FROM {db}.trips FINAL WHERE isNull(end_address)\
                     ) ORDER BY start DESC LIMIT {limit}"
                );
                Ok(ch
                    .client
                    .query(&sql)
                    .fetch_all::<ChPending>()
                    .await?
                    .into_iter()
                    .map(|r| Pending {
                        target: Target::of(r.k),
                        user: r.user,
                        device: r.device,
                        start: r.start,
                        lat: r.lat,
                        lon: r.lon,
                    })
                    .collect())
            }
        }
    }

    /// Keeps `address` ('' for none) as the answer for `cell`.
    pub async fn remember(
        &self,
        cell: &str,
        address: &str,
        now_ms: i64,
    ) -> Result<(), AddressError> {
        match self {
            Rows::Sqlite(c) => {
                let (cell, address) = (cell.to_owned(), address.to_owned());
                blocking(c, move |c| {
                    c.execute(
                        "INSERT OR REPLACE INTO addresses (cell, address, fetched_at) VALUES (?1, ?2, ?3)",
                        params![cell, address, now_ms],
                    )
                    .map(drop)
                })
                .await
            }
            Rows::ClickHouse(ch) => {
                let at = if ch.columns().await?["stops"].1 {
                    "fromUnixTimestamp64Milli(toInt64(?))"
                } else {
                    "toUInt64(?)"
                };
                ch.client
                    .query(&format!(
                        "INSERT INTO {}.addresses (cell, address, fetched_at) SELECT ?, ?, {at}",
                        ch.db
                    ))
                    .bind(cell)
                    .bind(address)
                    .bind(now_ms)
                    .execute()
                    .await?;
                Ok(())
            }
        }
    }

    /// Sets `address` on `rows`, all of one `target`.
    pub async fn apply(
        &self,
        target: Target,
        rows: &[&Pending],
        address: &str,
    ) -> Result<(), AddressError> {
        if rows.is_empty() {
            return Ok(());
        }
        match self {
            Rows::Sqlite(c) => {
                let sql = format!(
                    "UPDATE {} SET {} = ?1 WHERE user = ?2 AND device = ?3 AND start = ?4",
                    target.table(),
                    target.column()
                );
                let keys: Vec<(String, String, i64)> = rows
                    .iter()
                    .map(|p| (p.user.clone(), p.device.clone(), p.start))
                    .collect();
                let address = address.to_owned();
                blocking(c, move |c| {
                    let tx = c.transaction()?;
                    {
                        let mut stmt = tx.prepare_cached(&sql)?;
                        for (u, d, s) in &keys {
                            stmt.execute(params![address, u, d, s])?;
                        }
                    }
                    tx.commit()
                })
                .await
            }
            Rows::ClickHouse(ch) => {
                // ReplacingMergeTree: the row again, with the address and a
                // version one millisecond newer. A version the sink writes
                // meanwhile (later by far) still wins; its row then comes
                // back here without an address and takes it from the cache.
                let table = target.table();
                let (cols, dt64) = &ch.columns().await?[table];
                let select: Vec<String> = cols
                    .iter()
                    .map(|c| {
                        let q = quote_ident(c);
                        // Positional: INSERT ... SELECT matches by order,
                        // and an alias named as its column would be cyclic.
                        if c == target.column() {
                            "toNullable(?)".to_owned()
                        } else if c == "received_at" && *dt64 {
                            "addMilliseconds(received_at, 1)".to_owned()
                        } else if c == "received_at" {
                            "received_at + 1".to_owned()
                        } else {
                            q
                        }
                    })
                    .collect();
                let names: Vec<String> = cols.iter().map(|c| quote_ident(c)).collect();
                let keys = vec!["(user = ? AND device = ? AND toInt64(start) = ?)"; rows.len()];
                let sql = format!(
                    "INSERT INTO {db}.{table} ({}) SELECT {} FROM {db}.{table} FINAL WHERE {}",
                    names.join(", "),
                    select.join(", "),
                    keys.join(" OR "),
                    db = ch.db,
                );
                let mut q = ch.client.query(&sql).bind(address);
                for p in rows {
                    q = q.bind(&p.user).bind(&p.device).bind(p.start);
                }
                q.execute().await?;
                Ok(())
            }
        }
    }
}
