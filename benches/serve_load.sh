#!/usr/bin/env bash
# Load check of `otstream serve` (embedded store) with keep-alive clients on
# this machine: starts a release build on loopback with a fresh data
# directory, runs benches/src/bin/http_load.rs against it (and, as the
# same-run baseline, against a do-nothing endpoint), prints the reports
# and the rows stored, and stops the server. Not a test: a measurement.
#
#   benches/serve_load.sh [CONNECTIONS] [SECONDS] [clickhouse]
#
# With `clickhouse`, a private ClickHouse (scripts/clickhouse.sh) is the sink
# instead of the embedded store; OTSTREAM_CLICKHOUSE__* variables (e.g.
# OTSTREAM_CLICKHOUSE__PERIOD_MS) pass through to serve.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/service.sh
connections="${1:-64}"
seconds="${2:-10}"
SERVE_ARGS=()
sink="${3:-sqlite}"
cargo build -q --release -p otstream-cli -p otstream-benches --bin otstream --bin http_load
dir=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; scripts/clickhouse.sh stop "$dir/ch" >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
pid=
if [ "$sink" = clickhouse ]; then
  ch_url=$(scripts/clickhouse.sh start "$dir/ch")
  SERVE_ARGS+=(--clickhouse-url "$ch_url")
fi
port=$(free_port)
mport=$(free_port)
./target/release/otstream serve --http-addr "127.0.0.1:$port" --metrics-addr "127.0.0.1:$mport" \
  --data-dir "$dir/data" --log warn "${SERVE_ARGS[@]}" &
pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$mport/readyz" >/dev/null && break; sleep 0.1; done
# Baseline in the same run: the same load against /healthz, a hyper endpoint
# that does nothing: the ceiling of HTTP and the load generator here.
printf 'baseline /healthz:  '
./target/release/http_load --url "http://127.0.0.1:$mport/healthz" --connections "$connections" --seconds "$seconds"
printf 'serve /pub:         '
./target/release/http_load --url "http://127.0.0.1:$port/pub" --connections "$connections" --seconds "$seconds"
kill -INT $pid; wait $pid
if [ "$sink" = clickhouse ]; then
  echo "rows stored: $(curl -s "$ch_url/" --data-binary 'SELECT count() FROM otstream.positions FINAL')"
else
python3 - "$dir/data/otstream.db" <<'PY'
import sqlite3, sys
print("rows stored:", sqlite3.connect(sys.argv[1]).execute("select count(*) from positions").fetchone()[0])
PY
fi
