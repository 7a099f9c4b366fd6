#!/usr/bin/env bash
# A private Tansu (Kafka-protocol broker) for tests and benchmarks, on a
# free loopback port, with its files in one directory. Storage is SQLite in
# DIR, so data survives a broker restart.
#
#   scripts/tansu.sh install         # cargo install tansu when missing (~15 min on 2 cores)
#   scripts/tansu.sh start DIR       # prints 127.0.0.1:PORT once it listens
#   scripts/tansu.sh stop DIR
#
# TANSU_STORAGE overrides the storage engine (e.g. memory://tansu/ for
# benchmarks that should not measure SQLite).
set -euo pipefail
. "$(dirname "$0")/service.sh"
cmd="${1:?install|start|stop}"

tansu_bin() { command -v tansu || { [ -x "$HOME/.cargo/bin/tansu" ] && echo "$HOME/.cargo/bin/tansu"; } || true; }

case "$cmd" in
install)
  if [ -z "$(tansu_bin)" ]; then
    # The default build has no storage engine; these features add memory:// and sqlite://.
    cargo install tansu --version 0.6.0 --locked --features dynostore,libsql >&2
  fi
  ;;
start)
  dir="$(mkdir -p "${2:?DIR}" && cd "$2" && pwd)"
  bin=$(tansu_bin)
  [ -n "$bin" ] || { echo "tansu is not installed (scripts/tansu.sh install)" >&2; exit 1; }
  if [ ! -f "$dir/addr" ]; then
    port=$(free_port)
    echo "127.0.0.1:$port" >"$dir/addr"
  fi
  addr=$(cat "$dir/addr")
  port=${addr##*:}
  # Tansu takes the sqlite path relative to its working directory.
  cd "$dir"
  nohup "$bin" broker --listener-url "tcp://$addr" --advertised-listener-url "tcp://$addr" \
    --storage-engine "${TANSU_STORAGE:-sqlite://tansu.db}" >"$dir/tansu.log" 2>&1 </dev/null &
  echo $! >"$dir/pid"
  cd - >/dev/null
  if started "$dir/pid" 100 port_open "$port"; then
    echo "$addr"
    exit 0
  fi
  echo "tansu did not start; see $dir/tansu.log" >&2
  cat "$dir/tansu.log" >&2 || true
  exit 1
  ;;
stop)
  dir="$(mkdir -p "${2:?DIR}" && cd "$2" && pwd)"
  stop_pidfile "$dir/pid" 100
  ;;
*) echo "usage: $0 install|start|stop DIR" >&2; exit 2 ;;
esac
