#!/usr/bin/env bash
# Quick start, command 1: build weir (release) and run it with ./config.yaml (or the file given
# as the first argument). The shipped config needs nothing else running: it fronts weir's
# built-in echo backend. Open http://127.0.0.1:8080/ for the demo page; metrics are on
# http://127.0.0.1:9090/metrics.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
cargo build --release --locked --bin weir
exec ./target/release/weir run --config "${1:-config.yaml}"
