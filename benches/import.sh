#!/usr/bin/env bash
# `otstream import` rates on this machine: a synthetic fleet's recording
# (`otstream fleet`: OwnTracks payloads of driving, walking, parked phones,
# imported as --format recording) and a Google Takeout Records.json of the
# same size, into the embedded store (a fresh data directory each time) or,
# with `clickhouse`, a private ClickHouse. Prints each import's summary
# (points, seconds, points/s). Not a test: a measurement.
#
#   benches/import.sh [POINTS] [sqlite|clickhouse]
#
# POINTS defaults to 1,000,000 (1,000 devices). OTSTREAM_BIN measures
# another build.
set -euo pipefail
cd "$(dirname "$0")/.."
points="${1:-1000000}"
sink="${2:-sqlite}"
if [ -z "${OTSTREAM_BIN:-}" ]; then
  cargo build -q --release -p otstream-cli --bin otstream
fi
bin="${OTSTREAM_BIN:-./target/release/otstream}"
dir=$(mktemp -d)
trap 'scripts/clickhouse.sh stop "$dir/ch" >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
$bin fleet --devices $(( points / 1000 )) --messages "$points" --out "$dir/fleet.ndjson" 2>/dev/null
python3 - "$points" "$dir/Records.json" <<'PY'
import sys
n, path = int(sys.argv[1]), sys.argv[2]
with open(path, "w") as f:
    f.write('{"locations":[')
    for i in range(n):
        if i:
            f.write(",")
        f.write('{"latitudeE7":%d,"longitudeE7":%d,"accuracy":12,"velocity":8,"timestampMs":"%d"}'
                % (457600000 + (i % 5000) * 20, 48350000 + (i // 5000) * 20, 1600000000000 + i * 15000))
    f.write("]}")
PY
args=()
if [ "$sink" = clickhouse ]; then
  args+=(--clickhouse-url "$(scripts/clickhouse.sh start "$dir/ch")")
fi
for input in fleet.ndjson Records.json; do
  rm -rf "$dir/data"
  extra=()
  [ "$input" = Records.json ] && extra=(--user takeout --device phone)
  printf '%s, %s, %s bytes:\n' "$input" "$sink" "$(stat -c %s "$dir/$input")"
  $bin import --quiet --log warn --data-dir "$dir/data" "${args[@]}" "${extra[@]}" "$dir/$input"
done
