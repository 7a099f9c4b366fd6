#!/usr/bin/env bash
# Fuzzes the decoder with libFuzzer for SECONDS (default 300) and prints the
# number of executions that ran clean. Seeds from the corpus of real payloads.
#
#   scripts/fuzz.sh [SECONDS]
#
# cargo-fuzz wants a nightly toolchain for its sanitizer flags; this machine
# has stable only, so RUSTC_BOOTSTRAP=1 lets stable rustc accept them.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-300}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
seeds=fuzz/corpus/decode
mkdir -p "$seeds"
python3 - "$seeds" <<'PY'
import json, sys, hashlib, os
out = sys.argv[1]
for line in open("testdata/corpus/owntracks-payloads.ndjson"):
    d = json.loads(line)
    body = d["raw_body"] if "raw_body" in d else json.dumps(d["payload"])
    data = bytes([0 if d["transport"] == "mqtt" else 1]) + body.encode()
    open(os.path.join(out, hashlib.sha1(data).hexdigest()), "wb").write(data)
PY
export RUSTC_BOOTSTRAP=1
cd fuzz
cargo fuzz run decode -- -max_total_time="$seconds" -max_len=4096 2>&1 | tee /tmp/otstream-fuzz.log | grep -E "^#[0-9]+.*(DONE|pulse)|ERROR|panicked" || true
grep -E "Done [0-9]+ runs" /tmp/otstream-fuzz.log
