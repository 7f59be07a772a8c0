// Peak live activations: how many (stage, micro-batch) forwards a rank holds
// at once, waiting for their backward, in units of one stage's activations.
#pragma once

#include <algorithm>

#include "dualpipe/schedule/instruction.hpp"
#include "dualpipe/schedule/table.hpp"

namespace dualpipe {

// An overlapped pair counts its forward before its backward releases: both
// sets of activations are alive while the pair runs.
[[nodiscard]] constexpr int peak_activations(table_view table, int rank) {
  int live = 0, peak = 0;
  for (const instruction& x : table.rank(rank)) {
    switch (x.kind) {
      case op::forward:
        if (!table.info.forward_only) peak = std::max(peak, ++live);
        else peak = std::max(peak, 1);
        break;
      case op::backward:
      case op::backward_input: --live; break;
      case op::overlapped_forward_backward:
        peak = std::max(peak, ++live);
        --live;
        break;
      default: break;
    }
  }
  return peak;
}

[[nodiscard]] constexpr int peak_activations(table_view table) {
  int peak = 0;
  for (int r = 0; r < table.ranks(); ++r) peak = std::max(peak, peak_activations(table, r));
  return peak;
}

}  // namespace dualpipe
