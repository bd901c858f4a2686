#!/usr/bin/env bash
# Sets up the build environment once (Debian 13 natively, or a reused Debian 13 build root on
# Debian 12) and runs one project command in it: `generate ...` or `test`.
set -euo pipefail

usage() {
  cat <<'TXT'
usage: snapgen-env.sh generate [snapgen options]   build, then make an image with the default model
       snapgen-env.sh test                         build, then run the whole test suite
       snapgen-env.sh shell [command...]           a shell (or one command) in the build environment
Environment: SNAPGEN_BUILDROOT  where the Debian 13 build root lives on a Debian 12 host
             (default /var/lib/snapgen/trixie-root); it is made once and reused.
TXT
}

[ $# -ge 1 ] || { usage >&2; exit 2; }
action=$1; shift
case "$action" in generate|test|shell|inside) ;; -h|--help) usage; exit 0 ;; *) usage >&2; exit 2 ;; esac

src=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
root=${SNAPGEN_BUILDROOT:-/var/lib/snapgen/trixie-root}

packages=(build-essential meson ninja-build pkgconf gettext libgimp-3.0-dev gimp libdnnl-dev
  libpng-dev libjson-glib-dev xvfb xauth python3 python3-numpy python3-pil python3-torch
  libopenblas0-openmp crossbuild-essential-arm64 qemu-user pkgconf:arm64 libdnnl3.6:arm64
  clang libclang-rt-dev valgrind xdotool imagemagick
  libglib2.0-dev:arm64 libjson-glib-dev:arm64 libpng-dev:arm64 libopenblas-openmp-dev:arm64
  libopenblas-openmp-dev nodejs npm fonts-nanum locales)

# Runs inside the Debian 13 environment: build, then the requested action.
run_inside() {
  local what=$1; shift
  cd "$src"
  case "$what" in
    generate) exec bash tests/scripts/generate.sh "$@" ;;
    test) exec bash tests/scripts/run-all.sh "$@" ;;
    shell) if [ $# -gt 0 ]; then exec bash -c "$*"; else exec bash; fi ;;
  esac
}

install_missing() {  # $@: apt-get prefix (empty, or chroot ROOT)
  local missing=()
  for p in "${packages[@]}"; do
    "$@" dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "snapgen-env: installing ${#missing[@]} packages: ${missing[*]}" >&2
  "$@" dpkg --add-architecture arm64
  "$@" env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
  "$@" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
}

if [ "$action" = inside ]; then run_inside "$@"; fi

. /etc/os-release
if [ "${VERSION_CODENAME:-}" != bookworm ]; then
  # Debian 13 or later: the packages install natively, no build root.
  if [ "$(id -u)" = 0 ]; then install_missing; fi
  run_inside "$action" "$@"
fi

[ "$(id -u)" = 0 ] || { echo "snapgen-env: on Debian 12 this needs root (it manages a build root in $root)" >&2; exit 2; }

if [ ! -x "$root/usr/bin/apt-get" ] || [ ! -f "$root/.snapgen-bootstrapped" ]; then
  command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >&2
  echo "snapgen-env: creating the Debian 13 build root in $root (once)" >&2
  rm -rf "$root"; mkdir -p "$root"
  debootstrap --variant=minbase trixie "$root" http://deb.debian.org/debian >&2
  printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"; chmod +x "$root/usr/sbin/policy-rc.d"
  touch "$root/.snapgen-bootstrapped"
fi
cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
# npm in the root must trust the same certificate authorities as the host (a proxy may add one).
mkdir -p "$root/etc/ssl/certs"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/snapgen-host-ca.crt" 2>/dev/null || true

# Mounts live in a private mount namespace, so they vanish with this process and concurrent runs
# (a developer's tree and a CI clone) do not disturb each other.
if [ -z "${SNAPGEN_IN_NAMESPACE:-}" ]; then
  SNAPGEN_IN_NAMESPACE=1 exec unshare --mount --propagation private bash "${BASH_SOURCE[0]}" "$action" "$@"
fi
mount -t proc proc "$root/proc"
for d in /sys /dev; do mount --rbind "$d" "$root$d"; done
mount -t tmpfs tmpfs "$root/dev/shm"
mkdir -p "$root$src"
mount --bind "$src" "$root$src"  # same path inside and out, so build folders stay valid in both
mkdir -p "$root/tmp"; chmod 1777 "$root/tmp"

install_missing chroot "$root"
exec chroot "$root" env -i HOME=/root LANG=C.UTF-8 TERM="${TERM:-dumb}" CI="${CI:-}" \
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  SNAPGEN_THREADS="${SNAPGEN_THREADS:-}" \
  bash "$src/engine/tools/snapgen-env.sh" inside "$action" "$@"
