#!/usr/bin/env bash
# The end-to-end section of BENCHMARKS.md, in one run on this machine:
# a synthetic fleet recorded once (`otstream fleet`), then replayed
# (`otstream replay`, closed loop, retrying 503s as the apps do) against
#   1. `otstream serve` with its embedded store (SQLite),
#   2. `otstream serve` with the ClickHouse sink,
#   3. the four stages as `otstream run` processes over Kafka (a private
#      Tansu) into ClickHouse,
# after a same-run baseline: the same replay against the process's
# /healthz (a hyper endpoint doing nothing): the ceiling of HTTP and the
# replayer on these cores. For each it reports what the replayer measured
# (acknowledged msgs/s, ack latency percentiles) and what was stored: every
# row of every table the recording fills, counted once all acknowledged
# messages are visible, against the recording's message count. Prints a
# Markdown table. Not a test: a measurement.
#
#   benches/e2e.sh [MESSAGES] [CONNECTIONS] [MODES...]
#   OTSTREAM_BIN=/path/to/otstream benches/e2e.sh ...   # measure that build
#
# MESSAGES defaults to 200,000 (2,000 devices), CONNECTIONS to 256, MODES to
# "sqlite clickhouse kafka". OTSTREAM_CLICKHOUSE__PERIOD_MS (default 50
# here) sets the ClickHouse sink's insert period; TANSU_STORAGE Tansu's
# storage (default memory://tansu/ here).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/service.sh
messages="${1:-200000}"
connections="${2:-256}"
shift $(( $# < 2 ? $# : 2 ))
modes="${*:-sqlite clickhouse kafka}"
period_ms="${OTSTREAM_CLICKHOUSE__PERIOD_MS:-50}"
unset OTSTREAM_CLICKHOUSE__PERIOD_MS # the SQLite run has no [clickhouse] section
export TANSU_STORAGE="${TANSU_STORAGE:-memory://tansu/}"
# OTSTREAM_BIN: another build to measure (an A/B against an older one).
if [ -n "${OTSTREAM_BIN:-}" ]; then
  bin=$OTSTREAM_BIN
else
  cargo build -q --release -p otstream-cli --bin otstream
  bin=./target/release/otstream
fi
dir=$(mktemp -d)
trap 'bench_cleanup "$dir"' EXIT

devices=$(( messages / 100 > 0 ? messages / 100 : 1 ))
start=$(date +%s.%N)
$bin fleet --devices "$devices" --messages "$messages" --out "$dir/fleet.ndjson" 2>/dev/null
fleet_s=$(python3 -c "import time; print(f'{time.time() - $start:.1f}')")
echo "fleet: $messages messages of $devices devices in $fleet_s s ($(du -h "$dir/fleet.ndjson" | cut -f1))" >&2

TABLES="positions transitions cards device_events"
# Rows of the tables the fleet fills: positions, transitions, cards, lwt.
stored_sqlite() {
  python3 - "$1" $TABLES <<'PY'
import sqlite3, sys
c = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
print(sum(c.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in sys.argv[2:]))
PY
}
stored_ch() { # db
  local q="SELECT (SELECT count() FROM $1.positions FINAL)"
  for t in transitions cards device_events; do q="$q + (SELECT count() FROM $1.$t FINAL)"; done
  curl -s "$ch_url/" --data-binary "$q"
}

replay() { # url report.json
  $bin replay "$dir/fleet.ndjson" --http "$1" --max --connections "$connections" --retry \
    --quiet --report-json "$2" >/dev/null
}

rows=()
measure() { # label http_port metrics_port stored-command...
  local label=$1 port=$2 mport=$3
  shift 3
  replay "http://127.0.0.1:$mport/healthz" "$dir/baseline.json"
  local t0 t1 t2 n=0
  t0=$(date +%s.%N)
  replay "http://127.0.0.1:$port/pub" "$dir/report.json"
  t1=$(date +%s.%N)
  for _ in $(seq 1200); do
    n=$("$@")
    [ "${n:-0}" -ge "$messages" ] && break
    sleep 0.1
  done
  t2=$(date +%s.%N)
  rows+=("$(python3 - "$label" "$dir/report.json" "$dir/baseline.json" "$n" "$messages" "$t0" "$t1" "$t2" <<'PY'
import json, sys
label, report, baseline = sys.argv[1], json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
stored, want = int(sys.argv[4]), int(sys.argv[5])
t0, t1, t2 = map(float, sys.argv[6:9])
l = report["latency_ms"]
status = "all" if stored == want and report["acknowledged"] == want else f"**{stored} of {want}**"
print(f"| {label} | {report['acknowledged']:,} | {report['acknowledged_per_second']:,.0f} | "
      f"{l['p50']:.1f} | {l['p90']:.1f} | {l['p99']:.1f} | {l['p99.9']:.1f} | {l['max']:.0f} | "
      f"{stored:,} ({status}) | {t2 - t1:.1f} s | {stored / (t2 - t0):,.0f} | {baseline['acknowledged_per_second']:,.0f} |")
PY
)")
  echo "${rows[-1]}" >&2
}

for mode in $modes; do
  port=$(free_port); mport=$(free_port)
  case $mode in
  sqlite)
    $bin serve --http-addr "127.0.0.1:$port" --metrics-addr "127.0.0.1:$mport" \
      --data-dir "$dir/sqlite" --log warn &
    pids+=($!); wait_ready "$mport"
    measure "serve, embedded store (SQLite)" "$port" "$mport" stored_sqlite "$dir/sqlite/otstream.db"
    ;;
  clickhouse|kafka)
    [ -n "${ch_url:-}" ] || ch_url=$(scripts/clickhouse.sh start "$dir/ch")
    if [ "$mode" = clickhouse ]; then
      OTSTREAM_CLICKHOUSE__DATABASE=e2e_serve OTSTREAM_CLICKHOUSE__PERIOD_MS=$period_ms $bin serve --http-addr "127.0.0.1:$port" \
        --metrics-addr "127.0.0.1:$mport" --data-dir "$dir/serve-ch" --clickhouse-url "$ch_url" --log warn &
      pids+=($!); wait_ready "$mport"
      measure "serve, ClickHouse every ${period_ms} ms" "$port" "$mport" stored_ch e2e_serve
    else
      brokers=$(scripts/tansu.sh start "$dir/tansu")
      cat >"$dir/kafka.toml" <<TOML
[kafka]
brokers = "$brokers"
[clickhouse]
url = "$ch_url"
database = "e2e_kafka"
period_ms = $period_ms
TOML
      $bin topics create --config "$dir/kafka.toml" --log warn >/dev/null
      for stage in sink geofence decode ingress; do
        m=$(free_port)
        $bin run $stage --config "$dir/kafka.toml" --http-addr "127.0.0.1:$port" \
          --metrics-addr "127.0.0.1:$m" --data-dir "$dir/kafka-$stage" --log warn &
        pids+=($!); wait_ready "$m"
      done
      sleep 3 # the groups settle
      measure "Kafka: 4 stage processes, Tansu, ClickHouse every ${period_ms} ms" "$port" "$m" stored_ch e2e_kafka
    fi
    ;;
  *) echo "unknown mode $mode (sqlite, clickhouse, kafka)" >&2; exit 2 ;;
  esac
  stop_pids
done

echo
echo "$(date -u +%Y-%m-%d), $(nproc) cores, $messages messages of $devices devices (\`otstream fleet\`), $connections connections:"
echo
echo "| target | acknowledged | msgs/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | rows stored | last row after the load | end to end rows/s | baseline /healthz req/s |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${rows[@]}"
