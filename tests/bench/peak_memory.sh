#!/bin/bash
# peak_memory.sh COMMAND [ARGS...]: runs the command and polls /proc every 50 ms for its resident
# memory; prints its last output line, then the wall time and the peaks of anonymous memory (what
# the process allocated) and file-mapped memory (memory-mapped weights) apart.
set -u
log=$(mktemp)
"$@" >"$log" 2>&1 &
pid=$!
anon=0 file=0 total=0
start=$(date +%s%N)
while kill -0 "$pid" 2>/dev/null; do
  read -r a f < <(awk '/^RssAnon/ {a = $2} /^RssFile/ {f = $2} END {print a + 0, f + 0}' \
    "/proc/$pid/status" 2>/dev/null || echo "0 0")
  ((a > anon)) && anon=$a
  ((f > file)) && file=$f
  ((a + f > total)) && total=$((a + f))
  sleep 0.05
done
wait "$pid"
rc=$?
end=$(date +%s%N)
tail -n 1 "$log"
rm -f "$log"
echo "exit $rc, $(((end - start) / 1000000)) ms, peak anonymous $((anon / 1024)) MiB," \
  "peak file-mapped $((file / 1024)) MiB, peak total $((total / 1024)) MiB"
exit "$rc"
