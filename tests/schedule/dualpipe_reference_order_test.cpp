// DualPipe and DualPipeV tables against the reference's order. The expected
// per-rank compute order is derived here, independently of the library's
// generator, from the eight steps of "Semantics of DualPipe" in the design
// brief; two ranks' full instruction lists (with SEND/RECV/COMMIT) are written
// out by hand from the reference's _forward_chunk / _backward_chunk /
// _commit_and_wait_comm flow.
#include <algorithm>
#include <cstddef>
#include <deque>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>

#include "dualpipe/analysis/validate.hpp"
#include "dualpipe/schedule/action_syntax.hpp"
#include "dualpipe/schedule/dualpipe.hpp"

namespace {

using action_list = std::vector<std::string>;

// The reference procedure for one rank, compute only, written from the design
// brief's eight steps. A "phase" is the rank-local name of a direction.
class reference_rank {
 public:
  reference_rank(int ranks, int microbatches, bool v_shape, bool forward_only, int rank)
      : P_(ranks), N_(microbatches), v_(v_shape), forward_only_(forward_only), r_(rank) {}

  action_list run() {
    // DualPipeV: h -> P, k -> r, "middle" -> "last rank", and all N
    // micro-batches travel one way (then back), so a direction carries N.
    const int h = v_ ? P_ : P_ / 2;
    const int k = v_ ? r_ : std::min(r_, P_ - 1 - r_);
    const int per_direction = v_ ? N_ : N_ / 2;
    const bool middle = v_ ? r_ == P_ - 1 : (r_ == h - 1 || r_ == h);

    // 1. 2(h-k-1) forwards of phase 0.
    for (int i = 0; i < 2 * (h - k - 1); ++i) forward(0);
    // 2. k+1 times: forward phase 0, forward phase 1.
    for (int i = 0; i < k + 1; ++i) {
      forward(0);
      forward(1);
    }
    // 3. h-k-1 times: backward-input phase 1, one deferred W, forward phase 1.
    for (int i = 0; i < h - k - 1; ++i) {
      backward(1, true);
      weight();
      forward(1);
    }
    // 4. Overlapped (F0 & B1), overlapped (F1 & B0); the forwards of phase 0
    // left after steps 1 and 2 fix the count (N/2-P+k+1 for DualPipe).
    const int step_4 = per_direction - 2 * h + k + 1;
    for (int i = 0; i < step_4; ++i) {
      if (i == 0 && middle) {
        forward(0);
        backward(1, false);
      } else {
        overlapped(0, 1);
      }
      overlapped(1, 0);
    }
    // 5. h-k-1 times: backward phase 1, overlapped (F1 & B0).
    for (int i = 0; i < h - k - 1; ++i) {
      backward(1, false);
      overlapped(1, 0);
    }
    // 6. k+1 times: backward phase 1, backward phase 0; deferred W from
    // iteration (k+1)/2: after its phase-1 backward when k is even, before
    // it when k is odd.
    const int switch_at = (k + 1) / 2;
    for (int i = 0; i < k + 1; ++i) {
      const bool defer_1 = i > switch_at || (i == switch_at && k % 2 == 1);
      const bool defer_0 = i >= switch_at;
      backward(1, defer_1);
      backward(0, defer_0);
    }
    // 7. h-k-1 times: one deferred W, backward-input phase 0.
    for (int i = 0; i < h - k - 1; ++i) {
      weight();
      backward(0, true);
    }
    // 8. k+1 deferred W.
    for (int i = 0; i < k + 1; ++i) weight();
    return out_;
  }

 private:
  // Direction 0 runs stage r; direction 1 runs the mirror stage. A rank in
  // DualPipe's second half calls direction 1 its phase 0.
  int direction(int phase) const { return (!v_ && r_ >= P_ / 2) ? 1 - phase : phase; }
  int stage(int dir) const {
    if (dir == 0) return r_;
    return v_ ? 2 * P_ - 1 - r_ : P_ - 1 - r_;
  }
  // DualPipe: micro-batches N/2.. enter at the last rank (direction 1).
  int microbatch(int dir, int ordinal) const {
    return (!v_ && dir == 1) ? N_ / 2 + ordinal : ordinal;
  }

  static std::string text(int s, char kind, int m) {
    return std::to_string(s) + kind + std::to_string(m);
  }

  std::pair<int, int> next_forward(int phase) {
    const int dir = direction(phase);
    return {stage(dir), microbatch(dir, forwards_[dir]++)};
  }
  std::pair<int, int> next_backward(int phase) {
    const int dir = direction(phase);
    return {stage(dir), microbatch(dir, backwards_[dir]++)};
  }

  void forward(int phase) {
    const auto [s, m] = next_forward(phase);
    out_.push_back(text(s, 'F', m));
  }
  void backward(int phase, bool defer_weight) {
    if (forward_only_) return;
    const auto [s, m] = next_backward(phase);
    if (defer_weight) deferred_.emplace_back(s, m);
    out_.push_back(text(s, defer_weight ? 'I' : 'B', m));
  }
  void weight() {
    if (forward_only_) return;
    REQUIRE_FALSE(deferred_.empty());  // the eight steps never pop an empty FIFO
    const auto [s, m] = deferred_.front();
    deferred_.pop_front();
    out_.push_back(text(s, 'W', m));
  }
  // Overlapped pairs always carry a full backward; inference keeps the forward.
  void overlapped(int phase_f, int phase_b) {
    if (forward_only_) {
      forward(phase_f);
      return;
    }
    const auto [fs, fm] = next_forward(phase_f);
    const auto [bs, bm] = next_backward(phase_b);
    out_.push_back("(" + text(fs, 'F', fm) + ";" + text(bs, 'B', bm) + ")OVERLAP_F_B");
  }

  int P_, N_;
  bool v_, forward_only_;
  int r_;
  int forwards_[2]{};
  int backwards_[2]{};
  std::deque<std::pair<int, int>> deferred_;
  action_list out_;
};

action_list expected_compute(int P, int N, bool v_shape, bool forward_only, int rank) {
  return reference_rank(P, N, v_shape, forward_only, rank).run();
}

// The library's instructions as text; communication shows its peer
// ("1SEND_F0@2") so that peers are compared too.
action_list actions_of(std::span<const dualpipe::instruction> list, bool compute_only) {
  action_list out;
  for (const auto& x : list) {
    if (compute_only && !dualpipe::is_compute(x.kind)) continue;
    std::string a = dualpipe::format_action(x);
    if (dualpipe::is_communication(x.kind)) a += "@" + std::to_string(x.peer);
    out.push_back(std::move(a));
  }
  return out;
}

// Empty when equal, else where the lists first part, with a little context.
std::string first_difference(const action_list& got, const action_list& expected) {
  const std::size_t n = std::min(got.size(), expected.size());
  std::size_t i = 0;
  while (i < n && got[i] == expected[i]) ++i;
  if (i == n && got.size() == expected.size()) return {};
  auto around = [i](const action_list& l) {
    std::string s;
    const std::size_t from = i >= 3 ? i - 3 : 0;
    for (std::size_t j = from; j < std::min(l.size(), i + 4); ++j)
      s += (j == i ? "[" + l[j] + "]" : l[j]) + " ";
    return s;
  };
  return "first difference at index " + std::to_string(i) + " (got " + std::to_string(got.size()) +
         " actions, expected " + std::to_string(expected.size()) + ")\n  got:      ..." +
         around(got) + "\n  expected: ..." + around(expected);
}

struct config {
  int P, N;
  bool v_shape;
};

std::vector<config> all_configs() {
  std::vector<config> out;
  for (int P = 2; P <= 16; P += 2)
    for (int N = 2 * P; N <= 4 * P + 8; N += 2) out.push_back({P, N, false});
  // DualPipeV has no parity constraint on P or N.
  for (int P = 2; P <= 16; ++P)
    for (int N = 2 * P; N <= 4 * P + 8; ++N) out.push_back({P, N, true});
  for (const bool v : {false, true}) {
    out.push_back({32, 256, v});
    out.push_back({64, 512, v});
  }
  return out;
}

dualpipe::schedule_table generate(const config& c, bool forward_only, bool with_communication) {
  const dualpipe::generator_options o{forward_only, with_communication};
  return c.v_shape ? dualpipe::schedules::dualpipev(c.P, c.N, o)
                   : dualpipe::schedules::dualpipe(c.P, c.N, o);
}

const char* name_of(const config& c) {
  return c.v_shape ? "DualPipeV" : "DualPipe";
}

}  // namespace

TEST_CASE("the independent derivation reproduces the brief's step counts",
          "[dualpipe][reference]") {
  // Hand-checked against the eight steps for DualPipe P=4 N=8 rank 0:
  // h=2, k=0: 2 F0, then F0 F1, then I1 W F1, one pair of overlaps, B1 +
  // overlap, B1 B0 with B0 deferred (k even: switch after B1), W I0, W.
  const action_list rank_0 = {"0F0",
                              "0F1",
                              "0F2",
                              "3F4",
                              "3I4",
                              "3W4",
                              "3F5",
                              "(0F3;3B5)OVERLAP_F_B",
                              "(3F6;0B0)OVERLAP_F_B",
                              "3B6",
                              "(3F7;0B1)OVERLAP_F_B",
                              "3B7",
                              "0I2",
                              "0W2",
                              "0I3",
                              "0W3"};
  CHECK(expected_compute(4, 8, false, false, 0) == rank_0);
  CHECK(expected_compute(4, 8, false, true, 0) ==
        action_list{"0F0", "0F1", "0F2", "3F4", "3F5", "0F3", "3F6", "3F7"});
}

TEST_CASE("DualPipe and DualPipeV compute order equals the reference procedure",
          "[dualpipe][reference]") {
  int tables = 0;
  for (const config& c : all_configs())
    for (const bool forward_only : {false, true}) {
      const auto table = generate(c, forward_only, false);
      INFO(name_of(c) << " P=" << c.P << " N=" << c.N
                      << (forward_only ? " forward-only" : " training"));
      const auto& info = table.info();
      CHECK(info.kind ==
            (c.v_shape ? dualpipe::dualpipev_generator::kind : dualpipe::dualpipe_generator::kind));
      CHECK(info.ranks == c.P);
      CHECK(info.stages == (c.v_shape ? 2 * c.P : c.P));
      CHECK(info.microbatches == c.N);
      CHECK(info.where ==
            (c.v_shape ? dualpipe::placement::v_shape : dualpipe::placement::mirrored));
      CHECK(info.forward_only == forward_only);
      CHECK_FALSE(info.with_communication);
      REQUIRE(table.ranks_built() == c.P);
      for (int r = 0; r < c.P; ++r) {
        INFO("rank " << r);
        const auto got = actions_of(table.rank(r), false);  // compute-only: nothing to drop
        CHECK(first_difference(got, expected_compute(c.P, c.N, c.v_shape, forward_only, r)) == "");
      }
      ++tables;
    }
  CHECK(tables == static_cast<int>(all_configs().size()) * 2);
}

TEST_CASE("tables with communication validate and keep the reference's compute order",
          "[dualpipe][reference][communication]") {
  for (const config& c : all_configs())
    for (const bool forward_only : {false, true}) {
      const auto table = generate(c, forward_only, true);
      INFO(name_of(c) << " P=" << c.P << " N=" << c.N
                      << (forward_only ? " forward-only" : " training"));
      CHECK(table.info().with_communication);
      const auto v = dualpipe::validate(table);
      INFO(dualpipe::describe(v));
      CHECK(v.ok);
      for (int r = 0; r < c.P; ++r) {
        INFO("rank " << r);
        const auto list = table.rank(r);
        CHECK(first_difference(actions_of(list, true),
                               expected_compute(c.P, c.N, c.v_shape, forward_only, r)) == "");
        // The reference commits only when something is posted, and its last
        // commit flushes everything: no empty batches, nothing left over.
        int posted = 0;
        bool empty_commit = false;
        int counts[dualpipe::op_count]{};
        for (const auto& x : list) {
          ++counts[static_cast<int>(x.kind)];
          if (dualpipe::is_communication(x.kind)) ++posted;
          if (x.kind == dualpipe::op::commit) {
            empty_commit = empty_commit || posted == 0;
            posted = 0;
          }
        }
        CHECK_FALSE(empty_commit);
        CHECK(posted == 0);
        // Each direction that has a neighbour moves one tensor per
        // micro-batch each way; DualPipeV's tip hands off locally.
        // Direction 0 arrives from rank r-1 and leaves for r+1; direction 1
        // the other way round (for DualPipeV the last rank's turn is local).
        const int per_direction = c.v_shape ? c.N : c.N / 2;
        const int neighbours = (r != 0 ? 1 : 0) + (r != c.P - 1 ? 1 : 0);
        const int sends_f = per_direction * neighbours;
        const int recvs_f = per_direction * neighbours;
        CHECK(counts[static_cast<int>(dualpipe::op::send_forward)] == sends_f);
        CHECK(counts[static_cast<int>(dualpipe::op::recv_forward)] == recvs_f);
        CHECK(counts[static_cast<int>(dualpipe::op::send_backward)] ==
              (forward_only ? 0 : recvs_f));
        CHECK(counts[static_cast<int>(dualpipe::op::recv_backward)] ==
              (forward_only ? 0 : sends_f));
      }
    }
}

TEST_CASE("DualPipe P=4 N=8 rank 1 posts and commits exactly as the reference",
          "[dualpipe][reference][communication]") {
  // Rank 1 of 4 is a middle rank (h=2, k=1): stage 1 for micro-batches 0-3
  // (from rank 0, to rank 2) and stage 2 for 4-7 (from rank 2, to rank 0).
  // Traced by hand through the reference's step(): each *_chunk posts its
  // receives, commits if anything is posted, computes, then posts its sends.
  const action_list expected = {
      // step 2, i=0: recv_forward(0) before the loop; F0 sends at once (middle).
      "1RECV_F0@0", "COMMIT", "1F0", "1SEND_F0@2", "1RECV_F1@0", "2RECV_F4@2", "COMMIT", "2F4",
      "2SEND_F4@0",
      // step 2, i=1: the last phase-1 forward keeps its send for step 4.
      "COMMIT", "1F1", "1SEND_F1@2", "1RECV_F2@0", "2RECV_F5@2", "COMMIT", "2F5",
      // step 4, i=0, middle rank: F0 then B1, not overlapped; nothing posted before F0.
      "1F2", "2SEND_F5@0", "2RECV_B4@0", "COMMIT", "2B4", "1SEND_F2@2", "2SEND_B4@2", "2RECV_F6@2",
      "1RECV_B0@2", "COMMIT", "(2F6;1B0)OVERLAP_F_B", "2SEND_F6@0", "1SEND_B0@0",
      // step 4, i=1.
      "1RECV_F3@0", "2RECV_B5@0", "COMMIT", "(1F3;2B5)OVERLAP_F_B", "1SEND_F3@2", "2SEND_B5@2",
      "2RECV_F7@2", "1RECV_B1@2", "COMMIT", "(2F7;1B1)OVERLAP_F_B", "2SEND_F7@0", "1SEND_B1@0",
      // step 6 (k=1 odd: iteration 1 defers both backwards).
      "2RECV_B6@0", "COMMIT", "2B6", "2SEND_B6@2", "1RECV_B2@2", "COMMIT", "1B2", "1SEND_B2@0",
      "2RECV_B7@0", "COMMIT", "2I7", "2SEND_B7@2", "1RECV_B3@2", "COMMIT", "1I3", "1SEND_B3@0",
      // step 8: the first W flushes the last send; the final commit has nothing left.
      "COMMIT", "2W7", "1W3"};
  const auto table = dualpipe::schedules::dualpipe(4, 8);
  CHECK(first_difference(actions_of(table.rank(1), false), expected) == "");
}

TEST_CASE("DualPipeV P=2 N=4 last rank posts and commits exactly as the reference",
          "[dualpipev][reference][communication]") {
  // Rank 1 of 2 is DualPipeV's tip (k=1): stage 1 receives from rank 0 and
  // hands its output to stage 2 locally; stage 2 sends to stage 3 on rank 0
  // and gets its gradient back from there; stage 1's gradient comes from
  // stage 2 locally and goes to rank 0.
  // step 2, i=0 and i=1.
  const action_list expected = {"1RECV_F0@0", "COMMIT", "1F0", "1RECV_F1@0", "COMMIT", "2F0",
                                "2SEND_F0@0", "COMMIT", "1F1", "1RECV_F2@0", "COMMIT", "2F1",
                                // step 4, i=0, last rank: F0 then B1, then the overlapped (F1 & B0)
                                // whose inputs are local, so nothing is committed before it.
                                "1F2", "2SEND_F1@0", "2RECV_B0@0", "COMMIT", "2B0",
                                "(2F2;1B0)OVERLAP_F_B", "2SEND_F2@0", "1SEND_B0@0",
                                // step 4, i=1.
                                "1RECV_F3@0", "2RECV_B1@0", "COMMIT", "(1F3;2B1)OVERLAP_F_B",
                                "(2F3;1B1)OVERLAP_F_B", "2SEND_F3@0", "1SEND_B1@0",
                                // step 6 (k=1 odd: iteration 1 defers both).
                                "2RECV_B2@0", "COMMIT", "2B2", "1B2", "1SEND_B2@0", "2RECV_B3@0",
                                "COMMIT", "2I3", "1I3", "1SEND_B3@0",
                                // step 8.
                                "COMMIT", "2W3", "1W3"};
  const auto table = dualpipe::schedules::dualpipev(2, 4);
  CHECK(first_difference(actions_of(table.rank(1), false), expected) == "");
}
