#!/usr/bin/env bash
# The GPU check: on a machine with a GPU (CUDA at /usr/local/cuda), build the
# CUDA backend in release mode, run the GPU unit tests, train-mlp-cuda for
# DualPipe and DualPipeV on the device-local transport, and pipeline-gpu
# (per-op times, DualPipe and 1F1B step times, simulate()'s prediction), then
# print a short summary. Bounded: every phase runs under `timeout`, the whole
# script well under 5 minutes.
#
#   bench/gpu/check.sh --prepare   on the build machine (no GPU needed): copy
#                                  the header-only CLI11 and Catch2 into
#                                  build-gpu/deps, for GPU machines without
#                                  them (carry build-gpu along)
#   bench/gpu/check.sh             on the GPU machine
#
# Meson is used when it is there and finds CLI11; otherwise (the usual case
# on a bare GPU image) the few translation units are compiled directly with
# g++ and nvcc. Logs and the summary go to $OUT when it is set, else to
# build-gpu/logs.
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
deps=$root/build-gpu/deps

if [ "${1:-}" = "--prepare" ]; then
  mkdir -p "$deps/include/catch2"
  cp -r /usr/include/CLI "$deps/include/" || { echo "prepare: CLI11 not found in /usr/include/CLI"; exit 1; }
  cp /usr/include/catch2/catch.hpp "$deps/include/catch2/" || { echo "prepare: Catch2 not found"; exit 1; }
  echo "prepare: $(du -sh "$deps" | cut -f1) of headers in build-gpu/deps; carry build-gpu to the GPU machine"
  exit 0
fi

start=$(date +%s)
cuda=${CUDA_HOME:-/usr/local/cuda}
out=${OUT:-$root/build-gpu/logs}
mkdir -p "$out"
build=$root/build-gpu/release
mkdir -p "$build"
summary=$out/summary.txt
: >"$summary"
note() { echo "$*" | tee -a "$summary"; }
elapsed() { echo $(($(date +%s) - start)); }
export PATH=$cuda/bin:$PATH
export LD_LIBRARY_PATH=$cuda/lib64:$cuda/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}

note "== dualpipe-cpp GPU check ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
if command -v nvidia-smi >/dev/null; then
  note "gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -n 1)"
fi
arch=${GPU_ARCH:-}
if [ -z "$arch" ] && command -v nvidia-smi >/dev/null; then
  cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' .')
  [ -n "$cap" ] && arch=sm_$cap
fi
arch=${arch:-sm_90}
cxx=${CXX:-g++}
note "toolchain: $("$cuda/bin/nvcc" --version 2>&1 | grep -o 'release [0-9.]*' | head -n 1), $($cxx --version 2>&1 | head -n 1), arch $arch"

have_nccl=0
if [ -f "$cuda/include/nccl.h" ] && ls "$cuda"/lib64/libnccl.so* >/dev/null 2>&1; then have_nccl=1; fi

# --- build ---------------------------------------------------------------------
built=""
if [ -z "${DUALPIPE_CHECK_DIRECT:-}" ] && command -v meson >/dev/null && command -v ninja >/dev/null &&
   pkg-config --exists CLI11 2>/dev/null; then
  note "build: meson (release) in build-gpu/meson"
  if timeout 200 meson setup "$root/build-gpu/meson" --buildtype=release -Dtests=true -Dtool=false \
       -Dbench=true -Dcuda=enabled -Dgpu_arch="$arch" >"$out/build.log" 2>&1 &&
     timeout 200 ninja -C "$root/build-gpu/meson" examples/train-mlp-cuda/train-mlp-cuda \
       bench/gpu/pipeline-gpu tests/cuda/test_cuda_gpu_backend >>"$out/build.log" 2>&1; then
    ln -sf "$root/build-gpu/meson/examples/train-mlp-cuda/train-mlp-cuda" "$build/train-mlp-cuda"
    ln -sf "$root/build-gpu/meson/bench/gpu/pipeline-gpu" "$build/pipeline-gpu"
    ln -sf "$root/build-gpu/meson/tests/cuda/test_cuda_gpu_backend" "$build/test_cuda_gpu_backend"
    built=meson
  else
    note "build: meson failed (see build.log); compiling directly"
  fi
fi
if [ -z "$built" ]; then
  includes=(-I"$root/include" -I"$root/examples/train-mlp-cuda" -I"$cuda/include")
  [ -d "$deps/include" ] && includes+=(-I"$deps/include")
  if ! echo '#include <CLI/CLI.hpp>' | $cxx -std=c++20 -x c++ -fsyntax-only "${includes[@]}" - 2>/dev/null; then
    note "build: FAIL: CLI11 headers not found; run 'bench/gpu/check.sh --prepare' on the build machine and carry build-gpu"
    exit 1
  fi
  libs=(-L"$cuda/lib64" -L"$cuda/targets/x86_64-linux/lib" -Wl,-rpath,"$cuda/lib64" -lcublas -lcudart -lpthread)
  nccl_flags=(-DDUALPIPE_HAVE_NCCL=$have_nccl)
  [ "$have_nccl" = 1 ] && libs=(-lnccl "${libs[@]}")
  cxxflags=(-std=c++20 -O2 -DNDEBUG -Wall -Wextra)
  note "build: direct ($cxx -O2, nvcc -O3 -arch=$arch), NCCL: $have_nccl"
  compile() {  # name, command...: one translation unit, its own log, bounded
    local name=$1
    shift
    if timeout 280 "$@" >"$out/build-$name.log" 2>&1; then
      echo "$name: ok"
    else
      echo "$name: FAILED (exit $?; 124 = timed out)"
      tail -n 20 "$out/build-$name.log"
      return 1
    fi
  }
  {
    compile kernels "$cuda/bin/nvcc" -O3 -arch="$arch" -Xcompiler=-fPIC \
      -I"$root/examples/train-mlp-cuda" -c "$root/examples/train-mlp-cuda/kernels.cu" \
      -o "$build/kernels.o" &&
    {
      compile train-mlp-cuda $cxx "${cxxflags[@]}" "${includes[@]}" "${nccl_flags[@]}" \
        "$root/examples/train-mlp-cuda/main.cpp" "$build/kernels.o" "${libs[@]}" \
        -o "$build/train-mlp-cuda" &
      compile pipeline-gpu $cxx "${cxxflags[@]}" "${includes[@]}" \
        "$root/bench/gpu/pipeline_gpu.cpp" "$build/kernels.o" "${libs[@]}" \
        -o "$build/pipeline-gpu" &
      if [ -f "$deps/include/catch2/catch.hpp" ] || [ -f /usr/include/catch2/catch.hpp ]; then
        compile gpu-unit-tests $cxx -std=c++20 -O0 "${includes[@]}" "${nccl_flags[@]}" \
          "$root/tests/cuda/gpu_main.cpp" "$root/tests/cuda/gpu_backend.cpp" "${libs[@]}" \
          -o "$build/test_cuda_gpu_backend" &
      fi
      failed=0
      for job in $(jobs -p); do wait "$job" || failed=1; done
      [ $failed -eq 0 ]
    }
  } >"$out/build.log" 2>&1
  # The example is what the check cannot do without; the others are reported.
  [ -x "$build/train-mlp-cuda" ] && built=direct
fi
if [ -z "$built" ] || [ ! -x "$build/train-mlp-cuda" ]; then
  note "build: FAIL after $(elapsed) s; the end of build.log:"
  tail -n 30 "$out/build.log" | tee -a "$summary"
  exit 1
fi
note "build: ok ($built) in $(elapsed) s"
grep -E "^[a-z-]+: (ok|FAILED)" "$out/build.log" | sed 's/^/  /' | tee -a "$summary"

# --- runs ----------------------------------------------------------------------
status=0
run_phase() {  # name, seconds, command...
  local name=$1 seconds=$2
  shift 2
  local log="$out/$name.log" rc
  timeout "$seconds" "$@" >"$log" 2>&1
  rc=$?
  case $rc in
    0) note "$name: PASS ($(elapsed) s)" ;;
    77) note "$name: SKIPPED ($(tail -n 1 "$log"))" ;;
    124) note "$name: TIMEOUT after $seconds s"; status=1 ;;
    *) note "$name: FAIL (exit $rc)"; status=1 ;;
  esac
  grep -E "^(step|inference|activation|step time|PASS|FAIL)|failed|All tests passed|test cases" "$log" \
    | sed 's/^/  /' | tee -a "$summary"
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 77 ]; then tail -n 15 "$log" | sed 's/^/  | /' | tee -a "$summary"; fi
}

if [ -x "$build/test_cuda_gpu_backend" ]; then
  run_phase gpu-unit-tests 60 "$build/test_cuda_gpu_backend"
else
  note "gpu-unit-tests: NOT BUILT (Catch2 missing, or see build.log)"
fi
run_phase train-mlp-cuda-dualpipe 60 "$build/train-mlp-cuda" --schedule dualpipe --ranks 4 \
  --microbatches 16 --hidden 256 --microbatch-size 64 --steps 3 --transport device-local
run_phase train-mlp-cuda-dualpipev 60 "$build/train-mlp-cuda" --schedule dualpipev --ranks 4 \
  --microbatches 16 --hidden 256 --microbatch-size 64 --steps 3 --transport device-local
if [ -x "$build/pipeline-gpu" ]; then
  run_phase pipeline-gpu 100 "$build/pipeline-gpu" --ranks 8 --microbatches 32 --steps 5 \
    --unit-us 100 --hidden 1024 --microbatch-size 1024
  sed -n '/^device:/,$p' "$out/pipeline-gpu.log" | sed 's/^/  /' | tee -a "$summary"
else
  note "pipeline-gpu: NOT BUILT"
  status=1
fi

note "== done in $(elapsed) s: $([ $status -eq 0 ] && echo ALL PASSED || echo SOME FAILED); logs in $out"
exit $status
