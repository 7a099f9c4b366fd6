//! The schema: the server's version, migrations applied once each, and
//! the stored stage state read back at start.

use super::*;

/// What `migrate` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateReport {
    /// The server's version, which chose the types.
    pub server: ServerVersion,
    /// Migrations applied now (empty when all were applied before).
    pub applied: Vec<u32>,
}

/// The server's version.
pub async fn server_version(client: &Client) -> Result<ServerVersion, ClickHouseError> {
    let v: String = client.query("SELECT version()").fetch_one().await?;
    ServerVersion::parse(&v).ok_or(ClickHouseError::Version(v))
}

/// Creates the database and applies pending migrations, recording each in
/// `schema_migrations`. Safe to run any number of times.
pub async fn migrate(config: &ClickHouseConfig) -> Result<MigrateReport, ClickHouseError> {
    config.validate()?;
    // The database may not exist yet: talk to `default` until it does.
    let root = config.client().with_database("default");
    let server = server_version(&root).await?;
    let db = otstream_schema::quote_ident(&config.database);
    let cluster = config.cluster.as_deref();
    let (create_db, create_record) = match cluster {
        Some(c) => (
            otstream_schema::cluster::create_database(&config.database, c),
            otstream_schema::cluster::schema_migrations(&config.database, c, server),
        ),
        None => (
            format!("CREATE DATABASE IF NOT EXISTS {db}"),
            format!(
                "CREATE TABLE IF NOT EXISTS {db}.schema_migrations (version UInt32 COMMENT 'migration number', name String COMMENT 'migration name', applied_at DateTime COMMENT 'when it was applied (UTC)', server_version String COMMENT 'server it was rendered for') ENGINE = MergeTree ORDER BY version"
            ),
        ),
    };
    root.query(&create_db).execute().await?;
    root.query(&create_record).execute().await?;
    let done: Vec<u32> = root
        .query(&format!("SELECT version FROM {db}.schema_migrations"))
        .fetch_all()
        .await?;
    let mut applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| !done.contains(&m.version)) {
        for stmt in schema::render_on(
            m.template,
            &config.database,
            server,
            config.retention_days,
            cluster,
        )? {
            match root.query(&stmt).execute().await {
                Ok(()) => {}
                // A migration cut short (the process stopped, or the sink's
                // start stopped waiting for a cluster's DDL) is applied again
                // from its start, and 18.16 has no ADD COLUMN IF NOT EXISTS:
                // a column already added is done.
                Err(e) if stmt.contains(" ADD COLUMN ") && already_added(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        root.query(&format!(
            "INSERT INTO {db}.schema_migrations (version, name, applied_at, server_version) SELECT {}, '{}', now(), '{server}'",
            m.version, m.name
        ))
        .execute()
        .await?;
        tracing::info!(version = m.version, name = m.name, %server, "clickhouse migration applied");
        applied.push(m.version);
    }
    Ok(MigrateReport { server, applied })
}

/// Whether `e` says the column an `ADD COLUMN` adds is there already (on
/// a cluster: on one of its servers, having run there before).
fn already_added(e: &clickhouse::error::Error) -> bool {
    e.to_string()
        .contains("column with this name already exists")
}

/// The latest state of every device, every kind (see the `device_state`
/// table): what a stateful stage resumes from. Migrates first when
/// configured to, so a first start on an empty server finds the table.
pub async fn load_states(
    config: &ClickHouseConfig,
) -> Result<Vec<otstream_model::StateSnapshot>, ClickHouseError> {
    #[derive(clickhouse::Row, Deserialize)]
    struct StateRow {
        user: String,
        device: String,
        kind: String,
        state: String,
    }
    config.validate()?;
    if config.migrate {
        migrate(config).await?;
    }
    let db = otstream_schema::quote_ident(&config.database);
    let rows: Vec<StateRow> = config
        .client()
        .query(&format!(
            "SELECT user, device, kind, state FROM {db}.device_state FINAL"
        ))
        .fetch_all()
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| otstream_model::StateSnapshot {
            user: r.user.into(),
            device: r.device.into(),
            kind: r.kind.into(),
            state: r.state,
            updated_at: 0,
        })
        .collect())
}
