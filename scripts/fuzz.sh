#!/usr/bin/env bash
# Fuzzes weir (issue 10): runs every cargo-fuzz target of fuzz/ (frame_scanner, request_head,
# relay) with libFuzzer for SECONDS each (default 600), one after the other, and prints per
# target how many inputs it ran and whether it found a crash. A crashing (or too slow) input is
# saved in fuzz/artifacts/<target>/; replay it with `cargo +nightly fuzz run <target> <file>`.
# The corpus grows in fuzz/corpus/<target>/ from the committed seeds in fuzz/seeds/<target>/;
# the full libFuzzer output is in fuzz/logs/<target>.log (all three git-ignored). The inputs in
# fuzz/regressions/<target>/ (bugs found before) are replayed after each target's run and must
# pass.
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
# Needs a nightly toolchain (the sanitizer flags are nightly-only); installs cargo-fuzz if it is
# missing. Exits non-zero if a target crashed or did not build. CI does not run this: it only
# compiles the targets (scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh

seconds=${1:-600}
if [ $# -gt 0 ]; then shift; fi
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -eq 0 ]; then
  echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...]" >&2
  exit 2
fi
if ! rustup toolchain list | grep -q '^nightly'; then
  echo "weir: fuzzing needs a nightly toolchain (rustup toolchain install nightly)" >&2
  exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "weir: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
# Build every target first, so that each one's SECONDS are spent fuzzing.
if ! cargo +nightly fuzz build; then
  echo "weir: the fuzz targets did not build" >&2
  exit 2
fi

mkdir -p fuzz/logs
failed=0
summary=()
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  log="fuzz/logs/$t.log"
  echo "weir: fuzzing $t for ${seconds}s (log: $log)" >&2
  status=0
  # The first corpus directory receives the new inputs; the seeds are only read.
  seeds=()
  [ -d "fuzz/seeds/$t" ] && seeds=("fuzz/seeds/$t")
  cargo +nightly fuzz run "$t" "fuzz/corpus/$t" "${seeds[@]}" -- \
    -max_total_time="$seconds" -print_final_stats=1 -timeout=60 >"$log" 2>&1 || status=$?
  # libFuzzer's final statistics; without them (a crash), the last "#N" status line.
  # (grep finds nothing in some logs: `|| true`, or pipefail ends the script.)
  execs=$(grep -oE '^stat::number_of_executed_units:[[:space:]]+[0-9]+' "$log" | tail -n 1 | awk '{print $2}' || true)
  [ -n "$execs" ] || execs=$(grep -oE '^#[0-9]+' "$log" | tail -n 1 | tr -d '#' || true)
  rate=$(grep -oE '^stat::average_exec_per_sec:[[:space:]]+[0-9]+' "$log" | tail -n 1 | awk '{print $2}' || true)
  corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
  artifact=$(grep -oE 'Test unit written to [^ ]+' "$log" | tail -n 1 | awk '{print $5}' || true)
  if [ "$status" -ne 0 ] || [ -n "$artifact" ]; then
    failed=1
    verdict="FOUND: ${artifact:-exit status $status, see $log}"
  else
    verdict="nothing found"
  fi
  summary+=("$(printf '%-14s %12s executions %8s exec/s  corpus %6s  %s' "$t" "${execs:-?}" "${rate:-?}" "$corpus" "$verdict")")
  # Inputs that once found a bug (fuzz/regressions/<target>/): each must now pass.
  for r in fuzz/regressions/"$t"/*; do
    [ -f "$r" ] || continue
    if ! cargo +nightly fuzz run "$t" "$r" >"fuzz/logs/$t.regression.log" 2>&1; then
      failed=1
      summary+=("$(printf '%-14s regression still fails: %s (fuzz/logs/%s.regression.log)' "$t" "$r" "$t")")
    fi
  done
done

echo
for line in "${summary[@]}"; do
  echo "$line"
done
exit "$failed"
