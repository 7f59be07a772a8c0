// DualPipe and DualPipeV for every micro-batch count N >= 1, including the
// counts the reference refuses (odd N for DualPipe, N < 2P for both) and
// DualPipeV on one rank. Where the reference is defined the tables are its
// own (dualpipe_reference_order_test pins them); below it, each table must be
// the padded reference table with the padding micro-batches taken out, which
// this file derives independently by editing the generated padded table.
#include <algorithm>
#include <span>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "dualpipe/analysis/validate.hpp"
#include "dualpipe/passes/forward_only.hpp"
#include "dualpipe/schedule/action_syntax.hpp"
#include "dualpipe/schedule/dualpipe.hpp"

namespace {

using dualpipe::generator_options;
using dualpipe::instruction;
using dualpipe::op;
using dualpipe::schedule_table;

schedule_table generate(bool v, int P, int N, generator_options o = {}) {
  return v ? dualpipe::schedules::dualpipev(P, N, o) : dualpipe::schedules::dualpipe(P, N, o);
}

std::vector<int> rank_counts(bool v) {
  return v ? std::vector<int>{1, 2, 3, 4, 5, 8} : std::vector<int>{2, 4, 6, 8};
}

const generator_options all_options[] = {
    {.forward_only = false, .with_communication = true},
    {.forward_only = false, .with_communication = false},
    {.forward_only = true, .with_communication = true},
    {.forward_only = true, .with_communication = false},
};

// Which micro-batch of the real table a micro-batch of the padded table is,
// or -1 for padding. Each direction walks `walked` micro-batches and holds
// `held` real ones, the last `held` of its walk (the first ones are padding).
class padding_map {
 public:
  padding_map(bool v, int P, int N) : v_(v) {
    held_[0] = v ? N : N / 2;
    held_[1] = v ? N : N - N / 2;
    const int fewest = v ? 2 * P : P;  // the reference's N >= 2P, per direction
    walked_ = std::max(held_[1], fewest);
  }
  [[nodiscard]] int padded_count() const { return v_ ? walked_ : 2 * walked_; }
  [[nodiscard]] int real(int padded_mb) const {
    const int dir = !v_ && padded_mb >= walked_ ? 1 : 0;
    const int chunk = dir == 1 ? padded_mb - walked_ : padded_mb;
    const int index = chunk - (walked_ - held_[dir]);
    if (index < 0) return -1;
    return dir == 1 ? held_[0] + index : index;
  }

 private:
  bool v_;
  int held_[2]{};
  int walked_ = 0;
};

// The padded table's instruction list of `rank` with every instruction of a
// padding micro-batch removed, the survivors renumbered, a pair that lost a
// half replaced by its other half (a forward, or a full backward), and
// commits left with no communication before them removed.
std::vector<instruction> without_padding(const schedule_table& padded, const padding_map& map,
                                         int rank) {
  std::vector<instruction> out;
  bool posted = false;
  for (const instruction& x : padded.rank(rank)) {
    if (x.kind == op::commit) {
      if (posted) out.push_back(x);
      posted = false;
      continue;
    }
    const int mb = map.real(x.microbatch);
    if (x.kind == op::overlapped_forward_backward) {
      const int mb_b = map.real(x.microbatch_b);
      if (mb >= 0 && mb_b >= 0)
        out.push_back(dualpipe::make_overlapped(x.stage, mb, x.stage_b, mb_b));
      else if (mb >= 0)
        out.push_back(dualpipe::make_forward(x.stage, mb));
      else if (mb_b >= 0)
        out.push_back(dualpipe::make_backward(x.stage_b, mb_b));
      continue;
    }
    if (mb < 0) continue;
    instruction kept = x;
    kept.microbatch = mb;
    out.push_back(kept);
    posted = posted || dualpipe::is_communication(x.kind);
  }
  return out;
}

std::vector<std::string> text(std::span<const instruction> list) {
  std::vector<std::string> out;
  for (const instruction& x : list) out.push_back(dualpipe::format_action(x));
  return out;
}

// Every rank's list as text, for a compile-time or a run-time table.
template <class Table>
std::vector<std::vector<std::string>> ranks_text(const Table& t) {
  std::vector<std::vector<std::string>> out;
  for (int r = 0; r < t.info().ranks; ++r) out.push_back(text(t.rank(r)));
  return out;
}

}  // namespace

TEST_CASE("every N >= 1 gives a valid DualPipe and DualPipeV table", "[any-n]") {
  for (const bool v : {false, true})
    for (const int P : rank_counts(v))
      for (int N = 1; N <= 3 * P + 1; ++N)
        for (const generator_options& o : all_options) {
          INFO((v ? "DualPipeV" : "DualPipe")
               << " P=" << P << " N=" << N << " forward_only=" << o.forward_only
               << " with_communication=" << o.with_communication);
          const schedule_table t = generate(v, P, N, o);
          CHECK(t.info().microbatches == N);
          const auto checked = dualpipe::validate(t);
          CHECK(dualpipe::describe(checked) == "ok");
          // Every micro-batch runs every stage forwards exactly once.
          int forwards = 0;
          for (int r = 0; r < P; ++r)
            for (const instruction& x : t.rank(r))
              forwards += x.kind == op::forward || x.kind == op::overlapped_forward_backward;
          CHECK(forwards == N * t.info().stages);
        }
}

TEST_CASE("below the reference's limits a table is the padded table without the padding",
          "[any-n]") {
  for (const bool v : {false, true})
    for (const int P : rank_counts(v))
      for (int N = 1; N <= 2 * P + 3; ++N)
        for (const generator_options& o : all_options) {
          const padding_map map(v, P, N);
          const schedule_table padded = generate(v, P, map.padded_count(), o);
          const schedule_table table = generate(v, P, N, o);
          for (int r = 0; r < P; ++r) {
            INFO((v ? "DualPipeV" : "DualPipe")
                 << " P=" << P << " N=" << N << " (padded to " << map.padded_count() << ") rank "
                 << r << " forward_only=" << o.forward_only
                 << " with_communication=" << o.with_communication);
            CHECK(text(table.rank(r)) == text(without_padding(padded, map, r)));
          }
        }
}

TEST_CASE("this file's padding arithmetic pads nothing where the reference is defined", "[any-n]") {
  // N even and >= 2P (DualPipe), N >= 2P (DualPipeV): the padded count is N,
  // so the test above compares those tables with themselves; the reference's
  // own order for them is dualpipe_reference_order_test's.
  for (const int P : {2, 4, 8})
    for (const int N : {2 * P, 2 * P + 2, 4 * P}) {
      CHECK(padding_map(false, P, N).padded_count() == N);
      CHECK(padding_map(true, P, N).padded_count() == N);
      CHECK(padding_map(true, P, N + 1).padded_count() == N + 1);
    }
}

TEST_CASE("inference below the reference's limits is the training table's forwards", "[any-n]") {
  for (const bool v : {false, true})
    for (const int P : rank_counts(v))
      for (int N = 1; N <= 2 * P + 1; ++N) {
        INFO((v ? "DualPipeV" : "DualPipe") << " P=" << P << " N=" << N);
        CHECK(dualpipe::forward_only_table(generate(v, P, N)) ==
              generate(v, P, N, {.forward_only = true}));
      }
}

TEST_CASE("DualPipeV runs on a single rank, both stages on rank 0", "[any-n]") {
  for (const int N : {1, 2, 3, 8}) {
    const schedule_table t = dualpipe::schedules::dualpipev(1, N);
    INFO("N=" << N);
    REQUIRE(t.info().stages == 2);
    REQUIRE(t.info().ranks == 1);
    CHECK(dualpipe::validate(t).ok);
    // One rank: nothing to send, so no communication at all.
    for (const instruction& x : t.rank(0)) CHECK_FALSE(dualpipe::is_communication(x.kind));
  }
  // The reference's steps for P = 1, N = 2 (h = 1, k = 0): step 2's two
  // forwards, step 4's unoverlapped first pair (rank 0 is the last rank) and
  // one overlapped pair, step 6's backwards with the second's W deferred, and
  // step 8's W.
  const schedule_table compute =
      dualpipe::schedules::dualpipev(1, 2, {.with_communication = false});
  CHECK(text(compute.rank(0)) == std::vector<std::string>{"0F0", "1F0", "0F1", "1B0",
                                                          "(1F1;0B0)OVERLAP_F_B", "1B1", "0I1",
                                                          "0W1"});
}

TEST_CASE("compile-time tables accept every N >= 1 and equal the run-time ones", "[any-n]") {
  constexpr auto dp_8_5 = dualpipe::schedules::dualpipe_table<8, 5>();
  constexpr auto dp_2_1 = dualpipe::schedules::dualpipe_table<2, 1>();
  constexpr auto dpv_1_1 = dualpipe::schedules::dualpipev_table<1, 1>();
  constexpr auto dpv_4_7 = dualpipe::schedules::dualpipev_table<4, 7>();
  STATIC_REQUIRE(dualpipe::validate(dp_8_5).ok);
  STATIC_REQUIRE(dualpipe::validate(dp_2_1).ok);
  STATIC_REQUIRE(dualpipe::validate(dpv_1_1).ok);
  STATIC_REQUIRE(dualpipe::validate(dpv_4_7).ok);
  CHECK(ranks_text(dp_8_5) == ranks_text(dualpipe::schedules::dualpipe(8, 5)));
  CHECK(ranks_text(dp_2_1) == ranks_text(dualpipe::schedules::dualpipe(2, 1)));
  CHECK(ranks_text(dpv_1_1) == ranks_text(dualpipe::schedules::dualpipev(1, 1)));
  CHECK(ranks_text(dpv_4_7) == ranks_text(dualpipe::schedules::dualpipev(4, 7)));
}
