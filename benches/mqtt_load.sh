#!/usr/bin/env bash
# MQTT ingress throughput, publish to stored, Mosquitto on the same machine:
# a private broker, then the baseline (the same publisher with nobody
# subscribed: what broker and client manage alone), then `otstream serve
# --mqtt-url` (embedded store) taking the same load. Not a test: a measurement.
#
#   benches/mqtt_load.sh [MESSAGES]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/service.sh
n="${1:-100000}"
cargo build -q --release -p otstream-cli -p otstream-benches --bin otstream --bin mqtt_load
dir=$(mktemp -d)
pid=
trap 'kill $pid 2>/dev/null || true; scripts/mosquitto.sh stop "$dir/mq" >/dev/null; rm -rf "$dir"' EXIT
url=$(scripts/mosquitto.sh start "$dir/mq")
echo "baseline (nobody subscribed):"
./target/release/mqtt_load --url "$url" --prefix nobody --messages "$n"
mport=$(free_port)
hport=$(free_port)
./target/release/otstream serve --http-addr "127.0.0.1:$hport" --metrics-addr "127.0.0.1:$mport" \
  --data-dir "$dir/data" --mqtt-url "$url" --log warn &
pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$mport/readyz" >/dev/null && break; sleep 0.1; done
sleep 0.5  # let the subscriptions land
echo "otstream serve --mqtt-url (embedded store):"
./target/release/mqtt_load --url "$url" --messages "$n" --metrics "http://127.0.0.1:$mport/metrics"
