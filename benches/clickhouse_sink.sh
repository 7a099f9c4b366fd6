#!/usr/bin/env bash
# ClickHouse sink throughput into a private local server (Debian's
# clickhouse-server), with the server's own INSERT SELECT as the same-run
# baseline. Not a test: a measurement.
#
#   benches/clickhouse_sink.sh [ROWS]
set -euo pipefail
cd "$(dirname "$0")/.."
rows="${1:-1000000}"
cargo build -q --release -p otstream-benches --bin ch_sink
dir=$(mktemp -d)
trap 'scripts/clickhouse.sh stop "$dir" >/dev/null; rm -rf "$dir"' EXIT
url=$(scripts/clickhouse.sh start "$dir")
echo "ClickHouse $(curl -s "$url/?query=SELECT%20version()") at $url"
./target/release/ch_sink --url "$url" --rows "$rows"
