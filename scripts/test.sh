#!/usr/bin/env bash
# Quick start, command 2: check formatting (cargo fmt --check) and lints (cargo clippy -D warnings),
# then the Prometheus alert rules (promtool check rules and their unit tests), then run weir's
# whole test suite (unit, property and integration tests;
# the integration tests start the real weir binary against real backends on loopback, and
# private PostgreSQL servers for the billing tests and a private Prometheus for the dashboard and
# alerts test).
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
# The cluster tests start a private etcd (never a system one) from Debian's etcd-server. Its
# package may enable and start a system etcd on port 2379 where services can start: that one is
# stopped and disabled again; one running before is left alone.
if ! command -v etcd >/dev/null 2>&1; then
  echo "weir: installing etcd-server (for the cluster tests' private etcd)" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  running_before=" $(pgrep -d ' ' -x etcd || true) "
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq etcd-server >/dev/null
  for pid in $(pgrep -x etcd || true); do
    case "$running_before" in
      *" $pid "*) ;;
      *)
        echo "weir: stopping the etcd server the install started (pid $pid)" >&2
        if [ -d /run/systemd/system ]; then
          $sudo systemctl disable --now etcd.service >/dev/null 2>&1 || true
        fi
        $sudo kill "$pid" 2>/dev/null || true
        ;;
    esac
  done
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
# The alert rules are checked with promtool, and tests/prometheus.rs starts its own private
# Prometheus server: both from Debian's prometheus package (without recommends: no node exporter).
# The package enables its service and its postinst starts it where it can (not where policy-rc.d
# forbids it, as in many containers). No shared server may be left running (it would also take
# port 9090, weir's default admin port): whatever prometheus process the install started is
# stopped, and the service it enabled is disabled; a server running before is left alone.
if [ ! -x /usr/bin/promtool ]; then
  echo "weir: installing prometheus (promtool for the alert rules, a private server for the Prometheus test)" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  running_before=" $(pgrep -d ' ' -x prometheus || true) "
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  started=""
  for pid in $(pgrep -x prometheus || true); do
    case "$running_before" in *" $pid "*) ;; *) started="$started $pid" ;; esac
  done
  if [ -n "$started" ]; then
    echo "weir: stopping the prometheus server the install started (pid$started)" >&2
    if [ -d /run/systemd/system ]; then
      $sudo systemctl stop prometheus.service || true
    else
      $sudo /etc/init.d/prometheus stop >/dev/null 2>&1 || true
    fi
    for pid in $started; do
      $sudo kill "$pid" 2>/dev/null || true
    done
    for _ in $(seq 50); do
      alive=""
      for pid in $started; do
        if [ -d "/proc/$pid" ]; then alive="$alive $pid"; fi
      done
      [ -n "$alive" ] || break
      sleep 0.1
    done
  fi
  if command -v systemctl >/dev/null; then $sudo systemctl disable --quiet prometheus.service 2>/dev/null || true; fi
  $sudo update-rc.d prometheus disable >/dev/null 2>&1 || true
fi
# Style and lints first, so they cannot drift: rustfmt over the tree, clippy with warnings as errors.
rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
# The fuzz targets (fuzz/, a workspace of its own; scripts/fuzz.sh runs them on nightly) are
# formatted and compiled here, never run. After changing weir's dependencies, refresh their lock
# file: cp Cargo.lock fuzz/Cargo.lock && cargo check --manifest-path fuzz/Cargo.toml
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
cargo clippy --locked --manifest-path fuzz/Cargo.toml --bins -- -D warnings
# The alert rules: valid, and their unit tests (a firing and a quiet case per alert) pass.
promtool check rules dashboards/alerts.yml
promtool test rules dashboards/alerts_test.yml
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
