#!/usr/bin/env bash
# A private ZooKeeper (Debian's `zookeeper` package, standalone) for the
# ClickHouse cluster of the tests: the coordination service ClickHouse
# 18.16's replicated tables and ON CLUSTER DDL need. All its files in DIR.
#
#   scripts/zookeeper.sh start DIR   # prints host:port once it answers
#   scripts/zookeeper.sh stop DIR
#
# Starting a DIR that was started before reuses its port and data, so a
# test can take ZooKeeper away and bring the same one back.
set -euo pipefail
. "$(dirname "$0")/service.sh"
cmd="${1:?start|stop}"
dir="$(mkdir -p "${2:?DIR}" && cd "$2" && pwd)"
jar=/usr/share/java/zookeeper.jar

answers() { [ "$(python3 - "$1" <<'PY' 2>/dev/null
import socket, sys
s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), 0.5)
s.sendall(b'ruok'); print(s.recv(4).decode())
PY
)" = "imok" ]; }

case "$cmd" in
start)
  [ -f "$jar" ] || {
    echo "zookeeper is not installed (apt-get install zookeeper)" >&2
    exit 1
  }
  if [ ! -f "$dir/zoo.cfg" ]; then
    port=$(free_port)
    mkdir -p "$dir/data"
    cat >"$dir/zoo.cfg" <<CFG
tickTime=500
dataDir=$dir/data
clientPort=$port
clientPortAddress=127.0.0.1
admin.enableServer=false
4lw.commands.whitelist=ruok
CFG
    echo "$port" >"$dir/port"
  fi
  port=$(cat "$dir/port")
  nohup java -Xmx256m -Dzookeeper.log.dir="$dir" -cp "/etc/zookeeper/conf:$jar" \
    org.apache.zookeeper.server.ZooKeeperServerMain "$dir/zoo.cfg" >"$dir/stdout.log" 2>&1 &
  echo $! >"$dir/pid"
  if started "$dir/pid" 600 answers "$port"; then
    echo "127.0.0.1:$port"
    exit 0
  fi
  echo "zookeeper did not start; see $dir/stdout.log" >&2
  tail -20 "$dir/stdout.log" >&2 || true
  exit 1
  ;;
stop)
  stop_pidfile "$dir/pid" 100 hard
  ;;
*)
  echo "usage: $0 start|stop DIR" >&2
  exit 2
  ;;
esac
