"""Checks that the ClickHouse DDL rendered for a current release parses and
runs, in chDB (an embedded current ClickHouse engine).

    otstream migrate --print-ddl --server-version 26.9 --database otstream \
        | python3 scripts/chdb_check.py

    otstream migrate --print-ddl --server-version 26.9 --cluster otstream \
        | python3 scripts/chdb_check.py --parse

Applies every statement in a fresh session, inserts one position, and checks
that the last_positions materialized view and FINAL dedup work. Given a
Grafana dashboard as its argument, also runs every ClickHouse query of it
(Grafana's $__timeFilter macro spelled out) against those tables.
"""
import json
import re
import sys
import tempfile

from chdb import session

ddl = sys.stdin.read()
statements = [s.strip() for s in ddl.split(";\n") if s.strip()]
if sys.argv[1:] == ["--parse"]:
    # A cluster's DDL (ON CLUSTER, replicated engines, Distributed tables)
    # cannot run without the cluster: each statement is parsed by the
    # current engine's parser instead.
    from chdb import query
    for stmt in statements:
        literal = "'" + stmt.rstrip(";").replace("\\", "\\\\").replace("'", "\\'") + "'"
        try:
            query(f"SELECT formatQuery({literal})", "TSV")
        except Exception as e:
            sys.exit(f"does not parse: {stmt[:200]}...: {e}")
    print(f"chDB: {len(statements)} statements of the cluster's DDL parse")
    sys.exit(0)
with tempfile.TemporaryDirectory() as path:
    sess = session.Session(path)
    version = sess.query("SELECT version()", "CSV").bytes().decode().strip()
    sess.query("CREATE DATABASE IF NOT EXISTS otstream")
    for stmt in statements:
        sess.query(stmt.rstrip(";"))
    row = ("('jane', 'phone', 'JJ', 1700000000, 52.5, 13.4, 5, NULL, NULL, 12, NULL, 80, NULL,"
           " 'u', NULL, NULL, NULL, NULL, NULL, NULL, [], [], NULL, 'http', 1700000000123, '', '', 'Berlin', 'DE')")
    # The columns named: later ones (the heatmap's cells) take their defaults.
    columns = ("user, device, tid, tst, lat, lon, acc, alt, vac, vel, cog, batt, bs, t, conn, p, m,"
               " ssid, bssid, created_at, inregions, inrids, topic, transport, received_at, extra,"
               " filtered, place, cc")
    for _ in range(2):  # the same row twice: FINAL keeps one
        sess.query(f"INSERT INTO otstream.positions ({columns}) VALUES {row}")
    # A fix the filters set aside, dated later: not the last position.
    flagged = row.replace("1700000000, 52.5", "1800000000, 0.0").replace("'', '', 'Berlin'", "'', 'future', 'Berlin'")
    sess.query(f"INSERT INTO otstream.positions ({columns}) VALUES {flagged}")
    count = sess.query("SELECT count() FROM otstream.positions FINAL WHERE filtered = ''", "CSV").bytes().decode().strip()
    last = sess.query("SELECT user, device, tst FROM otstream.last_positions FINAL", "CSV").bytes().decode().strip()
    types = sess.query(
        "SELECT type FROM system.columns WHERE database = 'otstream' AND table = 'positions'"
        " AND name IN ('user', 'received_at') ORDER BY name", "CSV").bytes().decode().split()
    assert count == "1", f"FINAL count {count!r}"
    assert last == '"jane","phone","2023-11-14 22:13:20"', f"last_positions {last!r}"
    assert types == ['"DateTime64(3)"', '"LowCardinality(String)"'], types
    queries = 0
    for path in sys.argv[1:]:
        for panel in json.load(open(path))["panels"]:
            for target in panel.get("targets", []):
                sql = target.get("rawSql")
                if not sql:
                    continue
                sql = re.sub(r"\$__timeFilter\((\w+)\)", r"\1 >= now() - INTERVAL 1 HOUR", sql)
                try:
                    sess.query(sql, "CSV")
                except Exception as e:
                    sys.exit(f"{path}: panel {panel['title']!r}: {e}")
                queries += 1
    print(f"chDB {version}: {len(statements)} statements applied; FINAL and last_positions check out"
          + (f"; {queries} dashboard queries run" if queries else ""))
