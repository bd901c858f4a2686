#!/bin/sh
# device_bundle.sh: packs the built engine (snapgen, sgcheck) with the Debian 13 libraries and
# loader it runs on into .devbundle/engine.tar.xz, so that another x86-64 Linux machine without
# them (the lent GPU machine, whose CPU has avx512_bf16 and AMX) can run device_checks.sh.
# Run inside the build root, from the repository root, after building: sh tests/bench/device_bundle.sh [BUILD]
set -eu
build=${1:-build}
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/lib" .devbundle
cp "$build/engine/snapgen" "$build/tests/sgcheck" "$stage/bin/"
# every shared library the two programs load, and the loader itself (the other machine's C
# library may be older than the one they were linked against)
ldd "$build/engine/snapgen" "$build/tests/sgcheck" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\/.*ld-linux/ {print $1}' |
    sort -u | while read -r lib; do cp -L "$lib" "$stage/lib/"; done
tar -cJf .devbundle/engine.tar.xz -C "$stage" bin lib
ls -l .devbundle/engine.tar.xz
