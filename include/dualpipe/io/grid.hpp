// A schedule as a text grid for people: one column per rank, one row per
// step (the n-th instruction each rank runs), cells such as "F3", "B12",
// "I4", "W4" and "F3|B12" for an overlapped pair, like the figures of the
// DualPipe paper read column-wise. Where a micro-batch does not say which
// stage runs (a rank holding two stages of it), cells carry it: "3F0".
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "dualpipe/schedule/action_syntax.hpp"
#include "dualpipe/schedule/instruction.hpp"
#include "dualpipe/schedule/table.hpp"

namespace dualpipe {

// Whether cells name the stage ("3F0") or only the micro-batch ("F0").
enum class grid_stages : std::uint8_t {
  // Only where the micro-batch alone does not say which stage runs: when some
  // rank runs two stages of one micro-batch (DualPipeV, interleaved, ZB-V).
  // DualPipe's cells need no stage: the micro-batch says the direction.
  when_ambiguous,
  always,
  never,
};

struct grid_options {
  // Also show SEND_*/RECV_* and COMMIT as steps; by default only compute is.
  bool communication = false;
  grid_stages stages = grid_stages::when_ambiguous;
};

// The text of one grid cell: "F3", "B12", "I4", "W4", "F3|B12", "SEND_F3",
// "COMMIT"; with the stage, "2F3", "2F3|5B12", "2SEND_F3".
[[nodiscard]] inline std::string grid_cell(const instruction& x, bool with_stage = false) {
  if (x.kind == op::commit) return format_action(x);
  std::string out;
  if (with_stage) out += std::to_string(x.stage);
  if (x.kind == op::overlapped_forward_backward) {
    out += "F" + std::to_string(x.microbatch) + "|";
    if (with_stage) out += std::to_string(x.stage_b);
    return out + "B" + std::to_string(x.microbatch_b);
  }
  return out + std::string(op_name(x.kind)) + std::to_string(x.microbatch);
}

namespace detail {

// Does some rank run two different stages of one micro-batch?
[[nodiscard]] inline bool grid_stages_ambiguous(table_view table) {
  const auto N = static_cast<std::size_t>(std::max(table.microbatches(), 0));
  std::vector<std::int32_t> stage_of(N);
  for (int r = 0; r < table.ranks(); ++r) {
    std::fill(stage_of.begin(), stage_of.end(), -1);
    const auto seen = [&](std::int32_t stage, std::int32_t mb) {
      if (mb < 0 || static_cast<std::size_t>(mb) >= N) return true;
      std::int32_t& s = stage_of[static_cast<std::size_t>(mb)];
      if (s >= 0 && s != stage) return true;
      s = stage;
      return false;
    };
    for (const instruction& x : table.rank(r)) {
      if (x.kind == op::commit) continue;
      if (seen(x.stage, x.microbatch)) return true;
      if (x.kind == op::overlapped_forward_backward && seen(x.stage_b, x.microbatch_b)) return true;
    }
  }
  return false;
}

}  // namespace detail

// The grid: a header line ("step", "rank 0", ...) and one line per step, each
// column left-aligned to its widest cell, lines without trailing blanks.
[[nodiscard]] inline std::string format_grid(table_view table, grid_options options = {}) {
  const auto P = static_cast<std::size_t>(std::max(table.ranks(), 0));
  const bool with_stage =
      options.stages == grid_stages::always ||
      (options.stages == grid_stages::when_ambiguous && detail::grid_stages_ambiguous(table));
  std::vector<std::vector<std::string>> columns(P);
  std::size_t steps = 0;
  for (std::size_t r = 0; r < P; ++r) {
    for (const instruction& x : table.rank(static_cast<int>(r)))
      if (is_compute(x.kind) || options.communication)
        columns[r].push_back(grid_cell(x, with_stage));
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
