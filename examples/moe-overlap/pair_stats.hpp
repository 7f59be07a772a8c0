// What the moe-overlap example makes of the overlapped pairs its lanes
// recorded in the timed steps: each pair's measured timeline (the records of
// one tag), summed by totals_of() as the cost model sums simulated ones; how
// much communication hid behind computation over all pairs; the median
// pair's span; and the cost model's prediction of that span
// (simulate_order of make_pair_order, each sub-op costing its measured mean
// duration), so that the model is checked against the machine. The median
// pair goes out in dualpipe/io/pair_timeline.hpp's interchange format.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <string>
#include <vector>

#include "dualpipe/io/pair_timeline.hpp"
#include "dualpipe/overlap/cpu_lanes.hpp"
#include "dualpipe/overlap/issue_order.hpp"
#include "dualpipe/overlap/pair_cost.hpp"
#include "dualpipe/overlap/program.hpp"
#include "dualpipe/overlap/timeline.hpp"
#include "moe_stage.hpp"

namespace moe_overlap {

// One overlapped pair as the lanes measured it: microseconds from the pair's
// first start.
struct measured_pair {
  int forward_microbatch = -1, backward_microbatch = -1;
  std::vector<ov::timed_sub_op> timeline;
  ov::lane_totals totals;
};

// The pairs among a rank's records (their tags number them; see
// moe_stage::overlapped_forward_backward).
[[nodiscard]] inline std::vector<measured_pair> measured_pairs(const rank_context& c) {
  std::vector<measured_pair> out;
  for (std::size_t k = 0; k < c.recorded_pairs.size(); ++k) {
    measured_pair m;
    m.forward_microbatch = c.recorded_pairs[k].forward;
    m.backward_microbatch = c.recorded_pairs[k].backward;
    m.timeline = ov::to_timeline(c.lanes.records(), static_cast<int>(k) + 1);
    if (m.timeline.empty()) continue;
    double first = m.timeline.front().start;
    for (const ov::timed_sub_op& t : m.timeline) first = std::min(first, t.start);
    for (ov::timed_sub_op& t : m.timeline) {
      t.start -= first;
      t.end -= first;
    }
    m.totals = ov::totals_of(m.timeline);
    out.push_back(std::move(m));
  }
  return out;
}

struct pair_summary {
  std::size_t pairs = 0;
  double hidden_fraction = 0.0;   // hidden / communication, summed over the pairs
  double measured_us = 0.0;       // the median pair's span
  double predicted_us = 0.0;      // the cost model's span with the measured mean costs
  double compute_us = 0.0;        // mean busy time per pair, compute lane
  double communication_us = 0.0;  // and communication lane
  ov::stage_programs programs{};  // with each sub-op's mean cost (over layers), in us
  measured_pair median;           // the pair of median span
};

[[nodiscard]] inline pair_summary summarize_pairs(const ov::stage_programs& programs,
                                                  const std::vector<measured_pair>& pairs) {
  pair_summary s;
  s.programs = programs;
  s.pairs = pairs.size();
  if (pairs.empty()) return s;
  double hidden = 0.0, communication = 0.0, compute = 0.0;
  std::vector<double> sum(ov::max_pair_sub_ops, 0.0);
  std::vector<int> count(ov::max_pair_sub_ops, 0);
  for (const measured_pair& m : pairs) {
    hidden += m.totals.hidden;
    communication += m.totals.communication;
    compute += m.totals.compute;
    for (const ov::timed_sub_op& t : m.timeline) {
      const auto i = static_cast<std::size_t>(ov::flat_index(programs, t.op));
      sum[i] += t.end - t.start;
      ++count[i];
    }
  }
  s.hidden_fraction = communication > 0.0 ? hidden / communication : 1.0;
  s.compute_us = compute / static_cast<double>(pairs.size());
  s.communication_us = communication / static_cast<double>(pairs.size());
  const auto mean = [&](ov::sub_op_ref r) {
    const auto i = static_cast<std::size_t>(ov::flat_index(programs, r));
    return count[i] > 0 ? sum[i] / count[i] : 0.0;
  };
  const ov::issue_order order = ov::make_pair_order(programs);
  s.predicted_us = ov::simulate_order(programs, order.view(), mean).totals().span;

  // The programs with their measured costs (a mean over layers), for the file.
  for (const ov::pass which : {ov::pass::forward, ov::pass::backward}) {
    ov::layer_program& prog = which == ov::pass::forward ? s.programs.forward : s.programs.backward;
    for (int i = 0; i < prog.size; ++i) {
      double c = 0.0;
      for (int l = 0; l < programs.layers; ++l) c += mean(ov::make_ref(which, l, i));
      prog.ops[static_cast<std::size_t>(i)].cost = c / programs.layers;
    }
  }
  std::vector<const measured_pair*> by_span;
  for (const measured_pair& m : pairs) by_span.push_back(&m);
  std::sort(by_span.begin(), by_span.end(), [](const measured_pair* a, const measured_pair* b) {
    return a->totals.span < b->totals.span;
  });
  s.median = *by_span[by_span.size() / 2];
  s.measured_us = s.median.totals.span;
  return s;
}

inline void print_pair_summary(const pair_summary& s) {
  if (s.pairs == 0) {
    std::printf("no overlapped pairs were measured (the schedule has none)\n");
    return;
  }
  std::printf(
      "overlapped pairs measured: %zu; per pair: compute %.1f us, communication %.1f us, %.1f%% "
      "of it hidden\n",
      s.pairs, s.compute_us, s.communication_us, 100.0 * s.hidden_fraction);
  std::printf("median pair: %.1f us measured, %.1f us predicted by the cost model (%+.1f%%)\n",
              s.measured_us, s.predicted_us,
              s.predicted_us > 0.0 ? 100.0 * (s.measured_us / s.predicted_us - 1.0) : 0.0);
}

// The median pair in the interchange format of dualpipe/io/pair_timeline.hpp.
[[nodiscard]] inline std::string pair_timeline_json(const pair_summary& s) {
  dualpipe::pair_picture_info info;
  info.unit = dualpipe::pair_time_unit::us;
  info.forward_microbatch = s.median.forward_microbatch;
  info.backward_microbatch = s.median.backward_microbatch;
  return dualpipe::format_pair_timeline_json(s.programs, s.median.timeline, info);
}

}  // namespace moe_overlap
