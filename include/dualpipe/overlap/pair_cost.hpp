// The cost model of an overlapped pair: the time of each sub-op from its
// program's cost, played through the execution model of issue_order.hpp (two
// first-in-first-out lanes that run ahead of the issuer, a sub-op starting
// when its lane is free and its dependencies have finished). It gives the
// pair's time, how much of its communication hides behind computation, and
// the F, B, W and F&B costs the schedule simulator takes, so that those come
// from sub-op costs instead of a guess and a static_assert can pin them.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <span>

#include "dualpipe/analysis/costs.hpp"
#include "dualpipe/overlap/issue_order.hpp"
#include "dualpipe/overlap/program.hpp"
#include "dualpipe/overlap/timeline.hpp"

namespace dualpipe::overlap {

// The time of the generated overlapped pair.
[[nodiscard]] constexpr double pair_time(const stage_programs& p) {
  const issue_order o = make_pair_order(p);
  return simulate_order(p, o.view()).totals().span;
}

// The costs the schedule simulator takes for a stage with these programs.
// F is the forward alone, W the leaves alone (a deferred weight gradient),
// F&B the generated pair. The simulator knows no I of its own (it takes
// I = B - W), so B is I + W with I the backward's chain alone: exact for the
// split backward that DualPipe runs most, and an overestimate of a whole
// backward by whatever of its leaves hides under its own communication
// (span_of(make_pass_order(p, pass::backward)) is that time).
[[nodiscard]] constexpr stage_costs stage_costs_of(const stage_programs& p) {
  const auto span_of = [&p](const issue_order& o) {
    return simulate_order(p, o.view()).totals().span;
  };
  const double input = span_of(make_pass_order(p, pass::backward, pass_part::chain_only));
  const double weight = span_of(make_pass_order(p, pass::backward, pass_part::leaves_only));
  return {span_of(make_pass_order(p, pass::forward)), input + weight, weight, pair_time(p)};
}

}  // namespace dualpipe::overlap
