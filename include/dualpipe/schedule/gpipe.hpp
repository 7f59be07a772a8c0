// GPipe (Huang et al., arXiv 1811.06965), in the order of PyTorch's
// ScheduleGPipe: every rank runs the forwards of all micro-batches, then their
// backwards, oldest first. One stage per rank, stage s on rank s.
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
[[nodiscard]] constexpr std::string_view gpipe_violation(std::int64_t ranks,
                                                         std::int64_t microbatches) noexcept {
  if (const std::string_view limit = size_limit_violation(ranks, microbatches); !limit.empty())
    return limit;
  return {};
}

}  // namespace detail

// GPipe on `ranks` ranks with `microbatches` micro-batches. A structural type:
// usable as a template argument of make_static_table.
struct gpipe_generator {
  std::int32_t ranks = 0;
  std::int32_t microbatches = 0;
  generator_options options{};

  static constexpr schedule_kind kind{"gpipe", "GPipe", placement::linear};
  static constexpr std::string_view summary =
      "GPipe: stage s on rank s; every forward, then every backward; N >= 1";

  // The first rule the sizes break, as a sentence, or an empty view.
  [[nodiscard]] constexpr std::string_view violation() const noexcept {
    return detail::gpipe_violation(ranks, microbatches);
  }
  [[nodiscard]] constexpr int stages() const noexcept { return ranks; }

  // The compute order of one rank; build.hpp places the communication.
  template <class Emit>
  constexpr void emit_compute_rank(int rank, Emit emit) const {
    for (int m = 0; m < microbatches; ++m) emit(make_forward(rank, m));
    if (options.forward_only) return;
    for (int m = 0; m < microbatches; ++m) emit(make_backward(rank, m));
  }
};

namespace schedules {

// Run time: throws std::invalid_argument for an invalid (P, N).
[[nodiscard]] inline schedule_table gpipe(int ranks, int microbatches,
                                          generator_options options = {}) {
  return make_table(gpipe_generator{ranks, microbatches, options});
}

// Compile time: sizes that break a rule are a compile error that names it.
template <int P, int N, generator_options Options = generator_options{}>
[[nodiscard]] constexpr auto gpipe_table() {
  return make_checked_static_table<gpipe_generator{P, N, Options}>();
}

}  // namespace schedules
}  // namespace dualpipe
