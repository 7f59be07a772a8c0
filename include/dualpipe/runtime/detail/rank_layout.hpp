// Where one rank's data lives in a table: the model stages it holds (those its
// instructions name and those the placement gives it), and the
// micro-batches that enter (stage 0) and leave (the last stage) there. Built
// once by the executor from the rank's own instructions and the placement.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "dualpipe/schedule/action_syntax.hpp"
#include "dualpipe/schedule/instruction.hpp"
#include "dualpipe/schedule/placement.hpp"
#include "dualpipe/schedule/table.hpp"

namespace dualpipe::detail {

// "0..9" for a contiguous run, else "0, 2, 5".
[[nodiscard]] inline std::string describe_microbatches(std::span<const int> mbs) {
  if (mbs.empty()) return "none";
  bool contiguous = true;
  for (std::size_t i = 1; i < mbs.size(); ++i) contiguous = contiguous && mbs[i] == mbs[i - 1] + 1;
  if (contiguous && mbs.size() > 1)
    return std::to_string(mbs.front()) + ".." + std::to_string(mbs.back());
  std::string out;
  for (const int m : mbs) {
    if (!out.empty()) out += ", ";
    out += std::to_string(m);
  }
  return out;
}

class rank_layout {
 public:
  static constexpr int none = -1;

  rank_layout() = default;
  // `program`: the rank's instructions; throws std::invalid_argument for an
  // instruction naming a stage outside the table.
  rank_layout(const schedule_info& info, std::span<const std::int32_t> stage_ranks, int rank,
              std::span<const instruction> program)
      : info_(info), stage_ranks_(stage_ranks.begin(), stage_ranks.end()), rank_(rank) {
    const int S = info.stages, N = info.microbatches;
    local_index_.assign(static_cast<std::size_t>(S), none);
    for (const instruction& x : program) {
      if (x.kind == op::commit) continue;
      mark_local(x.stage, x);
      if (x.kind == op::overlapped_forward_backward) mark_local(x.stage_b, x);
    }
    // Stages the placement gives this rank that no instruction here runs
    // (DualPipe with N = 1 sends nothing one way) are held all the same, so
    // mirror ranks hold the same stages and their gradients line up.
    for (int s = 0; s < S; ++s)
      if (holds_stage(info.where, info.ranks, S, s, rank, stage_ranks))
        local_index_[static_cast<std::size_t>(s)] = 0;
    int next = 0;
    for (int s = 0; s < S; ++s)
      if (local_index_[static_cast<std::size_t>(s)] != none) {
        local_index_[static_cast<std::size_t>(s)] = next++;
        local_stages_.push_back(s);
      }
    enter_index_.assign(static_cast<std::size_t>(N), none);
    leave_index_.assign(static_cast<std::size_t>(N), none);
    for (int m = 0; m < N; ++m) {
      if (owner(0, m) == rank_) {
        enter_index_[static_cast<std::size_t>(m)] = static_cast<int>(entering_.size());
        entering_.push_back(m);
      }
      if (owner(S - 1, m) == rank_) {
        leave_index_[static_cast<std::size_t>(m)] = static_cast<int>(leaving_.size());
        leaving_.push_back(m);
      }
    }
  }

  // The rank that runs `stage` for micro-batch `mb`, or none.
  [[nodiscard]] int owner(int stage, int mb) const noexcept {
    return stage_rank(info_.where, info_.ranks, info_.stages, info_.microbatches, stage, mb,
                      stage_ranks_);
  }
  // Model stages held here, ascending, and each one's index among them.
  [[nodiscard]] std::span<const int> local_stages() const noexcept { return local_stages_; }
  [[nodiscard]] int local_index(int stage) const noexcept {
    return stage >= 0 && stage < info_.stages ? local_index_[static_cast<std::size_t>(stage)]
                                              : none;
  }
  // Micro-batches whose first (last) stage runs here, and each one's index
  // among them (none elsewhere).
  [[nodiscard]] std::span<const int> entering() const noexcept { return entering_; }
  [[nodiscard]] std::span<const int> leaving() const noexcept { return leaving_; }
  [[nodiscard]] int enter_index(int mb) const noexcept { return index_in(enter_index_, mb); }
  [[nodiscard]] int leave_index(int mb) const noexcept { return index_in(leave_index_, mb); }

 private:
  [[nodiscard]] static int index_in(const std::vector<int>& index, int mb) noexcept {
    return mb >= 0 && static_cast<std::size_t>(mb) < index.size()
               ? index[static_cast<std::size_t>(mb)]
               : none;
  }

  void mark_local(int stage, const instruction& x) {
    if (stage < 0 || stage >= info_.stages)
      throw std::invalid_argument("dualpipe::executor: rank " + std::to_string(rank_) + ": " +
                                  format_action(x) + " names stage " + std::to_string(stage) +
                                  ", outside the table's 0.." + std::to_string(info_.stages - 1));
    local_index_[static_cast<std::size_t>(stage)] = 0;
  }

  schedule_info info_{};
  std::vector<std::int32_t> stage_ranks_;
  int rank_ = 0;
  std::vector<int> local_index_;  // per stage: index into local_stages_, or none
  std::vector<int> local_stages_;
  std::vector<int> entering_, leaving_;
  std::vector<int> enter_index_, leave_index_;  // per micro-batch: index, or none
};

}  // namespace dualpipe::detail
