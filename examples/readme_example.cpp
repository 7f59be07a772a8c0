#include <cstdio>

#include "dualpipe/analysis/activations.hpp"
#include "dualpipe/analysis/validate.hpp"
#include "dualpipe/schedule/dualpipe.hpp"

// DualPipe on P = 8 ranks with N = 20 micro-batches, built by the compiler.
constexpr auto table = dualpipe::schedules::dualpipe_table<8, 20>();

// Checked at compile time: every F, B and W runs once, in causal order, and
// the communication cannot deadlock; no rank holds more than P + 1 activations.
static_assert(dualpipe::validate(table).ok);
static_assert([] {
  for (int r = 0; r < 8; ++r)
    if (dualpipe::peak_activations(table, r) > 8 + 1) return false;
  return true;
}());

int main() {
  std::printf("rank 0 runs %zu instructions\n", table.rank(0).size());
}
