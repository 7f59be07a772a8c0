// A schedule as a text grid for people: one column per rank, one row per
// step (the n-th instruction each rank runs), cells such as "F3", "B12",
// "I4", "W4" and "F3|B12" for an overlapped pair, like the figures of the
// DualPipe paper read column-wise.
#pragma once

#include <algorithm>
#include <cstddef>
#include <string>
#include <vector>

#include "dualpipe/schedule/action_syntax.hpp"
#include "dualpipe/schedule/instruction.hpp"
#include "dualpipe/schedule/table.hpp"

namespace dualpipe {

struct grid_options {
  // Also show SEND_*/RECV_* and COMMIT as steps; by default only compute is.
  bool communication = false;
  // Cells in full action syntax ("3F0", "(0F4;7B1)OVERLAP_F_B"): by default a
  // cell names the micro-batch only, which with the rank column already says
  // which stage runs for the schedules of this library.
  bool stages = false;
};

// The text of one grid cell.
[[nodiscard]] inline std::string grid_cell(const instruction& x, bool with_stage = false) {
  if (with_stage || x.kind == op::commit) return format_action(x);
  if (x.kind == op::overlapped_forward_backward)
    return "F" + std::to_string(x.microbatch) + "|B" + std::to_string(x.microbatch_b);
  return std::string(op_name(x.kind)) + std::to_string(x.microbatch);
}

// The grid: a header line ("step", "rank 0", ...) and one line per step, each
// column left-aligned to its widest cell, lines without trailing blanks.
[[nodiscard]] inline std::string format_grid(table_view table, grid_options options = {}) {
  const auto P = static_cast<std::size_t>(std::max(table.ranks(), 0));
  std::vector<std::vector<std::string>> columns(P);
  std::size_t steps = 0;
  for (std::size_t r = 0; r < P; ++r) {
    for (const instruction& x : table.rank(static_cast<int>(r)))
      if (is_compute(x.kind) || options.communication)
        columns[r].push_back(grid_cell(x, options.stages));
    steps = std::max(steps, columns[r].size());
  }
  std::vector<std::string> header(P);
  std::vector<std::size_t> width(P);
  for (std::size_t r = 0; r < P; ++r) {
    header[r] = "rank " + std::to_string(r);
    width[r] = header[r].size();
    for (const std::string& cell : columns[r]) width[r] = std::max(width[r], cell.size());
  }
  const std::string step_title = "step";
  const std::size_t step_width =
      std::max(step_title.size(), std::to_string(steps == 0 ? 0 : steps - 1).size());

  std::string out;
  std::string line;
  const auto emit = [&](const std::string& first, auto cell_of) {
    line.assign(first);
    line.append(step_width - first.size(), ' ');
    for (std::size_t r = 0; r < P; ++r) {
      const std::string& cell = cell_of(r);
      line.append(2, ' ');
      line += cell;
      line.append(width[r] - cell.size(), ' ');
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line;
    out.push_back('\n');
  };
  emit(step_title, [&](std::size_t r) -> const std::string& { return header[r]; });
  const std::string idle;
  for (std::size_t i = 0; i < steps; ++i)
    emit(std::to_string(i), [&](std::size_t r) -> const std::string& {
      return i < columns[r].size() ? columns[r][i] : idle;
    });
  return out;
}

}  // namespace dualpipe
