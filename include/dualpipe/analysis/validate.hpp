// validate(table): is a table a correct pipeline step? Checks shape and
// placement, exactly-once compute per (stage, micro-batch), causal order,
// FIFO weight gradients, send/receive matching in posting order, and runs the
// table under the blocking protocol to prove it cannot deadlock (or name the
// ranks that wait for each other). constexpr: usable in static_assert.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "dualpipe/analysis/validation.hpp"
#include "dualpipe/schedule/action_syntax.hpp"
#include "dualpipe/schedule/deferred_weights.hpp"
#include "dualpipe/schedule/instruction.hpp"
#include "dualpipe/schedule/table.hpp"

namespace dualpipe {

namespace detail {

struct validator {
  table_view t;
  int P = 0, S = 0, N = 0;
  bool has_comm = false;
  // Per (stage, micro-batch): index s * N + m.
  std::vector<std::uint8_t> forward_done, backward_done, weight_done, input_received,
      grad_received;
  std::vector<std::int64_t> partner;  // global index of each comm instruction's partner
  std::vector<std::uint8_t> launched;

  [[nodiscard]] constexpr std::size_t key(int s, int m) const {
    return static_cast<std::size_t>(s) * static_cast<std::size_t>(N) + static_cast<std::size_t>(m);
  }
  [[nodiscard]] constexpr std::size_t global(int r, int i) const {
    return static_cast<std::size_t>(t.offsets[static_cast<std::size_t>(r)]) +
           static_cast<std::size_t>(i);
  }

  static constexpr validation fail(rule b, int rank, int index, instruction at,
                                   std::string_view what) {
    validation v;
    v.ok = false;
    v.first.broken = b;
    v.first.rank = rank;
    v.first.index = index;
    v.first.at = at;
    v.first.what = what;
    return v;
  }
  static constexpr validation fail(rule b, int rank, int index, instruction at,
                                   std::string_view what, instruction expected,
                                   int expected_rank) {
    validation v = fail(b, rank, index, at, what);
    v.first.has_expected = true;
    v.first.expected = expected;
    v.first.expected_rank = expected_rank;
    return v;
  }

  [[nodiscard]] constexpr bool stage_ok(int s, int m) const {
    return s >= 0 && s < S && m >= 0 && m < N;
  }

  constexpr validation check_shape() const {
    if (const shape_problem why = shape_violation(t); !why.empty())
      return fail(rule::shape, why.rank, -1, {}, why.what);
    for (int s = 0; s < S; ++s)
      for (const int m : {0, N - 1}) {
        const int owner = t.rank_of(s, m);
        if (owner < 0 || owner >= P)
          return fail(rule::shape, -1, -1, make_forward(s, m), "a stage is placed on no rank");
      }
    return {};
  }

  // Placement and peers of each instruction, without regard to order.
  constexpr validation check_instruction(int r, int i, const instruction& x) const {
    if (x.kind > op::commit) return fail(rule::out_of_range, r, i, x, "unknown instruction kind");
    if (x.kind == op::commit) return {};
    if (!stage_ok(x.stage, x.microbatch))
      return fail(rule::out_of_range, r, i, x, "stage or micro-batch outside the table's sizes");
    if (x.kind == op::overlapped_forward_backward && !stage_ok(x.stage_b, x.microbatch_b))
      return fail(rule::out_of_range, r, i, x,
                  "the backward half of an overlapped pair is outside the table's sizes");
    if (t.info.forward_only && (x.kind == op::backward || x.kind == op::backward_input ||
                                x.kind == op::backward_weight ||
                                x.kind == op::overlapped_forward_backward ||
                                x.kind == op::send_backward || x.kind == op::recv_backward))
      return fail(rule::backward_in_inference, r, i, x,
                  "a forward-only table holds backward work");
    if (t.rank_of(x.stage, x.microbatch) != r)
      return fail(rule::wrong_rank, r, i, x, "the stage of this instruction runs on another rank",
                  x, t.rank_of(x.stage, x.microbatch));
    if (x.kind == op::overlapped_forward_backward && t.rank_of(x.stage_b, x.microbatch_b) != r)
      return fail(rule::wrong_rank, r, i, x,
                  "the backward half of this overlapped pair runs on another rank",
                  make_backward(x.stage_b, x.microbatch_b), t.rank_of(x.stage_b, x.microbatch_b));
    if (!is_communication(x.kind)) return {};
    const bool towards_next = x.kind == op::send_forward || x.kind == op::recv_backward;
    const int neighbour = towards_next ? x.stage + 1 : x.stage - 1;
    if (neighbour < 0 || neighbour >= S)
      return fail(rule::wrong_peer, r, i, x,
                  "communication past the first or last stage: there is no neighbouring stage");
    const int expected_peer = t.rank_of(neighbour, x.microbatch);
    if (expected_peer == r)
      return fail(rule::wrong_peer, r, i, x,
                  "communication between two stages on one rank: the hand-off is local");
    if (x.peer != expected_peer) {
      instruction e = x;
      e.peer = expected_peer;
      return fail(rule::wrong_peer, r, i, x,
                  "the peer is not the rank of the neighbouring stage", e, r);
    }
    return {};
  }

  // Pairs the k-th send from A to B with the k-th receive on B from A.
  constexpr validation match_communication() {
    struct end_point {
      int src, dst, rank, index;
      constexpr bool operator<(const end_point& o) const {
        if (src != o.src) return src < o.src;
        if (dst != o.dst) return dst < o.dst;
        return index < o.index;
      }
    };
    std::vector<end_point> sends, recvs;
    for (int r = 0; r < P; ++r) {
      const auto list = t.rank(r);
      for (int i = 0; i < static_cast<int>(list.size()); ++i) {
        const instruction& x = list[static_cast<std::size_t>(i)];
        if (is_send(x.kind)) sends.push_back({r, x.peer, r, i});
        if (is_recv(x.kind)) recvs.push_back({x.peer, r, r, i});
      }
    }
    std::sort(sends.begin(), sends.end());
    std::sort(recvs.begin(), recvs.end());
    std::size_t a = 0, b = 0;
    while (a < sends.size() || b < recvs.size()) {
      const bool take_send_only =
          b == recvs.size() ||
          (a < sends.size() && (sends[a].src < recvs[b].src ||
                                (sends[a].src == recvs[b].src && sends[a].dst < recvs[b].dst)));
      const bool take_recv_only =
          a == sends.size() ||
          (b < recvs.size() && (recvs[b].src < sends[a].src ||
                                (recvs[b].src == sends[a].src && recvs[b].dst < sends[a].dst)));
      if (take_send_only) {
        const auto& s = sends[a];
        const instruction x = t.rank(s.rank)[static_cast<std::size_t>(s.index)];
        const instruction e = counterpart(x, s.rank);
        return fail(rule::unmatched, s.rank, s.index, x, "a send has no matching receive", e,
                    s.dst);
      }
      if (take_recv_only) {
        const auto& v = recvs[b];
        const instruction x = t.rank(v.rank)[static_cast<std::size_t>(v.index)];
        const instruction e = counterpart(x, v.rank);
        return fail(rule::unmatched, v.rank, v.index, x, "a receive has no matching send", e,
                    v.src);
      }
      const auto& s = sends[a];
      const auto& v = recvs[b];
      const instruction xs = t.rank(s.rank)[static_cast<std::size_t>(s.index)];
      const instruction xr = t.rank(v.rank)[static_cast<std::size_t>(v.index)];
      const instruction e = counterpart(xs, s.rank);
      if (xr.kind != e.kind || xr.stage != e.stage || xr.microbatch != e.microbatch)
        return fail(rule::mismatched, v.rank, v.index, xr,
                    "the receive posted in this place does not match the send posted in the "
                    "same place on the peer (sends and receives pair up in posting order)",
                    e, v.rank);
      partner[global(s.rank, s.index)] = static_cast<std::int64_t>(global(v.rank, v.index));
      partner[global(v.rank, v.index)] = static_cast<std::int64_t>(global(s.rank, s.index));
      ++a;
      ++b;
    }
    return {};
  }

  struct rank_state {
    int pc = 0;
    int batch_begin = -1;  // first op of the posted, uncommitted batch
    bool batch_launched = false;
    deferred_weights deferred;
  };

  // One compute (or the half of an overlapped pair): check or await inputs.
  enum class step { done, blocked, failed };

  constexpr step forward_ready(int r, int i, const instruction& x, int s, int m, validation& out) {
    if (forward_done[key(s, m)]) {
      out = fail(rule::duplicate, r, i, x, "a second forward of one (stage, micro-batch)",
                 make_forward(s, m), r);
      return step::failed;
    }
    if (s == 0) return step::done;
    const int producer = t.rank_of(s - 1, m);
    if (producer == r || !has_comm) {
      if (forward_done[key(s - 1, m)]) return step::done;
      if (producer != r) return step::blocked;
      out = fail(rule::causality, r, i, x, "a forward runs before the previous stage's forward",
                 make_forward(s - 1, m), producer);
      return step::failed;
    }
    if (input_received[key(s, m)]) return step::done;
    out = fail(rule::causality, r, i, x,
               "a forward runs before its input was received (no committed RECV_F)",
               make_communication(op::recv_forward, s, m, producer), r);
    return step::failed;
  }

  constexpr step backward_ready(int r, int i, const instruction& x, int s, int m,
                                validation& out) {
    if (t.info.forward_only) return step::done;
    if (backward_done[key(s, m)]) {
      out = fail(rule::duplicate, r, i, x, "a second backward of one (stage, micro-batch)");
      return step::failed;
    }
    if (!forward_done[key(s, m)]) {
      out = fail(rule::causality, r, i, x, "a backward runs before its own forward",
                 make_forward(s, m), r);
      return step::failed;
    }
    if (s == S - 1) return step::done;
    const int producer = t.rank_of(s + 1, m);
    if (producer == r || !has_comm) {
      if (backward_done[key(s + 1, m)]) return step::done;
      if (producer != r) return step::blocked;
      out = fail(rule::causality, r, i, x,
                 "a backward runs before the next stage's backward produced its gradient",
                 make_backward(s + 1, m), producer);
      return step::failed;
    }
    if (grad_received[key(s, m)]) return step::done;
    out = fail(rule::causality, r, i, x,
               "a backward runs before its output gradient was received (no committed RECV_B)",
               make_communication(op::recv_backward, s, m, producer), r);
    return step::failed;
  }

  // Runs rank r as far as it can go; returns false with `out` set on a violation.
  constexpr bool advance(int r, rank_state& st, bool& progressed, validation& out) {
    const auto list = t.rank(r);
    const int size = static_cast<int>(list.size());
    while (st.pc < size) {
      const int i = st.pc;
      const instruction& x = list[static_cast<std::size_t>(i)];
      if (is_communication(x.kind)) {
        if (x.kind == op::send_forward && !forward_done[key(x.stage, x.microbatch)]) {
          out = fail(rule::causality, r, i, x, "a send of an output its forward has not produced",
                     make_forward(x.stage, x.microbatch), r);
          return false;
        }
        if (x.kind == op::send_backward && !backward_done[key(x.stage, x.microbatch)]) {
          out = fail(rule::causality, r, i, x,
                     "a send of an input gradient its backward has not produced",
                     make_backward(x.stage, x.microbatch), r);
          return false;
        }
        if (st.batch_begin < 0) st.batch_begin = i;
        ++st.pc;
        progressed = true;
        continue;
      }
      if (x.kind == op::commit) {
        if (st.batch_begin >= 0) {
          if (!st.batch_launched) {
            for (int j = st.batch_begin; j < i; ++j) launched[global(r, j)] = 1;
            st.batch_launched = true;
            progressed = true;
          }
          // Compute may sit between posts and their commit: only the posted
          // sends/receives have partners to wait for.
          for (int j = st.batch_begin; j < i; ++j)
            if (is_communication(list[static_cast<std::size_t>(j)].kind) &&
                !launched[static_cast<std::size_t>(partner[global(r, j)])])
              return true;
          for (int j = st.batch_begin; j < i; ++j) {
            const instruction& c = list[static_cast<std::size_t>(j)];
            if (c.kind == op::recv_forward) input_received[key(c.stage, c.microbatch)] = 1;
            if (c.kind == op::recv_backward) grad_received[key(c.stage, c.microbatch)] = 1;
          }
        }
        st.batch_begin = -1;
        st.batch_launched = false;
        ++st.pc;
        progressed = true;
        continue;
      }
      step st_f = step::done, st_b = step::done;
      switch (x.kind) {
        case op::forward: st_f = forward_ready(r, i, x, x.stage, x.microbatch, out); break;
        case op::backward:
        case op::backward_input:
          st_b = backward_ready(r, i, x, x.stage, x.microbatch, out);
          break;
        case op::overlapped_forward_backward:
          st_f = forward_ready(r, i, x, x.stage, x.microbatch, out);
          if (st_f == step::done) st_b = backward_ready(r, i, x, x.stage_b, x.microbatch_b, out);
          break;
        case op::backward_weight: {
          // A W moved above its own I: name that I rather than the queue's head.
          if (!backward_done[key(x.stage, x.microbatch)] &&
              std::find(list.begin() + i, list.end(), make_backward_input(x.stage, x.microbatch)) !=
                  list.end()) {
            out = fail(rule::weight_order, r, i, x,
                       "a W runs before the I that defers its weight gradient",
                       make_backward_input(x.stage, x.microbatch), r);
            return false;
          }
          if (st.deferred.empty()) {
            out = fail(rule::weight_order, r, i, x, "a W with no deferred weight gradient left");
            return false;
          }
          if (!st.deferred.admits(x.stage, x.microbatch)) {
            const deferred_weight oldest = st.deferred.oldest();
            out = fail(rule::weight_order, r, i, x,
                       "a W that is not the oldest deferred weight gradient (FIFO)",
                       make_backward_weight(oldest.stage, oldest.microbatch), r);
            return false;
          }
          (void)st.deferred.pop();
          weight_done[key(x.stage, x.microbatch)] = 1;
          break;
        }
        default: break;
      }
      if (st_f == step::failed || st_b == step::failed) return false;
      if (st_f == step::blocked || st_b == step::blocked) return true;
      switch (x.kind) {
        case op::forward: forward_done[key(x.stage, x.microbatch)] = 1; break;
        case op::backward:
          backward_done[key(x.stage, x.microbatch)] = 1;
          weight_done[key(x.stage, x.microbatch)] = 1;
          break;
        case op::backward_input:
          backward_done[key(x.stage, x.microbatch)] = 1;
          st.deferred.defer(x.stage, x.microbatch);
          break;
        case op::overlapped_forward_backward:
          forward_done[key(x.stage, x.microbatch)] = 1;
          backward_done[key(x.stage_b, x.microbatch_b)] = 1;
          weight_done[key(x.stage_b, x.microbatch_b)] = 1;
          break;
        default: break;
      }
      ++st.pc;
      progressed = true;
    }
    return true;
  }

  [[nodiscard]] constexpr int rank_holding(std::size_t global_index) const {
    int r = 0;
    while (t.offsets[static_cast<std::size_t>(r) + 1] <= global_index) ++r;
    return r;
  }

  // The instruction of rank q that produces the forward output (or, with
  // `backward`, the input gradient) of (s, m): F, B, I or an overlapped pair.
  // A table may lack it; then the plain F or B names it.
  [[nodiscard]] constexpr instruction producer(int q, bool backward, int s, int m) const {
    if (q >= 0 && q < P)
      for (const instruction& x : t.rank(q)) {
        const bool f = (x.kind == op::forward || x.kind == op::overlapped_forward_backward) &&
                       x.stage == s && x.microbatch == m;
        const bool b =
            ((x.kind == op::backward || x.kind == op::backward_input) && x.stage == s &&
             x.microbatch == m) ||
            (x.kind == op::overlapped_forward_backward && x.stage_b == s && x.microbatch_b == m);
        if (backward ? b : f) return x;
      }
    return backward ? make_backward(s, m) : make_forward(s, m);
  }

  // What stopped rank r waits for. A commit waits only for the partner of a
  // posted operation that its peer has not launched; a compute blocks only in
  // a compute-only table, on an input produced on another rank.
  [[nodiscard]] constexpr rank_wait waiting(int r, const rank_state& st) const {
    const auto list = t.rank(r);
    rank_wait w{r, st.pc, list[static_cast<std::size_t>(st.pc)], {}, -1};
    const instruction& x = w.at;
    if (x.kind == op::commit) {
      for (int j = st.batch_begin; j < st.pc; ++j) {
        if (!is_communication(list[static_cast<std::size_t>(j)].kind)) continue;
        const auto p = static_cast<std::size_t>(partner[global(r, j)]);
        if (launched[p]) continue;
        w.awaited = t.instructions[p];
        w.awaited_rank = rank_holding(p);
        break;
      }
      return w;
    }
    // A forward waits for the previous stage's forward; a backward (or the
    // backward half of a pair whose forward half could run) for the next
    // stage's backward.
    const bool pair = x.kind == op::overlapped_forward_backward;
    const bool forward_blocked =
        x.kind == op::forward ||
        (pair && x.stage > 0 && !forward_done[key(x.stage - 1, x.microbatch)]);
    int s = x.stage - 1, m = x.microbatch;
    if (!forward_blocked) {
      s = (pair ? x.stage_b : x.stage) + 1;
      m = pair ? x.microbatch_b : x.microbatch;
    }
    w.awaited_rank = t.rank_of(s, m);
    w.awaited = producer(w.awaited_rank, !forward_blocked, s, m);
    return w;
  }

  // The protocol stopped with rank r (the lowest such) short of its end.
  // Every stopped rank waits for one instruction on another rank: follow
  // those waits until a rank repeats (a cycle, reported from its lowest rank
  // in order) or the rank waited for has finished without the instruction
  // (reported at the rank that waits for it).
  [[nodiscard]] constexpr validation deadlock(const std::vector<rank_state>& ranks, int r) const {
    std::vector<rank_wait> path;
    std::vector<int> position(static_cast<std::size_t>(P), -1);
    for (;;) {
      position[static_cast<std::size_t>(r)] = static_cast<int>(path.size());
      path.push_back(waiting(r, ranks[static_cast<std::size_t>(r)]));
      const int q = path.back().awaited_rank;
      if (q < 0 || q >= P ||
          ranks[static_cast<std::size_t>(q)].pc >= static_cast<int>(t.rank(q).size()))
        break;
      if (const int first = position[static_cast<std::size_t>(q)]; first >= 0) {
        path.erase(path.begin(), path.begin() + first);
        std::rotate(path.begin(),
                    std::min_element(
                        path.begin(), path.end(),
                        [](const rank_wait& a, const rank_wait& b) { return a.rank < b.rank; }),
                    path.end());
        const rank_wait& w = path.front();
        validation v = fail(rule::deadlock, w.rank, w.index, w.at, "the ranks wait in a cycle",
                            w.awaited, w.awaited_rank);
        v.first.cycle = std::move(path);
        return v;
      }
      r = q;
    }
    const rank_wait& w = path.back();
    return fail(rule::deadlock, w.rank, w.index, w.at,
                w.at.kind == op::commit
                    ? "blocked at a commit: the peer never launches the matching operation"
                    : "blocked: the input this instruction needs is never produced",
                w.awaited, w.awaited_rank);
  }

  constexpr validation run() {
    P = t.info.ranks;
    S = t.info.stages;
    N = t.info.microbatches;
    if (const auto v = check_shape(); !v.ok) return v;
    for (int r = 0; r < P; ++r) {
      const auto list = t.rank(r);
      for (int i = 0; i < static_cast<int>(list.size()); ++i) {
        const instruction& x = list[static_cast<std::size_t>(i)];
        if (const auto v = check_instruction(r, i, x); !v.ok) return v;
        if (is_communication(x.kind) || x.kind == op::commit) has_comm = true;
      }
    }
    const std::size_t cells = static_cast<std::size_t>(S) * static_cast<std::size_t>(N);
    forward_done.assign(cells, 0);
    backward_done.assign(cells, 0);
    weight_done.assign(cells, 0);
    input_received.assign(cells, 0);
    grad_received.assign(cells, 0);
    partner.assign(t.instructions.size(), -1);
    launched.assign(t.instructions.size(), 0);
    if (has_comm)
      if (const auto v = match_communication(); !v.ok) return v;

    std::vector<rank_state> ranks(static_cast<std::size_t>(P));
    validation out;
    for (bool progressed = true; progressed;) {
      progressed = false;
      for (int r = 0; r < P; ++r)
        if (!advance(r, ranks[static_cast<std::size_t>(r)], progressed, out)) return out;
    }
    // Stopped: finished everywhere, or a deadlock.
    for (int r = 0; r < P; ++r) {
      const rank_state& st = ranks[static_cast<std::size_t>(r)];
      const auto list = t.rank(r);
      if (st.pc < static_cast<int>(list.size())) return deadlock(ranks, r);
      if (st.batch_begin >= 0)
        return fail(rule::uncommitted, r, st.batch_begin, list[static_cast<std::size_t>(st.batch_begin)],
                    "sends/receives posted after the last commit are never launched",
                    make_commit(), r);
    }
    // Everything ran: did everything that must run, run?
    for (int s = 0; s < S; ++s)
      for (int m = 0; m < N; ++m) {
        const std::size_t k = key(s, m);
        const int owner = t.rank_of(s, m);
        if (!forward_done[k])
          return fail(rule::missing, owner, -1, {}, "a forward never runs", make_forward(s, m),
                      owner);
        if (t.info.forward_only) continue;
        if (!backward_done[k])
          return fail(rule::missing, owner, -1, {}, "a backward (B or I) never runs",
                      make_backward(s, m), owner);
        if (!weight_done[k])
          return fail(rule::missing, owner, -1, {}, "a deferred weight gradient (W) never runs",
                      make_backward_weight(s, m), owner);
      }
    return {};
  }
};

}  // namespace detail

[[nodiscard]] constexpr validation validate(table_view table) {
  detail::validator v{};
  v.t = table;
  return v.run();
}

}  // namespace dualpipe
