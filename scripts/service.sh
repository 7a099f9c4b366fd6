# Shared by the scripts that run private services (clickhouse.sh,
# mosquitto.sh, tansu.sh) and by the benchmark scripts: source it.

# A loopback port free at the time of asking.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Whether something accepts TCP connections on loopback port $1.
port_open() {
  python3 -c "import socket; socket.create_connection(('127.0.0.1', $1), 0.2)" 2>/dev/null
}

# started PIDFILE TRIES CHECK...: runs CHECK every 0.1 s until it succeeds;
# fails when the process in PIDFILE exits first or after TRIES checks.
started() {
  local pidfile=$1 tries=$2
  shift 2
  for _ in $(seq "$tries"); do
    "$@" && return 0
    kill -0 "$(cat "$pidfile")" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# stop_pidfile PIDFILE TRIES [hard]: SIGTERM, then waits up to TRIES × 0.1 s
# for the process to exit (then SIGKILL with `hard`); removes PIDFILE.
stop_pidfile() {
  local pidfile=$1 tries=$2 hard=${3:-}
  [ -f "$pidfile" ] || return 0
  local pid
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq "$tries"); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  [ -z "$hard" ] || kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

# For the benchmark scripts: the otstream processes they start go in
# `pids`; `bench_cleanup DIR` (their EXIT trap) kills them, stops the
# private ClickHouse and Tansu they started under DIR, and removes DIR.
pids=()
bench_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  scripts/clickhouse.sh stop "$1/ch" >/dev/null 2>&1 || true
  scripts/tansu.sh stop "$1/tansu" >/dev/null 2>&1 || true
  rm -rf "$1"
}

# Interrupts every process in `pids` (a clean stop) and waits for them.
stop_pids() {
  for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}

# Waits (20 s at most) until the otstream metrics port $1 says ready.
wait_ready() {
  for _ in $(seq 200); do curl -sf "http://127.0.0.1:$1/readyz" >/dev/null && return; sleep 0.1; done
  echo "not ready on :$1" >&2
  exit 1
}
