#!/usr/bin/env bash
# build.sh: configures (once) and builds the project in build/ with warnings as errors.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ ! -f build/build.ninja ]; then
  meson setup build -Dwerror=true >/dev/null
fi
ninja -C build
