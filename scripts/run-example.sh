#!/usr/bin/env bash
# The main job: installs what is missing, builds, and runs the DualPipe example:
# one training and one inference step of a small MLP through DualPipe on 4 CPU
# threads (20 micro-batches), checked against the un-pipelined model. Extra
# arguments go to the example (e.g. --schedule dualpipev --dtype f32).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
build_dir=${BUILD_DIR:-build}
ninja -C "$build_dir" examples/train-mlp
"$build_dir"/examples/train-mlp "$@"
