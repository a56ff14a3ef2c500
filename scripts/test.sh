#!/usr/bin/env bash
# Quick start, command 2: run weir's whole test suite (unit, property and integration tests;
# the integration tests start the real weir binary against real backends on loopback).
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
cargo test --locked "$@"
