#!/usr/bin/env bash
# The main job: installs what is missing, builds, and runs the DualPipe example.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
build_dir=${BUILD_DIR:-build}
ninja -C "$build_dir"
"$build_dir"/tools/dualpipe-schedule --schedule dualpipe --ranks 8 --microbatches 20 --format grid
