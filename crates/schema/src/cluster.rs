//! The ClickHouse schema on a cluster of shards and replicas: each
//! migration's statements, rendered for one server, rewritten for a
//! cluster named in `remote_servers`.
//!
//! - A table of a device's rows (every table but [`GLOBAL`]) becomes a
//!   replicated table `NAME_local` on every server (`ON CLUSTER`), its
//!   engine the replicated form of the one-server engine, its ZooKeeper
//!   path `/clickhouse/tables/CLUSTER/{shard}/DB/NAME_local` and its replica name
//!   `{replica}` (the servers' macros), and a Distributed table `NAME`
//!   over them sharded by [`SHARDING_KEY`]: a device's rows, its `FINAL`
//!   and its trips live on one shard, and every reader and writer keeps
//!   using `NAME`.
//! - A table every server needs whole ([`GLOBAL`]: the address cache, the
//!   record of migrations) is one replicated table on every server: one
//!   ZooKeeper path for all, replica `{shard}_{replica}`.
//! - A materialized view reads and writes the local tables on each server
//!   (an insert through a Distributed table is an insert into a shard's
//!   local table, which fires the view there; the view's table replicates
//!   like any other).
//! - `ALTER` runs on the local tables, and the Distributed table over
//!   them is made again after (18.16 takes no `ALTER ... ON CLUSTER` of a
//!   Distributed table on a replicated cluster); `DROP` everywhere;
//!   `INSERT` goes through the Distributed tables.

use crate::clickhouse::ServerVersion;
use crate::quote_ident;

/// How a device's rows are spread over the shards: the same expression
/// on every table, so that a device's positions, trips and stops are on
/// one shard and `FINAL` (per shard) sees every copy of a row.
pub const SHARDING_KEY: &str = "sipHash64(user, device)";

/// Tables held whole by every server, not sharded.
pub const GLOBAL: &[&str] = &["addresses", "schema_migrations"];

/// A statement the cluster rendering does not know how to place: a
/// migration written in a shape this module was not taught (a test
/// renders every migration).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no cluster form for the statement: {0}")]
pub struct UnknownStatement(pub String);

/// The statements of one migration, rendered for one `version` of the
/// server, placed on `cluster`.
///
/// Before 20.1 the columns of a replicated table carry no comments: 18.16
/// writes a comment to ZooKeeper in a form its second replica reads back
/// as a different structure, and refuses to create the table there
/// ("Table structure in ZooKeeper is too different", seen on the test
/// cluster). The comments are documentation; the one-server schema and
/// current releases keep them.
pub fn on_cluster(
    statements: &[String],
    database: &str,
    cluster: &str,
    version: ServerVersion,
) -> Result<Vec<String>, UnknownStatement> {
    let c = Cluster::new(database, cluster, version);
    let mut out = Vec::new();
    let mut altered: Vec<&str> = Vec::new();
    for s in statements {
        // A Distributed table takes no ALTER on a replicated cluster
        // (18.16: "Table ... isn't replicated, but shard #1 is replicated
        // according to its cluster definition"): after its local tables
        // changed, it is made again over them, before any other statement
        // (which might use the new columns). It holds no rows (inserts are
        // synchronous), so nothing is lost.
        let alters = c.alters(s);
        if altered.last().is_some_and(|t| alters != Some(*t)) {
            c.remake(altered.drain(..), &mut out);
        }
        c.place(s, &mut out)?;
        if let Some(t) = alters.filter(|t| !altered.contains(t)) {
            altered.push(t);
        }
    }
    c.remake(altered.drain(..), &mut out);
    Ok(out)
}

/// The table every migration is recorded in, on `cluster`.
pub fn schema_migrations(database: &str, cluster: &str, version: ServerVersion) -> String {
    let c = Cluster::new(database, cluster, version);
    c.uncommented(format!(
        "CREATE TABLE IF NOT EXISTS {}.schema_migrations ON CLUSTER {} (version UInt32 COMMENT 'migration number', name String COMMENT 'migration name', applied_at DateTime COMMENT 'when it was applied (UTC)', server_version String COMMENT 'server it was rendered for') ENGINE = {} ORDER BY version",
        c.db,
        c.on,
        c.replicated("MergeTree", "", "schema_migrations", true)
    ))
}

/// `CREATE DATABASE` on every server of `cluster`.
pub fn create_database(database: &str, cluster: &str) -> String {
    let c = Cluster::new(database, cluster, ServerVersion { major: 0, minor: 0 });
    format!("CREATE DATABASE IF NOT EXISTS {} ON CLUSTER {}", c.db, c.on)
}

struct Cluster<'a> {
    /// The database, quoted, as the one-server statements name it.
    db: String,
    database: &'a str,
    /// The cluster, quoted.
    on: String,
    cluster: &'a str,
    /// Whether replicated tables' columns may carry comments.
    comments: bool,
}

/// A string as a ClickHouse string literal.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

impl<'a> Cluster<'a> {
    fn new(database: &'a str, cluster: &'a str, version: ServerVersion) -> Self {
        Cluster {
            db: quote_ident(database),
            database,
            on: quote_ident(cluster),
            cluster,
            comments: version
                >= ServerVersion {
                    major: 20,
                    minor: 1,
                },
        }
    }

    /// `sql` without its columns' comments, where the server cannot keep
    /// them on replicated tables.
    fn uncommented(&self, sql: String) -> String {
        if self.comments {
            return sql;
        }
        let mut out = String::with_capacity(sql.len());
        let mut rest = sql.as_str();
        while let Some(at) = rest.find(" COMMENT '") {
            out.push_str(&rest[..at]);
            // The literal's end: a quote not doubled nor escaped.
            let body = &rest[at + " COMMENT '".len()..];
            let mut chars = body.char_indices().peekable();
            let mut end = body.len();
            while let Some((i, ch)) = chars.next() {
                match ch {
                    '\\' => {
                        chars.next();
                    }
                    '\'' if chars.peek().is_some_and(|(_, c)| *c == '\'') => {
                        chars.next();
                    }
                    '\'' => {
                        end = i + 1;
                        break;
                    }
                    _ => {}
                }
            }
            rest = &body[end..];
        }
        out.push_str(rest);
        out
    }

    /// `ENGINE = X`'s replicated form for `table`.
    fn replicated(&self, engine: &str, args: &str, table: &str, global: bool) -> String {
        let (path, replica) = if global {
            ("all".to_owned(), "{shard}_{replica}")
        } else {
            ("{shard}".to_owned(), "{replica}")
        };
        let zk = literal(&format!(
            "/clickhouse/tables/{}/{path}/{}/{table}",
            self.cluster, self.database
        ));
        let sep = if args.is_empty() { "" } else { ", " };
        format!("Replicated{engine}({zk}, {}{sep}{args})", literal(replica))
    }

    /// The table named right after `prefix` in `s`, and what follows it.
    fn table_after<'s>(&self, s: &'s str, prefix: &str) -> Option<(&'s str, &'s str)> {
        let rest = s.strip_prefix(prefix)?.strip_prefix(&self.db)?;
        let rest = rest.strip_prefix('.')?;
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        Some((&rest[..end], &rest[end..]))
    }

    /// The Distributed table over `NAME_local`.
    fn distributed(&self, t: &str) -> String {
        let local = format!("{t}_local");
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.{} ON CLUSTER {on} AS {db}.{} ENGINE = Distributed({}, {}, {}, {SHARDING_KEY})",
            quote_ident(t),
            quote_ident(&local),
            literal(self.cluster),
            literal(self.database),
            literal(&local),
            db = self.db,
            on = self.on,
        )
    }

    /// Makes the Distributed tables `tables` again over their local ones.
    fn remake<'t>(&self, tables: impl Iterator<Item = &'t str>, out: &mut Vec<String>) {
        for t in tables {
            out.push(format!(
                "DROP TABLE IF EXISTS {}.{} ON CLUSTER {}",
                self.db,
                quote_ident(t),
                self.on
            ));
            out.push(self.distributed(t));
        }
    }

    /// The sharded table `s` alters, if it is such an ALTER.
    fn alters<'s>(&self, s: &'s str) -> Option<&'s str> {
        let (t, _) = self.table_after(s, "ALTER TABLE ")?;
        (!GLOBAL.contains(&t)).then_some(t)
    }

    /// Places `s` in `out`; the sharded table whose columns it changed, if
    /// it is such an ALTER.
    fn place<'s>(
        &self,
        s: &'s str,
        out: &mut Vec<String>,
    ) -> Result<Option<&'s str>, UnknownStatement> {
        let unknown = || UnknownStatement(s.to_owned());
        let (db, on) = (&self.db, &self.on);
        if let Some((t, rest)) = self.table_after(s, "CREATE TABLE IF NOT EXISTS ") {
            let global = GLOBAL.contains(&t);
            let (name, engine_at) = rest.split_once("ENGINE = ").ok_or_else(unknown)?;
            let engine_end = engine_at
                .find(|c: char| !c.is_ascii_alphanumeric())
                .unwrap_or(engine_at.len());
            let engine = &engine_at[..engine_end];
            if !engine.ends_with("MergeTree") {
                return Err(unknown());
            }
            let after = &engine_at[engine_end..];
            let (args, tail) = match after.strip_prefix('(') {
                Some(a) => a.split_once(')').ok_or_else(unknown)?,
                None => ("", after),
            };
            let local = if global {
                t.to_owned()
            } else {
                format!("{t}_local")
            };
            out.push(self.uncommented(format!(
                "CREATE TABLE IF NOT EXISTS {db}.{} ON CLUSTER {on}{name}ENGINE = {}{tail}",
                quote_ident(&local),
                self.replicated(engine, args, &local, global)
            )));
            if !global {
                out.push(self.distributed(t));
            }
        } else if let Some((t, rest)) = self.table_after(s, "ALTER TABLE ") {
            let comment = rest.trim_start().starts_with("COMMENT COLUMN");
            if comment && !self.comments {
                return Ok(None);
            }
            let rest = self.uncommented(rest.to_owned());
            let local = if GLOBAL.contains(&t) {
                t.to_owned()
            } else {
                format!("{t}_local")
            };
            out.push(format!(
                "ALTER TABLE {db}.{} ON CLUSTER {on}{rest}",
                quote_ident(&local)
            ));
            // The Distributed table has the columns, not their comments.
            return Ok((!comment && !GLOBAL.contains(&t)).then_some(t));
        } else if let Some((v, rest)) =
            self.table_after(s, "CREATE MATERIALIZED VIEW IF NOT EXISTS ")
        {
            // A view with storage of its own would hold one server's rows,
            // unreplicated: only views into a table (`TO`) are placed.
            if !rest.trim_start().starts_with("TO ") {
                return Err(unknown());
            }
            out.push(format!(
                "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{} ON CLUSTER {on}{}",
                quote_ident(v),
                self.locals(rest)
            ));
        } else if let Some((t, rest)) = self.table_after(s, "DROP TABLE IF EXISTS ") {
            if !rest.trim().is_empty() {
                return Err(unknown());
            }
            out.push(format!(
                "DROP TABLE IF EXISTS {db}.{} ON CLUSTER {on}",
                quote_ident(t)
            ));
            // A sharded table's rows are in its local tables (a view has
            // none: IF EXISTS).
            if !GLOBAL.contains(&t) {
                out.push(format!(
                    "DROP TABLE IF EXISTS {db}.{} ON CLUSTER {on}",
                    quote_ident(&format!("{t}_local"))
                ));
            }
        } else if s.starts_with("INSERT INTO ") {
            out.push(s.to_owned());
        } else {
            return Err(unknown());
        }
        Ok(None)
    }

    /// `sql` with every table of the database it names read or written on
    /// the server itself: `DB.NAME` becomes `DB.NAME_local`.
    fn locals(&self, sql: &str) -> String {
        let prefix = format!("{}.", self.db);
        let mut out = String::with_capacity(sql.len() + 32);
        let mut rest = sql;
        while let Some(at) = rest.find(&prefix) {
            let (before, from) = rest.split_at(at + prefix.len());
            out.push_str(before);
            let end = from
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(from.len());
            let name = &from[..end];
            out.push_str(name);
            if !GLOBAL.contains(&name) {
                out.push_str("_local");
            }
            rest = &from[end..];
        }
        out.push_str(rest);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clickhouse::{MIGRATIONS, render};

    fn all(version: &str) -> Vec<String> {
        let v = ServerVersion::parse(version).unwrap();
        MIGRATIONS
            .iter()
            .flat_map(|m| on_cluster(&render(m.template, "ot", v, None), "ot", "c1", v).unwrap())
            .collect()
    }

    #[test]
    fn every_migration_has_a_cluster_form_on_old_and_new_servers() {
        for version in ["18.16.1", "26.9.1"] {
            let sql = all(version);
            for s in &sql {
                assert!(
                    s.starts_with("INSERT INTO ") || s.contains(" ON CLUSTER `c1`"),
                    "{s}"
                );
                // No table of a device's rows is written or read on one
                // server only by a view: views use the local tables.
                if s.starts_with("CREATE MATERIALIZED VIEW") {
                    assert!(
                        s.contains(" TO `ot`.presence_local")
                            || s.contains(" TO `ot`.last_positions_local"),
                        "{s}"
                    );
                    assert!(s.contains("FROM `ot`.positions_local"), "{s}");
                }
            }
            let name = |s: &str| s.split_whitespace().nth(5).unwrap_or("").to_owned();
            let mut distributed: Vec<String> = sql
                .iter()
                .filter(|s| s.starts_with("CREATE TABLE") && s.contains("ENGINE = Distributed("))
                .map(|s| name(s))
                .collect();
            let mut replicated: Vec<String> = sql
                .iter()
                .filter(|s| s.starts_with("CREATE TABLE") && s.contains("ENGINE = Replicated"))
                .map(|s| name(s))
                .collect();
            distributed.sort();
            distributed.dedup();
            replicated.sort();
            replicated.dedup();
            // 15 tables of a device's rows (local and Distributed, the
            // latter made again after each migration that altered them),
            // and the address cache, held whole.
            assert_eq!((replicated.len(), distributed.len()), (16, 15), "{version}");
            assert!(
                distributed
                    .iter()
                    .all(|d| replicated.contains(&format!("{}_local`", d.trim_end_matches('`')))),
                "{distributed:?}"
            );
        }
    }

    #[test]
    fn a_table_becomes_replicated_local_tables_and_a_distributed_one_by_device() {
        let one = vec![
            "CREATE TABLE IF NOT EXISTS `ot`.trips\n(\n    user String,\n    device String,\n    start DateTime,\n    received_at UInt64\n)\nENGINE = ReplacingMergeTree(received_at)\nPARTITION BY toYYYYMM(start)\nORDER BY (user, device, start)".to_owned(),
            "ALTER TABLE `ot`.trips ADD COLUMN end_cc String DEFAULT ''".to_owned(),
            "ALTER TABLE `ot`.trips COMMENT COLUMN end_cc 'its country'".to_owned(),
            "CREATE TABLE IF NOT EXISTS `ot`.addresses\n(\n    cell UInt64\n)\nENGINE = ReplacingMergeTree(fetched_at)\nORDER BY cell".to_owned(),
        ];
        let sql = on_cluster(
            &one,
            "ot",
            "c1",
            ServerVersion {
                major: 25,
                minor: 8,
            },
        )
        .unwrap();
        assert_eq!(
            sql,
            [
                "CREATE TABLE IF NOT EXISTS `ot`.`trips_local` ON CLUSTER `c1`\n(\n    user String,\n    device String,\n    start DateTime,\n    received_at UInt64\n)\nENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/c1/{shard}/ot/trips_local', '{replica}', received_at)\nPARTITION BY toYYYYMM(start)\nORDER BY (user, device, start)",
                "CREATE TABLE IF NOT EXISTS `ot`.`trips` ON CLUSTER `c1` AS `ot`.`trips_local` ENGINE = Distributed('c1', 'ot', 'trips_local', sipHash64(user, device))",
                "ALTER TABLE `ot`.`trips_local` ON CLUSTER `c1` ADD COLUMN end_cc String DEFAULT ''",
                "ALTER TABLE `ot`.`trips_local` ON CLUSTER `c1` COMMENT COLUMN end_cc 'its country'",
                "DROP TABLE IF EXISTS `ot`.`trips` ON CLUSTER `c1`",
                "CREATE TABLE IF NOT EXISTS `ot`.`trips` ON CLUSTER `c1` AS `ot`.`trips_local` ENGINE = Distributed('c1', 'ot', 'trips_local', sipHash64(user, device))",
                "CREATE TABLE IF NOT EXISTS `ot`.`addresses` ON CLUSTER `c1`\n(\n    cell UInt64\n)\nENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/c1/all/ot/addresses', '{shard}_{replica}', fetched_at)\nORDER BY cell",
            ]
        );
    }

    #[test]
    fn a_statement_of_another_shape_is_refused_not_run_on_one_server() {
        let v = ServerVersion {
            major: 25,
            minor: 8,
        };
        for s in [
            "RENAME TABLE `ot`.a TO `ot`.b",
            // A view with its own storage would hold one server's rows.
            "CREATE MATERIALIZED VIEW IF NOT EXISTS `ot`.v ENGINE = MergeTree ORDER BY a AS SELECT a FROM `ot`.positions",
        ] {
            let one = vec![s.to_owned()];
            assert_eq!(
                on_cluster(&one, "ot", "c1", v),
                Err(UnknownStatement(one[0].clone()))
            );
        }
    }

    #[test]
    fn a_dropped_table_goes_with_its_local_tables_and_an_altered_one_is_remade_first() {
        let v = ServerVersion {
            major: 25,
            minor: 8,
        };
        let one = vec![
            "DROP TABLE IF EXISTS `ot`.presence_mv".to_owned(),
            "ALTER TABLE `ot`.stops ADD COLUMN x UInt8 DEFAULT 0".to_owned(),
            "INSERT INTO `ot`.stops (x) SELECT 1".to_owned(),
        ];
        assert_eq!(
            on_cluster(&one, "ot", "c1", v).unwrap(),
            [
                "DROP TABLE IF EXISTS `ot`.`presence_mv` ON CLUSTER `c1`",
                "DROP TABLE IF EXISTS `ot`.`presence_mv_local` ON CLUSTER `c1`",
                "ALTER TABLE `ot`.`stops_local` ON CLUSTER `c1` ADD COLUMN x UInt8 DEFAULT 0",
                "DROP TABLE IF EXISTS `ot`.`stops` ON CLUSTER `c1`",
                "CREATE TABLE IF NOT EXISTS `ot`.`stops` ON CLUSTER `c1` AS `ot`.`stops_local` ENGINE = Distributed('c1', 'ot', 'stops_local', sipHash64(user, device))",
                "INSERT INTO `ot`.stops (x) SELECT 1",
            ]
        );
    }
}
