#!/usr/bin/env bash
# Quick start, command 2: check formatting (cargo fmt --check) and lints (cargo clippy -D warnings),
# then run weir's whole test suite (unit, property and integration tests;
# the integration tests start the real weir binary against real backends on loopback, and
# private PostgreSQL servers for the billing tests).
# Installs what a fresh machine lacks first. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
# The demo-page test drives Debian's headless Chromium.
if [ ! -x /usr/bin/chromium ]; then
  echo "weir: installing chromium (for the demo-page browser test)" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi
# The billing tests start private PostgreSQL servers (never the system cluster) from Debian's
# server binaries. A main cluster is not created on install (create_main_cluster = false), so
# nothing system-wide is started.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "weir: installing postgresql (for the billing tests' private servers)" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
    $sudo mkdir -p /etc/postgresql-common
    echo "create_main_cluster = false" | $sudo tee /etc/postgresql-common/createcluster.conf >/dev/null
  fi
  $sudo apt-get update -qq
  # UCF_FORCE_CONFFOLD keeps the createcluster.conf written above.
  $sudo env DEBIAN_FRONTEND=noninteractive UCF_FORCE_CONFFOLD=1 apt-get install -y -qq postgresql >/dev/null
fi
# Style and lints first, so they cannot drift: rustfmt over the tree, clippy with warnings as errors.
rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --locked --all-targets "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line with the totals of every test binary (unit, property, integration).
passed=$(grep -E '^test result: ' "$log" | grep -oE '[0-9]+ passed' | awk '{s += $1} END {print s + 0}')
failed=$(grep -E '^test result: ' "$log" | grep -oE '[0-9]+ failed' | awk '{s += $1} END {print s + 0}')
echo "weir: $passed passed, $failed failed"
if [ "$status" -eq 0 ] && [ "$passed" -eq 0 ]; then
  echo "weir: no test ran" >&2
  exit 1
fi
exit "$status"
