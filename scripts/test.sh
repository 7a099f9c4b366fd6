#!/usr/bin/env bash
# The one test command: formatting, lints, and every test of the workspace
# against real services. CI runs exactly this (through .ci/run). It installs
# what is missing (Debian's clickhouse-server, zookeeper (for the cluster
# of four clickhouse-servers the cluster tests run on), mosquitto, chromium
# (the map page's tests drive it headless) and docker-compose
# (only to validate docker-compose.yml: no engine runs here), sqlite3 (the
# README's examples use its shell), PyPI's chdb,
# crates.io's Tansu: about 15 minutes to build the first time), starts a
# private ClickHouse, a ClickHouse cluster, Mosquitto and Tansu on free
# loopback ports,
# and stops them at the end. Tests that need
# a service read its address from the environment and fail, never skip, when
# it is not there.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

run_dir=$(mktemp -d)
cleanup() {
  scripts/clickhouse.sh stop "$run_dir/clickhouse" || true
  scripts/mosquitto.sh stop "$run_dir/mosquitto" || true
  scripts/tansu.sh stop "$run_dir/tansu" || true
  scripts/clickhouse-cluster.sh stop "$run_dir/cluster" || true
  rm -rf "$run_dir"
}
trap cleanup EXIT

step "services: install what is missing"
missing=()
command -v clickhouse-server >/dev/null || missing+=(clickhouse-server)
command -v mosquitto >/dev/null || missing+=(mosquitto)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v chromium >/dev/null || missing+=(chromium)
command -v sqlite3 >/dev/null || missing+=(sqlite3)
[ -f /usr/share/java/zookeeper.jar ] || missing+=(zookeeper)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
python3 -c 'import chdb' 2>/dev/null || python3 -m pip install -q chdb
scripts/tansu.sh install

step "services: start ClickHouse"
OTSTREAM_TEST_CLICKHOUSE_URL=$(scripts/clickhouse.sh start "$run_dir/clickhouse")
export OTSTREAM_TEST_CLICKHOUSE_URL
echo "ClickHouse $(curl -s "$OTSTREAM_TEST_CLICKHOUSE_URL/?query=SELECT%20version()") at $OTSTREAM_TEST_CLICKHOUSE_URL"

step "services: start a ClickHouse cluster (ZooKeeper, 2 shards x 2 replicas)"
scripts/clickhouse-cluster.sh start "$run_dir/cluster"
export OTSTREAM_TEST_CLICKHOUSE_CLUSTER="$run_dir/cluster"

step "services: start Mosquitto"
OTSTREAM_TEST_MQTT_URL=$(scripts/mosquitto.sh start "$run_dir/mosquitto")
export OTSTREAM_TEST_MQTT_URL
echo "Mosquitto $(mosquitto -h 2>/dev/null | head -1 | awk '{print $3}') at $OTSTREAM_TEST_MQTT_URL"

step "services: start Tansu (Kafka protocol)"
OTSTREAM_TEST_KAFKA_BROKERS=$(scripts/tansu.sh start "$run_dir/tansu")
export OTSTREAM_TEST_KAFKA_BROKERS
echo "Tansu at $OTSTREAM_TEST_KAFKA_BROKERS"

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "ClickHouse DDL for a current release, and the dashboard's queries, in chDB"
# A bare `cargo run`, as the README's main command: it must pick the
# otstream binary (the workspace's default-members), or this step fails.
cargo run -q --locked -- migrate --print-ddl --server-version 26.9 --database otstream \
  | python3 scripts/chdb_check.py deploy/grafana/dashboards/otstream.json

step "ClickHouse DDL for a cluster of a current release, parsed in chDB"
cargo run -q --locked -- migrate --print-ddl --server-version 26.9 --database otstream --cluster otstream \
  | python3 scripts/chdb_check.py --parse

step "the README's examples, as written (scripts/readme_check.py)"
python3 scripts/readme_check.py "${CARGO_TARGET_DIR:-target}/debug/otstream"

step "deployment: docker-compose.yml (and its ClickHouse cluster overlay), Prometheus, Grafana, Kubernetes"
python3 scripts/deploy_check.py "${CARGO_TARGET_DIR:-target}/debug/otstream"

step "cargo test --workspace"
cargo test --workspace --locked
