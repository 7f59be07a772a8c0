// DualPipe and DualPipeV (DeepSeek-V3, arXiv 2412.19437): generators that
// reproduce the reference implementation's per-rank order of compute and of
// communication batches, at compile time and at run time.
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

// The first constraint (P, N) breaks, as a sentence, or an empty view. Every
// N >= 1 is allowed: below the reference's own limits (N even for DualPipe,
// N >= 2P for both) the walk pads and drops, see dualpipe_rank_walk.
[[nodiscard]] constexpr std::string_view dualpipe_violation(std::int64_t ranks,
                                                            std::int64_t microbatches,
                                                            bool v_shape) noexcept {
  if (v_shape && ranks < 1) return "needs at least 1 rank (P >= 1)";
  if (!v_shape && ranks < 2) return "needs at least 2 ranks (P >= 2)";
  if (ranks > max_ranks) return "supports at most 16384 ranks (P <= 16384)";
  if (!v_shape && ranks % 2 != 0)
    return "needs an even number of ranks (P even): rank r pairs with its mirror P-1-r";
  if (microbatches < 1) return "needs at least 1 micro-batch (N >= 1)";
  if (microbatches > max_microbatches)
    return "supports at most 4194304 micro-batches (N <= 4194304)";
  return {};
}

// One rank's walk through the reference algorithm. "phase" is the rank-local
// name of a direction (a second-half DualPipe rank swaps them); compute and
// communication counters are kept per direction exactly as the reference keeps
// its chunk ids, and posted sends/receives are flushed by a commit before each
// compute, as its _commit_and_wait_comm does.
//
// Micro-batch counts the reference refuses (odd N for DualPipe, N < 2P for
// both) are walked as the smallest count it accepts, M per direction, and
// every instruction of a padding micro-batch (by default the first M - n
// chunks of a direction holding n) is dropped as it is emitted: its compute,
// its sends and receives, its deferred W (the FIFO keeps its place, so the W
// slots of the real micro-batches stay where the reference put them), and
// commits left empty. An overlapped pair that loses one half becomes the
// other half alone, a plain forward or a full backward. What is kept is the
// padded table with some micro-batches taken out; it validates by
// construction (no wait gains a dependency) and tests check every size.
// Where the reference accepts N, nothing is padded and the table is the
// reference's. Why the first chunks: bench/bubbles tries every choice of
// chunks for P <= 8 and none is shorter under the paper's costs (with
// latency and no overlap gain, one is up to 1% shorter for P < N < 2P), see
// docs/schedules.md.
enum class padding_chunks : std::uint8_t { first, last };

template <class Emit>
class dualpipe_rank_walk {
 public:
  constexpr dualpipe_rank_walk(int ranks, int microbatches, bool v_shape, generator_options options,
                               int rank, Emit emit, padding_chunks padding = padding_chunks::first)
      : P_(ranks),
        v_(v_shape),
        opt_(options),
        r_(rank),
        emit_(emit),
        second_half_(!v_shape && rank >= ranks / 2),
        first_rank_(rank == 0),
        last_rank_(rank == ranks - 1) {
    // Real micro-batches per direction: DualPipe's first N/2 (rounded down,
    // as placement::mirrored says) enter at rank 0, the rest at rank P-1; in
    // DualPipeV every micro-batch travels both legs.
    held_[0] = v_shape ? microbatches : microbatches / 2;
    held_[1] = v_shape ? microbatches : microbatches - microbatches / 2;
    const int h = v_shape ? ranks : ranks / 2;
    walked_ = held_[1] > 2 * h ? held_[1] : 2 * h;
    for (int dir = 0; dir < 2; ++dir)
      skipped_[dir] = padding == padding_chunks::first ? walked_ - held_[dir] : 0;
  }

  constexpr void run() {
    // DualPipeV is DualPipe with h -> P, k -> r, N/2 -> N, P -> 2P and the
    // middle ranks replaced by the last rank.
    const int h = v_ ? P_ : P_ / 2;
    const int k = v_ ? r_ : (r_ < P_ - 1 - r_ ? r_ : P_ - 1 - r_);
    const int per_direction = walked_;
    const bool middle = v_ ? last_rank_ : (r_ == P_ / 2 - 1 || r_ == P_ / 2);

    // Step 1: warm-up forwards of phase 0.
    for (int i = 0; i < 2 * (h - k - 1); ++i) forward_chunk(0);

    // Step 2: forward phase 0, forward phase 1.
    const int step_2 = k + 1;
    recv_forward(0);
    for (int i = 0; i < step_2; ++i) {
      forward_chunk(0, false, middle);
      recv_forward(0);
      forward_chunk(1, true, !middle || i < step_2 - 1);
      if (!middle) send_forward(0);
    }

    // Step 3: backward-input of phase 1, one weight gradient, forward phase 1.
    for (int i = 0; i < h - k - 1; ++i) {
      backward_chunk(1, true);
      recv_forward(1);
      weight_chunk();
      forward_chunk(1, false);
    }

    // Step 4: the steady state of overlapped pairs.
    const int step_4 = per_direction - 2 * h + k + 1;
    for (int i = 0; i < step_4; ++i) {
      if (i == 0) {
        if (middle) {
          // Not overlapped, as in the reference, to shrink the bubble.
          forward_chunk(0, false, false);
          send_forward(1);
          backward_chunk(1, false, true, false);
          send_forward(0);
          send_backward(1);
        } else {
          forward_backward_chunk(0, 1, false);
        }
      } else {
        forward_backward_chunk(0, 1);
      }
      forward_backward_chunk(1, 0);
    }

    // Step 5: backward phase 1, then an overlapped (F phase 1, B phase 0).
    for (int i = 0; i < h - k - 1; ++i) {
      backward_chunk(1);
      forward_backward_chunk(1, 0);
    }

    // Step 6: backward phase 1, backward phase 0; the second half defers W.
    const int step_6 = k + 1;
    bool defer = false;
    for (int i = 0; i < step_6; ++i) {
      if (i == step_6 / 2 && k % 2 == 1) defer = true;
      backward_chunk(1, defer);
      if (i == step_6 / 2 && k % 2 == 0) defer = true;
      backward_chunk(0, defer);
    }

    // Step 7: one weight gradient, then backward-input of phase 0.
    for (int i = 0; i < h - k - 1; ++i) {
      weight_chunk();
      backward_chunk(0, true);
    }

    // Step 8: the remaining weight gradients.
    for (int i = 0; i < k + 1; ++i) weight_chunk();

    commit();
  }

 private:
  struct direction_counters {
    int forward = 0, backward = 0, send_f = 0, send_b = 0, recv_f = 0, recv_b = 0;
  };

  [[nodiscard]] constexpr int direction(int phase) const noexcept {
    return second_half_ ? phase ^ 1 : phase;
  }
  [[nodiscard]] constexpr int stage_of(int dir) const noexcept {
    if (v_) return dir == 0 ? r_ : 2 * P_ - 1 - r_;
    return dir == 0 ? r_ : P_ - 1 - r_;
  }
  // The micro-batch of a direction's chunk-th, or dropped for padding.
  static constexpr int dropped = -1;
  [[nodiscard]] constexpr int microbatch_of(int dir, int chunk) const noexcept {
    const int real = chunk - skipped_[dir];
    if (real < 0 || real >= held_[dir]) return dropped;
    return (!v_ && dir == 1) ? held_[0] + real : real;
  }
  [[nodiscard]] constexpr bool first_stage(int dir) const noexcept {
    if (v_) return first_rank_ && dir == 0;
    return (first_rank_ && dir == 0) || (last_rank_ && dir == 1);
  }
  [[nodiscard]] constexpr bool last_stage(int dir) const noexcept {
    if (v_) return first_rank_ && dir == 1;
    return (first_rank_ && dir == 1) || (last_rank_ && dir == 0);
  }
  // DualPipeV's tip: the last rank hands stage P-1's output to stage P (and
  // the gradient back) without communication.
  [[nodiscard]] constexpr bool local_output(int dir) const noexcept {
    return v_ && last_rank_ && dir == 0;
  }
  [[nodiscard]] constexpr bool local_input(int dir) const noexcept {
    return v_ && last_rank_ && dir == 1;
  }
  [[nodiscard]] constexpr int downstream(int dir) const noexcept {
    return dir == 0 ? r_ + 1 : r_ - 1;
  }
  [[nodiscard]] constexpr int upstream(int dir) const noexcept {
    return dir == 0 ? r_ - 1 : r_ + 1;
  }

  constexpr void post(op kind, int dir, int chunk, int peer) {
    const int mb = microbatch_of(dir, chunk);
    if (mb == dropped) return;
    ++pending_;
    if (opt_.with_communication) emit_(make_communication(kind, stage_of(dir), mb, peer));
  }
  constexpr void commit() {
    if (pending_ == 0) return;
    pending_ = 0;
    if (opt_.with_communication) emit_(make_commit());
  }

  constexpr void recv_forward(int phase) {
    const int dir = direction(phase);
    if (first_stage(dir) || local_input(dir)) return;
    post(op::recv_forward, dir, count_[dir].recv_f++, upstream(dir));
  }
  constexpr void send_forward(int phase) {
    const int dir = direction(phase);
    if (last_stage(dir) || local_output(dir)) return;
    post(op::send_forward, dir, count_[dir].send_f++, downstream(dir));
  }
  constexpr void recv_backward(int phase) {
    if (opt_.forward_only) return;
    const int dir = direction(phase);
    if (last_stage(dir) || local_output(dir)) return;
    post(op::recv_backward, dir, count_[dir].recv_b++, downstream(dir));
  }
  constexpr void send_backward(int phase) {
    if (opt_.forward_only) return;
    const int dir = direction(phase);
    if (first_stage(dir) || local_input(dir)) return;
    post(op::send_backward, dir, count_[dir].send_b++, upstream(dir));
  }

  constexpr void forward_compute(int phase) {
    const int dir = direction(phase);
    const int mb = microbatch_of(dir, count_[dir].forward++);
    if (mb != dropped) emit_(make_forward(stage_of(dir), mb));
  }
  constexpr void backward_compute(int phase, bool defer_weight) {
    if (opt_.forward_only) return;
    const int dir = direction(phase);
    const int stage = stage_of(dir);
    const int mb = microbatch_of(dir, count_[dir].backward++);
    if (defer_weight) {
      deferred_.defer(stage, mb);  // a dropped one too: later Ws keep their slots
      if (mb != dropped) emit_(make_backward_input(stage, mb));
    } else if (mb != dropped) {
      emit_(make_backward(stage, mb));
    }
  }
  constexpr void forward_backward_compute(int phase_f, int phase_b) {
    if (opt_.forward_only) {
      forward_compute(phase_f);
      return;
    }
    const int dir_f = direction(phase_f);
    const int dir_b = direction(phase_b);
    const int f_mb = microbatch_of(dir_f, count_[dir_f].forward++);
    const int b_mb = microbatch_of(dir_b, count_[dir_b].backward++);
    if (f_mb != dropped && b_mb != dropped)
      emit_(make_overlapped(stage_of(dir_f), f_mb, stage_of(dir_b), b_mb));
    else if (f_mb != dropped)
      emit_(make_forward(stage_of(dir_f), f_mb));
    else if (b_mb != dropped)
      emit_(make_backward(stage_of(dir_b), b_mb));
  }

  constexpr void forward_chunk(int phase, bool recv = true, bool send = true) {
    if (recv) recv_forward(phase);
    commit();
    forward_compute(phase);
    if (send) send_forward(phase);
  }
  constexpr void backward_chunk(int phase, bool defer_weight = false, bool recv = true,
                                bool send = true) {
    if (recv) recv_backward(phase);
    commit();
    backward_compute(phase, defer_weight);
    if (send) send_backward(phase);
  }
  constexpr void forward_backward_chunk(int phase_f, int phase_b, bool recv_f = true) {
    if (recv_f) recv_forward(phase_f);
    recv_backward(phase_b);
    commit();
    forward_backward_compute(phase_f, phase_b);
    send_forward(phase_f);
    send_backward(phase_b);
  }
  constexpr void weight_chunk() {
    if (opt_.forward_only) return;
    commit();
    const deferred_weight oldest = deferred_.pop();
    if (oldest.microbatch != dropped) emit_(make_backward_weight(oldest.stage, oldest.microbatch));
  }

  int P_;
  bool v_;
  generator_options opt_;
  int r_;
  Emit emit_;
  bool second_half_, first_rank_, last_rank_;
  int held_[2]{};     // real micro-batches per direction
  int walked_ = 0;    // micro-batches per direction the reference's walk takes
  int skipped_[2]{};  // padding chunks before the real ones, per direction
  direction_counters count_[2]{};
  int pending_ = 0;
  deferred_weights deferred_{};
};

}  // namespace detail

// DualPipe on `ranks` ranks with `microbatches` micro-batches: rank r holds
// stages r and P-1-r, half the micro-batches enter at each end. A structural
// type: usable as a template argument of make_static_table. It emits its own
// communication (emit_rank), in the reference's order.
struct dualpipe_generator {
  std::int32_t ranks = 0;
  std::int32_t microbatches = 0;
  generator_options options{};

  static constexpr schedule_kind kind{"dualpipe", "DualPipe", placement::mirrored};
  static constexpr std::string_view summary =
      "DualPipe: rank r holds stages r and P-1-r; P even, N >= 1";

  // The first rule (P, N) break, as a sentence, or an empty view.
  [[nodiscard]] constexpr std::string_view violation() const noexcept {
    return detail::dualpipe_violation(ranks, microbatches, false);
  }
  [[nodiscard]] constexpr int stages() const noexcept { return ranks; }

  template <class Emit>
  constexpr void emit_rank(int rank, Emit emit) const {
    detail::dualpipe_rank_walk<Emit>(ranks, microbatches, false, options, rank, emit).run();
  }
};

// DualPipeV (the V-shape "cut-in-half" DualPipe) on `ranks` ranks: 2P stages
// in a V, rank r holding stages r and 2P-1-r, every micro-batch entering at
// rank 0. Same walk as DualPipe, folded.
struct dualpipev_generator {
  std::int32_t ranks = 0;
  std::int32_t microbatches = 0;
  generator_options options{};

  static constexpr schedule_kind kind{"dualpipev", "DualPipeV", placement::v_shape};
  static constexpr std::string_view summary =
      "DualPipeV: 2P stages in a V, rank r holds r and 2P-1-r; P >= 1, N >= 1";

  // The first rule (P, N) break, as a sentence, or an empty view.
  [[nodiscard]] constexpr std::string_view violation() const noexcept {
    return detail::dualpipe_violation(ranks, microbatches, true);
  }
  [[nodiscard]] constexpr int stages() const noexcept { return 2 * ranks; }

  template <class Emit>
  constexpr void emit_rank(int rank, Emit emit) const {
    detail::dualpipe_rank_walk<Emit>(ranks, microbatches, true, options, rank, emit).run();
  }
};

namespace schedules {

// Run time: throws std::invalid_argument for an invalid (P, N).
[[nodiscard]] inline schedule_table dualpipe(int ranks, int microbatches,
                                             generator_options options = {}) {
  return make_table(dualpipe_generator{ranks, microbatches, options});
}
[[nodiscard]] inline schedule_table dualpipev(int ranks, int microbatches,
                                              generator_options options = {}) {
  return make_table(dualpipev_generator{ranks, microbatches, options});
}

// Compile time: sizes that break a rule are a compile error that names it.
template <int P, int N, generator_options Options = generator_options{}>
[[nodiscard]] constexpr auto dualpipe_table() {
  return make_checked_static_table<dualpipe_generator{P, N, Options}>();
}
template <int P, int N, generator_options Options = generator_options{}>
[[nodiscard]] constexpr auto dualpipev_table() {
  return make_checked_static_table<dualpipev_generator{P, N, Options}>();
}

}  // namespace schedules
}  // namespace dualpipe
