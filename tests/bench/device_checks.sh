#!/bin/sh
# device_checks.sh: the engine's checks that need a CPU with bf16 instructions (this machine has
# none), for the lent GPU machine (its host CPU has avx512_bf16 and AMX), from the bundle that
# device_bundle.sh packs: test_ops with its bf16 cases against PyTorch, `snapgen bench` in f32 and
# in bf16 side by side (2 threads, as the target machine), and, given a model folder, one image
# made in f32 and in bf16 with their PSNR.
# Usage, from the repository root: sh tests/bench/device_checks.sh [MODEL_DIR]; results go to
# $OUT (default ./device-out).
set -u
OUT=${OUT:-./device-out}
mkdir -p "$OUT"
root=/tmp/sgbundle
mkdir -p "$root" && tar -xJf .devbundle/engine.tar.xz -C "$root" || exit 1
# the programs run on the loader and libraries they were built with
for program in snapgen sgcheck; do
    printf '#!/bin/sh\nexec %s/lib/ld-linux-x86-64.so.2 --library-path %s/lib %s/bin/%s "$@"\n' \
        "$root" "$root" "$root" "$program" > "$root/$program"
    chmod +x "$root/$program"
done
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
echo "bf16 instructions: $(grep -m1 -o -w 'avx512_bf16\|amx_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')"
status=0
SGCHECK="$root/sgcheck" PYTHONPATH=weights/recipe python3 tests/ref/test_ops.py \
    > "$OUT/test_ops.txt" 2>&1 || status=1
grep -E "^FAIL|^SKIP|test_ops:" "$OUT/test_ops.txt"
grep -A40 "worst relL2" "$OUT/test_ops.txt" | grep -v "test_ops:"
for precision in f32 bf16; do
    flag=$([ "$precision" = bf16 ] && echo --bf16)
    OMP_WAIT_POLICY=passive taskset -c 0,1 "$root/snapgen" bench \
        --unet-config weights/configs/snapgen-unet-full.json \
        --decoder-config weights/configs/snapgen-decoder.json --size 1024 --threads 2 \
        --repeat 2 $flag > "$OUT/bench-$precision.txt" 2>&1 || status=1
    echo "bench $precision:"
    grep -E "^(ceiling|unet step|decoder)" "$OUT/bench-$precision.txt"
done
if [ -n "${1:-}" ]; then
    for precision in f32 bf16; do
        flag=$([ "$precision" = bf16 ] && echo --bf16)
        "$root/snapgen" generate --model "$1" --prompt "a red circle to the left of a blue square" \
            --seed 1 --output "$OUT/$precision.png" --quiet $flag || status=1
    done
    python3 -c "import sys, numpy as np; from PIL import Image
a, b = (np.asarray(Image.open(p).convert('RGB'), dtype=np.float64) for p in sys.argv[1:])
mse = np.mean((a - b) ** 2)
print(f'image f32 vs bf16: PSNR {10 * np.log10(255 ** 2 / mse) if mse else float(\"inf\"):.1f} dB')" \
        "$OUT/f32.png" "$OUT/bf16.png" || status=1
fi
exit $status
