#!/usr/bin/env bash
# run-arm64-tests.sh: cross-builds the engine for arm64 and runs its tests under qemu-aarch64 on a NEON-only and an SVE core.
#
# For each CPU model (ARM64_CPUS, default "cortex-a76 neoverse-v1"): the C unit tests, the
# kernel choice (no oneDNN reference kernel may remain: SNAPGEN_LOG_KERNELS), the op
# reference checks (tests/ref/test_ops.py, SG_TEST_QUICK=1), a UNet-module, small-UNet and decoder
# subset of tests/ref/test_models.py, the tokenizers (tests/tokenizers/run.sh, 500 random strings
# each) and one small generation whose PNG must match the x86 runner's for the same model and seed:
# max |difference| <= 2 levels of 255 and PSNR >= 40 dB. Python and torch run natively; only the
# engine's binaries run under qemu, through small wrapper scripts that pass -cpu.
# Prints one PASS/FAIL line per check (full logs in BUILD/arm64-logs/); exits 1 on any failure.
# Environment: BUILD (default build-arm64), ARM64_CPUS, SNAPGEN (the x86 runner for the reference
# image, default build/engine/snapgen, built if missing).
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
build=${BUILD:-build-arm64}
cpus=${ARM64_CPUS:-cortex-a76 neoverse-v1}
x86_snapgen=${SNAPGEN:-$root/build/engine/snapgen}
logs=$root/$build/arm64-logs
failures=0
checks=0
start_time=$(date +%s)

last_time=$start_time
result() {  # $1: 0 for pass, $2: check name, $3: detail; adds the seconds since the last result
  local now
  now=$(date +%s)
  checks=$((checks + 1))
  if [ "$1" -eq 0 ]; then
    echo "PASS $2${3:+ $3} [$((now - last_time)) s]"
  else
    echo "FAIL $2${3:+ $3} [$((now - last_time)) s]"
    failures=$((failures + 1))
  fi
  last_time=$now
}

# ---- build ----
if [ ! -f "$build/build.ninja" ]; then
  if ! meson setup "$build" --cross-file tests/arm64/aarch64-linux-gnu.ini -Dplugin=disabled \
    -Dwerror=true >"$root/.arm64-setup.log" 2>&1; then
    cat "$root/.arm64-setup.log"
    rm -f "$root/.arm64-setup.log"
    result 1 "arm64 configure" "(meson setup failed)"
    exit 1
  fi
  rm -f "$root/.arm64-setup.log"
fi
mkdir -p "$logs"
targets=(engine/snapgen tests/sgcheck tests/unit-tests)
have_tokenizers=0
if [ -f tests/tokenizers/run.sh ]; then
  targets+=(tests/tokenizers/tokcheck)
  have_tokenizers=1
fi
if ninja -C "$build" -j2 "${targets[@]}" >"$logs/build.log" 2>&1; then
  result 0 "arm64 build" "(aarch64-linux-gnu-gcc, -Werror, OpenBLAS: $(grep -q 'SG_HAVE_BLAS' \
    "$build/build.ninja" && echo yes || echo no))"
else
  tail -30 "$logs/build.log"
  result 1 "arm64 build"
  echo "$((checks - failures)) passed, $failures failed"
  exit 1
fi
if [ ! -x "$x86_snapgen" ]; then
  bash tests/scripts/build.sh >"$logs/x86-build.log" 2>&1 || { tail -30 "$logs/x86-build.log"; }
fi

# Wrapper scripts run an arm64 binary under qemu with one CPU model (the Python tests take a path).
wrap() {  # $1: cpu, $2: binary; prints the wrapper's path
  local dir=$root/$build/qemu-$1 name
  name=$(basename "$2")
  mkdir -p "$dir"
  printf '#!/bin/sh\nexec qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu %s %s "$@"\n' "$1" \
    "$root/$build/$2" >"$dir/$name"
  chmod +x "$dir/$name"
  echo "$dir/$name"
}

# A failed check shows its FAIL lines and the log's tail; a passed one its last line.
summarize_log() {  # $1: log file
  grep -E '^FAIL' "$1" | head -20
  grep -qE '^FAIL' "$1" || tail -5 "$1"
}

export PYTHONPATH=$root/weights/recipe
model=$root/$build/e2e-model
rm -rf "$model"
python3 weights/recipe/make_random_model.py \
  --unet-config weights/configs/test-unet-tiny.json \
  --decoder-config weights/configs/test-decoder-tiny.json \
  --scheduler-config weights/configs/scheduler.json --out "$model" --seed 11 \
  --conditioning "$model/conditioning/default.safetensors" >"$logs/e2e-model.log" 2>&1 ||
  tail -5 "$logs/e2e-model.log"
generate_args=(generate --model "$model" --seed 7 --steps 2 --guidance 3 --width 64 --height 64
  --threads 1 --quiet)
x86_png=$root/$build/e2e-x86.png
rm -f "$x86_png"
"$x86_snapgen" "${generate_args[@]}" --output "$x86_png" >"$logs/e2e-x86.log" 2>&1
status=$?
[ $status -ne 0 ] && tail -5 "$logs/e2e-x86.log"
result $status "x86 reference image" "($x86_snapgen)"

for cpu in $cpus; do
  tag="[$cpu]"
  sgcheck=$(wrap "$cpu" tests/sgcheck)
  snapgen=$(wrap "$cpu" engine/snapgen)

  log=$logs/unit-$cpu.log
  "$(wrap "$cpu" tests/unit-tests)" >"$log" 2>&1
  status=$?
  [ $status -ne 0 ] && summarize_log "$log"
  result $status "unit tests $tag" "($(tail -1 "$log"))"

  # Which kernel each convolution, matmul, activation, binary op and softmax of a small UNet and
  # decoder runs: none may be oneDNN's reference kernel (SNAPGEN_LOG_KERNELS prints one line per
  # distinct op).
  log=$logs/kernels-$cpu.log
  SNAPGEN_LOG_KERNELS=1 "$snapgen" bench --unet-config weights/configs/test-unet-tiny.json \
    --decoder-config weights/configs/test-decoder-tiny.json --size 64 --context-tokens 8 \
    --threads 1 --no-ceiling >"$log" 2>&1
  status=$?
  echo "  kernels $tag (count, op, implementation):"
  grep '^snapgen kernel:' "$log" | sed -E 's/^snapgen kernel: ([a-z0-9_]+( qk| pv)?) [^:]*: /\1: /' |
    sort | uniq -c | sort -rn | sed 's/^/  /'
  slow=$(grep -c '(reference kernel)' "$log")
  [ "$(grep -c '^snapgen kernel:' "$log")" -gt 0 ] || status=1
  [ "$slow" -eq 0 ] || status=1
  result $status "no oneDNN reference kernels on the hot path $tag" \
    "($slow ops on a reference kernel)"

  log=$logs/test_ops-$cpu.log
  SG_TEST_QUICK=1 SGCHECK=$sgcheck python3 tests/ref/test_ops.py >"$log" 2>&1
  status=$?
  [ $status -ne 0 ] && summarize_log "$log"
  result $status "test_ops $tag" "($(tail -1 "$log"))"

  if [ -f tests/ref/test_models.py ]; then
    for name in resblock-separable transformer-self-cross-gqa unet-tiny-no-pooled \
      decoder-separable; do
      log=$logs/test_models-$name-$cpu.log
      SGCHECK=$sgcheck python3 tests/ref/test_models.py "$name" >"$log" 2>&1
      status=$?
      [ $status -ne 0 ] && summarize_log "$log"
      passed=$(grep -c '^PASS' "$log")
      [ "$passed" -gt 0 ] || status=1
      result $status "test_models $name $tag" "($passed checks passed)"
    done
  else
    result 1 "test_models $tag" "(tests/ref/test_models.py is missing)"
  fi

  if [ $have_tokenizers -eq 1 ]; then
    log=$logs/tokenizers-$cpu.log
    bash tests/tokenizers/run.sh "$(wrap "$cpu" tests/tokenizers/tokcheck)" \
      "$root/$build/tokenizers-npm" 500 >"$log" 2>&1
    status=$?
    [ $status -ne 0 ] && summarize_log "$log"
    result $status "tokenizers $tag" "($(tail -1 "$log"))"
  fi

  log=$logs/e2e-$cpu.log
  png=$root/$build/e2e-$cpu.png
  rm -f "$png"
  "$snapgen" "${generate_args[@]}" --output "$png" >"$log" 2>&1
  status=$?
  detail="the arm64 runner failed: $(tail -1 "$log")"
  if [ $status -eq 0 ]; then
    detail=$(python3 tests/arm64/compare_png.py "$x86_png" "$png" 2 40 2>&1)
    status=$?
  fi
  result $status "image equals x86 $tag" "(64x64, 2 steps, guidance 3, seed 7: $detail)"
done

echo "arm64: $((checks - failures)) passed, $failures failed in $(($(date +%s) - start_time)) s"
[ $failures -eq 0 ]
