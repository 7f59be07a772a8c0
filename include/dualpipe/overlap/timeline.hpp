// Timelines of sub-ops on the two lanes: played from costs through the
// execution model (simulate_order: two first-in-first-out lanes that run
// ahead of the issuer, a sub-op starting when its lane is free and its
// dependencies have finished), or measured by a lane backend; and what a
// timeline adds up to (totals_of: span, busy time per lane, and how much
// communication hid behind computation). The same sums serve both.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <span>

#include "dualpipe/overlap/program.hpp"

namespace dualpipe::overlap {

// One sub-op on a timeline: simulated here, or measured by a lane backend.
struct timed_sub_op {
  sub_op_ref op{};
  lane where = lane::compute;
  double start = 0.0;
  double end = 0.0;
  friend constexpr bool operator==(const timed_sub_op&, const timed_sub_op&) = default;
};

// What a timeline adds up to.
struct lane_totals {
  double span = 0.0;           // first start to last end
  double compute = 0.0;        // busy time of the compute lane
  double communication = 0.0;  // busy time of the communication lane
  double hidden = 0.0;         // communication time under computation
  // The share of communication hidden behind computation (1 when there is
  // none to hide).
  [[nodiscard]] constexpr double hidden_fraction() const noexcept {
    return communication > 0.0 ? hidden / communication : 1.0;
  }
};

// Sums a timeline. Sub-ops of one lane never overlap each other (a lane is
// first-in first-out), so the hidden time is the sum of each communication
// sub-op's overlap with each compute sub-op.
[[nodiscard]] constexpr lane_totals totals_of(std::span<const timed_sub_op> timeline) {
  lane_totals t{};
  if (timeline.empty()) return t;
  double first = timeline[0].start, last = timeline[0].end;
  for (const timed_sub_op& x : timeline) {
    first = std::min(first, x.start);
    last = std::max(last, x.end);
    (x.where == lane::compute ? t.compute : t.communication) += x.end - x.start;
    if (x.where != lane::communication) continue;
    for (const timed_sub_op& c : timeline)
      if (c.where == lane::compute)
        t.hidden += std::max(0.0, std::min(x.end, c.end) - std::max(x.start, c.start));
  }
  t.span = last - first;
  return t;
}

// A simulated timeline of an order, in the order's units.
struct simulated_timeline {
  std::array<timed_sub_op, max_pair_sub_ops> ops{};
  int size = 0;
  [[nodiscard]] constexpr std::span<const timed_sub_op> view() const noexcept {
    return {ops.data(), static_cast<std::size_t>(size)};
  }
  [[nodiscard]] constexpr lane_totals totals() const { return totals_of(view()); }
};

// Plays `order` (which must pass check_order, or be one pass's part) through
// the execution model with each sub-op's cost. `cost_of(sub_op_ref)` may
// replace the programs' costs, e.g. with measured ones.
template <class CostOf>
[[nodiscard]] constexpr simulated_timeline simulate_order(const stage_programs& p,
                                                          std::span<const sub_op_ref> order,
                                                          CostOf cost_of) {
  simulated_timeline out{};
  std::array<double, max_pair_sub_ops> end_of{};
  std::array<bool, max_pair_sub_ops> done{};
  double lane_free[2] = {0.0, 0.0};
  for (const sub_op_ref r : order) {
    const sub_op& op = sub_op_of(p, r);
    const int l = op.where == lane::compute ? 0 : 1;
    double start = lane_free[l];
    const dependencies d = dependencies_of(p, r);
    for (int k = 0; k < d.count; ++k) {
      const auto j = static_cast<std::size_t>(flat_index(p, d.on[k]));
      if (done[j]) start = std::max(start, end_of[j]);  // outside this order: already finished
    }
    const double end = start + static_cast<double>(cost_of(r));
    const auto i = static_cast<std::size_t>(flat_index(p, r));
    end_of[i] = end;
    done[i] = true;
    lane_free[l] = end;
    out.ops[static_cast<std::size_t>(out.size++)] = {r, op.where, start, end};
  }
  return out;
}

[[nodiscard]] constexpr simulated_timeline simulate_order(const stage_programs& p,
                                                          std::span<const sub_op_ref> order) {
  return simulate_order(p, order, [&p](sub_op_ref r) { return sub_op_of(p, r).cost; });
}

}  // namespace dualpipe::overlap
