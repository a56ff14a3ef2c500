#!/usr/bin/env bash
# User-space instructions per handshake cycle or per relayed small message, counted exactly by
# valgrind's callgrind while weir-bench drives weir: the figure that a noisy shared host hardly
# moves (CPU time on these machines moves ±15 % between runs of one binary; an instruction count
# about 2.5 %, as the timer and record-delivery threads batch differently under load). It is not
# time: kernel work, cache misses and waits are not in it. Use it to compare builds (a
# before/after of a user-space change), and weir-bench for the time.
#
#   bench/instructions.sh [--scenario handshake|small] [--top N] [--keep DIR] [--nginx] [WEIR_BIN ...]
#
# For each binary: runs `weir-bench --only weir --scenarios <scenario> --runs 1` with weir under
# callgrind (about 50x slower, so a few hundred cycles a second), zeroes the counts once the load
# runs (after 30 connections or 20 000 messages), counts for 3 s, then reads how many
# connections (weir_connections_total) or messages (weir_messages_total) weir finished in that
# window from its /metrics. Prints instructions per unit and, with --top, the N functions with
# the most instructions of their own (per unit); --keep copies each callgrind dump to DIR (for
# `callgrind_annotate --tree=caller`). --nginx adds a row for NGINX as weir-bench runs it (one
# process, 64 KiB buffers; handshake only): its window opens 1.5 s after NGINX starts (the load
# is running by then) and its cycles are its accept4 calls in the window (one per connection:
# NGINX accepts one connection per event). Needs valgrind (`apt-get install valgrind`),
# curl, and a release build of weir-bench (`cargo build --release --bins`).
set -euo pipefail

scenario=handshake
top=0
keep=""
nginx=""
bins=()
while [ $# -gt 0 ]; do
  case "$1" in
    --scenario) scenario=$2; shift 2 ;;
    --top) top=$2; shift 2 ;;
    --keep) keep=$2; shift 2 ;;
    --nginx) nginx=$(command -v nginx) || { echo "$0: nginx not found: apt-get install nginx-light" >&2; exit 2; }; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) bins+=("$1"); shift ;;
  esac
done
[ ${#bins[@]} -gt 0 ] || [ -n "$nginx" ] || { echo "usage: $0 [--scenario handshake|small] [--top N] [--keep DIR] [--nginx] [WEIR_BIN ...]" >&2; exit 2; }
[ -z "$nginx" ] || [ "$scenario" = handshake ] || { echo "$0: --nginx counts handshake cycles only" >&2; exit 2; }
case "$scenario" in
  handshake) metric=weir_connections_total; start_at=30; unit="handshake cycle" ;;
  small) metric=weir_messages_total; start_at=20000; unit="small message relayed" ;;
  *) echo "$0: --scenario must be handshake or small, not $scenario" >&2; exit 2 ;;
esac
command -v valgrind >/dev/null || { echo "$0: valgrind not found: apt-get install valgrind" >&2; exit 2; }
root=$(cd "$(dirname "$0")/.." && pwd)
bench=${WEIR_BENCH:-$root/target/release/weir-bench}
[ -x "$bench" ] || { echo "$0: $bench not found: cargo build --release --bins" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The wrapper weir-bench starts as "weir": weir under callgrind, plus a watcher that opens and
# closes the counting window and records how many units weir finished in it.
cat >"$work/weir" <<'EOF'
#!/usr/bin/env bash
cfg=""; prev=""
for a in "$@"; do if [ "$prev" = "--config" ]; then cfg=$a; fi; prev=$a; done
admin=$(awk '/^admin:/{f=1;next} f&&/address:/{gsub(/"/,"",$2); print $2; exit}' "$cfg")
count() { curl -sf "http://$admin/metrics" | awk -v m="$CG_METRIC" '$1 ~ "^"m"([{]|$)" {s+=$NF} END{printf "%d\n", s}'; }
(
  for _ in $(seq 1 600); do
    c=$(count 2>/dev/null || echo 0)
    [ "${c:-0}" -gt "$CG_START_AT" ] && break
    sleep 0.1
  done
  # The window holds neither scrape of /metrics (each costs weir millions of instructions).
  c0=$(count)
  callgrind_control -z $$ >/dev/null 2>&1
  sleep 3
  callgrind_control -d $$ >/dev/null 2>&1
  c1=$(count)
  echo "$c0 $c1" >"$CG_OUT.count"
) &
exec valgrind --tool=callgrind --callgrind-out-file="$CG_OUT" "$CG_BIN" "$@"
EOF
chmod +x "$work/weir"

# The NGINX wrapper: NGINX under callgrind, its window opened and closed by time.
cat >"$work/nginx" <<'EOF'
#!/usr/bin/env bash
( sleep 1.5; callgrind_control -z $$ >/dev/null 2>&1; sleep 3; callgrind_control -d $$ >/dev/null 2>&1 ) &
exec valgrind --tool=callgrind --callgrind-out-file="$CG_OUT" "$CG_BIN" "$@"
EOF
chmod +x "$work/nginx"

# report NAME DUMP UNITS: the table row for one dump (and its copy and top functions).
report() {
  local name=$1 dump=$2 units=$3 total
  total=$(callgrind_annotate --threshold=100 "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(/,/,"",$1); print $1}')
  printf '| %s | %d | %d |\n' "$name" $((total / units)) "$units"
  if [ -n "$keep" ]; then mkdir -p "$keep" && cp "$dump" "$keep/callgrind.$(basename "$name").$scenario"; fi
  if [ "$top" -gt 0 ]; then
    callgrind_annotate --threshold=100 --inclusive=no "$dump" 2>/dev/null |
    # Frames already running when the window opened (thread starts, the workers' loops) show
    # everything below them as their own: rows over half the total are left out.
      awk -v n="$top" -v u="$units" -v t="$total" '/^ *[0-9,]+ \(/ && !/PROGRAM TOTALS/ {
        c=$1; gsub(/,/,"",c); sub(/^ *[0-9,]+ \( *[0-9.]+%\) +/, "")
        if (c * 2 < t && k++ < n) printf "    %8.0f %s\n", c/u, substr($0,1,150)}'
  fi
}

printf '| binary | instructions per %s | %s in the window |\n|---|---:|---:|\n' "$unit" "${scenario/handshake/cycles}"
for bin in "${bins[@]}"; do
  out="$work/cg.$(basename "$bin").$RANDOM"
  CG_BIN=$(realpath "$bin") CG_OUT=$out CG_METRIC=$metric CG_START_AT=$start_at \
    "$bench" --only weir --weir-bin "$work/weir" --scenarios "$scenario" --runs 1 >"$work/bench.out" 2>"$work/bench.err" ||
    { echo "$0: weir-bench failed for $bin:" >&2; tail -5 "$work/bench.err" >&2; exit 1; }
  read -r c0 c1 <"$out.count"
  units=$((c1 - c0))
  [ "$units" -gt 0 ] || { echo "$0: no $unit finished in the window for $bin" >&2; exit 1; }
  report "$bin" "$(ls "$out".* | grep -v '\.count$' | sort | tail -1)" "$units"
done
if [ -n "$nginx" ]; then
  out="$work/cg.nginx.$RANDOM"
  CG_BIN=$nginx CG_OUT=$out "$bench" --only nginx --nginx-bin "$work/nginx" --scenarios handshake --runs 1 \
    >"$work/bench.out" 2>"$work/bench.err" ||
    { echo "$0: weir-bench failed for nginx:" >&2; tail -5 "$work/bench.err" >&2; exit 1; }
  dump=$(ls "$out".* 2>/dev/null | sort | tail -1)
  [ -s "$dump" ] || { echo "$0: no callgrind dump for nginx (its load ended before the window)" >&2; exit 1; }
  # Calls to libc's accept4, summed over its callers.
  units=$(callgrind_annotate --tree=calling --threshold=100 "$dump" 2>/dev/null |
    awk '/>.*:accept4 \(/ { s=$0; sub(/.*accept4 \(/, "", s); sub(/x\).*/, "", s); gsub(/,/, "", s); n+=s } END {print n+0}')
  [ "$units" -gt 0 ] || { echo "$0: no accept4 call in NGINX's window" >&2; exit 1; }
  report "$nginx" "$dump" "$units"
fi
