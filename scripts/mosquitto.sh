#!/usr/bin/env bash
# A private Mosquitto broker for tests and benchmarks, on a free loopback
# port, with its files in one directory.
#
#   scripts/mosquitto.sh start DIR   # prints mqtt://127.0.0.1:PORT once it listens
#   scripts/mosquitto.sh stop DIR
set -euo pipefail
. "$(dirname "$0")/service.sh"
cmd="${1:?start|stop}"
dir="$(mkdir -p "${2:?DIR}" && cd "$2" && pwd)"

case "$cmd" in
start)
  command -v mosquitto >/dev/null || { echo "mosquitto is not installed (apt-get install mosquitto)" >&2; exit 1; }
  if [ ! -f "$dir/mosquitto.conf" ]; then
    port=$(free_port)
    # max_queued_messages: Mosquitto's default (1000) silently drops QoS 1
    # messages beyond it for a persistent session that is offline; an
    # OwnTracks fleet needs far more. max_inflight_messages: the window of
    # unacknowledged deliveries, which otstream uses as flow control.
    cat >"$dir/mosquitto.conf" <<CONF
listener $port 127.0.0.1
allow_anonymous true
persistence false
max_inflight_messages 1000
max_queued_messages 1000000
max_queued_bytes 0
log_dest file $dir/mosquitto.log
CONF
    echo "mqtt://127.0.0.1:$port" >"$dir/url"
  fi
  url=$(cat "$dir/url")
  port=${url##*:}
  nohup mosquitto -c "$dir/mosquitto.conf" >"$dir/stdout.log" 2>&1 &
  echo $! >"$dir/pid"
  if started "$dir/pid" 100 port_open "$port"; then
    echo "$url"
    exit 0
  fi
  echo "mosquitto did not start; see $dir" >&2
  cat "$dir/stdout.log" "$dir/mosquitto.log" >&2 2>/dev/null || true
  exit 1
  ;;
stop)
  stop_pidfile "$dir/pid" 100
  ;;
*) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
