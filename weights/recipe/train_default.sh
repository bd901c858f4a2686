#!/bin/sh
# train_default.sh: runs the whole default-model recipe on a GPU machine and packs what must come back.
# Usage (from the repository root): sh weights/recipe/train_default.sh [extra train_default.py args]
# OUT (default ./sgtrain-out) receives at most 8 files of at most 15 MB: default.tar (or
# default.tar.part-aa, -ab, ... when larger; join with cat), eval.json, eval.md, samples.png,
# log.txt, ckpt.tar (autoencoder checkpoints, teacher weights, stage records, probes). DEVICE,
# THREADS and SECONDS_LIMIT (default cuda, 14, 570) let the same script run a CPU rehearsal.
# Unpack with: cat default.tar* | tar -x -C weights/
set -u
OUT=${OUT:-./sgtrain-out}
WORK=${WORKDIR:-/tmp/sgtrain}
mkdir -p "$OUT"
status=0
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
cp "$WORK/log.txt" "$OUT/log.txt" 2>/dev/null
# A teacher stopped before its budget ends has no teacher_final.pt: its EMA weights alone
# (a quarter of ckpt/teacher.pt) come back as teacher_ema.pt; copied to ckpt/teacher.pt elsewhere,
# they warm-start the teacher there.
if [ ! -f "$WORK/ckpt/teacher_final.pt" ] && [ -f "$WORK/ckpt/teacher.pt" ]; then
    python3 -c "import sys, torch
s = torch.load(sys.argv[1], map_location='cpu', weights_only=True)
torch.save({'ema': s['ema'], 'step': s['step']}, sys.argv[2])" \
        "$WORK/ckpt/teacher.pt" "$WORK/ckpt/teacher_ema.pt"
fi
# the autoencoder's checkpoints, the teacher's weights, the stage records and the teacher's
# probes, to go on elsewhere
(cd "$WORK" && tar -cf "$OUT/ckpt.tar" stages $(ls ckpt/ae.pt ckpt/ae_final.pt \
    ckpt/teacher_final.pt ckpt/teacher_ema.pt probes.jsonl 2>/dev/null)) && split_large "$OUT/ckpt.tar"
# samples.txt (the sheet's labels) is folded into the log to stay within eight files
if [ -f "$OUT/samples.txt" ]; then
    cat "$OUT/samples.txt" >> "$OUT/log.txt" && rm "$OUT/samples.txt"
fi
ls -l "$OUT"
exit $status
