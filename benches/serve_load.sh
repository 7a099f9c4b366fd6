#!/usr/bin/env bash
# Load check of `otstream serve` (embedded store) with keep-alive clients on
# this machine: starts a release build on loopback with a fresh data
# directory, runs benches/src/bin/http_load.rs against it (and, as the
# same-run baseline, against a do-nothing endpoint), prints the reports
# and the rows stored, and stops the server. Not a test: a measurement.
#
#   benches/serve_load.sh [CONNECTIONS] [SECONDS] [sqlite|clickhouse|clickhouse-direct]
#
# With `clickhouse`, a private ClickHouse (scripts/clickhouse.sh) is the sink
# instead of the embedded store, through serve's local buffer;
# `clickhouse-direct` turns the buffer off (every 200 waits for the insert).
# OTSTREAM_CLICKHOUSE__* variables (e.g. OTSTREAM_CLICKHOUSE__PERIOD_MS) pass
# through to serve. OTSTREAM_BIN measures another build. Besides the load
# generator's report it prints serve's CPU time per acknowledged message,
# from /proc/PID/stat over the serve run (ClickHouse's own CPU not counted).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/service.sh
connections="${1:-64}"
seconds="${2:-10}"
SERVE_ARGS=()
sink="${3:-sqlite}"
cargo build -q --release -p otstream-benches --bin http_load
if [ -z "${OTSTREAM_BIN:-}" ]; then
  cargo build -q --release -p otstream-cli --bin otstream
fi
bin="${OTSTREAM_BIN:-./target/release/otstream}"
dir=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; scripts/clickhouse.sh stop "$dir/ch" >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
pid=
case "$sink" in
  clickhouse|clickhouse-direct)
    ch_url=$(scripts/clickhouse.sh start "$dir/ch")
    SERVE_ARGS+=(--clickhouse-url "$ch_url")
    [ "$sink" = clickhouse-direct ] && export OTSTREAM_BUFFER__ENABLED=false
    ;;
esac
port=$(free_port)
mport=$(free_port)
"$bin" serve --http-addr "127.0.0.1:$port" --metrics-addr "127.0.0.1:$mport" \
  --data-dir "$dir/data" --log warn "${SERVE_ARGS[@]}" &
pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$mport/readyz" >/dev/null && break; sleep 0.1; done
# Baseline in the same run: the same load against /healthz, a hyper endpoint
# that does nothing: the ceiling of HTTP and the load generator here. The
# metrics listener serves 64 connections at once (the rest would wait in
# the kernel's queue for an idle one to be cut off): at most 64 here.
printf 'baseline /healthz:  '
./target/release/http_load --url "http://127.0.0.1:$mport/healthz" --connections "$((connections < 64 ? connections : 64))" --seconds "$seconds"
# CPU ticks (user + system) of serve, from /proc/PID/stat fields 14 and 15.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
before=$(cpu_ticks)
printf 'serve /pub:         '
report=$(./target/release/http_load --url "http://127.0.0.1:$port/pub" --connections "$connections" --seconds "$seconds")
after=$(cpu_ticks)
echo "$report"
acked=$(sed -n 's/.* acknowledged=\([0-9]*\).*/\1/p' <<<"$report")
python3 -c "import sys; t,a,hz=map(int,sys.argv[1:]); print(f'serve CPU: {t/hz:.2f} s, {t/hz*1e6/max(a,1):.1f} us per acknowledged message')" \
  "$((after - before))" "$acked" "$(getconf CLK_TCK)"
if [ "$sink" = clickhouse ]; then
  # Shipped before counting: the buffer empties behind the load.
  for _ in $(seq 600); do
    [ "$(curl -s "http://127.0.0.1:$mport/metrics" | sed -n 's/^otstream_buffer_rows //p')" = 0 ] && break
    sleep 0.1
  done
fi
kill -INT $pid; wait $pid
if [ "$sink" != sqlite ]; then
  echo "rows stored: $(curl -s "$ch_url/" --data-binary 'SELECT count() FROM otstream.positions FINAL')"
else
python3 - "$dir/data/otstream.db" <<'PY'
import sqlite3, sys
print("rows stored:", sqlite3.connect(sys.argv[1]).execute("select count(*) from positions").fetchone()[0])
PY
fi
