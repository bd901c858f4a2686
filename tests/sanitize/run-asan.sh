#!/usr/bin/env bash
# run-asan.sh: builds the engine, C unit tests, sgcheck, snapgen and the cancel test with gcc
# AddressSanitizer + UndefinedBehaviorSanitizer (build-asan/), then runs the unit tests, full and
# cancelled generations with LeakSanitizer on; any sanitizer report fails it. Run it inside the
# build environment. Usage: run-asan.sh [--cancel-runs N] [--full]  (--full: also the reference
# tests test_ops.py and test_models.py with the sanitized sgcheck; minutes on 2 cores).
set -uo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
build=${SG_ASAN_BUILD:-$root/build-asan}
cancel_runs=100
full=0
while [ $# -gt 0 ]; do
  case "$1" in
    --cancel-runs) cancel_runs=$2; shift 2 ;;
    --full) full=1; shift ;;
    *) echo "usage: run-asan.sh [--cancel-runs N] [--full]" >&2; exit 2 ;;
  esac
done
cd "$root"

# UBSan findings must stop the program (by default it prints and goes on). Uninitialised locals
# are filled with a pattern (0xFE bytes), so using one fails the same way every time instead of
# reading whatever an earlier call left on the stack (that hid a free of an uninitialised
# pointer in pipeline.c's load_conditioning from every test but the fuzzer).
sanitize_flags="-fno-sanitize-recover=all -ftrivial-auto-var-init=pattern"
if [ ! -f "$build/build.ninja" ]; then
  meson setup "$build" -Db_sanitize=address,undefined -Dbuildtype=debugoptimized \
    -Dplugin=disabled -Dwerror=true -Dc_args="$sanitize_flags" -Dc_link_args="$sanitize_flags" \
    > "$build.setup.log" 2>&1 || { cat "$build.setup.log"; echo "run-asan: meson setup failed"; exit 1; }
else
  meson configure "$build" -Dc_args="$sanitize_flags" -Dc_link_args="$sanitize_flags" \
    > "$build.setup.log" 2>&1 || { cat "$build.setup.log"; echo "run-asan: meson configure failed"; exit 1; }
fi
ninja -C "$build" -j"${SG_ASAN_JOBS:-2}" engine/snapgen tests/unit-tests tests/sgcheck >"$build/ninja.log" 2>&1 ||
  { tail -40 "$build/ninja.log"; echo "run-asan: build failed"; exit 1; }
# The API test programs link the sanitized libsnapgen exactly as meson links snapgen (its link
# line, read from build.ninja), so this script does not depend on how tests/meson.build lists them.
link_args=$(sed -n '/^build engine\/snapgen:/{n;s/^ LINK_ARGS = //p;}' "$build/build.ninja")
[ -n "$link_args" ] || { echo "run-asan: no link line for engine/snapgen in $build/build.ninja"; exit 1; }
for program in cancel_test api_bad_inputs; do
  # shellcheck disable=SC2086
  (cd "$build" && gcc -std=c11 -D_GNU_SOURCE -O1 -g -Wall -Wextra -Werror \
    -fsanitize=address,undefined $sanitize_flags -I "$root/engine/include" \
    "$root/tests/reliability/$program.c" $link_args -o "$build/$program") ||
    { echo "run-asan: $program.c did not build"; exit 1; }
done

# Suppressions: see tests/sanitize/lsan.supp (each one is documented there).
# allocator_may_return_null=1: the unit tests ask for absurd sizes on purpose, to check the engine
# reports "out of memory" in words; by default ASan would abort on such a request instead.
asan=allocator_may_return_null=1:detect_leaks=1:halt_on_error=1:exitcode=99
asan=$asan:detect_stack_use_after_return=1:strict_string_checks=1:check_initialization_order=1
export ASAN_OPTIONS=$asan
export LSAN_OPTIONS="suppressions=$root/tests/sanitize/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=99"
export OMP_NUM_THREADS=2

logs=$build/sanitize-logs
rm -rf "$logs"
mkdir -p "$logs"
failures=0
# Runs one step: PASS when it exits 0 and its output holds no sanitizer report.
step() {
  local name=$1; shift
  local log=$logs/$name.log
  "$@" > "$log" 2>&1
  local rc=$?
  if [ $rc -eq 0 ] && ! grep -qE "ERROR: (Address|Leak)Sanitizer|runtime error:|SUMMARY: .*Sanitizer" "$log"; then
    echo "PASS $name"
  else
    echo "FAIL $name (exit $rc), log $log:"
    grep -m1 -B2 -A30 -E "ERROR: (Address|Leak)Sanitizer|runtime error:" "$log" || tail -30 "$log"
    failures=$((failures + 1))
  fi
}

step unit-tests "$build/tests/unit-tests"

model=$build/reliability-model
if [ ! -f "$model/model_index.json" ]; then
  PYTHONPATH=weights/recipe python3 weights/recipe/make_random_model.py \
    --unet-config weights/configs/test-unet-tiny.json \
    --decoder-config weights/configs/test-decoder-tiny.json --seed 11 --out "$model" \
    --conditioning "$model/conditioning/default.safetensors" > /dev/null ||
    { echo "FAIL making the tiny model"; exit 1; }
fi
out=$build/sanitize-out
rm -rf "$out"
mkdir -p "$out"
for backend in onednn reference; do
  step "generate-$backend" "$build/engine/snapgen" --model "$model" --output "$out/$backend.png" \
    --width 64 --height 48 --steps 2 --guidance 2.5 --threads 2 --backend "$backend" --quiet
done
# A failing run must clean up too (error paths leak most often).
step "generate-bad-size-is-an-error" bash -c "! '$build/engine/snapgen' --model '$model' \
  --output '$out/x.png' --width 70 --quiet"
step "generate-bad-conditioning-is-an-error" bash -c "! '$build/engine/snapgen' --model '$model' \
  --output '$out/x.png' --width 64 --height 64 --conditioning '$model/unet/config.json' --quiet"
step api-bad-inputs "$build/api_bad_inputs" "$model"
# The runner's bad-input table under the sanitizers: every error path must exit cleanly too.
step bad-inputs env SNAPGEN="$build/engine/snapgen" PYTHONPATH=weights/recipe \
  python3 tests/reliability/test_bad_inputs.py
# Leak check of cancelled generations (and of the full ones around them).
step cancel "$build/cancel_test" "$model" --runs "$cancel_runs" --seed 7
step cancel-reference "$build/cancel_test" "$model" --runs 10 --seed 8 --backend reference --size 32

if [ "$full" = 1 ]; then
  for t in test_ops test_models; do
    step "$t" env SGCHECK="$build/tests/sgcheck" SNAPGEN="$build/engine/snapgen" \
      PYTHONPATH=weights/recipe python3 "tests/ref/$t.py"
  done
fi

if [ "$failures" -gt 0 ]; then echo "run-asan: $failures step(s) failed"; exit 1; fi
echo "run-asan: all steps passed with no sanitizer reports"
