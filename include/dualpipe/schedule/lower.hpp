// Communication lowering, unchecked: turns a valid compute-only table into an
// executable one, with SEND_*/RECV_* posted and COMMIT batches placed so that
// the blocking protocol (a commit launches every posted operation and waits
// for all of them; the k-th send A->B pairs with the k-th receive on B from
// A) cannot deadlock. The generators lower their own compute orders with it
// (build.hpp). Tables from elsewhere go through passes/lower_communication.hpp,
// which validates its input first and names what is wrong.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "dualpipe/schedule/instruction.hpp"
#include "dualpipe/schedule/table.hpp"

namespace dualpipe {

namespace detail {

// Why the placement below cannot deadlock. The compute order is first run in
// lock-step rounds: in each round every rank runs its next compute if all of
// its inputs were produced in an earlier round. A value produced in round p is
// exchanged at boundary p+1, which both ends place between their computes of
// rounds <= p and their computes of rounds >= p+1; everything a rank posts
// between two of its computes is one batch with one commit. By induction on
// the round, every operation of boundary <= t is launched once all computes of
// rounds < t have run, so the batch in front of a round-t compute only waits
// on launched partners, and its inputs all arrived at boundaries <= t.
// Within a batch, operations follow the global (round, producing rank,
// producing compute) order, the same on both ends of each pair of ranks, so
// the k-th send from A to B meets the k-th receive on B from A.
struct posted_transfer {
  instruction action;
  std::int64_t boundary;  // lands after the rank's computes of earlier rounds
};

// Lowers ranks [first, last) of a valid compute-only table (validate() holds
// and it has no communication): emit(instruction) for each instruction of each of
// those ranks in order, end_rank() after each. Generators at compile time ask
// for one rank at a time, so only the kept ranks' operations are stored;
// everything here is written to stay cheap under the constexpr limits.
template <class Emit, class EndRank>
constexpr void lower_ranks(table_view compute_only, int first, int last, Emit emit,
                           EndRank end_rank) {
  const table_view& t = compute_only;
  const int P = t.ranks();
  const int S = t.stages();
  const std::size_t N = static_cast<std::size_t>(t.microbatches());
  const bool forward_only = t.info.forward_only;
  const auto key = [N](int s, int m) {
    return static_cast<std::size_t>(s) * N + static_cast<std::size_t>(m);
  };

  // The round in which each (stage, micro-batch) ran its forward and its
  // backward (B, I or the backward half of an overlapped pair), and in which
  // each compute of a kept rank ran; -1: not yet.
  std::vector<std::int64_t> forward_round(static_cast<std::size_t>(S) * N, -1);
  std::vector<std::int64_t> backward_round(static_cast<std::size_t>(S) * N, -1);
  const std::size_t kept_begin = t.offsets[static_cast<std::size_t>(first)];
  std::vector<std::int64_t> compute_round(t.offsets[static_cast<std::size_t>(last)] - kept_begin,
                                          -1);
  std::vector<std::size_t> next(static_cast<std::size_t>(P), 0);
  std::vector<std::vector<posted_transfer>> posted(static_cast<std::size_t>(last - first));

  std::size_t remaining = t.instructions.size();
  for (std::int64_t round = 0; remaining > 0; ++round) {
    const auto done_before = [round](std::int64_t r) { return r >= 0 && r < round; };
    const auto forward_ready = [&](int s, int m) {
      return s == 0 || done_before(forward_round[key(s - 1, m)]);
    };
    const auto backward_ready = [&](int s, int m) {
      return done_before(forward_round[key(s, m)]) &&
             (s == S - 1 || done_before(backward_round[key(s + 1, m)]));
    };
    // Both ends of a value produced in this round meet at boundary round+1.
    const auto transfer = [&](int from, int to, instruction send, instruction recv) {
      if (from >= first && from < last)
        posted[static_cast<std::size_t>(from - first)].push_back({send, round + 1});
      if (to >= first && to < last)
        posted[static_cast<std::size_t>(to - first)].push_back({recv, round + 1});
    };
    // A forward's output goes to the next stage, a backward's input gradient
    // to the previous one; hand-offs between stages of one rank stay local.
    const auto forward_output = [&](int r, int s, int m) {
      if (s + 1 >= S) return;
      const int to = t.rank_of(s + 1, m);
      if (to == r) return;
      transfer(r, to, make_communication(op::send_forward, s, m, to),
               make_communication(op::recv_forward, s + 1, m, r));
    };
    const auto backward_output = [&](int r, int s, int m) {
      if (forward_only || s == 0) return;
      const int to = t.rank_of(s - 1, m);
      if (to == r) return;
      transfer(r, to, make_communication(op::send_backward, s, m, to),
               make_communication(op::recv_backward, s - 1, m, r));
    };

    bool progressed = false;
    for (int r = 0; r < P; ++r) {
      const std::size_t begin = t.offsets[static_cast<std::size_t>(r)];
      const std::size_t size = t.offsets[static_cast<std::size_t>(r) + 1] - begin;
      std::size_t& pc = next[static_cast<std::size_t>(r)];
      if (pc >= size) continue;
      const instruction& x = t.instructions[begin + pc];
      switch (x.kind) {
        case op::forward:
          if (!forward_ready(x.stage, x.microbatch)) continue;
          forward_round[key(x.stage, x.microbatch)] = round;
          forward_output(r, x.stage, x.microbatch);
          break;
        case op::backward:
        case op::backward_input:
          if (!backward_ready(x.stage, x.microbatch)) continue;
          backward_round[key(x.stage, x.microbatch)] = round;
          backward_output(r, x.stage, x.microbatch);
          break;
        case op::overlapped_forward_backward:
          if (!forward_ready(x.stage, x.microbatch) ||
              !backward_ready(x.stage_b, x.microbatch_b))
            continue;
          forward_round[key(x.stage, x.microbatch)] = round;
          backward_round[key(x.stage_b, x.microbatch_b)] = round;
          forward_output(r, x.stage, x.microbatch);
          backward_output(r, x.stage_b, x.microbatch_b);
          break;
        case op::backward_weight: break;  // its backward-input ran earlier on this rank
        default: throw std::logic_error("dualpipe: lowering met a non-compute instruction");
      }
      if (r >= first && r < last) compute_round[begin + pc - kept_begin] = round;
      ++pc;
      --remaining;
      progressed = true;
    }
    if (!progressed)
      throw std::logic_error("dualpipe: lowering found no runnable compute (unvalidated input)");
  }

  for (int r = first; r < last; ++r) {
    const std::size_t begin = t.offsets[static_cast<std::size_t>(r)];
    const std::size_t size = t.offsets[static_cast<std::size_t>(r) + 1] - begin;
    const auto& ops = posted[static_cast<std::size_t>(r - first)];
    std::size_t j = 0;
    for (std::size_t i = 0; i <= size; ++i) {
      // The batch in front of compute i: every operation whose boundary is
      // not after i's round (all that are left, after the last compute).
      std::size_t end = j;
      if (i == size) {
        end = ops.size();
      } else {
        const std::int64_t round = compute_round[begin + i - kept_begin];
        while (end < ops.size() && ops[end].boundary <= round) ++end;
      }
      // Sends first, fusing the previous compute's outputs with the next
      // compute's inputs; each kind keeps the global order.
      for (std::size_t k = j; k < end; ++k)
        if (is_send(ops[k].action.kind)) emit(ops[k].action);
      for (std::size_t k = j; k < end; ++k)
        if (is_recv(ops[k].action.kind)) emit(ops[k].action);
      if (end > j) emit(make_commit());
      j = end;
      if (i < size) emit(t.instructions[begin + i]);
    }
    end_rank();
  }
}

}  // namespace detail
}  // namespace dualpipe
