#!/usr/bin/env bash
# End to end on this machine: HTTP clients to rows visible in ClickHouse,
# embedded mode (`otstream serve`, in-process channels) against Kafka mode
# (`otstream run` ingress, decode, geofence and sink as four processes
# over a private Tansu), both into a private ClickHouse, same load, same
# run. Reports acknowledged msgs/s and ack latency from the load generator
# (benches/src/bin/http_load.rs), and the end-to-end rate: rows visible in
# ClickHouse (FINAL) divided by the time from the first request until the
# last acknowledged row was visible. Not a test: a measurement.
#
#   benches/pipeline_load.sh [CONNECTIONS] [SECONDS] [embedded|kafka|both]
#
# OTSTREAM_BIN runs another build of otstream (A/B runs). TANSU_STORAGE picks Tansu's storage (default sqlite, as the tests use);
# KAFKA_PROPERTIES adds librdkafka properties to every Kafka client, as
# TOML lines (e.g. '"compression.type" = "none"').
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/service.sh
connections="${1:-64}"
seconds="${2:-20}"
modes="${3:-both}"
[ "$modes" = both ] && modes="embedded kafka"
cargo build -q --release -p otstream-cli -p otstream-benches --bin otstream --bin http_load
dir=$(mktemp -d)
trap 'bench_cleanup "$dir"' EXIT
ch_url=$(scripts/clickhouse.sh start "$dir/ch")
bin=${OTSTREAM_BIN:-./target/release/otstream}
count() { curl -s "$ch_url/" --data-binary "SELECT count() FROM $1.positions FINAL"; }

measure() { # mode db http_port
  local mode=$1 db=$2 port=$3
  local start end report rows visible
  start=$(date +%s.%N)
  report=$(./target/release/http_load --url "http://127.0.0.1:$port/pub" --connections "$connections" --seconds "$seconds")
  end=$(date +%s.%N)
  acked=$(echo "$report" | sed -n "s/.*acknowledged=\([0-9]*\).*/\1/p")
  # Wait for every acknowledged row to be visible (at most 120 s).
  for _ in $(seq 1200); do
    rows=$(count "$db")
    [ "$rows" -ge "${acked:-0}" ] && break
    sleep 0.1
  done
  visible=$(date +%s.%N)
  python3 - "$mode" "$report" "$rows" "$start" "$end" "$visible" <<'PY'
import sys
mode, report, rows, start, end, visible = sys.argv[1], sys.argv[2], int(sys.argv[3]), *map(float, sys.argv[4:])
print(f"{mode:9s} {report}")
print(f"{mode:9s} rows visible in ClickHouse: {rows}, {visible - end:.1f} s after the load ended; end to end {rows / (visible - start):,.0f} rows/s")
PY
}

for mode in $modes; do
  mport=$(free_port); port=$(free_port)
  case $mode in
  embedded)
    OTSTREAM_CLICKHOUSE__DATABASE=bench_embedded $bin serve --http-addr "127.0.0.1:$port" \
      --metrics-addr "127.0.0.1:$mport" --data-dir "$dir/data" --clickhouse-url "$ch_url" --log warn &
    pids+=($!)
    wait_ready "$mport"
    printf 'baseline  /healthz: '
    ./target/release/http_load --url "http://127.0.0.1:$mport/healthz" --connections "$connections" --seconds 5
    measure embedded bench_embedded "$port"
    ;;
  kafka)
    brokers=$(scripts/tansu.sh start "$dir/tansu")
    cat >"$dir/kafka.toml" <<TOML
[kafka]
brokers = "$brokers"
[kafka.properties]
${KAFKA_PROPERTIES:-}
[clickhouse]
url = "$ch_url"
database = "bench_kafka"
period_ms = ${OTSTREAM_CLICKHOUSE__PERIOD_MS:-1000}
TOML
    $bin topics create --config "$dir/kafka.toml" --log warn >/dev/null
    for stage in sink geofence decode ingress; do
      m=$(free_port)
      $bin run $stage --config "$dir/kafka.toml" --http-addr "127.0.0.1:$port" \
        --metrics-addr "127.0.0.1:$m" --data-dir "$dir/data" --log warn &
      pids+=($!)
      wait_ready "$m"
    done
    sleep 3 # the groups settle
    printf 'baseline  /healthz: '
    ./target/release/http_load --url "http://127.0.0.1:$m/healthz" --connections "$connections" --seconds 5
    measure kafka bench_kafka "$port"
    ;;
  esac
  stop_pids
done
