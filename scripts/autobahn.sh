#!/usr/bin/env bash
# Runs the Autobahn|Testsuite (the WebSocket conformance suite) through weir and directly, and
# fails if any case ends differently through weir (a case that is OK one way and NON-STRICT the
# other differs only in timing and is allowed). Two backends, two clients, all third-party:
#   - fuzzingclient (Autobahn as the client) against Autobahn's own Twisted echo server and the
#     `websockets` library's echo server, each directly and through weir;
#   - fuzzingserver (Autobahn as the server, through weir as the backend) with the `websockets`
#     library as the client, directly and through weir.
# Cases: all but 9.* (performance) and 12.*/13.* (compression, minutes each in Python), plus a
# compression sample (COMPRESSION below). Reports: $OUT/{servers,clients,compression}/index.html.
#
# Usage: scripts/autobahn.sh [OUT_DIR]   (default target/autobahn)
# Needs Python 2.7 (autobahntestsuite is Python 2 only: pyenv's 2.7 or `python2` on PATH) and
# Python 3 with pip; installs autobahntestsuite and websockets==12.0 for the user if missing
# (from PyPI). Not part of scripts/test.sh: CI machines may have neither Python 2 nor PyPI.
# Every server binds loopback; everything it starts is stopped by PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out=$(realpath -m "${1:-target/autobahn}")
here=$root/scripts/autobahn
COMPRESSION='["12.1.1","12.1.2","12.1.3","12.1.4","12.2.1","12.2.2","12.3.1","12.4.1","12.5.1","13.1.1","13.1.2","13.2.1","13.3.1","13.4.1","13.5.1","13.6.1","13.7.1","13.7.2","13.7.3"]'

py2=""
for candidate in python2.7 python2 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/2.7*/bin/python2.7; do
  # pyenv's shims exist on PATH even when they would not run: try each.
  if "$candidate" -c 'import sys; assert sys.version_info[:2] == (2, 7)' 2>/dev/null; then py2=$candidate; break; fi
done
[ -n "$py2" ] || { echo "weir: autobahn needs Python 2.7 (e.g. pyenv install 2.7.18)" >&2; exit 2; }
py3=$(command -v python3)
if ! "$py2" -c 'import autobahntestsuite' 2>/dev/null; then
  echo "weir: installing autobahntestsuite for $py2" >&2
  "$py2" -m pip install --user --quiet autobahntestsuite
fi
if ! "$py3" -c 'import websockets' 2>/dev/null; then
  echo "weir: installing websockets for $py3" >&2
  "$py3" -m pip install --user --quiet websockets==12.0
fi
wstest=("$py2" -c 'import sys; from autobahntestsuite.wstest import run; sys.argv[0] = "wstest"; run()')
cargo build --release --locked --bin weir
rm -rf "$out" && mkdir -p "$out"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
port() { "$py3" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() { # HOST PORT
  for _ in $(seq 1 100); do
    "$py3" -c "import socket,sys; socket.create_connection(('$1', $2), 0.2)" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "weir: nothing listens on $1:$2" >&2; exit 1
}

ab_port=$(port); py_port=$(port); weir_port=$(port); admin_port=$(port); fz_port=$(port)
"$py2" "$here/echo_autobahn.py" 127.0.0.2 "$ab_port" >"$out/echo_autobahn.log" 2>&1 & pids+=($!)
"$py3" "$here/echo_websockets.py" 127.0.0.3 "$py_port" >"$out/echo_websockets.log" 2>&1 & pids+=($!)
# Autobahn's fuzzingserver checks that the Host port is its own and binds every IPv4 address:
# weir takes the same port on ::1.
cat >"$out/fuzzingserver.json" <<JSON
{"url": "ws://127.0.0.1:$fz_port", "outdir": "$out/clients", "cases": ["*"], "exclude-cases": ["9.*", "12.*", "13.*"], "exclude-agent-cases": {}}
JSON
(cd "$out" && exec "${wstest[@]}" -m fuzzingserver -s fuzzingserver.json >"$out/fuzzingserver.log" 2>&1) & pids+=($!)
cat >"$out/weir.yaml" <<YAML
server: {grace_period: 1s}
listeners:
  - address: "127.0.0.1:$weir_port"
  - address: "[::1]:$fz_port"
admin:
  address: "127.0.0.1:$admin_port"
log: {level: warn}
usage:
  spool_dir: $out/spool
  sinks: [{kind: file, path: $out/usage.jsonl}]
data_dir: $out/data
pools:
  - {name: autobahn, backends: ["127.0.0.2:$ab_port"], health_check: {kind: none}}
  - {name: websockets, backends: ["127.0.0.3:$py_port"], health_check: {kind: none}}
  - {name: fuzzingserver, backends: ["127.0.0.1:$fz_port"], health_check: {kind: none}}
routes:
  - {name: websockets, path_prefix: /websockets, kind: websocket, pool: websockets}
  - {name: autobahn, path_prefix: /autobahn, kind: websocket, pool: autobahn}
  - {name: fuzzingserver, path_prefix: /, kind: websocket, pool: fuzzingserver}
YAML
"$root/target/release/weir" run --config "$out/weir.yaml" >"$out/weir.log" 2>&1 & pids+=($!)
for hp in "127.0.0.2 $ab_port" "127.0.0.3 $py_port" "127.0.0.1 $fz_port" "127.0.0.1 $weir_port" "::1 $fz_port"; do
  wait_port $hp
done

# spec NAME CASES EXCLUDED: a fuzzingclient spec for the four server agents.
spec() {
  cat >"$out/$1.json" <<JSON
{"outdir": "$out/$1", "cases": $2, "exclude-cases": $3, "exclude-agent-cases": {},
 "servers": [
  {"agent": "autobahn", "url": "ws://127.0.0.2:$ab_port"},
  {"agent": "autobahn-weir", "url": "ws://127.0.0.1:$weir_port/autobahn"},
  {"agent": "websockets", "url": "ws://127.0.0.3:$py_port"},
  {"agent": "websockets-weir", "url": "ws://127.0.0.1:$weir_port/websockets"}]}
JSON
}
spec servers '["*"]' '["9.*", "12.*", "13.*"]'
spec compression "$COMPRESSION" '[]'
status=0
for name in servers compression; do
  echo "== fuzzingclient ($name): Autobahn as the client, two backends, directly and through weir"
  (cd "$out" && "${wstest[@]}" -m fuzzingclient -s "$name.json" >"$out/$name.log" 2>&1)
  "$py3" "$here/compare.py" "$out/$name/index.json" autobahn:autobahn-weir websockets:websockets-weir || status=1
done
echo "== fuzzingserver: the websockets client, directly and through weir"
"$py3" "$here/client_websockets.py" "ws://127.0.0.1:$fz_port" websockets
"$py3" "$here/client_websockets.py" "ws://[::1]:$fz_port" websockets-weir
"$py3" "$here/compare.py" "$out/clients/index.json" websockets:websockets-weir || status=1
[ $status -eq 0 ] && echo "weir: every case ended through weir as it did directly" || echo "weir: some cases differ through weir (above)"
exit $status
