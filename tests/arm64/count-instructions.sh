#!/usr/bin/env bash
# count-instructions.sh: guest instructions per UNet step under qemu-aarch64, oneDNN alone vs with the engine's fallback kernels.
#
# Debian 13's qemu-user is a static build without TCG plugin support (no -plugin option, and no
# qemu package ships libinsn.so), so this counts from qemu's own log: `-d in_asm,exec,nochain`
# prints every translated block's instructions once and a line for every block executed (nochain
# sends every block through the logging dispatcher); insn-count.c sums them. The bench runs two
# UNet forwards on one thread; the count is the second (steady-state) forward: from
# sg_arena_settle (called after the first) to compare_doubles (the qsort after the loop), which
# adds a clock read and the arena settling (well under 10^4 instructions).
#
# Environment: CPU (default cortex-a76), SIZE in pixels (default 64: latent 8x8), UNET_CONFIG
# (default weights/configs/test-unet-tiny.json), TOKENS (default 8), MODES (SNAPGEN_FALLBACK values,
# default "never auto": oneDNN alone, then OpenBLAS and the engine's loops where oneDNN has only
# reference kernels), CORETYPES (OPENBLAS_CORETYPE values for the auto mode, default: none, i.e.
# OpenBLAS's own detection), BUILD (default build-arm64). Slow: about 3 minutes per mode here.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${BUILD:-build-arm64}
cpu=${CPU:-cortex-a76}
size=${SIZE:-64}
config=${UNET_CONFIG:-weights/configs/test-unet-tiny.json}
tokens=${TOKENS:-8}
modes=${MODES:-never auto}
coretypes=${CORETYPES:-}

if [ ! -f "$build/build.ninja" ]; then
  meson setup "$build" --cross-file tests/arm64/aarch64-linux-gnu.ini -Dplugin=disabled >/dev/null
fi
ninja -C "$build" engine/snapgen >/dev/null
counter=$build/insn-count
if [ ! -x "$counter" ] || [ tests/arm64/insn-count.c -nt "$counter" ]; then
  cc -std=c11 -O2 -Wall -Wextra -o "$counter" tests/arm64/insn-count.c \
    $(pkg-config --cflags --libs glib-2.0)
fi

# $1: SNAPGEN_FALLBACK, $2: OPENBLAS_CORETYPE or empty. Prints the window count.
count_step() {
  local extra=()
  [ -n "$2" ] && extra=(-E "OPENBLAS_CORETYPE=$2")
  qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu "$cpu" -E "SNAPGEN_FALLBACK=$1" -E OMP_NUM_THREADS=1 \
    "${extra[@]}" -d in_asm,exec,nochain -D /dev/fd/3 \
    "$build/engine/snapgen" bench --unet-config "$config" --size "$size" --context-tokens "$tokens" \
    --threads 1 --repeat 2 3>&1 >/dev/null 2>&1 |
    "$counter" sg_arena_settle compare_doubles | sed -n 's/^window \([0-9]*\)$/\1/p'
}

latent=$((size / 8))
echo "instructions per UNet step: $(basename "$config"), latent ${latent}x${latent}, $tokens tokens," \
  "1 thread, qemu-aarch64 -cpu $cpu"
runs=()
for mode in $modes; do
  runs+=("$mode:")
  if [ "$mode" = auto ]; then for c in $coretypes; do runs+=("auto:$c"); done; fi
done
status=0
for run in "${runs[@]}"; do
  mode=${run%%:*} coretype=${run#*:}
  start=$(date +%s)
  n=$(count_step "$mode" "$coretype")
  label="SNAPGEN_FALLBACK=$mode${coretype:+ OPENBLAS_CORETYPE=$coretype}"
  if [ -z "$n" ]; then
    echo "FAIL $label: no complete step window in the qemu log"
    status=1
    continue
  fi
  printf '%-48s %14s instructions  (%d s)\n' "$label" "$n" $(($(date +%s) - start))
done
exit $status
