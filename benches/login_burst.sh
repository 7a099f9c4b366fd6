#!/usr/bin/env bash
# What a password-guessing burst costs the phones of `otstream serve`:
# starts a release build with an htpasswd file (bcrypt cost 10), runs
# benches/src/bin/login_burst.rs against it (phones posting with valid
# credentials before, during and after 400 wrong passwords at once from
# another address), prints the guesses' statuses, the phones' percentiles
# per phase and serve's CPU over the run. Not a test: a measurement.
#
#   benches/login_burst.sh [PHONES] [GUESSES] [SECONDS]
#
# OTSTREAM_BIN measures another build (same-run A/B: run it twice).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/service.sh
phones="${1:-16}"
guesses="${2:-400}"
seconds="${3:-3}"
cargo build -q --release -p otstream-benches --bin login_burst
if [ -z "${OTSTREAM_BIN:-}" ]; then
  cargo build -q --release -p otstream-cli --bin otstream
fi
bin="${OTSTREAM_BIN:-./target/release/otstream}"
dir=$(mktemp -d)
pid=
trap 'kill $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
./target/release/login_burst --htpasswd-out "$dir/htpasswd"
port=$(free_port)
mport=$(free_port)
"$bin" serve --http-addr "127.0.0.1:$port" --metrics-addr "127.0.0.1:$mport" \
  --data-dir "$dir/data" --htpasswd "$dir/htpasswd" --log error &
pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$mport/readyz" >/dev/null && break; sleep 0.1; done
cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
before=$(cpu_ticks)
./target/release/login_burst --addr "127.0.0.1:$port" --phones "$phones" --guesses "$guesses" --seconds "$seconds"
after=$(cpu_ticks)
python3 -c "import sys; t,hz=map(int,sys.argv[1:]); print(f'serve CPU over the run: {t/hz:.2f} s')" \
  "$((after - before))" "$(getconf CLK_TCK)"
curl -s "http://127.0.0.1:$mport/metrics" | grep '^otstream_auth_checks_total' || true
kill -INT $pid; wait $pid || true
