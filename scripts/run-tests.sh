#!/usr/bin/env bash
# The whole test suite: installs what is missing, builds, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
build_dir=${BUILD_DIR:-build}
ninja -C "$build_dir"
meson test -C "$build_dir" --print-errorlogs --num-processes "$(nproc)" "$@"
