#!/usr/bin/env bash
# The read API section of BENCHMARKS.md, in one run on this machine:
#   1. one device's ROWS positions (default 1,000,000) exported through
#      /api/v1/positions as GeoJSON and as CSV (and Recorder's
#      /api/0/locations JSON), from `serve` on the embedded store and on
#      ClickHouse: seconds, rows/s, and the server's resident memory before
#      and at its peak during the export (sampled every 10 ms);
#   2. /api/v1/devices over DEVICES devices (default 10,000), each with a
#      last position: latency percentiles of REPEAT calls;
# with a same-run baseline: /api/0/version (no store work) for the HTTP
# floor. Rows are loaded straight into the tables (SQLite through the
# sqlite3 shell, ClickHouse with INSERT ... SELECT FROM system.numbers), so
# the figures are the read side's alone. Every export's row count is
# checked. Prints Markdown. Not a test: a measurement.
#
#   benches/api_export.sh [ROWS] [DEVICES] [REPEAT] [MODES...]
#
# MODES default to "sqlite clickhouse".
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/service.sh
rows="${1:-1000000}"
devices="${2:-10000}"
repeat="${3:-3}"
shift $(( $# < 3 ? $# : 3 ))
modes="${*:-sqlite clickhouse}"
command -v sqlite3 >/dev/null || { echo "needs the sqlite3 shell (apt-get install sqlite3)" >&2; exit 1; }
cargo build -q --release -p otstream-cli --bin otstream
bin=./target/release/otstream
dir=$(mktemp -d)
trap 'bench_cleanup "$dir"' EXIT
T0=1700000000
FROM=$T0
TO=$(( T0 + rows * 10 ))

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# measure PID URL OUT: curl the URL to OUT while sampling the PID's RSS;
# prints "seconds 0 peak_rss_kib".
measure() {
  local pid=$1 url=$2 out=$3 peak=0
  ( while kill -0 "$pid" 2>/dev/null; do rss_kib "$pid"; sleep 0.01; done ) >"$dir/rss" &
  local sampler=$!
  local t
  t=$(curl -s -o "$out" -w '%{time_total}' "$url")
  kill "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  peak=$(sort -n "$dir/rss" | tail -1)
  echo "$t 0 $peak"
}

start_serve() { # data_dir args... ; sets http, metrics, pid
  http=$(free_port); metrics=$(free_port)
  local data=$1; shift
  $bin serve --http-addr "127.0.0.1:$http" --metrics-addr "127.0.0.1:$metrics" \
    --data-dir "$data" "$@" 2>>"$dir/serve.log" &
  pid=$!
  pids+=("$pid")
  wait_ready "$metrics"
}

count_rows() { # format file
  case "$1" in
    geojson) grep -o '"type":"Feature"' "$2" | wc -l ;;
    csv) echo $(( $(wc -l <"$2") - 1 )) ;;
    recorder) python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['count'])" "$2" ;;
  esac
}

report() { # mode
  local url="http://127.0.0.1:$http"
  for _ in $(seq 20); do curl -s -o /dev/null "$url/api/0/version"; done
  local base
  base=$(python3 - "$url/api/0/version" <<'PY'
import sys, time, urllib.request
t = []
for _ in range(200):
    s = time.perf_counter(); urllib.request.urlopen(sys.argv[1]).read(); t.append(time.perf_counter() - s)
t.sort(); print(f"{t[100]*1000:.2f}")
PY
)
  echo "| $1 | baseline /api/0/version p50 | ${base} ms | | |"
  for fmt in geojson csv recorder; do
    local path
    case $fmt in
      recorder) path="/api/0/locations?user=bench&device=phone&from=$FROM&to=$TO" ;;
      *) path="/api/v1/positions?user=bench&device=phone&from=$FROM&to=$TO&format=$fmt" ;;
    esac
    # Once into a file, to check the row count; then timed into /dev/null.
    curl -s -o "$dir/out" "$url$path"
    local n
    n=$(count_rows "$fmt" "$dir/out")
    [ "$n" = "$rows" ] || { echo "$1 $fmt: $n rows, want $rows" >&2; exit 1; }
    local bytes
    bytes=$(stat -c %s "$dir/out")
    rm -f "$dir/out"
    for _ in $(seq "$repeat"); do
      local before
      before=$(rss_kib "$pid")
      read -r t _ peak < <(measure "$pid" "$url$path" /dev/null)
      python3 -c "
t,b,n,before,peak=$t,$bytes,$n,$before,$peak
print(f'| $1 | $fmt export | {t:.2f} s | {n/t:,.0f} rows/s, {b/t/1e6:.0f} MB/s ({b/1e6:.0f} MB) | RSS {before/1024:.0f} MB, peak +{max(peak-before,0)/1024:.1f} MB |')"
    done
  done
  python3 - "$url/api/v1/devices" "$devices" <<PY
import sys, time, urllib.request, json
url, want = sys.argv[1], int(sys.argv[2]) + 1
t = []
for i in range(30):
    s = time.perf_counter(); body = urllib.request.urlopen(url).read(); t.append(time.perf_counter() - s)
    if i == 0:
        got = len(json.loads(body)); assert got == want, (got, want)
t.sort()
print(f"| $1 | /api/v1/devices, {want:,} devices | p50 {t[15]*1000:.1f} ms | p90 {t[27]*1000:.1f} ms, max {t[-1]*1000:.1f} ms | {len(body)/1e6:.1f} MB |")
PY
}

echo "| store | what | time | rate | memory |"
echo "|---|---|---:|---:|---|"
for mode in $modes; do
  case $mode in
  sqlite)
    data="$dir/sqlite"
    start_serve "$data"
    stop_pids
    sqlite3 "$data/otstream.db" >/dev/null <<SQL
PRAGMA journal_mode=WAL;
BEGIN;
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < $rows - 1)
INSERT INTO positions (user, device, tid, tst, lat, lon, acc, alt, vel, cog, batt, bs, conn, transport, received_at)
SELECT 'bench', 'phone', 'bp', $T0 + i * 10, 48.85 + (i % 1000) * 0.00001, 2.35 + (i / 1000) * 0.00001,
       10, 35, 40, 90, 80 - i % 50, 1, 'm', 'http', ($T0 + i * 10) * 1000 + 123 FROM n;
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < $devices - 1)
INSERT INTO positions (user, device, tid, tst, lat, lon, acc, batt, transport, received_at)
SELECT 'fleet', 'd' || i, 'fl', $T0 + i, 48 + (i % 100) * 0.01, 2 + (i / 100) * 0.01, 5, 50, 'http', ($T0 + i) * 1000 FROM n;
COMMIT;
PRAGMA wal_checkpoint(TRUNCATE);
SQL
    start_serve "$data"
    report "SQLite"
    stop_pids
    ;;
  clickhouse)
    ch_url=$(scripts/clickhouse.sh start "$dir/ch")
    db=bench_api
    $bin migrate --clickhouse-url "$ch_url" --database "$db" >/dev/null
    curl -sf "$ch_url/" --data-binary "INSERT INTO $db.positions (user, device, tid, tst, lat, lon, acc, alt, vel, cog, batt, bs, conn, transport, received_at)
      SELECT 'bench', 'phone', 'bp', toDateTime($T0 + number * 10), 48.85 + (number % 1000) * 0.00001, 2.35 + intDiv(number, 1000) * 0.00001,
             10, 35, 40, 90, 80 - number % 50, 1, 'm', 'http', ($T0 + number * 10) * 1000 + 123 FROM system.numbers LIMIT $rows"
    curl -sf "$ch_url/" --data-binary "INSERT INTO $db.positions (user, device, tid, tst, lat, lon, acc, batt, transport, received_at)
      SELECT 'fleet', concat('d', toString(number)), 'fl', toDateTime($T0 + number), 48 + (number % 100) * 0.01, 2 + intDiv(number, 100) * 0.01, 5, 50, 'http', ($T0 + number) * 1000 FROM system.numbers LIMIT $devices"
    curl -sf "$ch_url/" --data-binary "OPTIMIZE TABLE $db.positions FINAL" || true
    OTSTREAM_CLICKHOUSE__DATABASE=$db start_serve "$dir/chdata" --clickhouse-url "$ch_url"
    report "ClickHouse"
    stop_pids
    ;;
  esac
done
