// Interleaved 1F1B (Megatron-LM's virtual pipeline; Narayanan et al., arXiv
// 2104.04473), in the order of PyTorch's ScheduleInterleaved1F1B: V stages per
// rank, stage s on rank s % P, micro-batches taken in rounds of P. Rank r runs
// (V-1)P + 2(P-1-r) warm-up forwards (at most VN), then alternates one forward
// and one backward, then the cool-down backwards. Forwards sweep the rank's
// stages front to back one round at a time, backwards back to front.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "dualpipe/schedule/build.hpp"
#include "dualpipe/schedule/instruction.hpp"
#include "dualpipe/schedule/options.hpp"
#include "dualpipe/schedule/request.hpp"
#include "dualpipe/schedule/table.hpp"

namespace dualpipe {

namespace detail {

// The first constraint (P, N, V) breaks, as a sentence, or an empty view.
[[nodiscard]] constexpr std::string_view interleaved_1f1b_violation(
    std::int64_t ranks, std::int64_t microbatches, std::int64_t virtual_stages) noexcept {
  if (const std::string_view limit = size_limit_violation(ranks, microbatches); !limit.empty())
    return limit;
  if (virtual_stages < 2)
    return "needs at least 2 stages per rank (V >= 2); with one stage per rank use 1F1B";
  if (ranks * virtual_stages > max_ranks)
    return "supports at most 16384 stages in all (P*V <= 16384)";
  if (microbatches % ranks != 0)
    return "needs the number of micro-batches to be a multiple of the number of ranks (N % P == "
           "0), as Megatron-LM requires: micro-batches enter in rounds of P";
  return {};
}

}  // namespace detail

// Interleaved 1F1B on `ranks` ranks with `virtual_stages` stages per rank and
// `microbatches` micro-batches. A structural type: usable as a template
// argument of make_static_table.
struct interleaved_1f1b_generator {
  std::int32_t ranks = 0;
  std::int32_t microbatches = 0;
  std::int32_t virtual_stages = 0;
  generator_options options{};

  static constexpr schedule_kind kind{"interleaved-1f1b", "interleaved 1F1B", placement::linear};
  static constexpr std::string_view summary =
      "interleaved 1F1B (Megatron virtual pipeline): V stages per rank, stage s on rank s % P; "
      "N a multiple of P";
  static constexpr schedule_parameter parameters[] = {
      {"virtual-stages", "model stages per rank (V >= 2), for interleaved-1f1b", 2},
  };
  [[nodiscard]] static interleaved_1f1b_generator from_request(
      const schedule_request& q) {
    return {q.ranks, q.microbatches, q.parameter("virtual-stages"), q.options};
  }
  [[nodiscard]] constexpr std::array<given_size, 3> given() const noexcept {
    return {{{"P", ranks}, {"N", microbatches}, {"V", virtual_stages}}};
  }

  // The first rule the sizes break, as a sentence, or an empty view.
  [[nodiscard]] constexpr std::string_view violation() const noexcept {
    return detail::interleaved_1f1b_violation(ranks, microbatches, virtual_stages);
  }
  [[nodiscard]] constexpr int stages() const noexcept { return ranks * virtual_stages; }

  // The compute order of one rank; build.hpp places the communication.
  template <class Emit>
  constexpr void emit_compute_rank(int rank, Emit emit) const {
    const int P = ranks, V = virtual_stages;
    const int local_work = V * microbatches;  // forwards (and backwards) on this rank
    const int warm_up_wanted = (V - 1) * P + 2 * (P - 1 - rank);
    const int warm_up = options.forward_only ? local_work
                        : warm_up_wanted < local_work ? warm_up_wanted
                                                      : local_work;
    // Step k of the forward sweep works on local stage (k / P) % V; step k of
    // the backward sweep on local stage V-1-(k / P) % V. Each stage numbers
    // its own micro-batches in order.
    const auto forward_stage = [P, V, rank](int k) { return ((k / P) % V) * P + rank; };
    const auto backward_stage = [P, V, rank](int k) { return (V - 1 - (k / P) % V) * P + rank; };
    std::vector<int> next_forward(static_cast<std::size_t>(V), 0);
    std::vector<int> next_backward(static_cast<std::size_t>(V), 0);
    const auto forward = [&](int k) {
      const int s = forward_stage(k);
      emit(make_forward(s, next_forward[static_cast<std::size_t>(s / P)]++));
    };
    const auto backward = [&](int k) {
      const int s = backward_stage(k);
      emit(make_backward(s, next_backward[static_cast<std::size_t>(s / P)]++));
    };
    for (int k = 0; k < warm_up; ++k) forward(k);
    if (options.forward_only) return;
    for (int k = 0; k < local_work - warm_up; ++k) {
      forward(warm_up + k);
      backward(k);
    }
    for (int k = local_work - warm_up; k < local_work; ++k) backward(k);
  }
};

namespace schedules {

// Run time: throws std::invalid_argument for an invalid (P, N, V).
[[nodiscard]] inline schedule_table interleaved_1f1b(int ranks, int microbatches,
                                                     int virtual_stages,
                                                     generator_options options = {}) {
  return make_table(
      interleaved_1f1b_generator{ranks, microbatches, virtual_stages, options});
}

// Compile time: sizes that break a rule are a compile error that names it.
template <int P, int N, int V, generator_options Options = generator_options{}>
[[nodiscard]] constexpr auto interleaved_1f1b_table() {
  return make_checked_static_table<interleaved_1f1b_generator{P, N, V, Options}>();
}

}  // namespace schedules
}  // namespace dualpipe
