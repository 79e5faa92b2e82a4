#!/usr/bin/env bash
# Runs a libFuzzer target for a bounded time over a fresh copy of its seed
# corpus. Fails on a crash, a sanitizer report, a failed check, or a run that
# did not happen.
#
#   run_fuzz.sh FUZZER SEED_DIR WORK_DIR SECONDS
set -euo pipefail
fuzzer=$1 seeds=$2 work=$3 seconds=$4

rm -rf "$work"
mkdir -p "$work/corpus" "$work/artifacts"
cp "$seeds"/* "$work/corpus/"
dict=$(dirname "$0")/http.dict

set +e
# UBSan and LeakSanitizer report through libFuzzer as crashes; halt on the
# first so that nothing scrolls by as a warning.
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
ASAN_OPTIONS=detect_leaks=1:halt_on_error=1 \
  "$fuzzer" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
  -max_len=16384 -dict="$dict" -print_final_stats=1 \
  -artifact_prefix="$work/artifacts/" "$work/corpus" >"$work/log" 2>&1
rc=$?
set -e

tail -n 25 "$work/log"
if [ $rc -ne 0 ]; then
  echo "run_fuzz: the fuzzer exited $rc; the input is in $work/artifacts/" >&2
  exit 1
fi
if grep -qE 'ERROR: (Address|Leak|Undefined)Sanitizer|runtime error:|check failed' "$work/log"; then
  echo "run_fuzz: sanitizer report or failed check in $work/log" >&2
  exit 1
fi
runs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+)$/\1/p' "$work/log")
if [ -z "$runs" ] || [ "$runs" -lt 1000 ]; then
  echo "run_fuzz: only '${runs:-no}' inputs were run" >&2
  exit 1
fi
echo "run_fuzz: $runs inputs in ${seconds}s, no finding"
