// The forward-only projection of a training table: the table an inference
// step runs. Each rank keeps its forwards and their communication in the same
// order, overlapped pairs keep their forward, and commits that would launch
// nothing disappear. DualPipe's generator emits exactly this in forward-only
// mode, as the reference skips the backward work of the same walk.
#pragma once

#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "dualpipe/analysis/validate.hpp"
#include "dualpipe/schedule/instruction.hpp"
#include "dualpipe/schedule/table.hpp"

namespace dualpipe {

// The projection of one rank's list.
[[nodiscard]] inline std::vector<instruction> forward_projection(
    std::span<const instruction> list) {
  std::vector<instruction> out;
  out.reserve(list.size());
  bool posted = false;
  for (const instruction& x : list) {
    switch (x.kind) {
      case op::forward:
      case op::send_forward:
      case op::recv_forward:
        out.push_back(x);
        posted = posted || is_communication(x.kind);
        break;
      case op::overlapped_forward_backward:
        out.push_back(make_forward(x.stage, x.microbatch));
        break;
      case op::commit:
        if (posted) out.push_back(x);
        posted = false;
        break;
      default: break;
    }
  }
  return out;
}

// The projection of a whole table, marked forward-only, unchecked: the
// projection of a table that does not validate need not validate either;
// forward_only_table below checks it.
[[nodiscard]] inline schedule_table project_forward_only(table_view table) {
  schedule_info info = table.info;
  info.forward_only = true;
  schedule_table out(info);
  for (int r = 0; r < table.ranks(); ++r) {
    for (const instruction& x : forward_projection(table.rank(r))) out.push(x);
    out.end_rank();
  }
  if (!table.stage_ranks.empty())
    out.set_stage_ranks({table.stage_ranks.begin(), table.stage_ranks.end()});
  return out;
}

// The projection, validated: throws std::invalid_argument saying why the
// table cannot run inference when its projection is not a valid schedule.
[[nodiscard]] inline schedule_table forward_only_table(table_view table) {
  if (const std::string_view why = shape_violation(table); !why.empty())
    throw std::invalid_argument("dualpipe: forward-only projection: " + std::string(why));
  schedule_table out = project_forward_only(table);
  const validation v = validate(out.view());
  if (!v.ok)
    throw std::invalid_argument(
        "the table's forward-only projection (its forwards and their communication) is not a "
        "valid schedule, so it cannot run inference: " +
        describe(v));
  return out;
}

}  // namespace dualpipe
