// ZB-H1, a.k.a. ZB1P (Qi et al., "Zero Bubble Pipeline Parallelism", arXiv
// 2401.10241), in the order of PyTorch's ScheduleInterleavedZeroBubble with one
// stage per rank: 1F1B's forwards and backwards, with each backward split into
// backward-input (I) and backward-weight (W). Rank r runs P-1-r warm-up
// forwards, then (F, I) pairs; its first r weight gradients are held back and
// every later I is followed by the oldest held-back W, so rank r ends with r
// W's that fill its cool-down bubble. Live activations stay at most P, as 1F1B.
#pragma once

#include <cstdint>
#include <string_view>

#include "dualpipe/schedule/build.hpp"
#include "dualpipe/schedule/instruction.hpp"
#include "dualpipe/schedule/options.hpp"
#include "dualpipe/schedule/table.hpp"

namespace dualpipe {

namespace detail {

// The first constraint (P, N) breaks, as a sentence, or an empty view.
[[nodiscard]] constexpr std::string_view zb1p_violation(std::int64_t ranks,
                                                        std::int64_t microbatches) noexcept {
  if (const std::string_view limit = size_limit_violation(ranks, microbatches); !limit.empty())
    return limit;
  if (microbatches < ranks)
    return "needs at least as many micro-batches as ranks (N >= P), as 1F1B: rank 0 runs P-1 "
           "warm-up forwards before its first backward";
  return {};
}

}  // namespace detail

// ZB1P on `ranks` ranks with `microbatches` micro-batches. A structural type:
// usable as a template argument of make_static_table.
struct zb1p_generator {
  std::int32_t ranks = 0;
  std::int32_t microbatches = 0;
  generator_options options{};

  static constexpr schedule_kind kind{"zb1p", "ZB1P", placement::linear};
  static constexpr std::string_view summary =
      "ZB1P / ZB-H1 (zero bubble): 1F1B with I/W split, W's delayed into the cool-down; N >= P";

  // The first rule the sizes break, as a sentence, or an empty view.
  [[nodiscard]] constexpr std::string_view violation() const noexcept {
    return detail::zb1p_violation(ranks, microbatches);
  }
  [[nodiscard]] constexpr int stages() const noexcept { return ranks; }

  // The compute order of one rank; build.hpp places the communication.
  template <class Emit>
  constexpr void emit_compute_rank(int rank, Emit emit) const {
    if (options.forward_only) {
      for (int m = 0; m < microbatches; ++m) emit(make_forward(rank, m));
      return;
    }
    const int warm_up = ranks - 1 - rank;
    // Backward-inputs are numbered in order; the W's lag `rank` of them
    // behind, which is what makes them fill the cool-down.
    int forward = 0, weight = 0;
    while (forward < warm_up) emit(make_forward(rank, forward++));
    for (int input = 0; input < microbatches; ++input) {
      if (forward < microbatches) emit(make_forward(rank, forward++));
      emit(make_backward_input(rank, input));
      if (input >= rank) emit(make_backward_weight(rank, weight++));
    }
    while (weight < microbatches) emit(make_backward_weight(rank, weight++));
  }
};

namespace schedules {

// Run time: throws std::invalid_argument for an invalid (P, N).
[[nodiscard]] inline schedule_table zb1p(int ranks, int microbatches,
                                         generator_options options = {}) {
  return make_table(zb1p_generator{ranks, microbatches, options});
}

// Compile time: sizes that break a rule are a compile error that names it.
template <int P, int N, generator_options Options = generator_options{}>
[[nodiscard]] constexpr auto zb1p_table() {
  return make_checked_static_table<zb1p_generator{P, N, Options}>();
}

}  // namespace schedules
}  // namespace dualpipe
