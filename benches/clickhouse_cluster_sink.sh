#!/usr/bin/env bash
# ClickHouse sink throughput into one server and into a cluster of two
# shards of two replicas (scripts/clickhouse-cluster.sh), in the same run,
# each with the server's own INSERT SELECT as its baseline. On one machine
# the cluster's four servers and ZooKeeper share its cores: this measures
# the cluster's overhead (Distributed tables, synchronous inserts,
# replication), not its capacity. Not a test: a measurement.
#
#   benches/clickhouse_cluster_sink.sh [ROWS]
set -euo pipefail
cd "$(dirname "$0")/.."
rows="${1:-1000000}"
cargo build -q --release -p otstream-benches --bin ch_sink
dir=$(mktemp -d)
trap 'scripts/clickhouse.sh stop "$dir/one" >/dev/null; scripts/clickhouse-cluster.sh stop "$dir/cluster" >/dev/null; rm -rf "$dir"' EXIT
one=$(scripts/clickhouse.sh start "$dir/one")
scripts/clickhouse-cluster.sh start "$dir/cluster" >/dev/null
cluster=$(cat "$dir/cluster/s1r1/url")
echo "ClickHouse $(curl -s "$one/?query=SELECT%20version()"): one server at $one, cluster at $cluster"
./target/release/ch_sink --url "$one" --rows "$rows"
./target/release/ch_sink --url "$cluster" --rows "$rows" --cluster otstream
