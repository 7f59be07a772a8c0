// simulate(table, costs): a discrete-event cost model of one pipeline step.
// Every compute instruction takes a fixed time from the cost model and starts
// when its rank is free and its inputs exist; the result is the makespan, each
// rank's busy time, bubble and peak activations, and the whole timeline.
// constexpr: `static_assert(simulate(t, costs).bubble_max <= 21.0)` works, and
// simulate_summary() returns a fixed-size result for constexpr variables.
//
// The model is dataflow plus latency, not the commit protocol: SEND_*, RECV_*
// and COMMIT instructions are ignored, and a dependency that crosses ranks
// costs `comm` time units whatever batch it would travel in. validate() is the
// judge of whether the communication itself can run.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "dualpipe/analysis/activations.hpp"
#include "dualpipe/analysis/costs.hpp"
#include "dualpipe/schedule/action_syntax.hpp"
#include "dualpipe/schedule/instruction.hpp"
#include "dualpipe/schedule/table.hpp"

namespace dualpipe {

// One compute instruction placed in time.
struct timed_instruction {
  int rank = 0;
  int index = 0;  // position in the rank's instruction list (communication included)
  instruction what{};
  double start = 0.0;
  double end = 0.0;
};

struct rank_summary {
  int rank = 0;
  double busy = 0.0;         // sum of the rank's compute times
  double bubble = 0.0;       // makespan - busy: time the rank waits or has finished
  int peak_activations = 0;  // as peak_activations(table, rank), in stages' activations
  int parameter_copies = 0;  // distinct stages the rank holds, in stages' parameters
  int computes = 0;          // compute instructions run (an overlapped pair is one)
};

struct simulation {
  double makespan = 0.0;    // when the last compute of any rank ends
  double bubble_max = 0.0;  // the largest rank bubble
  double bubble_min = 0.0;  // the smallest rank bubble
  std::vector<rank_summary> ranks;
  std::vector<timed_instruction> timeline;  // rank 0's computes in order, then rank 1's, ...
};

// The part of a simulation that fits in a literal type, for constexpr variables.
template <std::size_t Ranks>
struct simulation_summary {
  double makespan = 0.0;
  double bubble_max = 0.0;
  double bubble_min = 0.0;
  std::array<rank_summary, Ranks> ranks{};
};

namespace detail {

// The event loop. Each rank runs its compute list in order; a rank that meets
// an instruction whose input does not exist yet parks on that input, and the
// producer wakes it when it finishes. Because a start time depends only on
// the rank's previous end and the inputs' end times, the order in which ranks
// are advanced does not change the result.
class simulator {
 public:
  constexpr simulator(table_view t, const cost_model& c) : t_(t), costs_(c) {}

  constexpr simulation run() {
    P_ = t_.ranks();
    S_ = t_.stages();
    N_ = t_.microbatches();
    // A view whose offsets do not cover its instructions would read out of bounds.
    if (const std::string_view why = shape_violation(t_); !why.empty())
      throw std::invalid_argument("dualpipe::simulate: " + std::string(why));
    check_costs(costs_, S_);

    const std::size_t cells = static_cast<std::size_t>(S_) * static_cast<std::size_t>(N_);
    cell_.assign(cells, cell_state{});
    ranks_.assign(static_cast<std::size_t>(P_), rank_state{});

    // The timeline has one slot per compute, grouped by rank.
    std::size_t total = 0;
    for (int r = 0; r < P_; ++r) {
      rank_state& st = ranks_[static_cast<std::size_t>(r)];
      st.first_slot = total;
      for (const instruction& x : t_.rank(r))
        if (is_compute(x.kind)) ++total;
      st.next_slot = st.first_slot;
    }
    out_.timeline.assign(total, timed_instruction{});

    for (int r = P_ - 1; r >= 0; --r) wake(r);
    for (;;) {
      while (!ready_.empty()) {
        const int r = ready_.back();
        ready_.pop_back();
        ranks_[static_cast<std::size_t>(r)].queued = false;
        advance(r);
      }
      // A producer wakes the rank parked on its output. Only a malformed
      // table parks two ranks on one output; one more sweep finds the other.
      bool progressed = false;
      for (int r = 0; r < P_; ++r) {
        const rank_state& st = ranks_[static_cast<std::size_t>(r)];
        if (st.pc < static_cast<int>(t_.rank(r).size()) && ready_at(r).known) {
          wake(r);
          progressed = true;
        }
      }
      if (!progressed) break;
    }
    for (int r = 0; r < P_; ++r)
      if (ranks_[static_cast<std::size_t>(r)].pc < static_cast<int>(t_.rank(r).size()))
        throw std::invalid_argument(stuck_message());
    check_complete();

    summarize();
    return std::move(out_);
  }

 private:
  struct cell_state {
    double forward_end = 0.0, backward_end = 0.0;
    int forward_rank = -1, backward_rank = -1;  // who ran it; -1: not yet
    bool deferred = false;                      // the backward was an I: a W is owed
    bool weight_done = false;
    int forward_waiter = -1, backward_waiter = -1;  // a rank parked on this output
  };
  struct rank_state {
    int pc = 0;
    double clock = 0.0;  // when the rank's previous compute ends
    std::size_t first_slot = 0, next_slot = 0;
    bool queued = false;
  };
  // When an instruction may start as far as its inputs go, or which input it
  // still needs.
  struct readiness {
    bool known = true;
    double time = 0.0;
    op missing_kind = op::forward;
    int missing_stage = -1, missing_mb = -1;
  };

  [[nodiscard]] constexpr std::size_t key(int s, int m) const {
    return static_cast<std::size_t>(s) * static_cast<std::size_t>(N_) + static_cast<std::size_t>(m);
  }

  constexpr void wake(int r) {
    if (r < 0) return;
    rank_state& st = ranks_[static_cast<std::size_t>(r)];
    if (st.queued) return;
    st.queued = true;
    ready_.push_back(r);
  }

  constexpr void check_cell(int r, int index, const instruction& x, int s, int m) const {
    if (s < 0 || s >= S_ || m < 0 || m >= N_)
      throw std::invalid_argument(
          failure(r, index, x, "stage or micro-batch outside the table's sizes"));
  }

  // Inputs of the forward of (s, m) on rank r.
  [[nodiscard]] constexpr readiness forward_inputs(int r, int s, int m) const {
    readiness at;
    if (s == 0) return at;
    const cell_state& in = cell_[key(s - 1, m)];
    if (in.forward_rank < 0) return {false, 0.0, op::forward, s - 1, m};
    at.time = in.forward_end + (in.forward_rank != r ? costs_.comm : 0.0);
    return at;
  }

  // Inputs of the backward (B or I) of (s, m) on rank r: its own forward and
  // the next stage's input gradient (the loss, on the last stage).
  [[nodiscard]] constexpr readiness backward_inputs(int r, int s, int m) const {
    readiness at;
    const cell_state& own = cell_[key(s, m)];
    if (own.forward_rank < 0) return {false, 0.0, op::forward, s, m};
    at.time = own.forward_end + (own.forward_rank != r ? costs_.comm : 0.0);
    if (s == S_ - 1) return at;
    const cell_state& in = cell_[key(s + 1, m)];
    if (in.backward_rank < 0) return {false, 0.0, op::backward, s + 1, m};
    at.time = std::max(at.time, in.backward_end + (in.backward_rank != r ? costs_.comm : 0.0));
    return at;
  }

  [[nodiscard]] constexpr readiness ready_at(int r) const {
    const auto list = t_.rank(r);
    int pc = ranks_[static_cast<std::size_t>(r)].pc;
    while (pc < static_cast<int>(list.size()) &&
           !is_compute(list[static_cast<std::size_t>(pc)].kind))
      ++pc;
    if (pc >= static_cast<int>(list.size())) return {};
    return inputs(r, list[static_cast<std::size_t>(pc)]);
  }

  [[nodiscard]] constexpr readiness inputs(int r, const instruction& x) const {
    switch (x.kind) {
      case op::forward:
        return forward_inputs(r, x.stage, x.microbatch);
      case op::backward:
      case op::backward_input:
        return backward_inputs(r, x.stage, x.microbatch);
      case op::backward_weight: {
        const cell_state& c = cell_[key(x.stage, x.microbatch)];
        if (c.backward_rank < 0) return {false, 0.0, op::backward_input, x.stage, x.microbatch};
        return {true, c.backward_end, op::forward, -1, -1};
      }
      case op::overlapped_forward_backward: {
        const readiness f = forward_inputs(r, x.stage, x.microbatch);
        if (!f.known) return f;
        readiness b = backward_inputs(r, x.stage_b, x.microbatch_b);
        if (!b.known) return b;
        b.time = std::max(b.time, f.time);
        return b;
      }
      default:
        return {};
    }
  }

  [[nodiscard]] constexpr double duration(const instruction& x) const {
    switch (x.kind) {
      case op::forward:
        return costs_.of_stage(x.stage).forward;
      case op::backward:
        return costs_.of_stage(x.stage).backward;
      case op::backward_input: {
        const stage_costs c = costs_.of_stage(x.stage);
        return c.backward - c.weight;
      }
      case op::backward_weight:
        return costs_.of_stage(x.stage).weight;
      case op::overlapped_forward_backward:
        return (costs_.of_stage(x.stage).overlapped + costs_.of_stage(x.stage_b).overlapped) / 2.0;
      default:
        return 0.0;
    }
  }

  // Runs rank r until it finishes or meets an input that does not exist yet.
  constexpr void advance(int r) {
    rank_state& st = ranks_[static_cast<std::size_t>(r)];
    const auto list = t_.rank(r);
    while (st.pc < static_cast<int>(list.size())) {
      const int index = st.pc;
      const instruction& x = list[static_cast<std::size_t>(index)];
      if (!is_compute(x.kind)) {
        ++st.pc;
        continue;
      }
      check_cell(r, index, x, x.stage, x.microbatch);
      if (x.kind == op::overlapped_forward_backward)
        check_cell(r, index, x, x.stage_b, x.microbatch_b);
      const readiness at = inputs(r, x);
      if (!at.known) {
        cell_state& needed = cell_[key(at.missing_stage, at.missing_mb)];
        (at.missing_kind == op::forward ? needed.forward_waiter : needed.backward_waiter) = r;
        return;
      }
      const double start = std::max(st.clock, at.time);
      const double end = start + duration(x);
      finish(r, index, x, end);
      out_.timeline[st.next_slot++] = {r, index, x, start, end};
      st.clock = end;
      ++st.pc;
    }
  }

  constexpr void finish_forward(int r, int index, const instruction& x, int s, int m, double end) {
    cell_state& c = cell_[key(s, m)];
    if (c.forward_rank >= 0)
      throw std::invalid_argument(
          failure(r, index, x, "a second forward of one (stage, micro-batch)"));
    c.forward_rank = r;
    c.forward_end = end;
    wake(c.forward_waiter);
  }
  constexpr void finish_backward(int r, int index, const instruction& x, int s, int m, double end,
                                 bool deferred) {
    cell_state& c = cell_[key(s, m)];
    if (c.backward_rank >= 0)
      throw std::invalid_argument(
          failure(r, index, x, "a second backward of one (stage, micro-batch)"));
    c.backward_rank = r;
    c.backward_end = end;
    c.deferred = deferred;
    wake(c.backward_waiter);
  }

  constexpr void finish(int r, int index, const instruction& x, double end) {
    switch (x.kind) {
      case op::forward:
        finish_forward(r, index, x, x.stage, x.microbatch, end);
        break;
      case op::backward:
        finish_backward(r, index, x, x.stage, x.microbatch, end, false);
        break;
      case op::backward_input:
        finish_backward(r, index, x, x.stage, x.microbatch, end, true);
        break;
      case op::backward_weight: {
        cell_state& c = cell_[key(x.stage, x.microbatch)];
        if (!c.deferred)
          throw std::invalid_argument(
              failure(r, index, x,
                      "a W for a micro-batch whose backward was not split (it ran as a full B)"));
        if (c.weight_done)
          throw std::invalid_argument(
              failure(r, index, x, "a second W of one (stage, micro-batch)"));
        c.weight_done = true;
        break;
      }
      case op::overlapped_forward_backward:
        finish_forward(r, index, x, x.stage, x.microbatch, end);
        finish_backward(r, index, x, x.stage_b, x.microbatch_b, end, false);
        break;
      default:
        break;
    }
  }

  // The message for an error at rank r's instruction `index`.
  [[nodiscard]] static constexpr std::string failure(int r, int index, const instruction& x,
                                                     std::string_view why) {
    std::string m = "dualpipe::simulate: rank ";
    append_int(m, r);
    m += ", instruction ";
    append_int(m, index);
    m += " (" + format_action(x) + "): ";
    m += why;
    return m;
  }

  // Every rank ran to its end: did each (stage, micro-batch) get its forward
  // and, in training, its backward (B or I) and, after an I, its W? A table
  // that leaves work undone has no step time to report; the first piece of
  // it is named in validate()'s order and words.
  constexpr void check_complete() const {
    for (int s = 0; s < S_; ++s)
      for (int m = 0; m < N_; ++m) {
        const cell_state& c = cell_[key(s, m)];
        if (c.forward_rank < 0)
          throw std::invalid_argument(undone("a forward never runs", make_forward(s, m)));
        if (t_.info.forward_only) continue;
        if (c.backward_rank < 0)
          throw std::invalid_argument(
              undone("a backward (B or I) never runs", make_backward(s, m)));
        if (c.deferred && !c.weight_done)
          throw std::invalid_argument(
              undone("a deferred weight gradient (W) never runs", make_backward_weight(s, m)));
      }
  }

  [[nodiscard]] constexpr std::string undone(std::string_view what, const instruction& x) const {
    std::string m = "dualpipe::simulate: the table runs to its end but leaves work undone: ";
    m += what;
    m += "; expected " + format_action(x);
    if (const int owner = t_.rank_of(x.stage, x.microbatch); owner >= 0) {
      m += " on rank ";
      append_int(m, owner);
    }
    return m;
  }

  // Names every rank that stopped and the input it waits for.
  [[nodiscard]] constexpr std::string stuck_message() const {
    std::string m =
        "dualpipe::simulate: the table cannot run to the end (a cyclic or missing dependency):";
    bool first = true;
    for (int r = 0; r < P_; ++r) {
      const auto list = t_.rank(r);
      const int pc = ranks_[static_cast<std::size_t>(r)].pc;
      if (pc >= static_cast<int>(list.size())) continue;
      const instruction& x = list[static_cast<std::size_t>(pc)];
      const readiness at = inputs(r, x);
      m += first ? " " : "; ";
      first = false;
      m += "rank ";
      append_int(m, r);
      m += " waits at instruction ";
      append_int(m, pc);
      m += " (" + format_action(x) + ") for ";
      instruction needed{at.missing_kind, at.missing_stage, at.missing_mb, -1, -1, -1};
      m += format_action(needed);
      if (at.missing_kind == op::backward) m += " or its I";
      const int owner = t_.rank_of(at.missing_stage, at.missing_mb);
      if (owner >= 0) {
        m += " (rank ";
        append_int(m, owner);
        m += ")";
      }
    }
    return m;
  }

  constexpr void summarize() {
    double makespan = 0.0;
    for (const timed_instruction& e : out_.timeline) makespan = std::max(makespan, e.end);
    out_.makespan = makespan;
    out_.ranks.assign(static_cast<std::size_t>(P_), rank_summary{});
    std::vector<bool> holds(static_cast<std::size_t>(S_));
    for (int r = 0; r < P_; ++r) {
      const rank_state& st = ranks_[static_cast<std::size_t>(r)];
      rank_summary& sum = out_.ranks[static_cast<std::size_t>(r)];
      sum.rank = r;
      for (std::size_t i = st.first_slot; i < st.next_slot; ++i) {
        const timed_instruction& e = out_.timeline[i];
        sum.busy += e.end - e.start;
        ++sum.computes;
      }
      sum.bubble = makespan - sum.busy;
      sum.peak_activations = peak_activations(t_, r);
      std::fill(holds.begin(), holds.end(), false);
      for (const instruction& x : t_.rank(r)) {
        if (!is_compute(x.kind)) continue;
        holds[static_cast<std::size_t>(x.stage)] = true;
        if (x.kind == op::overlapped_forward_backward)
          holds[static_cast<std::size_t>(x.stage_b)] = true;
      }
      sum.parameter_copies = static_cast<int>(std::count(holds.begin(), holds.end(), true));
    }
    out_.bubble_max = 0.0;
    out_.bubble_min = makespan;
    for (const rank_summary& sum : out_.ranks) {
      out_.bubble_max = std::max(out_.bubble_max, sum.bubble);
      out_.bubble_min = std::min(out_.bubble_min, sum.bubble);
    }
  }

  table_view t_;
  cost_model costs_;
  int P_ = 0, S_ = 0, N_ = 0;
  std::vector<cell_state> cell_;
  std::vector<rank_state> ranks_;
  std::vector<int> ready_;
  simulation out_{};
};

}  // namespace detail

// Simulates one step of `table` under `costs`. Throws std::invalid_argument
// for invalid costs, for a compute outside the table's sizes, for a second F,
// B/I or W of one (stage, micro-batch), for a table that cannot run to the
// end (the message names every stopped rank and the input it waits for), and
// for one that runs to its end but leaves a forward, a backward (B or I) or a
// deferred W undone (the message names the first; forward-only tables owe
// only forwards).
[[nodiscard]] constexpr simulation simulate(table_view table, const cost_model& costs = {}) {
  return detail::simulator(table, costs).run();
}

// The same, keeping only what a constexpr variable can hold.
template <std::size_t Ranks, std::size_t Total>
[[nodiscard]] constexpr simulation_summary<Ranks> simulate_summary(
    const static_table<Ranks, Total>& table, const cost_model& costs = {}) {
  const simulation full = simulate(table.view(), costs);
  simulation_summary<Ranks> out;
  out.makespan = full.makespan;
  out.bubble_max = full.bubble_max;
  out.bubble_min = full.bubble_min;
  for (std::size_t r = 0; r < Ranks; ++r) out.ranks[r] = full.ranks[r];
  return out;
}

}  // namespace dualpipe
