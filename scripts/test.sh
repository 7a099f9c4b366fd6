#!/usr/bin/env bash
# The one test command: formatting, lints, and every test of the workspace.
# CI runs exactly this (through .ci/run). It installs and starts whatever
# real service a test needs, and stops it afterwards; a test that needs a
# service fails when the service is missing, it never skips.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test --workspace"
cargo test --workspace --locked
