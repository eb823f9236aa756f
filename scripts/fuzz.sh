#!/usr/bin/env bash
# Builds the libFuzzer target (Sources/PosternFuzz) in its own scratch path and runs it for RUNS inputs
# (default 200000) on a copy of Fuzz/corpus. Exits non-zero on any finding; the crashing input is left in
# .build-fuzz/findings/ and can be replayed with a plain build: `swift run PosternFuzz FILE`.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-200000}"
SWIFT="${SWIFT:-swift}"
SCRATCH=.build-fuzz

echo "fuzz: building PosternFuzz with -sanitize=fuzzer"
start=$(date +%s)
# Release: an unoptimised build runs about 80 inputs a second, an optimised one well over a thousand.
FLAGS=(-c release --scratch-path "$SCRATCH" -Xswiftc -DFUZZING -Xswiftc -sanitize=fuzzer -Xswiftc -parse-as-library)
mkdir -p "$SCRATCH"
if ! "$SWIFT" build "${FLAGS[@]}" --product PosternFuzz >"$SCRATCH/build.log" 2>&1; then
    grep -Ev '^\[[0-9]+/[0-9]+\]' "$SCRATCH/build.log" >&2
    echo "fuzz: build failed" >&2
    exit 1
fi
binary="$("$SWIFT" build "${FLAGS[@]}" --show-bin-path)/PosternFuzz"
[[ -x "$binary" ]] || { echo "fuzz: build failed: no $binary" >&2; exit 1; }
echo "fuzz: built in $(( $(date +%s) - start ))s"

work="$SCRATCH/run"
rm -rf "$work"
mkdir -p "$work/corpus" "$SCRATCH/findings"
cp Fuzz/corpus/* "$work/corpus/"
log="$work/fuzz.log"
status=0
# Swift's own crash backtracer would take the trap before libFuzzer could save the input.
SWIFT_BACKTRACE=enable=no "$binary" -runs="$RUNS" -max_len=4096 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$SCRATCH/findings/" "$work/corpus" >"$log" 2>&1 || status=$?
grep -E '^(stat::number_of_executed_units|stat::average_exec_per_sec|stat::new_units_added|stat::peak_rss_mb)|^#[0-9]+ +DONE|ERROR|fuzz invariant|Fatal error|SUMMARY' "$log" || true
if [[ $status -ne 0 ]]; then
    echo "fuzz: FINDING (exit $status); full log: $log; inputs: $SCRATCH/findings/" >&2
    tail -n 40 "$log" >&2
    exit 1
fi
echo "fuzz: OK, $(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$') executions, no finding"
