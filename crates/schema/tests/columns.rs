//! A column added in one place only fails here: the SQLite migrations,
//! the ClickHouse migrations (on the oldest and a current server) and
//! [`Table::columns`] must name the same columns for every table.
#![allow(clippy::unwrap_used)] // a test states its expectations with unwrap

use std::collections::{BTreeMap, BTreeSet};

use otstream_schema::clickhouse::{MIGRATIONS, ServerVersion, render};
use otstream_schema::{Table, sqlite};

/// What every table should have: the sink's columns and those filled in
/// later.
fn expected(t: Table) -> BTreeSet<String> {
    t.columns()
        .iter()
        .chain(t.filled_later())
        .map(|c| (*c).to_owned())
        .collect()
}

#[test]
fn the_sqlite_migrations_make_the_columns_of_the_schema() {
    let conn = rusqlite::Connection::open_in_memory().unwrap();
    for m in sqlite::MIGRATIONS {
        conn.execute_batch(m).unwrap();
    }
    for t in Table::ALL {
        let mut stmt = conn
            .prepare(&format!(
                "SELECT name FROM pragma_table_info('{}')",
                t.name()
            ))
            .unwrap();
        let mut got: BTreeSet<String> = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        // Its own row id: every refusal is kept, duplicates too.
        if t == Table::DeadLetters {
            assert!(got.remove("id"));
        }
        assert_eq!(got, expected(t), "{}", t.name());
    }
}

/// The columns of every table once `statements` have run, as far as
/// CREATE TABLE and ALTER TABLE ... ADD/DROP COLUMN say.
fn clickhouse_columns(statements: &[String]) -> BTreeMap<String, BTreeSet<String>> {
    let mut tables: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let table_name = |s: &str| -> String {
        let qualified = s.split_whitespace().next().unwrap();
        qualified.rsplit('.').next().unwrap().to_owned()
    };
    for s in statements {
        if let Some(rest) = s.strip_prefix("CREATE TABLE IF NOT EXISTS ") {
            let name = table_name(rest);
            let body = &rest[rest.find('(').unwrap() + 1..rest.find("\n)").unwrap()];
            let cols = body
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| l.split_whitespace().next().unwrap().to_owned())
                .collect();
            tables.insert(name, cols);
        } else if let Some(rest) = s.strip_prefix("ALTER TABLE ") {
            let name = table_name(rest);
            let words: Vec<&str> = rest.split_whitespace().collect();
            let col = |i: usize| {
                let w = if words.get(i) == Some(&"IF") {
                    i + 3
                } else {
                    i
                };
                words[w].to_owned()
            };
            let cols = tables.entry(name).or_default();
            match (words.get(1), words.get(2)) {
                (Some(&"ADD"), Some(&"COLUMN")) => {
                    cols.insert(col(3));
                }
                (Some(&"DROP"), Some(&"COLUMN")) => {
                    cols.remove(&col(3));
                }
                _ => {}
            }
        }
    }
    tables
}

#[test]
fn the_clickhouse_migrations_make_the_columns_of_the_schema_on_every_server() {
    for version in ["18.16", "25.8"] {
        let version = ServerVersion::parse(version).unwrap();
        let statements: Vec<String> = MIGRATIONS
            .iter()
            .flat_map(|m| render(m.template, "ot", version, Some(30)))
            .collect();
        let tables = clickhouse_columns(&statements);
        for t in Table::ALL {
            assert_eq!(
                tables.get(t.name()),
                Some(&expected(t)),
                "{} on {version}",
                t.name()
            );
        }
    }
}

#[test]
fn each_sqlite_statement_writes_the_columns_in_order() {
    let conn = rusqlite::Connection::open_in_memory().unwrap();
    for m in sqlite::MIGRATIONS {
        conn.execute_batch(m).unwrap();
    }
    for t in Table::ALL {
        let stmt = conn.prepare(sqlite::insert(t)).unwrap();
        assert_eq!(stmt.parameter_count(), t.columns().len(), "{}", t.name());
    }
    assert_eq!(
        sqlite::insert(Table::Stops),
        r#"INSERT OR REPLACE INTO stops ("user", "device", "start", "end", "lat", "lon", "duration", "points", "received_at", "place", "locality", "cc", "place_id") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"#
    );
}

#[test]
fn every_field_of_a_read_row_is_a_column_of_its_table() {
    use clickhouse::Row;
    use otstream_schema::rows::{Position, Stop, Transition, Trip, select};
    for (t, fields) in [
        (Table::Positions, Position::COLUMN_NAMES),
        (Table::Transitions, Transition::COLUMN_NAMES),
        (Table::Trips, Trip::COLUMN_NAMES),
        (Table::Stops, Stop::COLUMN_NAMES),
    ] {
        let columns = expected(t);
        let stray: Vec<&str> = fields
            .iter()
            .copied()
            .filter(|f| !columns.contains(*f))
            .collect();
        assert_eq!(stray, Vec::<&str>::new(), "{}", t.name());
    }
    assert_eq!(
        select::<Stop>(),
        r#""user", "device", "start", "end", "lat", "lon", "duration", "points", "place", "locality", "cc", "address", "place_id""#
    );
}
