// validate(table): is a table a correct pipeline step? Checks shape and
// placement, exactly-once compute per (stage, micro-batch), causal order,
// FIFO weight gradients, send/receive matching in posting order, and runs the
// table under the blocking protocol to prove it cannot deadlock. constexpr:
// usable in static_assert.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "dualpipe/schedule/action_syntax.hpp"
#include "dualpipe/schedule/instruction.hpp"
#include "dualpipe/schedule/table.hpp"

namespace dualpipe {

// Which rule a table breaks.
enum class rule : std::uint8_t {
  none,
  shape,            // offsets or sizes inconsistent with the schedule info
  out_of_range,     // stage, micro-batch or peer outside the table's sizes
  wrong_rank,       // an instruction on a rank that does not own its stage
  wrong_peer,       // communication with a rank that is not the neighbouring stage's
  duplicate,        // a second F, B/I or W of one (stage, micro-batch)
  missing,          // an F, B/I or W that never runs
  backward_in_inference,  // B, I, W or an overlapped pair in a forward-only table
  causality,        // compute before its input, send before its data
  weight_order,     // W not naming the oldest deferred weight gradient
  unmatched,        // a send or receive with no partner
  mismatched,       // the k-th send and k-th receive between two ranks disagree
  uncommitted,      // sends/receives posted but never committed
  deadlock,         // the blocking protocol stops with work left
};

[[nodiscard]] constexpr std::string_view rule_name(rule r) noexcept {
  switch (r) {
    case rule::none: return "none";
    case rule::shape: return "shape";
    case rule::out_of_range: return "out-of-range";
    case rule::wrong_rank: return "wrong-rank";
    case rule::wrong_peer: return "wrong-peer";
    case rule::duplicate: return "duplicate";
    case rule::missing: return "missing";
    case rule::backward_in_inference: return "backward-in-inference";
    case rule::causality: return "causality";
    case rule::weight_order: return "weight-order";
    case rule::unmatched: return "unmatched";
    case rule::mismatched: return "mismatched";
    case rule::uncommitted: return "uncommitted";
    case rule::deadlock: return "deadlock";
  }
  return "?";
}

struct violation {
  rule broken = rule::none;
  int rank = -1;            // the rank whose list holds the offending place
  int index = -1;           // position in that rank's list (-1: none, e.g. missing)
  instruction at{};         // the instruction found there
  bool has_expected = false;
  instruction expected{};   // what the rule expected instead, where one applies
  int expected_rank = -1;   // where the expected instruction belongs
  std::string_view what{};  // the rule, as a sentence
};

struct validation {
  bool ok = true;
  violation first{};
  [[nodiscard]] constexpr explicit operator bool() const noexcept { return ok; }
};

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
    if (P <= 0 || S <= 0 || N <= 0)
      return fail(rule::shape, -1, -1, {}, "the table has no ranks, stages or micro-batches");
    if (t.offsets.size() != static_cast<std::size_t>(P) + 1 || t.offsets[0] != 0 ||
        t.offsets[static_cast<std::size_t>(P)] != t.instructions.size())
      return fail(rule::shape, -1, -1, {}, "the rank offsets do not cover the instructions");
    for (int r = 0; r < P; ++r)
      if (t.offsets[static_cast<std::size_t>(r)] > t.offsets[static_cast<std::size_t>(r) + 1])
        return fail(rule::shape, r, -1, {}, "the rank offsets decrease");
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
    std::size_t deferred_head = 0;
    std::vector<std::pair<int, int>> deferred_fifo;
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
          if (st.deferred_head >= st.deferred_fifo.size()) {
            out = fail(rule::weight_order, r, i, x, "a W with no deferred weight gradient left");
            return false;
          }
          const auto [s, m] = st.deferred_fifo[st.deferred_head];
          if (s != x.stage || m != x.microbatch) {
            out = fail(rule::weight_order, r, i, x,
                       "a W that is not the oldest deferred weight gradient (FIFO)",
                       make_backward_weight(s, m), r);
            return false;
          }
          ++st.deferred_head;
          weight_done[key(s, m)] = 1;
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
          st.deferred_fifo.emplace_back(x.stage, x.microbatch);
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
      if (st.pc < static_cast<int>(list.size())) {
        const instruction& x = list[static_cast<std::size_t>(st.pc)];
        if (x.kind == op::commit) {
          for (int j = st.batch_begin; j < st.pc; ++j) {
            if (!is_communication(list[static_cast<std::size_t>(j)].kind)) continue;
            const auto p = static_cast<std::size_t>(partner[global(r, j)]);
            if (!launched[p]) {
              int peer_rank = 0;
              while (t.offsets[static_cast<std::size_t>(peer_rank) + 1] <= p) ++peer_rank;
              return fail(rule::deadlock, r, st.pc, x,
                          "blocked at a commit: the peer never launches the matching operation",
                          t.instructions[p], peer_rank);
            }
          }
        }
        return fail(rule::deadlock, r, st.pc, x,
                    "blocked: the input this instruction needs is never produced");
      }
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

// "rank 3, instruction 17 (3B5): a backward runs before its own forward;
// expected 3F5 on rank 3" -- a whole sentence for logs and exceptions.
[[nodiscard]] inline std::string describe(const validation& v) {
  if (v.ok) return "ok";
  const violation& f = v.first;
  std::string out = "invalid schedule: ";
  if (f.rank >= 0) {
    out += "rank " + std::to_string(f.rank);
    if (f.index >= 0) out += ", instruction " + std::to_string(f.index) + " (" + format_action(f.at) + ")";
    out += ": ";
  }
  out += f.what;
  if (f.has_expected) {
    out += "; expected " + format_action(f.expected);
    if (is_communication(f.expected.kind)) out += " with peer " + std::to_string(f.expected.peer);
    if (f.expected_rank >= 0) out += " on rank " + std::to_string(f.expected_rank);
  }
  out += " [" + std::string(rule_name(f.broken)) + "]";
  return out;
}

}  // namespace dualpipe
