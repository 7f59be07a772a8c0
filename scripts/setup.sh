#!/usr/bin/env bash
# Installs what the build needs from Debian 12's packages, if it is missing,
# then configures the build directory (default: build). CUDA and NCCL are
# used when /usr/local/cuda has them; nothing here installs a GPU toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(g++ meson ninja-build pkg-config catch2 librange-v3-dev libcli11-dev
          nlohmann-json3-dev libbenchmark-dev libopenblas-dev libopenmpi-dev openmpi-bin
          libtorch-dev cmake)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=()
  if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

build_dir=${BUILD_DIR:-build}
if [ ! -f "$build_dir/build.ninja" ]; then
  meson setup "$build_dir" -Dwerror=true "$@"
fi
