#!/usr/bin/env bash
# run.sh: the forward-and-backward overlap of examples/moe-overlap, measured.
# Runs the example with --steps over a few settings, from pairs whose
# computation exceeds their communication to pairs whose communication
# dominates (the emulated wire's --link-us-per-kib), and prints a markdown
# table per setting:
#
#   step_ms_overlapped / step_ms_sequential  median training step, pairs
#                                    overlapped on two lanes, or run as
#                                    forward then backward on the same lanes
#   compute_us / comm_us             mean busy time per overlapped pair of the
#                                    compute and the communication lane
#   hidden                           comm_hidden_fraction: communication under
#                                    computation, over all overlapped pairs
#   bound                            the most that can hide, min(1, compute/comm)
#   pair_ms measured / predicted     the median pair's span, and the cost
#                                    model's (simulate_order of the pair order
#                                    with each sub-op's measured mean duration)
#   error                            |measured / predicted - 1|
#
# Targets: hidden >= 0.8 where compute >= communication; error <= 0.1.
#
# Every thread of the example is a thread of one process: P x E rank threads
# (compute lanes) plus as many communication-lane workers, which mostly sleep
# in the emulated wire. Keep P x E at most the number of cores, and run on a
# quiet machine: a core taken by another program stretches one member's
# computation, and its peers then wait in the all-to-all, which the lanes
# record as communication time.
#
# Usage: bench/overlap/run.sh [--build DIR] [--steps K] [--raw FILE]
#   --build DIR  meson build directory holding examples/moe-overlap (default: build)
#   --steps K    timed steps per mode and run (default 20)
#   --raw FILE   also keep the JSON lines, one per run
# Exit status: 0 every run succeeded; 1 a run failed; 2 bad arguments.
set -euo pipefail

build=build
steps=20
raw=
while [ $# -gt 0 ]; do
  case $1 in
    --build) build=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --raw) raw=$2; shift 2 ;;
    -h|--help) sed -n '2,38p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
exe=$build/examples/moe-overlap
if [ ! -x "$exe" ]; then
  echo "run.sh: no $exe (meson setup $build; ninja -C $build examples/moe-overlap)" >&2
  exit 2
fi

# name | options. Tokens 128 x hidden 64 (f64): an all-to-all moves about
# 32 KiB per member, so X us/KiB makes each about 32 X us of wire.
settings=(
  "dualpipev P=1 E=2, 2 us/KiB|--schedule dualpipev --ranks 1 --experts 2 --microbatches 8 --link-us-per-kib 2"
  "dualpipev P=1 E=2, 10 us/KiB|--schedule dualpipev --ranks 1 --experts 2 --microbatches 8 --link-us-per-kib 10"
  "dualpipev P=1 E=2, 20 us/KiB|--schedule dualpipev --ranks 1 --experts 2 --microbatches 8 --link-us-per-kib 20"
  "dualpipev P=1 E=2, 40 us/KiB|--schedule dualpipev --ranks 1 --experts 2 --microbatches 8 --link-us-per-kib 40"
  "dualpipev P=1 E=2, 2 layers, 10 us/KiB|--schedule dualpipev --ranks 1 --experts 2 --microbatches 8 --layers 2 --link-us-per-kib 10"
  "dualpipev P=2 E=2, 10 us/KiB|--schedule dualpipev --ranks 2 --experts 2 --microbatches 8 --link-us-per-kib 10"
  "dualpipe P=2 E=2, 10 us/KiB|--schedule dualpipe --ranks 2 --experts 2 --microbatches 8 --link-us-per-kib 10"
)
common="--tokens 128 --hidden 64 --steps $steps"

lines=$(mktemp)
trap 'rm -f "$lines"' EXIT
status=0
for s in "${settings[@]}"; do
  name=${s%%|*}
  opts=${s#*|}
  # shellcheck disable=SC2086
  if out=$("$exe" $opts $common 2>&1); then
    printf '%s\t%s\n' "$name" "$(tail -n 1 <<<"$out")" >>"$lines"
  else
    echo "run.sh: $name failed:" >&2
    tail -n 5 <<<"$out" >&2
    printf '%s\tFAIL\n' "$name" >>"$lines"
    status=1
  fi
done
if [ -n "$raw" ]; then cut -f 2 "$lines" >"$raw"; fi

python3 - "$lines" <<'PY'
import json, sys
print("| setting | step_ms overlapped | step_ms sequential | compute_us / comm_us per pair "
      "| hidden | bound | pair_ms measured | pair_ms predicted | error |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for line in open(sys.argv[1]):
    name, text = line.rstrip("\n").split("\t", 1)
    if text == "FAIL":
        print(f"| {name} | FAIL | | | | | | | |")
        continue
    r = json.loads(text)
    comp, comm = r["pair_compute_ms"] * 1e3, r["pair_communication_ms"] * 1e3
    bound = min(1.0, comp / comm) if comm > 0 else 1.0
    err = abs(r["pair_ms_measured"] / r["pair_ms_predicted"] - 1) if r["pair_ms_predicted"] else float("nan")
    print(f"| {name} | {r['step_ms_overlapped']:.2f} | {r['step_ms_sequential']:.2f} "
          f"| {comp:.0f} / {comm:.0f} | {r['comm_hidden_fraction']:.2f} | {bound:.2f} "
          f"| {r['pair_ms_measured']:.3f} | {r['pair_ms_predicted']:.3f} | {err:.3f} |")
PY
exit $status
