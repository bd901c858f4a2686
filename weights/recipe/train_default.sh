#!/bin/sh
# train_default.sh: runs the whole default-model recipe on a GPU machine and packs what must come back.
# Usage (from the repository root): sh weights/recipe/train_default.sh [extra train_default.py args]
# OUT (default ./sgtrain-out) receives at most 8 files of at most 15 MB: default.tar (or
# default.tar.part-aa, -ab, ... when larger; join with cat), eval.json, eval.md, samples.png,
# log.txt. Unpack with: cat default.tar* | tar -x -C weights/
set -u
OUT=${OUT:-./sgtrain-out}
WORK=${WORKDIR:-/tmp/sgtrain}
mkdir -p "$OUT"
status=0
# The device tool stops a command at 600 s: stop the trainer at 570 s (it normally needs about
# 480) so the packing below always runs. Finished stages are kept in $WORK: running this script
# again on the same machine resumes (e.g. the eval stage alone).
timeout -k 10 -s INT 570 python3 weights/recipe/train_default.py --device cuda --workdir "$WORK" \
    --out "$OUT/default" --threads 14 "$@" || status=$?
if [ -d "$OUT/default" ]; then
    tar -cf "$OUT/default.tar" -C "$OUT" default && rm -rf "$OUT/default"
    size=$(wc -c < "$OUT/default.tar")
    if [ "$size" -gt 15000000 ]; then
        split -b 15000000 -a 2 "$OUT/default.tar" "$OUT/default.tar.part-" && rm "$OUT/default.tar"
    fi
fi
cp "$WORK/log.txt" "$OUT/log.txt" 2>/dev/null
# samples.txt (the sheet's labels) is folded into the log to stay within eight files
if [ -f "$OUT/samples.txt" ]; then
    cat "$OUT/samples.txt" >> "$OUT/log.txt" && rm "$OUT/samples.txt"
fi
ls -l "$OUT"
exit $status
