#!/usr/bin/env bash
# run-all.sh: builds the project and runs every test suite; the last line is "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/../.."
bash tests/scripts/build.sh || { echo "build failed"; echo "0 passed, 1 failed"; exit 1; }
meson test -C build --print-errorlogs --num-processes 1 "$@"
status=$?
summary() { sed -n "s/^$1: *\([0-9]*\)\$/\1/p" build/meson-logs/testlog.txt | tail -1; }
ok=$(summary Ok)
failed=$(( $(summary Fail || echo 0) + $(summary Timeout || echo 0) + $(summary Skipped || echo 0) ))
# A skipped test is counted as failed: nothing here may pass by not running.
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
echo "${ok:-0} passed, ${failed} failed"
[ "$status" -eq 0 ] && [ "$failed" -eq 0 ]
