// ZB-V (Qi et al., "Zero Bubble Pipeline Parallelism", arXiv 2401.10241,
// section 6), in the order of PyTorch's ScheduleZBVZeroBubble: 2P stages in a
// V, rank r holding stage r and stage 2P-1-r (placement::v_shape), backwards
// split into backward-input (I) and backward-weight (W).
//
// Rank r: 2(P-r)-1 forwards of its first stage; r times a forward of its
// second stage then of its first; P-r times (F, I, W) of its second stage;
// then, while forwards remain, (F, I, W) of the first stage and (F, I, W) of
// the second; then r times I of the first stage and I of the second; P-r
// times (I, W) of the first stage; then the W's left over. As in PyTorch,
// the order is laid out for max(N, 2P-1) micro-batches and the actions of
// micro-batches >= N are dropped.
//
// One deliberate difference: a W here always runs the oldest deferred weight
// gradient of its rank (the FIFO every table of this library keeps), where
// PyTorch names the W of a given stage. The W's sit in the same places; from
// rank 2 on, the cool-down may run them in a different order.
#pragma once

#include <cstdint>
#include <string_view>

#include "dualpipe/schedule/build.hpp"
#include "dualpipe/schedule/deferred_weights.hpp"
#include "dualpipe/schedule/instruction.hpp"
#include "dualpipe/schedule/options.hpp"
#include "dualpipe/schedule/table.hpp"

namespace dualpipe {

namespace detail {

// The first constraint (P, N) breaks, as a sentence, or an empty view.
[[nodiscard]] constexpr std::string_view zbv_violation(std::int64_t ranks,
                                                       std::int64_t microbatches) noexcept {
  if (ranks > max_ranks / 2) return "supports at most 8192 ranks (P <= 8192, 2P stages)";
  if (const std::string_view limit = size_limit_violation(ranks, microbatches); !limit.empty())
    return limit;
  return {};
}

// One rank's walk through the ZB-V order.
template <class Emit>
class zbv_rank_walk {
 public:
  constexpr zbv_rank_walk(int ranks, int microbatches, bool forward_only, int rank, Emit emit)
      : P_(ranks), N_(microbatches), forward_only_(forward_only), r_(rank), emit_(emit) {}

  constexpr void run() {
    // Enough micro-batches to fill the V; the surplus is dropped on emission.
    const int laid_out = N_ > 2 * P_ - 1 ? N_ : 2 * P_ - 1;
    for (int i = 0; i < 2 * (P_ - r_) - 1; ++i) forward(0);
    for (int i = 0; i < r_; ++i) {
      forward(1);
      forward(0);
    }
    for (int i = 0; i < P_ - r_; ++i) {
      forward(1);
      backward_input(1);
      weight(1);
    }
    while (count_[1].forward < count_[0].forward || count_[0].forward < laid_out) {
      if (count_[0].forward < laid_out) forward(0);
      backward_input(0);
      weight(0);
      forward(1);
      backward_input(1);
      weight(1);
    }
    for (int i = 0; i < r_; ++i) {
      backward_input(0);
      backward_input(1);
    }
    for (int i = 0; i < P_ - r_; ++i) {
      backward_input(0);
      weight(0);
    }
    while (count_[1].weight < count_[1].input) weight(1);
    while (count_[0].weight < count_[0].input) weight(0);
  }

 private:
  struct chunk_counters {
    int forward = 0, input = 0, weight = 0;
  };

  [[nodiscard]] constexpr int stage_of(int chunk) const noexcept {
    return chunk == 0 ? r_ : 2 * P_ - 1 - r_;
  }

  constexpr void forward(int chunk) {
    const int mb = count_[chunk].forward++;
    if (mb < N_) emit_(make_forward(stage_of(chunk), mb));
  }
  constexpr void backward_input(int chunk) {
    const int mb = count_[chunk].input++;
    if (forward_only_ || mb >= N_) return;
    deferred_.defer(stage_of(chunk), mb);
    emit_(make_backward_input(stage_of(chunk), mb));
  }
  // PyTorch's W of (chunk, next micro-batch) marks the place; the oldest
  // deferred weight gradient runs there.
  constexpr void weight(int chunk) {
    const int mb = count_[chunk].weight++;
    if (forward_only_ || mb >= N_) return;
    const deferred_weight oldest = deferred_.pop();
    emit_(make_backward_weight(oldest.stage, oldest.microbatch));
  }

  int P_, N_;
  bool forward_only_;
  int r_;
  Emit emit_;
  chunk_counters count_[2]{};
  deferred_weights deferred_{};
};

}  // namespace detail

// ZB-V on `ranks` ranks (2 * ranks stages) with `microbatches` micro-batches.
// A structural type: usable as a template argument of make_static_table.
struct zbv_generator {
  std::int32_t ranks = 0;
  std::int32_t microbatches = 0;
  generator_options options{};

  static constexpr schedule_kind kind{"zbv", "ZB-V", placement::v_shape};
  static constexpr std::string_view summary =
      "ZB-V (zero bubble): 2P stages in a V, rank r holds r and 2P-1-r; N >= 1";

  // The first rule the sizes break, as a sentence, or an empty view.
  [[nodiscard]] constexpr std::string_view violation() const noexcept {
    return detail::zbv_violation(ranks, microbatches);
  }
  [[nodiscard]] constexpr int stages() const noexcept { return 2 * ranks; }

  // The compute order of one rank; build.hpp places the communication.
  template <class Emit>
  constexpr void emit_compute_rank(int rank, Emit emit) const {
    detail::zbv_rank_walk<Emit>(ranks, microbatches, options.forward_only, rank, emit).run();
  }
};

namespace schedules {

// Run time: throws std::invalid_argument for an invalid (P, N).
[[nodiscard]] inline schedule_table zbv(int ranks, int microbatches,
                                        generator_options options = {}) {
  return make_table(zbv_generator{ranks, microbatches, options});
}

// Compile time: sizes that break a rule are a compile error that names it.
template <int P, int N, generator_options Options = generator_options{}>
[[nodiscard]] constexpr auto zbv_table() {
  return make_checked_static_table<zbv_generator{P, N, Options}>();
}

}  // namespace schedules
}  // namespace dualpipe
