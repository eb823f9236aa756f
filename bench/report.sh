#!/usr/bin/env bash
# `postern report` over one million audit lines (issue #18): generates the lines in the gateway's format
# (bench/audit-lines.py; three rotated gzip files and the current one), then times the summary and the CSV
# detail with the release binary. Everything is written to a temporary directory and removed.
#
#   bench/report.sh          Environment: LINES (1000000), BIN (.build-release/release)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/.build-release/release}
LINES=${LINES:-1000000}
[ -x "$BIN/postern" ] || { echo "bench: $BIN/postern is missing; run: swift build -c release --scratch-path .build-release --product postern" >&2; exit 1; }
WORK=$(mktemp -d /var/tmp/postern-report-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
python3 bench/audit-lines.py "$WORK/audit.jsonl" "$LINES" 3
du -ch "$WORK"/audit.jsonl* | tail -1 | sed 's/^/on disk: /'
for run in 1 2 3; do
  /usr/bin/time -f "summary run $run: %e s elapsed, %U s user, %S s system, %M KiB max RSS" \
    "$BIN/postern" report --audit "$WORK/audit.jsonl" > "$WORK/summary.txt"
done
/usr/bin/time -f "csv detail: %e s elapsed, %U s user, %S s system, %M KiB max RSS" \
  "$BIN/postern" report --audit "$WORK/audit.jsonl" --format csv > "$WORK/detail.csv"
/usr/bin/time -f "filtered (one device, three days): %e s elapsed, %M KiB max RSS" \
  "$BIN/postern" report --audit "$WORK/audit.jsonl" --device dev-scanner-7 --since 2026-11-02 --until 2026-11-05 > /dev/null
echo "detail rows: $(($(wc -l < "$WORK/detail.csv") - 1))"
cat "$WORK/summary.txt" | head -12
