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
#include "dualpipe/schedule/lower.hpp"
#include "dualpipe/schedule/options.hpp"
#include "dualpipe/schedule/table.hpp"

namespace dualpipe {

namespace detail {

// The first constraint (P, N) breaks, as a sentence, or an empty view.
[[nodiscard]] constexpr std::string_view one_f_one_b_violation(std::int64_t ranks,
                                                               std::int64_t microbatches) noexcept {
  if (ranks < 1) return "needs at least 1 rank (P >= 1)";
  if (ranks > max_ranks) return "supports at most 16384 ranks (P <= 16384)";
  if (microbatches > max_microbatches)
    return "supports at most 4194304 micro-batches (N <= 4194304)";
  if (microbatches < ranks)
    return "needs at least as many micro-batches as ranks (N >= P), as PyTorch's Schedule1F1B: "
           "rank 0 runs P-1 warm-up forwards before its first backward";
  return {};
}

}  // namespace detail

// 1F1B on `ranks` ranks with `microbatches` micro-batches. A structural type:
// usable as a template argument of make_static_table.
struct one_f_one_b_generator {
  std::int32_t ranks = 0;
  std::int32_t microbatches = 0;
  generator_options options{};

  // Throws std::invalid_argument naming the broken constraint.
  constexpr void check() const {
    detail::throw_if_violated("1F1B", detail::one_f_one_b_violation(ranks, microbatches), ranks,
                              microbatches);
  }

  [[nodiscard]] constexpr schedule_info info() const {
    check();
    return {schedule_kind::one_f_one_b, ranks,       ranks, microbatches, placement::linear,
            options.forward_only,       options.with_communication};
  }

  // The compute order of one rank, without communication.
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

  template <class Emit>
  constexpr void emit_rank(int rank, Emit emit) const {
    detail::emit_generated_rank(*this, rank, emit);
  }
  // All ranks in one pass: the lowering simulates them together.
  template <class Emit, class EndRank>
  constexpr void emit_ranks(Emit emit, EndRank end_rank) const {
    detail::emit_generated_ranks(*this, emit, end_rank);
  }
};

namespace schedules {

// Run time: throws std::invalid_argument for an invalid (P, N).
[[nodiscard]] inline schedule_table one_f_one_b(int ranks, int microbatches,
                                                generator_options options = {}) {
  return detail::make_generated_table(one_f_one_b_generator{ranks, microbatches, options});
}

// Compile time: an invalid (P, N) is a compile error that says which rule it breaks.
template <int P, int N, generator_options Options = generator_options{}>
[[nodiscard]] constexpr auto one_f_one_b_table() {
  static_assert(P >= 1, "one_f_one_b_table<P, N>: 1F1B needs at least 1 rank (P >= 1)");
  static_assert(P <= max_ranks, "one_f_one_b_table<P, N>: at most 16384 ranks are supported");
  static_assert(N >= P,
                "one_f_one_b_table<P, N>: 1F1B needs at least as many micro-batches as ranks "
                "(N >= P): rank 0 runs P-1 warm-up forwards before its first backward");
  static_assert(N <= max_microbatches,
                "one_f_one_b_table<P, N>: at most 4194304 micro-batches are supported");
  if constexpr (detail::one_f_one_b_violation(P, N).empty())
    return make_static_table<one_f_one_b_generator{P, N, Options}>();
  else
    return static_table<0, 0>{};
}

}  // namespace schedules
}  // namespace dualpipe
