// lower_communication(table): the checked entry to communication lowering,
// for compute-only tables from anywhere (PyTorch's compute-only CSV, a table
// written by hand): it validates the input, names what is wrong, and lowers
// it with the generators' own algorithm (schedule/lower.hpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "dualpipe/analysis/validate.hpp"
#include "dualpipe/schedule/action_syntax.hpp"
#include "dualpipe/schedule/instruction.hpp"
#include "dualpipe/schedule/lower.hpp"
#include "dualpipe/schedule/table.hpp"

namespace dualpipe {

namespace detail {

// Rejects anything lower_ranks must not see, with the first offending action.
constexpr void check_lowering_input(table_view t) {
  if (shape_violation(t).empty()) {
    for (int r = 0; r < t.info.ranks; ++r) {
      const auto list = t.rank(r);
      for (std::size_t i = 0; i < list.size(); ++i)
        if (!is_compute(list[i].kind))
          throw std::invalid_argument(
              "lower_communication: rank " + std::to_string(r) + ", instruction " +
              std::to_string(i) + " (" + format_action(list[i]) +
              "): the table already holds communication; lowering takes a compute-only table");
    }
  }
  const validation v = validate(t);
  if (!v.ok) throw std::invalid_argument("lower_communication: " + describe(v));
}

}  // namespace detail

// The executable form of a compute-only table: SEND_F right after a forward
// whose output another rank consumes, SEND_B right after a backward (B, I or
// an overlapped pair's backward) whose input gradient another rank consumes,
// each RECV in the batch that lands the value no later than the compute that
// needs it, and one COMMIT per batch. Hand-offs between stages of one rank get
// no communication. Throws std::invalid_argument naming the first offending
// action (rank, index, action text) if the table already has communication or
// its compute order is malformed: a stage on the wrong rank, a duplicate, a
// backward before its forward, a missing forward or backward, a W out of FIFO
// order, or an order that cannot run at all because of a cyclic wait.
[[nodiscard]] inline schedule_table lower_communication(table_view compute_only) {
  detail::check_lowering_input(compute_only);
  schedule_info info = compute_only.info;
  info.with_communication = true;
  schedule_table out(info);
  detail::lower_ranks(
      compute_only, 0, info.ranks, [&out](const instruction& i) { out.push(i); },
      [&out] { out.end_rank(); });
  if (info.where == placement::explicit_map)
    out.set_stage_ranks(std::vector<std::int32_t>(compute_only.stage_ranks.begin(),
                                                  compute_only.stage_ranks.end()));
  return out;
}

}  // namespace dualpipe
