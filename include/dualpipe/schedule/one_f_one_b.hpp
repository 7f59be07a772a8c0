// 1F1B (PipeDream-Flush; Narayanan et al., arXiv 2006.09503), in the order of
// PyTorch's Schedule1F1B: rank r runs a warm-up of P-1-r forwards, then
// alternates one forward and one backward until the forwards run out, then
// the cool-down backwards. One stage per rank, stage s on rank s; at most P
// micro-batches' activations are live on any rank.
#pragma once

#include <cstdint>
#include <string_view>

#include "dualpipe/schedule/build.hpp"
#include "dualpipe/schedule/instruction.hpp"
#include "dualpipe/schedule/options.hpp"
#include "dualpipe/schedule/table.hpp"

namespace dualpipe {

// 1F1B on `ranks` ranks with `microbatches` micro-batches: a generator as
// build.hpp describes one, in full (the shortest of the library's). A
// structural type: usable as a template argument of make_static_table.
struct one_f_one_b_generator {
  std::int32_t ranks = 0;
  std::int32_t microbatches = 0;
  generator_options options{};

  static constexpr schedule_kind kind{"1f1b", "1F1B", placement::linear};
  static constexpr std::string_view summary =
      "1F1B (PyTorch's Schedule1F1B): stage s on rank s; P-1-r warm-up forwards; N >= P";

  // The first rule (P, N) break, as a sentence, or an empty view.
  [[nodiscard]] constexpr std::string_view violation() const noexcept {
    if (const std::string_view limit = size_limit_violation(ranks, microbatches); !limit.empty())
      return limit;
    if (microbatches < ranks)
      return "needs at least as many micro-batches as ranks (N >= P), as PyTorch's Schedule1F1B: "
             "rank 0 runs P-1 warm-up forwards before its first backward";
    return {};
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
    int forward = 0, backward = 0;
    while (forward < warm_up) emit(make_forward(rank, forward++));
    while (forward < microbatches) {
      emit(make_forward(rank, forward++));
      emit(make_backward(rank, backward++));
    }
    while (backward < microbatches) emit(make_backward(rank, backward++));
  }
};

namespace schedules {

// Run time: throws std::invalid_argument for an invalid (P, N).
[[nodiscard]] inline schedule_table one_f_one_b(int ranks, int microbatches,
                                                generator_options options = {}) {
  return make_table(one_f_one_b_generator{ranks, microbatches, options});
}

// Compile time: an invalid (P, N) is a compile error that names the rule.
template <int P, int N, generator_options Options = generator_options{}>
[[nodiscard]] constexpr auto one_f_one_b_table() {
  return make_checked_static_table<one_f_one_b_generator{P, N, Options}>();
}

}  // namespace schedules
}  // namespace dualpipe
