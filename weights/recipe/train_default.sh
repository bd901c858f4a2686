#!/bin/sh
# train_default.sh: runs the whole default-model recipe on a GPU machine and packs what must come back.
# Usage (from the repository root): sh weights/recipe/train_default.sh [extra train_default.py args]
# OUT (default ./sgtrain-out) receives at most 8 files of at most 15 MB: default.tar (or
# default.tar.part-aa, -ab, ... when larger; join with cat), eval.json, eval.md, samples.png,
# log.txt, ckpt.tar (stage records, probes, and the weights this run made: see below). DEVICE,
# THREADS and SECONDS_LIMIT (default cuda, 14, 570) let the same script run a CPU rehearsal.
# Unpack with: cat default.tar* | tar -x -C weights/
set -u
OUT=${OUT:-./sgtrain-out}
WORK=${WORKDIR:-/tmp/sgtrain}
mkdir -p "$OUT" "$WORK"
status=0
# weights older than this stamp were there before (carried in): they do not go back
STAMP="$WORK/.invocation-start"
touch "$STAMP"
# The device tool stops a command at 600 s: stop the trainer at 570 s (it normally needs about
# 480) so the packing below always runs. Finished stages are kept in $WORK: running this script
# again on the same machine resumes (e.g. the eval stage alone).
timeout -k 10 -s INT "${SECONDS_LIMIT:-570}" python3 weights/recipe/train_default.py \
    --device "${DEVICE:-cuda}" --workdir "$WORK" --out "$OUT/default" --threads "${THREADS:-14}" \
    "$@" || status=$?
# Files come back at most 16 MiB each: a larger tar goes in parts (join them with cat).
split_large() {
    if [ "$(wc -c < "$1")" -gt 15000000 ]; then
        split -b 15000000 -a 2 "$1" "$1.part-" && rm "$1"
    fi
}
if [ -d "$OUT/default" ]; then
    tar -cf "$OUT/default.tar" -C "$OUT" default && rm -rf "$OUT/default"
    split_large "$OUT/default.tar"
fi
# An unfinished teacher or students stage brings back its EMA weights alone (a quarter of its
# checkpoint) as teacher_ema.pt / students_ema.pt; copied to ckpt/teacher.pt / ckpt/students.pt
# elsewhere, they warm-start the stage there. A finished stage's stale EMA file (from an earlier
# invocation on the same machine) is removed: it must not take the final weights' place.
ema_only() {
    python3 -c "import sys, torch
s = torch.load(sys.argv[1], map_location='cpu', weights_only=True)
torch.save({'ema': s['ema'], 'step': s['step']}, sys.argv[2])" "$WORK/ckpt/$1" "$WORK/ckpt/$2"
}
for stage in teacher students; do
    if [ -f "$WORK/ckpt/${stage}_final.pt" ]; then
        rm -f "$WORK/ckpt/${stage}_ema.pt"
    elif [ -f "$WORK/ckpt/$stage.pt" ] && [ "$WORK/ckpt/$stage.pt" -nt "$STAMP" ]; then
        ema_only "$stage.pt" "${stage}_ema.pt"
    fi
done
# ckpt.tar: the stage records and probes, then the weights this invocation made or changed
# (files carried in unchanged stay out), most needed first, as long as everything under $OUT
# stays within what comes back (64 MiB, 8 files): what does not fit is named in the log.
room=$((60000000 - $(cat "$OUT"/* 2>/dev/null | wc -c)))
packed="stages"
[ -f "$WORK/probes.jsonl" ] && packed="$packed probes.jsonl"
for name in teacher_final teacher_ema students_final students_ema adversarial_final ae_final ae; do
    file="$WORK/ckpt/$name.pt"
    [ -f "$file" ] && [ "$file" -nt "$STAMP" ] || continue
    size=$(wc -c < "$file")
    if [ "$size" -le "$room" ]; then
        packed="$packed ckpt/$name.pt"
        room=$((room - size))
    else
        echo "train_default.sh: ckpt/$name.pt ($size bytes) left out: no room" >> "$WORK/log.txt"
    fi
done
(cd "$WORK" && tar -cf "$OUT/ckpt.tar" $packed) && split_large "$OUT/ckpt.tar"
cp "$WORK/log.txt" "$OUT/log.txt" 2>/dev/null
# samples.txt (the sheet's labels) is folded into the log to stay within eight files
if [ -f "$OUT/samples.txt" ]; then
    cat "$OUT/samples.txt" >> "$OUT/log.txt" && rm "$OUT/samples.txt"
fi
ls -l "$OUT"
exit $status
