//! The sink's ClickHouse backend: batches written table by table,
//! retried, and rows refused for their content isolated by halving.

use super::*;

/// ClickHouse exception codes that mean "this data cannot be stored", as
/// opposed to "the server cannot take it now": parse and conversion
/// failures, values out of range, violated constraints, and `throwIf` in a
/// materialized view used as a data check.
const CONTENT_ERRORS: [u32; 14] = [6, 26, 27, 38, 41, 53, 69, 70, 72, 117, 131, 321, 395, 469];

fn error_code(e: &clickhouse::error::Error) -> Option<u32> {
    let text = e.to_string();
    let rest = &text[text.find("Code: ")? + 6..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn is_content_error(e: &clickhouse::error::Error) -> bool {
    error_code(e).is_some_and(|c| CONTENT_ERRORS.contains(&c))
}

struct Meters {
    rows: BTreeMap<Table, Counter>,
    insert_seconds: Histogram,
    retries: Counter,
    rejected: Counter,
}

impl Meters {
    fn new() -> Self {
        Self {
            rows: Table::ALL
                .iter()
                .map(|t| {
                    (
                        *t,
                        metrics::counter!("otstream_stored_rows_total", "table" => t.name()),
                    )
                })
                .collect(),
            insert_seconds: metrics::histogram!("otstream_clickhouse_insert_seconds"),
            retries: metrics::counter!("otstream_errors_total", "stage" => "sink", "error_code" => "clickhouse_retry"),
            rejected: metrics::counter!("otstream_errors_total", "stage" => "sink", "error_code" => "clickhouse_rejected"),
        }
    }
}

/// Rows ClickHouse refused, by position, with its reason.
type Rejected = Vec<(usize, String)>;

/// The recursive bisection's future.
type Isolating<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Rejected, clickhouse::error::Error>> + Send + 'a>,
>;

/// The sink stopped before its batch was written (shutdown).
struct Stopped;

/// ClickHouse as the sink's backend: each table's rows one INSERT, retried
/// until it succeeds, rows refused for their content found by halving and
/// stored as dead letters.
pub struct ClickHouseBackend {
    client: Client,
    config: ClickHouseConfig,
    meters: Meters,
}

impl ClickHouseBackend {
    /// A backend writing where `config` says; applies pending migrations
    /// first when configured to.
    pub async fn new(config: ClickHouseConfig) -> Result<Self, ClickHouseError> {
        config.validate()?;
        if config.migrate {
            let report = migrate(&config).await?;
            tracing::info!(server = %report.server, applied = ?report.applied, "clickhouse schema ready");
        }
        Ok(ClickHouseBackend {
            client: config.client(),
            config,
            meters: Meters::new(),
        })
    }
}

impl crate::Backend for ClickHouseBackend {
    fn batching(&self) -> crate::Batching {
        crate::Batching {
            max_rows: self.config.max_rows,
            max_bytes: self.config.max_bytes,
            linger: Duration::from_millis(self.config.period_ms),
        }
    }

    async fn write(
        &mut self,
        batch: &mut Vec<Message<Record>>,
        shutdown: &CancellationToken,
    ) -> Result<Vec<usize>, crate::Unwritten> {
        let w = Writer {
            backend: self,
            shutdown,
        };
        w.flush(batch)
            .await
            .map_err(|Stopped| crate::Unwritten::Stopped)
    }
    async fn stored_state(&self) -> Result<Vec<otstream_model::StateSnapshot>, crate::SinkError> {
        Ok(super::load_states(&self.config).await?)
    }
}

/// One batch being written.
struct Writer<'a> {
    backend: &'a ClickHouseBackend,
    shutdown: &'a CancellationToken,
}

impl Writer<'_> {
    /// Writes every record of `batch`; returns the positions of those
    /// refused and stored as dead letters.
    async fn flush(&self, batch: &[Message<Record>]) -> Result<Vec<usize>, Stopped> {
        let mut by_table: BTreeMap<Table, Vec<usize>> = BTreeMap::new();
        for (i, m) in batch.iter().enumerate() {
            if let Some(t) = Table::of(&m.value) {
                by_table.entry(t).or_default().push(i);
            }
        }
        // A stage writes its state with every input; only the latest per
        // device matters, and the rest would be merged away anyway.
        if let Some(idx) = by_table.get_mut(&Table::DeviceState) {
            let mut seen = std::collections::HashSet::new();
            let mut latest: Vec<usize> = idx
                .iter()
                .rev()
                .copied()
                .filter(|i| match &batch[*i].value {
                    Record::State(s) => seen.insert((&s.kind, &s.user, &s.device)),
                    _ => true,
                })
                .collect();
            latest.reverse();
            *idx = latest;
        }
        let mut rejected: Vec<(usize, String)> = Vec::new();
        for (table, idx) in &by_table {
            let recs: Vec<&Record> = idx.iter().map(|i| &batch[*i].value).collect();
            for (j, why) in self.write_table(*table, &recs).await? {
                rejected.push((idx[j], why));
            }
        }
        if !rejected.is_empty() {
            let dead: Vec<Record> = rejected
                .iter()
                .map(|(i, why)| Record::DeadLetter(rejection(&batch[*i].value, why)))
                .collect();
            let dead_refs: Vec<&Record> = dead.iter().collect();
            // Dead letters are not bisected: if ClickHouse refuses even
            // those, that is a schema problem and is retried.
            self.retry(Table::DeadLetters, &dead_refs, false).await?;
            self.backend.meters.rejected.increment(dead.len() as u64);
        }
        Ok(rejected.into_iter().map(|(i, _)| i).collect())
    }

    /// Inserts one table's rows; returns the positions (in `recs`) of rows
    /// ClickHouse rejected for their content, with its reason.
    async fn write_table(
        &self,
        table: Table,
        recs: &[&Record],
    ) -> Result<Vec<(usize, String)>, Stopped> {
        self.retry(table, recs, true).await
    }

    async fn retry(
        &self,
        table: Table,
        recs: &[&Record],
        bisect: bool,
    ) -> Result<Vec<(usize, String)>, Stopped> {
        let max = Duration::from_millis(self.backend.config.retry_max_ms);
        let mut delays = otstream_model::retry::backoff(
            Duration::from_millis(self.backend.config.retry_initial_ms),
            max,
        );
        loop {
            let err = match self.insert(table, recs).await {
                Ok(()) => return Ok(Vec::new()),
                Err(e) => e,
            };
            if bisect && is_content_error(&err) && recs.len() > 1 {
                match self.isolate(table, recs, 0).await {
                    Ok(bad) if bad.len() < recs.len() => return Ok(bad),
                    // Every row refused: not the data's fault.
                    Ok(_) => {}
                    Err(_) => {}
                }
            } else if bisect && is_content_error(&err) {
                return Ok(vec![(0, err.to_string())]);
            }
            self.backend.meters.retries.increment(1);
            let wait = delays.next().unwrap_or(max);
            tracing::warn!(table = table.name(), rows = recs.len(), error = %err, retry_in_ms = wait.as_millis() as u64, "clickhouse insert failed; retrying");
            tokio::select! {
                () = self.shutdown.cancelled() => return Err(Stopped),
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Finds the rejected rows by halving; `offset` maps back to the caller.
    fn isolate<'a>(&'a self, table: Table, recs: &'a [&'a Record], offset: usize) -> Isolating<'a> {
        Box::pin(async move {
            match self.insert(table, recs).await {
                Ok(()) => Ok(Vec::new()),
                Err(e) if is_content_error(&e) && recs.len() == 1 => {
                    Ok(vec![(offset, e.to_string())])
                }
                Err(e) if is_content_error(&e) => {
                    let mid = recs.len() / 2;
                    let mut bad = self.isolate(table, &recs[..mid], offset).await?;
                    bad.extend(self.isolate(table, &recs[mid..], offset + mid).await?);
                    Ok(bad)
                }
                Err(e) => Err(e),
            }
        })
    }

    async fn insert(&self, table: Table, recs: &[&Record]) -> Result<(), clickhouse::error::Error> {
        let started = Instant::now();
        let b = self.backend;
        let timeout = Duration::from_millis(b.config.insert_timeout_ms);
        match tokio::time::timeout(timeout, rows::insert(&b.client, table, recs)).await {
            Ok(Ok(())) => {
                b.meters
                    .insert_seconds
                    .record(started.elapsed().as_secs_f64());
                if let Some(c) = b.meters.rows.get(&table) {
                    c.increment(recs.len() as u64);
                }
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(clickhouse::error::Error::TimedOut),
        }
    }
}

/// The dead letter for a record ClickHouse refused: the record itself, as
/// JSON, is the payload (the raw body is in the raw capture).
fn rejection(r: &Record, why: &str) -> DeadLetter {
    let (user, device, received_at, transport, topic) = match r.meta() {
        Some(m) => (
            m.user.clone(),
            m.device.clone(),
            m.received_at,
            m.transport,
            m.topic.clone(),
        ),
        None => (
            Text::default(),
            Text::default(),
            0,
            otstream_model::Transport::Http,
            None,
        ),
    };
    DeadLetter {
        user,
        device,
        received_at,
        transport,
        topic,
        remote_addr: None,
        kind: Text::const_new("rejected"),
        field: None,
        message: format!("clickhouse refused the row: {why}"),
        payload: r.to_json().into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_read_from_messages() {
        let e = clickhouse::error::Error::BadResponse("Code: 395, e.displayText() = DB::Exception: Value passed to 'throwIf' function is non zero".into());
        assert_eq!(error_code(&e), Some(395));
        assert!(is_content_error(&e));
        let e = clickhouse::error::Error::BadResponse(
            "Code: 60, e.displayText() = DB::Exception: Table x doesn't exist".into(),
        );
        assert!(!is_content_error(&e));
        assert!(!is_content_error(&clickhouse::error::Error::TimedOut));
    }
}
