#!/usr/bin/env bash
# Open-loop replays of a recorded fleet against `otstream serve` on this
# machine: a synthetic fleet (`otstream fleet`) recorded once, then sent by
# `otstream replay --rate R` (messages leave on schedule whether or not the
# last was answered, as a fleet's phones do) at each rate, to serve with its
# embedded store (or, with `clickhouse`, a private ClickHouse through serve's
# buffer). Prints the replayer's report per rate: acknowledged, achieved
# rate, latency percentiles. Not a test: a measurement.
#
#   benches/open_loop.sh [MESSAGES] [sqlite|clickhouse] [RATES...]
#
# MESSAGES defaults to 200,000 (2,000 devices), RATES to "10000 20000 40000".
# OTSTREAM_BIN measures another build.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/service.sh
messages="${1:-200000}"
sink="${2:-sqlite}"
shift $(( $# < 2 ? $# : 2 ))
rates="${*:-10000 20000 40000}"
if [ -z "${OTSTREAM_BIN:-}" ]; then
  cargo build -q --release -p otstream-cli --bin otstream
fi
bin="${OTSTREAM_BIN:-./target/release/otstream}"
dir=$(mktemp -d)
pid=
trap 'kill $pid 2>/dev/null || true; scripts/clickhouse.sh stop "$dir/ch" >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
$bin fleet --devices $(( messages / 100 )) --messages "$messages" --out "$dir/fleet.ndjson" 2>/dev/null
args=()
if [ "$sink" = clickhouse ]; then
  args+=(--clickhouse-url "$(scripts/clickhouse.sh start "$dir/ch")")
fi
for rate in $rates; do
  port=$(free_port); mport=$(free_port)
  rm -rf "$dir/data"
  $bin serve --http-addr "127.0.0.1:$port" --metrics-addr "127.0.0.1:$mport" \
    --data-dir "$dir/data" --log warn "${args[@]}" &
  pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$mport/readyz" >/dev/null && break; sleep 0.1; done
  printf 'rate %s/s, %s: ' "$rate" "$sink"
  # --retime: fresh timestamps, so that no run collapses into the last.
  $bin replay "$dir/fleet.ndjson" --http "http://127.0.0.1:$port/pub" --rate "$rate" \
    --connections 1024 --retry --retime --quiet --report-json "$dir/r.json" >/dev/null 2>&1 || true
  python3 - "$dir/r.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
l = r["latency_ms"]
print(f"sent {r['sent_per_second']:.0f}/s, acknowledged {r['acknowledged']} ({r['acknowledged_per_second']:.0f}/s), "
      f"answers {r['outcomes']}, p50 {l['p50']} ms, p99 {l['p99']} ms, p99.9 {l['p99.9']} ms, max {l['max']} ms")
PY
  kill -INT $pid; wait $pid || true
done
