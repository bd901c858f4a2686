#!/usr/bin/env bash
# run-fuzz.sh: builds the libFuzzer targets (clang, ASan + UBSan, reference backend, no oneDNN or
# OpenMP) and runs each for a bounded time; prints executions, exec/s and crashes per target and
# exits nonzero on any crash or build failure. Usage: run-fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
# Targets: safetensors config prompt prompt_text clip gemma (default: all). Run it inside the build
# environment (engine/tools/snapgen-env.sh shell ...). Environment:
#   SG_FUZZ_BUILD  build and work folder (default build-fuzz/ in the repository)
#   SG_FUZZ_CLIP_DIR, SG_FUZZ_GEMMA_PATH  real tokenizer files for the prompt-text modes
#                  (default: the small ones in tests/fuzz/tokenizers/)
#   SG_FUZZ_JOBS   parallel compiles (default 2)
#   SG_FUZZ_ARGS   extra libFuzzer arguments (e.g. "-max_len=65536")
set -uo pipefail

seconds=${1:-20}
shift $(( $# > 0 ? 1 : 0 ))
root=${SG_FUZZ_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
build=${SG_FUZZ_BUILD:-$root/build-fuzz}
jobs=${SG_FUZZ_JOBS:-2}
all_targets=(safetensors config prompt prompt_text clip gemma)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all_targets[@]}")

[[ "$seconds" =~ ^[0-9]+$ ]] && [ "$seconds" -gt 0 ] || { echo "run-fuzz: seconds must be a whole number > 0" >&2; exit 2; }
command -v clang >/dev/null || { echo "run-fuzz: clang is missing (apt-get install clang libclang-rt-dev)" >&2; exit 2; }

# Every engine source but the oneDNN and BLAS backends goes into one archive; the linker takes
# only the objects a target uses. A source that does not compile is reported and left out (it
# fails the run only if a target needs it).
engine_sources=()
for src in "$root"/engine/src/*.c; do
  name=$(basename "$src" .c)
  case "$name" in ops_dnnl|ops_dnnl_check|ops_blas) ;; *) engine_sources+=("$name") ;; esac
done
# -ftrivial-auto-var-init=pattern: an uninitialised local holds 0xFE bytes, so using one fails
# at once instead of depending on what an earlier input left on the stack.
cflags=(-std=c11 -D_GNU_SOURCE -g -O1 -fno-omit-frame-pointer -Wall -Wextra
        -Wno-source-uses-openmp -fno-sanitize-recover=all -ftrivial-auto-var-init=pattern
        -I"$root/engine/include" -I"$root/engine/src" -I"$root/tests/fuzz"
        $(pkg-config --cflags glib-2.0 json-glib-1.0 libpng))
libs=($(pkg-config --libs glib-2.0 json-glib-1.0 libpng) -lm -lpthread)
instrument=(-fsanitize=fuzzer-no-link,address,undefined)

mkdir -p "$build/obj" "$build/work" "$build/artifacts" "$build/logs"

# The math kernels get ASan but not UBSan, at -O2: UBSan's checks in their inner loops made the
# prompt targets 15 times slower. Their shapes come from the model, not the fuzz input, and the
# sanitizer suite (tests/sanitize/run-asan.sh) runs them under UBSan.
fast_instrument=(-O2 -fsanitize=fuzzer-no-link,address)

# Compiles src to obj when obj is missing or older than src or a header it includes (-MMD).
compile() {
  local src=$1 obj=$2
  local flags=("${instrument[@]}")
  case "$(basename "$src")" in ops_ref.c|ops_fast.c) flags=("${fast_instrument[@]}") ;; esac
  if [ -f "$obj" ] && [ -f "$obj.d" ]; then
    local stale=0 dep
    for dep in $(sed -e 's/^[^:]*://' -e 's/\\$//' "$obj.d"); do
      [ "$dep" -nt "$obj" ] && { stale=1; break; }
    done
    [ "$stale" = 0 ] && return 0
  fi
  clang "${cflags[@]}" "${flags[@]}" -MMD -MF "$obj.d" -c "$src" -o "$obj"
}

echo "run-fuzz: building in $build"
# Objects built with other flags (an older version of this script) are rebuilt.
flags_now="${cflags[*]} | ${instrument[*]} | ${fast_instrument[*]}"
if [ "$(cat "$build/obj/flags" 2>/dev/null)" != "$flags_now" ]; then
  rm -f "$build"/obj/*.o "$build"/obj/*.d
  echo "$flags_now" > "$build/obj/flags"
fi
build_failed=()
objects=()
pids=()
for name in "${engine_sources[@]}" dnnl_stub; do
  src=$root/engine/src/$name.c
  [ "$name" = dnnl_stub ] && src=$root/tests/fuzz/$name.c
  [ -f "$src" ] || continue
  ( compile "$src" "$build/obj/$name.o" > "$build/logs/build-$name.log" 2>&1
    echo $? > "$build/logs/build-$name.rc" ) &
  pids+=($!)
  objects+=("$name")
  if [ ${#pids[@]} -ge "$jobs" ]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
done
wait
built=()
for name in "${objects[@]}"; do
  if [ "$(cat "$build/logs/build-$name.rc")" = 0 ]; then
    built+=("$build/obj/$name.o")
  else
    echo "run-fuzz: $name.c did not compile:"; sed 's/^/    /' "$build/logs/build-$name.log" | head -20
    rm -f "$build/obj/$name.o"
  fi
  grep -q "warning" "$build/logs/build-$name.log" && sed 's/^/    /' "$build/logs/build-$name.log" | head -20
done
rm -f "$build/libsg-fuzz.a"
ar rcs "$build/libsg-fuzz.a" "${built[@]}"

# The prompt targets need tiny model folders (made once with the PyTorch recipe): `prompt` one
# with a fixed conditioning, `prompt_text` one with small text encoders (make_text_model.py).
model=$build/tiny-model
text_model=$build/text-model
for t in "${targets[@]}"; do
  if [ "$t" = prompt ] && [ ! -f "$model/model_index.json" ]; then
    rm -rf "$model.tmp"
    PYTHONPATH="$root/weights/recipe" python3 "$root/weights/recipe/make_random_model.py" \
      --unet-config "$root/tests/fuzz/model/unet.json" \
      --decoder-config "$root/tests/fuzz/model/decoder.json" --seed 7 \
      --out "$model.tmp" --conditioning "$model.tmp/conditioning/default.safetensors" >/dev/null &&
      rm -rf "$model" && mv "$model.tmp" "$model" || echo "run-fuzz: could not make the tiny model"
  fi
  if [ "$t" = prompt_text ] && [ ! -f "$text_model/model_index.json" ]; then
    rm -rf "$text_model.tmp"
    PYTHONPATH="$root/weights/recipe" python3 "$root/tests/fuzz/make_text_model.py" \
      "$text_model.tmp" >/dev/null && rm -rf "$text_model" && mv "$text_model.tmp" "$text_model" ||
      echo "run-fuzz: could not make the text model"
  fi
done

# Set here, not inherited: meson test puts its own ASAN_OPTIONS in the environment.
export ASAN_OPTIONS=detect_leaks=1:symbolize=1:allocator_may_return_null=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
for symbolizer in /usr/bin/llvm-symbolizer /usr/lib/llvm-*/bin/llvm-symbolizer; do
  [ -x "$symbolizer" ] && export ASAN_SYMBOLIZER_PATH=$symbolizer && break
done
# The tokenizer targets use the small committed tokenizers unless pointed at real ones.
export SG_FUZZ_CLIP_DIR=${SG_FUZZ_CLIP_DIR:-$root/tests/fuzz/tokenizers/clip}
export SG_FUZZ_GEMMA_PATH=${SG_FUZZ_GEMMA_PATH:-$root/tests/fuzz/tokenizers/gemma/tokenizer.json}
export SG_FUZZ_CLIP_FILES=$root/tests/fuzz/tokenizers/clip

failures=0
printf '%-12s %8s %12s %10s %8s  %s\n' target seconds executions exec/s crashes note
for t in "${targets[@]}"; do
  harness=$t
  export SG_FUZZ_MODEL=$model
  if [ "$t" = prompt_text ]; then harness=prompt; export SG_FUZZ_MODEL=$text_model; fi
  exe=$build/fuzz_$t
  src=$root/tests/fuzz/fuzz_$harness.c
  if [ ! -f "$src" ]; then
    printf '%-12s %8s %12s %10s %8s  %s\n' "$t" - - - - "FAILED: no $src"; failures=$((failures + 1)); continue
  fi
  if ! clang "${cflags[@]}" -fsanitize=fuzzer,address,undefined "$src" "$build/libsg-fuzz.a" \
      "${libs[@]}" -o "$exe" > "$build/logs/link-$t.log" 2>&1; then
    printf '%-12s %8s %12s %10s %8s  %s\n' "$t" - - - - "FAILED to build: see below"
    sed 's/^/    /' "$build/logs/link-$t.log" | head -30
    failures=$((failures + 1)); continue
  fi
  grep -q warning "$build/logs/link-$t.log" && sed 's/^/    /' "$build/logs/link-$t.log" | head -20
  work=$build/work/$t
  mkdir -p "$work"
  # Findings are crash-, leak-, timeout- and oom- files; slow-unit- files (over 10 s) are notes.
  before=$(ls "$build/artifacts" | grep -cE "^$t-(crash|leak|timeout|oom)-" || true)
  log=$build/logs/run-$t.log
  dict=()
  [ -f "$root/tests/fuzz/$harness.dict" ] && dict=(-dict="$root/tests/fuzz/$harness.dict")
  [ "$t" = prompt_text ] && dict=(-dict="$root/tests/fuzz/clip.dict")
  # shellcheck disable=SC2086
  nice -n 10 "$exe" "${dict[@]}" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=30 -print_final_stats=1 \
    -artifact_prefix="$build/artifacts/$t-" ${SG_FUZZ_ARGS:-} "$work" "$root/tests/fuzz/corpus/$t" \
    > "$log" 2>&1
  rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  after=$(ls "$build/artifacts" | grep -cE "^$t-(crash|leak|timeout|oom)-" || true)
  crashes=$((after - before))
  note=ok
  if [ "$rc" -ne 0 ] || [ "$crashes" -gt 0 ]; then
    [ "$crashes" -gt 0 ] || crashes=1
    note="FAILED (exit $rc): $log"
    failures=$((failures + 1))
  fi
  printf '%-12s %8s %12s %10s %8s  %s\n' "$t" "$seconds" "${execs:-?}" "${rate:-?}" "$crashes" "$note"
  if [ "$note" != ok ]; then
    grep -m1 -A25 -E "ERROR: |runtime error|invariant broken|Test unit written" "$log" | sed 's/^/    /'
  fi
done
rm -rf /dev/shm/sg-fuzz-* 2>/dev/null
if [ "$failures" -gt 0 ]; then echo "run-fuzz: $failures target(s) failed"; exit 1; fi
echo "run-fuzz: all targets ran without crashes"
