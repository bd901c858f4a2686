#!/usr/bin/env bash
# run-all.sh: builds the project and runs every test suite; the last line is "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/../.."
bash tests/scripts/build.sh || { echo "build failed"; echo "0 passed, 1 failed"; exit 1; }
meson test -C build --print-errorlogs --num-processes 1 "$@"
status=$?
summary() {  # the count on meson's summary line "$1:   N"
  local n
  n=$(sed -n "s/^$1: *\([0-9][0-9]*\) *\$/\1/p" build/meson-logs/testlog.txt | tail -1)
  echo "${n:-0}"
}
ok=$(summary Ok)
failed=$(( $(summary Fail) + $(summary Timeout) + $(summary Skipped) ))
# A skipped test is counted as failed: nothing here may pass by not running.
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
echo "${ok} passed, ${failed} failed"
[ "$status" -eq 0 ] && [ "$failed" -eq 0 ]
