#!/usr/bin/env bash
# side_by_side.sh: the reference Python DualPipe / DualPipeV (deepseek-ai/DualPipe,
# torch + gloo, one process per rank) against one of this library's examples,
# train-mlp (its own kernels: OpenBLAS GEMMs, a vectorised GELU) or
# train-torch (the same libtorch kernels as the reference), over our CPU
# transports (threads: one thread per rank, sleeping while it waits, or, as
# threads-spin, polling for up to 50 us first (--spin-us 50); mpi: one process
# per rank, which polls as MPI does), on the CPU, same model, same sizes, same
# dtype, in one invocation.
#
# Model (both sides): per stage Linear(H, 4H, no bias) -> GELU -> Linear(4H, H,
# no bias), MSE loss per micro-batch, deferred weight gradients (W passes), an
# overlapped F&B pair run as F then B. A micro-batch is B rows of H features:
# the reference gets --microbatch-size B --seq 1 (tensors B x 1 x H), ours
# --microbatch-size B. dtype f32 on both sides (the reference harness's
# default; our examples default to f64, so --dtype f32 is passed).
#
# train-torch defers W as the reference does (--weight-gradients store: its
# linear layers queue the weight GEMMs, like the reference's WeightGradStore).
# Its extra side threads-spin-second-pass runs it as threads-spin does but with
# --weight-gradients second_pass (ordinary torch::nn::Linear layers; W walks
# the autograd graph a second time), so the table shows what that generic W
# costs against the stored one, on the transport with the least overhead of
# its own. The spin setting is shared so that the two differ in W alone.
#
# Cases: tiny (H=16, B=1) and moderate (H=256, B=64), each with DualPipe P=4
# N=8, DualPipe P=4 N=20, DualPipeV P=2 N=8, DualPipeV P=4 N=16. Each side of
# each case is run R times (fresh processes each time), each run timing K steps
# with one BLAS/intra-op thread per rank; a run reports the median of its K
# step times, and the table shows the median of those over the R runs.
# Ratios are reference / ours (> 1: ours is faster).
#
# Usage:
#   bench/peer/side_by_side.sh [--example train-mlp|train-torch]
#                              [--reference DIR] [--build DIR] [--reps R] [--steps K]
#                              [--sides reference,threads,threads-spin,mpi]
#                              [--sizes tiny,moderate] [--shapes dualpipe:4:8,...]
#                              [--raw FILE] [--peer-script FILE]
#
#   --example NAME    our side: train-mlp (default) or train-torch
#   --reference DIR   a git directory (bare is fine) of deepseek-ai/DualPipe;
#                     default $DUALPIPE_REFERENCE
#   --build DIR       meson build directory holding examples/NAME (default: build)
#   --reps R          repetitions of each run (default 3, or $REPS)
#   --steps K         timed steps per run (default 10, or $STEPS)
#   --sides LIST      which sides to run: reference, threads, threads-spin, mpi and, for
#                     train-torch only, threads-spin-second-pass (default: all of them
#                     that the example has); a side not run shows "-" in the table
#   --sizes LIST      which sizes to run (default tiny,moderate)
#   --shapes LIST     which schedule:P:N shapes to run, e.g. dualpipev:2:8 to re-run one
#                     disturbed case (default dualpipe:4:8,dualpipe:4:20,dualpipev:2:8,
#                     dualpipev:4:16)
#   --raw FILE        where the raw JSON lines go, one per run, each tagged with
#                     example/case/side/rep/rc (default side_by_side-<UTC time>.jsonl
#                     here for train-mlp, side_by_side-torch-<UTC time>.jsonl for
#                     train-torch)
#   --peer-script F   the reference harness ref_dualpipe_cpu.py (default
#                     $DUALPIPE_PEER_SCRIPT, else bench/peer/ref_dualpipe_cpu.py,
#                     else ../shared/peer/ref_dualpipe_cpu.py beside the checkout)
#
# Needs: Debian's /usr/bin/python3 with python3-torch (and libopenblas0-pthread,
# else torch runs netlib's reference BLAS: the raw lines' "blas" field and the
# table's header say which one ran), git, mpirun (for the mpi side), and a build
# of the example with --transport, --steps and --spin-us (meson setup build;
# ninja -C build examples/train-mlp; train-torch also needs Debian's
# libtorch-dev, found by the torch build option). Examples:
#   DUALPIPE_REFERENCE=/path/to/DualPipe.git bench/peer/side_by_side.sh --reps 3 --steps 10
#   bench/peer/side_by_side.sh --example train-torch --reference /path/to/DualPipe.git
#
# Exit status: 0 every run succeeded (and, where the run says, was correct);
# 1 some run failed (its cell reads FAIL); 2 bad arguments or something missing.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
py=/usr/bin/python3

example=train-mlp
reference=${DUALPIPE_REFERENCE:-}
build=build
reps=${REPS:-3}
steps=${STEPS:-10}
sides=
sizes=tiny,moderate
shapes_given=
raw=
peer=${DUALPIPE_PEER_SCRIPT:-}

die() { echo "side_by_side.sh: $*" >&2; exit 2; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case $1 in
    --example) example=${2:?}; shift 2 ;;
    --reference) reference=${2:?}; shift 2 ;;
    --build) build=${2:?}; shift 2 ;;
    --reps) reps=${2:?}; shift 2 ;;
    --steps) steps=${2:?}; shift 2 ;;
    --sides) sides=${2:?}; shift 2 ;;
    --sizes) sizes=${2:?}; shift 2 ;;
    --shapes) shapes_given=${2:?}; shift 2 ;;
    --raw) raw=${2:?}; shift 2 ;;
    --peer-script) peer=${2:?}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

[[ $reps =~ ^[1-9][0-9]*$ ]] || die "--reps must be a positive integer, got '$reps'"
[[ $steps =~ ^[1-9][0-9]*$ ]] || die "--steps must be a positive integer, got '$steps'"
case $example in
  train-mlp) known=reference,threads,threads-spin,mpi ;;
  train-torch) known=reference,threads,threads-spin,mpi,threads-spin-second-pass ;;
  *) die "unknown example '$example' (train-mlp, train-torch)" ;;
esac
[ -n "$sides" ] || sides=$known
want() { [[ ",$sides," == *",$1,"* ]]; }
for s in ${sides//,/ }; do
  [[ ",$known," == *",$s,"* ]] || die "unknown side '$s' for $example (${known//,/, })"
done
for s in ${sizes//,/ }; do
  case $s in tiny|moderate) ;; *) die "unknown size '$s' (tiny, moderate)" ;; esac
done
# shapes: schedule P N
shapes=("dualpipe 4 8" "dualpipe 4 20" "dualpipev 2 8" "dualpipev 4 16")
if [ -n "$shapes_given" ]; then
  shapes=()
  for s in ${shapes_given//,/ }; do
    [[ $s =~ ^(dualpipe|dualpipev):[1-9][0-9]*:[1-9][0-9]*$ ]] ||
      die "bad shape '$s' (schedule:P:N with schedule dualpipe or dualpipev, e.g. dualpipev:2:8)"
    shapes+=("${s//:/ }")
  done
fi
[ -x "$py" ] || die "$py not found (Debian's python3 with python3-torch is needed)"

# ---- what must exist, checked before anything runs
if want reference; then
  if [ -z "$peer" ]; then
    for c in "$here/ref_dualpipe_cpu.py" "$root/../shared/peer/ref_dualpipe_cpu.py"; do
      [ -f "$c" ] && { peer=$c; break; }
    done
  fi
  [ -f "$peer" ] ||
    die "reference harness ref_dualpipe_cpu.py not found (give --peer-script or DUALPIPE_PEER_SCRIPT)"
  [ -n "$reference" ] ||
    die "no reference: give --reference DIR or DUALPIPE_REFERENCE (a git copy of deepseek-ai/DualPipe)"
  [ -d "$reference" ] || die "reference directory '$reference' does not exist"
  git -C "$reference" rev-parse --verify -q HEAD >/dev/null ||
    die "'$reference' is not a git directory with a HEAD commit (need a git copy of deepseek-ai/DualPipe)"
  git -C "$reference" cat-file -e HEAD:dualpipe/dualpipe.py 2>/dev/null ||
    die "'$reference' has no dualpipe/dualpipe.py at HEAD: not a copy of deepseek-ai/DualPipe"
  "$py" -c 'import torch' 2>/dev/null || die "$py cannot import torch (apt-get install -y python3-torch)"
fi
case $build in /*) ;; *) build=$root/$build ;; esac
exe=$build/examples/$example
if want threads || want threads-spin || want mpi || want threads-spin-second-pass; then
  [ -x "$exe" ] || die "$exe not found: build it (meson setup $build && ninja -C $build examples/$example)"
  help=$("$exe" --help 2>&1 || true)
  opts="--steps --transport --spin-us"
  [ "$example" = train-torch ] && opts="$opts --threads --weight-gradients"
  for opt in $opts; do
    grep -q -- "$opt" <<<"$help" || die "$exe has no $opt option: rebuild it from a tree whose $example has it"
  done
  if want mpi; then
    command -v mpirun >/dev/null || die "mpirun not found (needed for the mpi side; or --sides reference,threads)"
  fi
fi

if [ -z "$raw" ]; then
  raw=side_by_side-$(date -u +%Y%m%dT%H%M%SZ).jsonl
  [ "$example" = train-torch ] && raw=side_by_side-torch-${raw#side_by_side-}
fi
: >"$raw" || die "cannot write $raw"

export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1

# sizes: tiny = H 16, B 1; moderate = H 256, B 64 (a case is a size and a shape)
declare -A hidden=([tiny]=16 [moderate]=256) rows=([tiny]=1 [moderate]=64)
# train-torch sets its intra-op threads itself (at::set_num_threads): one, as
# the reference harness's --threads 1; its W deferral is named, not defaulted.
ours=() second_pass=()
if [ "$example" = train-torch ]; then
  ours=(--threads 1 --weight-gradients store)
  second_pass=(--threads 1 --weight-gradients second_pass)
fi

# Runs one command, keeps the last stdout line that is a JSON object with
# step_ms_median, tags it and appends it to $raw (an error record if none).
record() {  # case side rep cmd...
  local case=$1 side=$2 rep=$3; shift 3
  local rc=0
  "$@" >"$raw.stdout" 2>"$raw.stderr" </dev/null || rc=$?
  EXAMPLE=$example CASE=$case SIDE=$side REP=$rep RC=$rc CMD="$*" "$py" - "$raw" <<'EOF' || true
import json, os, sys
line = None
for text in open(sys.argv[1] + ".stdout", errors="replace").read().splitlines():
    text = text.strip()
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError:
            continue
        if isinstance(obj, dict):
            line = obj
rc = int(os.environ["RC"])
rec = {"example": os.environ["EXAMPLE"], "case": os.environ["CASE"], "side": os.environ["SIDE"], "rep": int(os.environ["REP"]),
       "rc": rc, "command": os.environ["CMD"]}
if line is None or "step_ms_median" not in line or rc != 0 or line.get("correct") is False:
    err = open(sys.argv[1] + ".stderr", errors="replace").read().strip().splitlines()
    rec["ok"] = False
    rec["error"] = (line or {}).get("error") or (err[-1][:300] if err else "no JSON line with step_ms_median")
else:
    rec["ok"] = True
rec["result"] = line
with open(sys.argv[1], "a") as f:
    f.write(json.dumps(rec) + "\n")
print("  %-24s rep %d: %s" % (rec["side"], rec["rep"],
      ("%.3f ms" % line["step_ms_median"]) if rec["ok"] else "FAIL (%s)" % rec["error"]), file=sys.stderr)
EOF
  rm -f "$raw.stdout" "$raw.stderr"
}

for size in ${sizes//,/ }; do
  H=${hidden[$size]} B=${rows[$size]}
  for shape in "${shapes[@]}"; do
    read -r sched P N <<<"$shape"
    case="$size $sched P=$P N=$N"
    echo "$case (hidden $H, $B row(s), f32, $steps steps x $reps reps)" >&2
    for ((r = 1; r <= reps; r++)); do
      # The sides alternate within a repetition, so that drifting load
      # on a shared machine hits all of them alike.
      if want reference; then
        record "$case" reference "$r" "$py" "$peer" --reference "$reference" --schedule "$sched" \
          --ranks "$P" --microbatches "$N" --hidden "$H" --microbatch-size "$B" --seq 1 \
          --steps "$steps" --dtype f32 --threads 1
      fi
      if want threads; then
        record "$case" threads "$r" "$exe" --transport threads --schedule "$sched" --ranks "$P" \
          --microbatches "$N" --hidden "$H" --microbatch-size "$B" --dtype f32 --steps "$steps" \
          "${ours[@]}"
      fi
      if want threads-spin; then
        record "$case" threads-spin "$r" "$exe" --transport threads --spin-us 50 --schedule "$sched" \
          --ranks "$P" --microbatches "$N" --hidden "$H" --microbatch-size "$B" --dtype f32 \
          --steps "$steps" "${ours[@]}"
      fi
      if want mpi; then
        record "$case" mpi "$r" mpirun -np "$P" "$exe" --transport mpi --schedule "$sched" \
          --ranks "$P" --microbatches "$N" --hidden "$H" --microbatch-size "$B" --dtype f32 \
          --steps "$steps" "${ours[@]}"
      fi
      if want threads-spin-second-pass; then
        record "$case" threads-spin-second-pass "$r" "$exe" --transport threads --spin-us 50 \
          --schedule "$sched" --ranks "$P" --microbatches "$N" --hidden "$H" \
          --microbatch-size "$B" --dtype f32 --steps "$steps" "${second_pass[@]}"
      fi
    done
  done
done

# ---- the table
EXAMPLE=$example NPROC=$(getconf _NPROCESSORS_ONLN) LOAD=$(cut -d' ' -f1-3 /proc/loadavg) STEPS=$steps REPS=$reps \
  COMMIT=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown) \
  DIRTY=$(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null | head -c1) \
  "$py" - "$raw" <<'EOF'
import json, os, statistics, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
cases, by = [], {}
for r in recs:
    if r["case"] not in cases:
        cases.append(r["case"])
    by.setdefault((r["case"], r["side"]), []).append(r)

def med(case, side):
    rs = by.get((case, side))
    if not rs:
        return None, "-"
    if not all(r["ok"] for r in rs):
        return None, "FAIL"
    m = statistics.median(r["result"]["step_ms_median"] for r in rs)
    return m, "%.3f" % m if m < 10 else "%.2f" % m if m < 100 else "%.1f" % m

def ratio(a, b):
    return "%.2f" % (a / b) if a is not None and b else "-"

ref = [r["result"] for r in recs if r["side"] == "reference" and r.get("result")]
blas = sorted({x.get("blas", "?") for x in ref})
torch = sorted({x.get("torch_debian") or x.get("torch", "?") for x in ref})
refc = sorted({x.get("ref_commit", "?")[:7] for x in ref})
print()
example = os.environ["EXAMPLE"]
print("CPU, %s cores, load average at the end %s; f32, one BLAS/intra-op thread per rank; "
      "%s timed steps per run, median of %s runs; ours: examples/%s at %s%s"
      % (os.environ["NPROC"], os.environ["LOAD"], os.environ["STEPS"], os.environ["REPS"],
         example, os.environ["COMMIT"], " (+ local changes)" if os.environ["DIRTY"] else ""))
if ref:
    print("reference: deepseek-ai/DualPipe %s, torch %s, BLAS %s"
          % (", ".join(refc), ", ".join(torch), ", ".join(blas)))
print("tiny: hidden 16, 1 row per micro-batch; moderate: hidden 256, 64 rows per micro-batch "
      "(Linear(H, 4H) -> GELU -> Linear(4H, H) per stage)")
if example == "train-torch":
    print("ours: the same torch kernels as the reference; W deferred as its WeightGradStore does "
          "(--weight-gradients store), and, as threads-spin-second-pass, by a second walk of "
          "the autograd graph (--weight-gradients second_pass, --spin-us 50)")
second = example == "train-torch"
print()
print("| case | reference ms | threads ms | threads-spin ms | mpi ms%s "
      "| ref / threads | ref / threads-spin | ref / mpi%s |"
      % (" | threads-spin-second-pass ms" if second else "",
         " | second-pass / threads-spin" if second else ""))
print("|---|" + "---:|" * (9 if second else 7))
bad = False
for c in cases:
    (r, rs), (t, ts), (p, ps), (m, ms), (w, ws) = (
        med(c, side) for side in
        ("reference", "threads", "threads-spin", "mpi", "threads-spin-second-pass"))
    bad |= "FAIL" in (rs, ts, ps, ms, ws)
    if second:
        print("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |"
              % (c, rs, ts, ps, ms, ws, ratio(r, t), ratio(r, p), ratio(r, m), ratio(w, p)))
    else:
        print("| %s | %s | %s | %s | %s | %s | %s | %s |"
              % (c, rs, ts, ps, ms, ratio(r, t), ratio(r, p), ratio(r, m)))
print()
print("raw JSON lines: %s" % sys.argv[1])
sys.exit(1 if bad else 0)
EOF
