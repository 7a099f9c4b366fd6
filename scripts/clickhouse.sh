#!/usr/bin/env bash
# A private ClickHouse server for tests and benchmarks, on free loopback
# ports, with all its files in one directory.
#
#   scripts/clickhouse.sh start DIR    # prints the HTTP URL once it answers
#   scripts/clickhouse.sh stop DIR
#   scripts/clickhouse.sh prepare DIR  # writes DIR's configuration only and
#                                      # prints its native (TCP) port, for a
#                                      # cluster's remote_servers (config.d/
#                                      # beside it is read too)
#
# Starting a DIR that was started before reuses its ports and data, so a
# test can stop the server and bring the same one back.
set -euo pipefail
. "$(dirname "$0")/service.sh"
cmd="${1:?start|stop|prepare}"
dir="$(mkdir -p "${2:?DIR}" && cd "$2" && pwd)"

pings() { [ "$(curl -s "$1/ping" 2>/dev/null)" = "Ok." ]; }

prepare() {
  command -v clickhouse-server >/dev/null || {
    echo "clickhouse-server is not installed (apt-get install clickhouse-server)" >&2
    exit 1
  }
  if [ ! -f "$dir/config.xml" ]; then
    http=$(free_port); tcp=$(free_port); inter=$(free_port)
    python3 - "$dir" "$http" "$tcp" "$inter" <<'PY'
import re, sys
d, http, tcp, inter = sys.argv[1:]
s = open('/etc/clickhouse-server/config.xml').read()
s = re.sub(r'<http_port>\d+</http_port>', f'<http_port>{http}</http_port>', s)
s = re.sub(r'<tcp_port>\d+</tcp_port>', f'<tcp_port>{tcp}</tcp_port>', s)
s = re.sub(r'<interserver_http_port>\d+</interserver_http_port>', f'<interserver_http_port>{inter}</interserver_http_port>', s)
s = re.sub(r'\s*<listen_host>::1</listen_host>', '', s)   # no IPv6 on every machine
s = s.replace('/var/lib/clickhouse/', d + '/data/').replace('/var/log/clickhouse-server/', d + '/log/')
open(d + '/config.xml', 'w').write(s)
open(d + '/url', 'w').write(f'http://127.0.0.1:{http}')
open(d + '/tcp', 'w').write(tcp)
PY
    cp /etc/clickhouse-server/users.xml "$dir/users.xml"
  fi
}

case "$cmd" in
prepare)
  prepare
  cat "$dir/tcp"
  ;;
start)
  prepare
  url=$(cat "$dir/url")
  nohup clickhouse-server --config-file="$dir/config.xml" >"$dir/stdout.log" 2>&1 &
  echo $! >"$dir/pid"
  if started "$dir/pid" 300 pings "$url"; then
    echo "$url"
    exit 0
  fi
  echo "clickhouse-server did not start; see $dir/log and $dir/stdout.log" >&2
  tail -20 "$dir/log/clickhouse-server.err.log" >&2 2>/dev/null || true
  exit 1
  ;;
stop)
  stop_pidfile "$dir/pid" 300 hard
  ;;
*)
  echo "usage: $0 start|stop|prepare DIR" >&2
  exit 2
  ;;
esac
