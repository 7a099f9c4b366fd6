//! The events' outboxes: what is to be delivered, durable before the
//! input that caused it is acknowledged.
//!
//! One SQLite file, `outbox.db` in the data directory (WAL,
//! `synchronous=FULL`), holds a queue per route (a webhook, MQTT): the sink
//! appends each event to the queue of every route that wants it in one
//! transaction per batch, before the batch's rows are written; each
//! route's deliverer reads its queue in order on a connection of its own
//! and deletes what it delivered. So a slow or dead endpoint is a growing
//! queue and a metric, never a stalled pipeline; a crash delivers again
//! what was not yet deleted (at least once; receivers deduplicate on the
//! event's `id`).

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use otstream_bus::Message;
use otstream_model::{Event, EventKind, Record};
use rusqlite::{Connection, params};
use rusqlite_migration::{M, Migrations};

use otstream_schema::file::{StoreError, open as open_db};

/// The file name of the outboxes inside the data directory.
pub use otstream_schema::OUTBOX_FILE;

const SCHEMA_V1: &str = r#"
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    route TEXT NOT NULL,             -- the webhook's or MQTT's name
    created_ms INTEGER NOT NULL,     -- when it was appended, UNIX ms
    topic TEXT,                      -- MQTT: where it is published
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_route ON outbox (route, seq);
"#;

/// What a route is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// The event's JSON ([`Event::to_json`]).
    Json,
    /// The MQTT form ([`Event::to_mqtt_json`]), to the topic this template
    /// gives (`{user}` and `{device}` replaced).
    Mqtt {
        /// The topic template.
        topic: String,
    },
}

/// One destination's queue and which events it wants (an empty list
/// wants all).
#[derive(Debug, Clone)]
pub struct Route {
    /// Names the queue: stable across restarts.
    pub name: String,
    /// What it is sent.
    pub format: Format,
    /// Only these kinds.
    pub kinds: HashSet<EventKind>,
    /// Only these users' devices.
    pub users: HashSet<String>,
    /// Only events about these fences.
    pub fences: HashSet<String>,
    /// Only the events these rules fire (`*`: any rule's).
    pub rules: HashSet<String>,
}

impl Route {
    /// Whether `e` goes to this route.
    pub fn wants(&self, e: &Event) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&e.kind))
            && (self.users.is_empty() || self.users.contains(e.meta.user.as_str()))
            && (self.fences.is_empty()
                || e.fence
                    .as_ref()
                    .is_some_and(|f| self.fences.contains(f.as_str())))
            && (self.rules.is_empty()
                || e.rule
                    .as_ref()
                    .is_some_and(|r| self.rules.contains("*") || self.rules.contains(r.as_str())))
    }
}

/// One event waiting in a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its place in the queue.
    pub seq: i64,
    /// When it was appended, UNIX ms.
    pub created_ms: i64,
    /// MQTT: the topic.
    pub topic: Option<String>,
    /// What is sent.
    pub body: String,
}

/// The outboxes' appending side, shared with the readers' wake-up.
#[derive(Clone)]
pub struct Outbox {
    conn: Arc<Mutex<Connection>>,
    routes: Arc<[Route]>,
    data_dir: std::path::PathBuf,
    /// Counts appends: readers wait for it to change.
    appended: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Outbox {
    /// Opens (creating it) `outbox.db` in `data_dir` for `routes`.
    pub fn open(data_dir: &Path, routes: Vec<Route>) -> Result<Outbox, StoreError> {
        let (conn, _) = open_db(data_dir, OUTBOX_FILE, &migrations())?;
        Ok(Outbox {
            conn: Arc::new(Mutex::new(conn)),
            routes: routes.into(),
            data_dir: data_dir.to_owned(),
            appended: Arc::new(tokio::sync::watch::Sender::new(0)),
        })
    }

    /// The routes.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Appends the events of `batch` to the queues that want them, in one
    /// transaction; returns how many entries were written. Blocking.
    pub fn append(&self, batch: &[Message<Record>], now_ms: i64) -> Result<usize, StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let tx = conn.transaction()?;
        let mut n = 0;
        {
            let mut ins = tx.prepare_cached(
                "INSERT INTO outbox (route, created_ms, topic, body) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for m in batch {
                let Record::Event(e) = &m.value else { continue };
                let (mut json, mut mqtt) = (None, None);
                for r in self.routes.iter().filter(|r| r.wants(e)) {
                    let (topic, body) = match &r.format {
                        Format::Json => (None, json.get_or_insert_with(|| e.to_json()).as_str()),
                        Format::Mqtt { topic } => (
                            Some(
                                topic
                                    .replace("{user}", &e.meta.user)
                                    .replace("{device}", &e.meta.device),
                            ),
                            mqtt.get_or_insert_with(|| e.to_mqtt_json()).as_str(),
                        ),
                    };
                    ins.execute(params![r.name, now_ms, topic, body])?;
                    n += 1;
                }
            }
        }
        tx.commit()?;
        if n > 0 {
            self.appended.send_modify(|n| *n += 1);
        }
        Ok(n)
    }

    /// A reader of `route`'s queue, on a connection of its own.
    pub fn reader(&self, route: &str) -> Result<Reader, StoreError> {
        let (conn, _) = open_db(&self.data_dir, OUTBOX_FILE, &migrations())?;
        Ok(Reader {
            conn,
            route: route.to_owned(),
            appended: self.appended.subscribe(),
        })
    }
}

fn migrations() -> Migrations<'static> {
    Migrations::new(vec![M::up(SCHEMA_V1)])
}

/// One route's side of the outbox: reads its queue in order, deletes what
/// was delivered.
pub struct Reader {
    conn: Connection,
    route: String,
    appended: tokio::sync::watch::Receiver<u64>,
}

impl Reader {
    /// Up to `limit` entries after `after`, in order. Blocking.
    pub fn next(&self, after: i64, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, created_ms, topic, body FROM outbox WHERE route = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![self.route, after, limit as i64], |r| {
            Ok(Entry {
                seq: r.get(0)?,
                created_ms: r.get(1)?,
                topic: r.get(2)?,
                body: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes the entries up to `seq` (delivered, or expired). Blocking.
    pub fn delete_through(&self, seq: i64) -> Result<usize, StoreError> {
        Ok(self.conn.execute(
            "DELETE FROM outbox WHERE route = ?1 AND seq <= ?2",
            params![self.route, seq],
        )?)
    }

    /// Entries waiting. Blocking; a scan of the route's part of the index.
    pub fn waiting(&self) -> Result<u64, StoreError> {
        Ok(self.conn.query_row(
            "SELECT count(*) FROM outbox WHERE route = ?1",
            [&self.route],
            |r| r.get(0),
        )?)
    }

    /// What changes when something is appended: wait on it when the
    /// queue is empty.
    pub fn appended(&self) -> tokio::sync::watch::Receiver<u64> {
        self.appended.clone()
    }
}

/// Adds the event each device-reported transition is (see
/// [`Event::of_record`]) to `batch`, carrying the transition's ack: the
/// server's own transitions come as events from the geofence stage, the
/// devices' are read here, where every record passes in every mode.
pub fn device_transitions(batch: &mut Vec<Message<Record>>) {
    let n = batch.len();
    for i in 0..n {
        let m = &batch[i];
        let Record::Transition(t) = &m.value else {
            continue;
        };
        // The phone's copy of a fence the server pushed to it, which the
        // server raised the event for from the fence itself: marked
        // `pushed` by the geofence stage in one process (by `rid` or
        // `wtst`), and known by its `rid` here in every mode (over Kafka
        // the sink reads the phone's transitions before that stage).
        let pushed = t
            .rid
            .as_deref()
            .is_some_and(|r| r.starts_with(otstream_model::PUSHED_RID_PREFIX));
        if t.source != "device" || pushed {
            continue;
        }
        if let Some(e) = Event::of_record(&m.value) {
            let msg = Message::new(m.key.clone(), Record::Event(e), m.ack.clone());
            batch.push(msg);
        }
    }
}
