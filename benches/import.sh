#!/usr/bin/env bash
# `otstream import` rates on this machine: a synthetic fleet's recording
# (`otstream fleet`: OwnTracks payloads of driving, walking, parked phones,
# imported as --format recording), the same points as a Recorder store
# (rec/<user>/<device>/YYYY-MM.rec), and a Google Takeout Records.json of
# the same size, into the embedded store (a fresh data directory each time) or,
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
# The same fleet's points as an OwnTracks Recorder store: one
# rec/<user>/<device>/YYYY-MM.rec file per device and month, read device
# by device, as a Recorder migration reads.
python3 - "$dir/fleet.ndjson" "$dir/rec" <<'PY'
import json, os, sys, time
src, root = sys.argv[1], sys.argv[2]
files = {}
for line in open(src):
    r = json.loads(line)
    h = r.get("headers", {})
    p = r["payload"]
    tst = p.get("tst", r["received_at"] // 1000) if isinstance(p, dict) else r["received_at"] // 1000
    t = time.gmtime(tst)
    path = os.path.join(root, h["X-Limit-U"], h["X-Limit-D"], time.strftime("%Y-%m.rec", t))
    f = files.get(path)
    if f is None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        f = files[path] = open(path, "w")
    kind = p.get("_type") if isinstance(p, dict) else None
    topic = {"card": "info", "transition": "event"}.get(kind, "*")
    body = json.dumps(p, separators=(",", ":")) if isinstance(p, (dict, list)) else p
    f.write("%s\t%-18s\t%s\n" % (time.strftime("%Y-%m-%dT%H:%M:%SZ", t), topic, body))
for f in files.values():
    f.close()
PY
args=()
if [ "$sink" = clickhouse ]; then
  args+=(--clickhouse-url "$(scripts/clickhouse.sh start "$dir/ch")")
fi
for input in fleet.ndjson rec Records.json; do
  rm -rf "$dir/data"
  extra=()
  [ "$input" = Records.json ] && extra=(--user takeout --device phone)
  printf '%s, %s, %s bytes:\n' "$input" "$sink" "$(du -sb "$dir/$input" | cut -f1)"
  $bin import --quiet --log warn --data-dir "$dir/data" "${args[@]}" "${extra[@]}" "$dir/$input"
done
