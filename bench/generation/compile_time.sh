#!/usr/bin/env bash
# Compile-time cost of a constexpr DualPipe table: compiles one translation
# unit holding `constexpr auto t = dualpipe_table<P, N>()` for each (P, N) and
# prints the compiler's CPU seconds (user + system), wall-clock seconds and
# peak memory (/usr/bin/time -v). On a shared machine CPU seconds are the
# figure to compare; wall-clock seconds include waiting for a core.
# Usage: bench/generation/compile_time.sh [compiler]   (default g++)
# Environment: RANKS="8 16 32 64", MICROBATCHES="128 256 512 1024" override the grid.
set -euo pipefail
cd "$(dirname "$0")/../.."
cxx=${1:-g++}
ranks=${RANKS:-"8 16 32 64"}
microbatches=${MICROBATCHES:-"128 256 512 1024"}
# g++'s defaults (2^25 operations, 2^18 iterations of one loop) are too small
# for the larger tables; these are what this grid needs.
flags=(-std=c++20 -O2 -Iinclude -fconstexpr-ops-limit=4294967296 -fconstexpr-loop-limit=16777216)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "compiler: $($cxx --version | head -n 1)"
echo "flags: ${flags[*]}"
printf '| P | N | instructions | CPU seconds | wall seconds | peak memory (MiB) |\n'
printf '|---|---|---|---|---|---|\n'
for P in $ranks; do
  for N in $microbatches; do
    if (( N < 2 * P )); then continue; fi
    cat > "$work/table.cpp" <<CPP
#include "dualpipe/schedule/dualpipe.hpp"
constexpr auto table = dualpipe::schedules::dualpipe_table<$P, $N>();
static_assert(table.size() > 0);
int instructions() { return static_cast<int>(table.size()); }
CPP
    if ! /usr/bin/time -v "$cxx" "${flags[@]}" -c "$work/table.cpp" -o "$work/table.o" \
         2> "$work/time.txt"; then
      echo "| $P | $N | compile failed: $(grep -m1 -i error "$work/time.txt" || true) | | | |"
      continue
    fi
    wall=$(sed -n 's/^\s*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$work/time.txt")
    seconds=$(awk -F: '{ s = 0; for (i = 1; i <= NF; ++i) s = s * 60 + $i; printf "%.1f", s }' <<< "$wall")
    cpu=$(awk '/User time \(seconds\)|System time \(seconds\)/ { s += $NF } END { printf "%.1f", s }' "$work/time.txt")
    kib=$(sed -n 's/^\s*Maximum resident set size (kbytes): //p' "$work/time.txt")
    # The instruction count, from the generator at run time (cheap) rather than the object file.
    count=$(printf '#include "dualpipe/schedule/dualpipe.hpp"\n#include <cstdio>\nint main() { std::printf("%%zu", dualpipe::schedules::dualpipe(%d, %d).size()); }\n' "$P" "$N" \
            | "$cxx" -std=c++20 -O1 -Iinclude -x c++ - -o "$work/count" && "$work/count")
    printf '| %d | %d | %s | %s | %s | %d |\n' "$P" "$N" "$count" "$cpu" "$seconds" $(( kib / 1024 ))
  done
done
