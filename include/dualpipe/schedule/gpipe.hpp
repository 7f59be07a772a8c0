// GPipe (Huang et al., arXiv 1811.06965), in the order of PyTorch's
// ScheduleGPipe: every rank runs the forwards of all micro-batches, then their
// backwards, oldest first. One stage per rank, stage s on rank s.
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
[[nodiscard]] constexpr std::string_view gpipe_violation(std::int64_t ranks,
                                                         std::int64_t microbatches) noexcept {
  if (ranks < 1) return "needs at least 1 rank (P >= 1)";
  if (ranks > max_ranks) return "supports at most 16384 ranks (P <= 16384)";
  if (microbatches < 1) return "needs at least 1 micro-batch (N >= 1)";
  if (microbatches > max_microbatches)
    return "supports at most 4194304 micro-batches (N <= 4194304)";
  return {};
}

}  // namespace detail

// GPipe on `ranks` ranks with `microbatches` micro-batches. A structural type:
// usable as a template argument of make_static_table.
struct gpipe_generator {
  std::int32_t ranks = 0;
  std::int32_t microbatches = 0;
  generator_options options{};

  // Throws std::invalid_argument naming the broken constraint.
  constexpr void check() const {
    detail::throw_if_violated("GPipe", detail::gpipe_violation(ranks, microbatches), ranks,
                              microbatches);
  }

  [[nodiscard]] constexpr schedule_info info() const {
    check();
    return {schedule_kind::gpipe, ranks,       ranks, microbatches, placement::linear,
            options.forward_only, options.with_communication};
  }

  // The compute order of one rank, without communication.
  template <class Emit>
  constexpr void emit_compute_rank(int rank, Emit emit) const {
    for (int m = 0; m < microbatches; ++m) emit(make_forward(rank, m));
    if (options.forward_only) return;
    for (int m = 0; m < microbatches; ++m) emit(make_backward(rank, m));
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
[[nodiscard]] inline schedule_table gpipe(int ranks, int microbatches,
                                          generator_options options = {}) {
  return detail::make_generated_table(gpipe_generator{ranks, microbatches, options});
}

// Compile time: an invalid (P, N) is a compile error that says which rule it breaks.
template <int P, int N, generator_options Options = generator_options{}>
[[nodiscard]] constexpr auto gpipe_table() {
  static_assert(P >= 1, "gpipe_table<P, N>: GPipe needs at least 1 rank (P >= 1)");
  static_assert(P <= max_ranks, "gpipe_table<P, N>: at most 16384 ranks are supported");
  static_assert(N >= 1, "gpipe_table<P, N>: GPipe needs at least 1 micro-batch (N >= 1)");
  static_assert(N <= max_microbatches,
                "gpipe_table<P, N>: at most 4194304 micro-batches are supported");
  if constexpr (detail::gpipe_violation(P, N).empty())
    return make_static_table<gpipe_generator{P, N, Options}>();
  else
    return static_table<0, 0>{};
}

}  // namespace schedules
}  // namespace dualpipe
