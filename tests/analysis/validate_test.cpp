// validate() against corrupted tables: start from valid DualPipe/DualPipeV
// tables (with and without communication), break them in each way the
// validator knows, and expect the precise first violation: the rule, the rank,
// the index, the instruction found and the one expected instead.
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>

#include "dualpipe/analysis/validate.hpp"
#include "dualpipe/schedule/action_syntax.hpp"
#include "dualpipe/schedule/dualpipe.hpp"
#include "dualpipe/schedule/table.hpp"

namespace {

using dualpipe::instruction;
using dualpipe::op;
using dualpipe::rule;
using dualpipe::schedule_table;
using dualpipe::table_view;

constexpr dualpipe::generator_options training{};
constexpr dualpipe::generator_options compute_only{false, false};
constexpr dualpipe::generator_options inference{true, true};
constexpr dualpipe::generator_options inference_compute_only{true, false};

// "1SEND_F0@2": an action with its peer, so that peers are compared too.
std::string text(const instruction& x) {
  std::string s = dualpipe::format_action(x);
  if (dualpipe::is_communication(x.kind)) s += "@" + std::to_string(x.peer);
  return s;
}

instruction comm(op kind, int stage, int mb, int peer) {
  return dualpipe::make_communication(kind, stage, mb, peer);
}

// A table copied rank by rank into lists that a test can corrupt, then
// rebuilt as a schedule_table with push/end_rank.
class editable_table {
 public:
  explicit editable_table(table_view t) : info_(t.info) {
    for (int r = 0; r < t.ranks(); ++r) {
      const auto list = t.rank(r);
      ranks_.emplace_back(list.begin(), list.end());
    }
  }

  std::vector<instruction>& operator[](int r) { return ranks_.at(static_cast<std::size_t>(r)); }

  // Index of the first instruction equal to x on rank r; the test fails if absent.
  int find(int r, const instruction& x) {
    const auto& l = (*this)[r];
    for (std::size_t i = 0; i < l.size(); ++i)
      if (l[i] == x) return static_cast<int>(i);
    FAIL("rank " << r << " has no " << text(x));
    return -1;
  }
  // Index of the last instruction equal to x on rank r.
  int find_last(int r, const instruction& x) {
    const auto& l = (*this)[r];
    for (std::size_t i = l.size(); i-- > 0;)
      if (l[i] == x) return static_cast<int>(i);
    FAIL("rank " << r << " has no " << text(x));
    return -1;
  }
  instruction at(int r, int i) { return (*this)[r].at(static_cast<std::size_t>(i)); }
  void erase(int r, int i) { (*this)[r].erase((*this)[r].begin() + i); }
  void insert(int r, int i, const instruction& x) { (*this)[r].insert((*this)[r].begin() + i, x); }
  void swap(int r, int i, int j) {
    std::swap((*this)[r].at(static_cast<std::size_t>(i)),
              (*this)[r].at(static_cast<std::size_t>(j)));
  }
  void replace(int r, int i, const instruction& x) {
    (*this)[r].at(static_cast<std::size_t>(i)) = x;
  }

  schedule_table build() const {
    schedule_table t(info_);
    for (const auto& list : ranks_) {
      for (const auto& x : list) t.push(x);
      t.end_rank();
    }
    return t;
  }

 private:
  dualpipe::schedule_info info_;
  std::vector<std::vector<instruction>> ranks_;
};

struct expected_violation {
  rule broken = rule::none;
  int rank = -1;
  int index = -1;
  std::optional<instruction> at{};        // the instruction at (rank, index)
  std::optional<instruction> expected{};  // none: the rule names no expected instruction
  int expected_rank = -1;
};

void check_violation(const dualpipe::validation& v, const expected_violation& e) {
  INFO(dualpipe::describe(v));
  REQUIRE_FALSE(v.ok);
  const auto& f = v.first;
  CHECK(dualpipe::rule_name(f.broken) == dualpipe::rule_name(e.broken));
  CHECK(f.rank == e.rank);
  CHECK(f.index == e.index);
  CHECK_FALSE(f.what.empty());
  if (e.at) {
    CHECK(text(f.at) == text(*e.at));
    CHECK(f.at == *e.at);
  }
  CHECK(f.has_expected == e.expected.has_value());
  if (e.expected && f.has_expected) {
    CHECK(text(f.expected) == text(*e.expected));
    CHECK(f.expected == *e.expected);
    CHECK(f.expected_rank == e.expected_rank);
  }
}

dualpipe::validation validate_edited(const editable_table& t) {
  const schedule_table built = t.build();
  return dualpipe::validate(built);
}

editable_table dualpipe_4_8(dualpipe::generator_options o) {
  return editable_table(dualpipe::schedules::dualpipe(4, 8, o));
}
editable_table dualpipev_2_4(dualpipe::generator_options o) {
  return editable_table(dualpipe::schedules::dualpipev(2, 4, o));
}

}  // namespace

TEST_CASE("the starting tables are valid", "[validate]") {
  for (const auto o : {training, compute_only, inference, inference_compute_only}) {
    CHECK(dualpipe::validate(dualpipe_4_8(o).build()).ok);
    CHECK(dualpipe::validate(dualpipev_2_4(o).build()).ok);
    CHECK(dualpipe::validate(dualpipe::schedules::dualpipev(4, 8, o)).ok);
  }
  // An unchanged copy is still valid: the copy itself is faithful.
  CHECK(dualpipe::describe(dualpipe::validate(dualpipe_4_8(training).build())) == "ok");
}

TEST_CASE("a dropped forward", "[validate]") {
  SECTION("forward-only: nothing waits for the last stage, so it is simply missing") {
    auto t = dualpipe_4_8(inference_compute_only);
    t.erase(3, t.find(3, dualpipe::make_forward(3, 3)));
    check_violation(validate_edited(t),
                    {rule::missing, 3, -1, std::nullopt, dualpipe::make_forward(3, 3), 3});
  }
  SECTION("with communication: the send of its output comes first") {
    auto t = dualpipe_4_8(training);
    t.erase(0, 0);  // 0F0; rank 0 then starts with 0SEND_F0@1
    check_violation(validate_edited(t), {rule::causality, 0, 0, comm(op::send_forward, 0, 0, 1),
                                         dualpipe::make_forward(0, 0), 0});
  }
  SECTION("compute-only: its backward-input runs without it") {
    auto t = dualpipe_4_8(compute_only);
    const int i = t.find(0, dualpipe::make_forward(3, 4));
    t.erase(0, i);
    check_violation(validate_edited(t), {rule::causality, 0, i, dualpipe::make_backward_input(3, 4),
                                         dualpipe::make_forward(3, 4), 0});
  }
}

TEST_CASE("a duplicated forward or backward", "[validate]") {
  SECTION("a second B of one (stage, micro-batch)") {
    auto t = dualpipe_4_8(compute_only);
    const int i = t.find(0, dualpipe::make_backward(3, 6));
    t.insert(0, i + 1, dualpipe::make_backward(3, 6));
    check_violation(validate_edited(t), {rule::duplicate, 0, i + 1, dualpipe::make_backward(3, 6)});
  }
  SECTION("a second F names the forward it repeats") {
    auto t = dualpipe_4_8(compute_only);
    t.insert(0, 2, dualpipe::make_forward(0, 1));
    check_violation(validate_edited(t), {rule::duplicate, 0, 2, dualpipe::make_forward(0, 1),
                                         dualpipe::make_forward(0, 1), 0});
  }
  SECTION("DualPipeV: a second backward hidden in an overlapped pair") {
    auto t = dualpipev_2_4(compute_only);
    // Rank 1: ... 2B0 (2F2;1B0) ... -> make 2B0's successor repeat 2B0's backward.
    const int i = t.find(1, dualpipe::make_overlapped(2, 2, 1, 0));
    t.replace(1, i, dualpipe::make_overlapped(2, 2, 2, 0));
    check_violation(validate_edited(t),
                    {rule::duplicate, 1, i, dualpipe::make_overlapped(2, 2, 2, 0)});
  }
}

TEST_CASE("a backward swapped before its forward", "[validate]") {
  auto t = dualpipe_4_8(compute_only);
  // Rank 0: 3F5 then (0F3;3B5): the pair's backward half now comes first.
  const int f = t.find(0, dualpipe::make_forward(3, 5));
  const int pair = t.find(0, dualpipe::make_overlapped(0, 3, 3, 5));
  REQUIRE(pair == f + 1);
  t.swap(0, f, pair);
  check_violation(validate_edited(t), {rule::causality, 0, f, dualpipe::make_overlapped(0, 3, 3, 5),
                                       dualpipe::make_forward(3, 5), 0});
}

TEST_CASE("weight gradients out of FIFO order", "[validate]") {
  SECTION("DualPipe: two W swapped") {
    auto t = dualpipe_4_8(training);
    // Rank 1 ends with I7 of stage 2, I3 of stage 1, then W 2W7, 1W3.
    const int w = t.find(1, dualpipe::make_backward_weight(2, 7));
    REQUIRE(t.at(1, w + 1) == dualpipe::make_backward_weight(1, 3));
    t.swap(1, w, w + 1);
    check_violation(validate_edited(t),
                    {rule::weight_order, 1, w, dualpipe::make_backward_weight(1, 3),
                     dualpipe::make_backward_weight(2, 7), 1});
  }
  SECTION("DualPipeV: two W swapped") {
    auto t = dualpipev_2_4(compute_only);
    t.swap(1, 13, 14);  // 2W3 1W3, counted by hand in the reference order test
    check_violation(validate_edited(t),
                    {rule::weight_order, 1, 13, dualpipe::make_backward_weight(1, 3),
                     dualpipe::make_backward_weight(2, 3), 1});
  }
  SECTION("a W moved above its own I names that I, not the queue's head") {
    auto t = dualpipe_4_8(compute_only);
    // Rank 1 ends 2I7 1I3 2W7 1W3; move 1W3 above 1I3 (2I7 is then the oldest).
    const int i = t.find(1, dualpipe::make_backward_input(1, 3));
    t.erase(1, t.find(1, dualpipe::make_backward_weight(1, 3)));
    t.insert(1, i, dualpipe::make_backward_weight(1, 3));
    check_violation(validate_edited(t),
                    {rule::weight_order, 1, i, dualpipe::make_backward_weight(1, 3),
                     dualpipe::make_backward_input(1, 3), 1});
    CHECK(dualpipe::describe(validate_edited(t)) ==
          "invalid schedule: rank 1, instruction 12 (1W3): a W runs before the I that defers its "
          "weight gradient; expected 1I3 on rank 1 [weight-order]");
  }
  SECTION("a W moved above its own I with nothing deferred yet") {
    auto t = dualpipe_4_8(compute_only);
    const int i = t.find(0, dualpipe::make_backward_input(0, 2));  // rank 0: ... 0I2 0W2 ...
    t.swap(0, i, i + 1);
    check_violation(validate_edited(t),
                    {rule::weight_order, 0, i, dualpipe::make_backward_weight(0, 2),
                     dualpipe::make_backward_input(0, 2), 0});
  }
  SECTION("a W with nothing deferred") {
    auto t = dualpipe_4_8(compute_only);
    t.insert(0, 0, dualpipe::make_backward_weight(0, 0));
    check_violation(validate_edited(t),
                    {rule::weight_order, 0, 0, dualpipe::make_backward_weight(0, 0)});
  }
}

TEST_CASE("an instruction on the wrong rank", "[validate]") {
  SECTION("a forward moved to another rank") {
    auto t = dualpipe_4_8(compute_only);
    t.erase(0, t.find(0, dualpipe::make_forward(0, 1)));
    t.insert(1, 0, dualpipe::make_forward(0, 1));
    check_violation(validate_edited(t), {rule::wrong_rank, 1, 0, dualpipe::make_forward(0, 1),
                                         dualpipe::make_forward(0, 1), 0});
  }
  SECTION("the backward half of an overlapped pair belongs to another rank") {
    auto t = dualpipe_4_8(compute_only);
    const int i = t.find(0, dualpipe::make_overlapped(0, 3, 3, 5));
    t.replace(0, i, dualpipe::make_overlapped(0, 3, 2, 5));  // stage 2, mb 5 runs on rank 1
    check_violation(validate_edited(t),
                    {rule::wrong_rank, 0, i, dualpipe::make_overlapped(0, 3, 2, 5),
                     dualpipe::make_backward(2, 5), 1});
  }
  SECTION("DualPipeV: the mirror stage of another rank") {
    auto t = dualpipev_2_4(compute_only);
    t.insert(0, 3, dualpipe::make_forward(2, 0));  // stage 2 is rank 1's second stage
    check_violation(validate_edited(t), {rule::wrong_rank, 0, 3, dualpipe::make_forward(2, 0),
                                         dualpipe::make_forward(2, 0), 1});
  }
}

TEST_CASE("communication with the wrong peer", "[validate]") {
  SECTION("a send to a rank that does not hold the next stage") {
    auto t = dualpipe_4_8(training);
    const instruction send = comm(op::send_forward, 1, 0, 2);
    const int i = t.find(1, send);
    t.replace(1, i, comm(op::send_forward, 1, 0, 3));
    check_violation(validate_edited(t),
                    {rule::wrong_peer, 1, i, comm(op::send_forward, 1, 0, 3), send, 1});
  }
  SECTION("a send past the last stage") {
    auto t = dualpipe_4_8(training);
    t.insert(3, 0, comm(op::send_forward, 3, 0, 2));
    check_violation(validate_edited(t), {rule::wrong_peer, 3, 0, comm(op::send_forward, 3, 0, 2)});
  }
  SECTION("DualPipeV: communication across the tip, where the hand-off is local") {
    auto t = dualpipev_2_4(training);
    t.insert(1, 3, comm(op::send_forward, 1, 0, 1));
    check_violation(validate_edited(t), {rule::wrong_peer, 1, 3, comm(op::send_forward, 1, 0, 1)});
  }
}

TEST_CASE("sends and receives that do not pair up", "[validate]") {
  SECTION("a dropped receive shifts the pairing: the next one mismatches") {
    auto t = dualpipe_4_8(training);
    REQUIRE(t.at(1, 0) == comm(op::recv_forward, 1, 0, 0));
    t.erase(1, 0);
    const int i = t.find(1, comm(op::recv_forward, 1, 1, 0));
    check_violation(validate_edited(t), {rule::mismatched, 1, i, comm(op::recv_forward, 1, 1, 0),
                                         comm(op::recv_forward, 1, 0, 0), 1});
  }
  SECTION("DualPipeV: a dropped receive") {
    auto t = dualpipev_2_4(training);
    t.erase(1, 0);  // 1RECV_F0@0
    check_violation(validate_edited(t), {rule::mismatched, 1, 2, comm(op::recv_forward, 1, 1, 0),
                                         comm(op::recv_forward, 1, 0, 0), 1});
  }
  SECTION("a receive of the wrong micro-batch") {
    auto t = dualpipe_4_8(training);
    const int i = t.find(1, comm(op::recv_forward, 1, 1, 0));
    t.replace(1, i, comm(op::recv_forward, 1, 2, 0));
    check_violation(validate_edited(t), {rule::mismatched, 1, i, comm(op::recv_forward, 1, 2, 0),
                                         comm(op::recv_forward, 1, 1, 0), 1});
  }
  SECTION("the last receive from a peer dropped: its send is unmatched") {
    auto t = dualpipe_4_8(training);
    // Rank 1's last receive from rank 0 is the gradient 2RECV_B7@0, posted
    // for rank 0's last send to rank 1, 3SEND_B7@1.
    t.erase(1, t.find_last(1, comm(op::recv_backward, 2, 7, 0)));
    const int s = t.find(0, comm(op::send_backward, 3, 7, 1));
    check_violation(validate_edited(t), {rule::unmatched, 0, s, comm(op::send_backward, 3, 7, 1),
                                         comm(op::recv_backward, 2, 7, 0), 1});
  }
  SECTION("the last send to a peer dropped: its receive is unmatched") {
    auto t = dualpipe_4_8(training);
    t.erase(0, t.find(0, comm(op::send_backward, 3, 7, 1)));
    const int i = t.find(1, comm(op::recv_backward, 2, 7, 0));
    check_violation(validate_edited(t), {rule::unmatched, 1, i, comm(op::recv_backward, 2, 7, 0),
                                         comm(op::send_backward, 3, 7, 1), 0});
  }
}

TEST_CASE("commits ordered so that the ranks deadlock", "[validate]") {
  auto t = dualpipe_4_8(training);
  // Rank 0 waits for rank 1's first output (3RECV_F4@1) before posting the
  // send rank 1 waits for (0SEND_F0@1): hoist that receive and commit it first.
  const instruction recv = comm(op::recv_forward, 3, 4, 1);
  t.erase(0, t.find(0, recv));
  t.insert(0, 0, recv);
  t.insert(0, 1, dualpipe::make_commit());
  // The pairing in posting order is unchanged, so only the protocol catches it:
  // rank 0 blocks in its first commit on the send rank 1 never reaches.
  const dualpipe::validation v = validate_edited(t);
  check_violation(
      v, {rule::deadlock, 0, 1, dualpipe::make_commit(), comm(op::send_forward, 2, 4, 0), 1});
  // And rank 1 waits in its first commit for rank 0's first send: a cycle,
  // named rank by rank.
  REQUIRE(v.first.cycle.size() == 2);
  CHECK(v.first.cycle[1].rank == 1);
  CHECK(v.first.cycle[1].index == 1);
  CHECK(text(v.first.cycle[1].awaited) == text(comm(op::send_forward, 0, 0, 1)));
  CHECK(v.first.cycle[1].awaited_rank == 0);
  CHECK(dualpipe::describe(v) ==
        "invalid schedule: rank 0, instruction 1 (COMMIT): the ranks wait in a cycle: rank 0 "
        "waits at instruction 1 (COMMIT) for 2SEND_F4 on rank 1; rank 1 waits at instruction 1 "
        "(COMMIT) for 0SEND_F0 on rank 0 [deadlock]");
}

namespace {

// A compute-only training table written by hand, one list per rank
// (stage s on rank s).
schedule_table compute_table(int stages, int microbatches,
                             const std::vector<std::vector<instruction>>& ranks) {
  schedule_table t({dualpipe::schedule_kind::custom, stages, stages, microbatches,
                    dualpipe::placement::linear, false, false});
  for (const auto& list : ranks) {
    for (const auto& x : list) t.push(x);
    t.end_rank();
  }
  return t;
}

using dualpipe::make_backward;
using dualpipe::make_forward;

}  // namespace

TEST_CASE("a cyclic wait names every rank of the cycle and what it waits for", "[validate]") {
  SECTION("compute-only, two ranks") {
    // Rank 0's 0B0 needs rank 1's 1B0, which comes after 1F1, which needs
    // rank 0's 0F1, which comes after 0B0.
    const auto t = compute_table(
        2, 2,
        {{make_forward(0, 0), make_backward(0, 0), make_forward(0, 1), make_backward(0, 1)},
         {make_forward(1, 1), make_forward(1, 0), make_backward(1, 0), make_backward(1, 1)}});
    const dualpipe::validation v = dualpipe::validate(t);
    check_violation(v, {rule::deadlock, 0, 1, make_backward(0, 0), make_backward(1, 0), 1});
    CHECK(dualpipe::describe(v) ==
          "invalid schedule: rank 0, instruction 1 (0B0): the ranks wait in a cycle: rank 0 "
          "waits at instruction 1 (0B0) for 1B0 on rank 1; rank 1 waits at instruction 0 (1F1) "
          "for 0F1 on rank 0 [deadlock]");
  }
  SECTION("a rank that waits on the cycle is not part of it") {
    // Ranks 1 and 2 wait for each other as above; rank 0's 0B0 waits for
    // rank 1's 1B0, behind the cycle. The report starts at the cycle.
    const auto t = compute_table(
        3, 2,
        {{make_forward(0, 0), make_forward(0, 1), make_backward(0, 0), make_backward(0, 1)},
         {make_forward(1, 0), make_backward(1, 0), make_forward(1, 1), make_backward(1, 1)},
         {make_forward(2, 1), make_forward(2, 0), make_backward(2, 0), make_backward(2, 1)}});
    const dualpipe::validation v = dualpipe::validate(t);
    check_violation(v, {rule::deadlock, 1, 1, make_backward(1, 0), make_backward(2, 0), 2});
    CHECK(dualpipe::describe(v) ==
          "invalid schedule: rank 1, instruction 1 (1B0): the ranks wait in a cycle: rank 1 "
          "waits at instruction 1 (1B0) for 2B0 on rank 2; rank 2 waits at instruction 0 (2F1) "
          "for 1F1 on rank 1 [deadlock]");
  }
  SECTION("the instruction waited for is the one in the producer's list") {
    // As the first section, with rank 1's backward of micro-batch 0 split
    // into I and W: rank 0 waits for that I.
    const auto t = compute_table(
        2, 2,
        {{make_forward(0, 0), make_backward(0, 0), make_forward(0, 1), make_backward(0, 1)},
         {make_forward(1, 1), make_forward(1, 0), dualpipe::make_backward_input(1, 0),
          dualpipe::make_backward_weight(1, 0), make_backward(1, 1)}});
    CHECK(dualpipe::describe(dualpipe::validate(t)) ==
          "invalid schedule: rank 0, instruction 1 (0B0): the ranks wait in a cycle: rank 0 "
          "waits at instruction 1 (0B0) for 1I0 on rank 1; rank 1 waits at instruction 0 (1F1) "
          "for 0F1 on rank 0 [deadlock]");
  }
  SECTION("no cycle: the rank waited for finishes without the input") {
    // Rank 0 never runs micro-batch 1; rank 1 waits for its forward.
    const auto t = compute_table(
        2, 2,
        {{make_forward(0, 0), make_backward(0, 0)},
         {make_forward(1, 0), make_backward(1, 0), make_forward(1, 1), make_backward(1, 1)}});
    const dualpipe::validation v = dualpipe::validate(t);
    check_violation(v, {rule::deadlock, 1, 2, make_forward(1, 1), make_forward(0, 1), 0});
    CHECK(v.first.cycle.empty());
    CHECK(dualpipe::describe(v) ==
          "invalid schedule: rank 1, instruction 2 (1F1): blocked: the input this instruction "
          "needs is never produced; expected 0F1 on rank 0 [deadlock]");
  }
}

// The cycle's list allocates, and is freed within the constant expression:
// validate() still works in static_assert on a table that deadlocks.
namespace {

constexpr dualpipe::static_table<2, 8> cyclic_compute_table() {
  dualpipe::static_table<2, 8> t{};
  t.header = {dualpipe::schedule_kind::custom, 2, 2, 2, dualpipe::placement::linear, false, false};
  t.instructions = {make_forward(0, 0), make_backward(0, 0), make_forward(0, 1),
                    make_backward(0, 1), make_forward(1, 1), make_forward(1, 0),
                    make_backward(1, 0), make_backward(1, 1)};
  t.offsets = {0, 4, 8};
  return t;
}

}  // namespace

static_assert(!dualpipe::validate(cyclic_compute_table()).ok);
static_assert(dualpipe::validate(cyclic_compute_table()).first.cycle.size() == 2);

TEST_CASE("a compute before the commit that receives its input", "[validate]") {
  auto t = dualpipe_4_8(training);
  // Rank 1: 1RECV_F0@0 COMMIT 1F0 -> 1RECV_F0@0 1F0 COMMIT.
  t.swap(1, 1, 2);
  check_violation(validate_edited(t), {rule::causality, 1, 1, dualpipe::make_forward(1, 0),
                                       comm(op::recv_forward, 1, 0, 0), 1});
}

TEST_CASE("the final commit removed", "[validate]") {
  auto t = dualpipe_4_8(inference);
  // Forward-only, rank 2's last forward (stage 2, micro-batch 3) sends to
  // rank 3 and only the final commit launches that send.
  auto& rank_2 = t[2];
  REQUIRE(rank_2.back() == dualpipe::make_commit());
  REQUIRE(rank_2[rank_2.size() - 2] == comm(op::send_forward, 2, 3, 3));
  rank_2.pop_back();
  const int i = static_cast<int>(rank_2.size()) - 1;
  check_violation(validate_edited(t), {rule::uncommitted, 2, i, comm(op::send_forward, 2, 3, 3),
                                       dualpipe::make_commit(), 2});
}

TEST_CASE("backward work in a forward-only table", "[validate]") {
  const instruction intruders[] = {
      dualpipe::make_backward(1, 4),        dualpipe::make_backward_input(1, 4),
      dualpipe::make_backward_weight(1, 4), dualpipe::make_overlapped(1, 5, 1, 4),
      comm(op::send_backward, 1, 4, 3),     comm(op::recv_backward, 1, 4, 1)};
  for (const instruction& x : intruders) {
    INFO(text(x));
    auto t = dualpipe_4_8(inference);
    t.insert(2, 3, x);
    check_violation(validate_edited(t), {rule::backward_in_inference, 2, 3, x});
  }
}

TEST_CASE("stages, micro-batches and kinds outside the table", "[validate]") {
  const instruction intruders[] = {
      dualpipe::make_forward(4, 0),                        // 4 stages: 0..3
      dualpipe::make_forward(-1, 0),                       //
      dualpipe::make_backward(1, 8),                       // 8 micro-batches: 0..7
      dualpipe::make_forward(1, -1),                       //
      dualpipe::make_overlapped(1, 4, 1, 99),              // the backward half
      comm(op::send_forward, 7, 0, 3),                     //
      instruction{static_cast<op>(42), 1, 4, -1, -1, -1},  // no such kind
  };
  for (const instruction& x : intruders) {
    INFO(text(x));
    auto t = dualpipe_4_8(compute_only);
    t.insert(2, 1, x);
    check_violation(validate_edited(t), {rule::out_of_range, 2, 1, x});
  }
}

TEST_CASE("rank offsets and sizes that do not fit the schedule info", "[validate]") {
  const auto good = dualpipe::schedules::dualpipe(4, 8, compute_only);
  SECTION("a rank never closed") {
    schedule_table t(good.info());
    for (int r = 0; r < 3; ++r) {
      for (const auto& x : good.rank(r)) t.push(x);
      t.end_rank();
    }
    check_violation(dualpipe::validate(t), {rule::shape, -1, -1});
  }
  SECTION("instructions after the last rank") {
    schedule_table t(good.info());
    for (int r = 0; r < 4; ++r) {
      for (const auto& x : good.rank(r)) t.push(x);
      t.end_rank();
    }
    t.push(dualpipe::make_forward(0, 0));
    check_violation(dualpipe::validate(t), {rule::shape, -1, -1});
  }
  SECTION("offsets that decrease") {
    const table_view v = good;
    std::vector<std::uint32_t> offsets(v.offsets.begin(), v.offsets.end());
    offsets[2] = offsets[1] - 1;  // rank 1 would end before it begins
    table_view broken = v;
    broken.offsets = offsets;
    check_violation(dualpipe::validate(broken), {rule::shape, 1, -1});
  }
  SECTION("offsets that do not start at 0") {
    const table_view v = good;
    std::vector<std::uint32_t> offsets(v.offsets.begin(), v.offsets.end());
    offsets[0] = 1;
    table_view broken = v;
    broken.offsets = offsets;
    check_violation(dualpipe::validate(broken), {rule::shape, -1, -1});
  }
  SECTION("no ranks") {
    auto info = good.info();
    info.ranks = 0;
    check_violation(dualpipe::validate(schedule_table(info)), {rule::shape, -1, -1});
  }
  SECTION("an explicit placement that leaves a stage on no rank") {
    schedule_table t = good;
    auto info = good.info();
    info.where = dualpipe::placement::explicit_map;
    t.set_info(info);
    t.set_stage_ranks({0, 1, 2});  // stage 3 is nowhere
    check_violation(dualpipe::validate(t), {rule::shape, -1, -1, dualpipe::make_forward(3, 0)});
  }
}

TEST_CASE("a missing backward or weight gradient", "[validate]") {
  SECTION("W") {
    auto t = dualpipe_4_8(compute_only);
    REQUIRE(t[1].back() == dualpipe::make_backward_weight(1, 3));
    t[1].pop_back();
    check_violation(validate_edited(t),
                    {rule::missing, 1, -1, std::nullopt, dualpipe::make_backward_weight(1, 3), 1});
  }
  SECTION("I and its W") {
    auto t = dualpipe_4_8(compute_only);
    t.erase(0, t.find(0, dualpipe::make_backward_input(0, 3)));
    t.erase(0, t.find(0, dualpipe::make_backward_weight(0, 3)));
    check_violation(validate_edited(t),
                    {rule::missing, 0, -1, std::nullopt, dualpipe::make_backward(0, 3), 0});
  }
}

TEST_CASE("describe() reads as one sentence naming rank, action and expectation", "[validate]") {
  {
    auto t = dualpipe_4_8(compute_only);
    t.swap(1, 13, 14);  // rank 1: ... 2W7 1W3 -> 1W3 2W7
    CHECK(dualpipe::describe(validate_edited(t)) ==
          "invalid schedule: rank 1, instruction 13 (1W3): a W that is not the oldest deferred "
          "weight gradient (FIFO); expected 2W7 on rank 1 [weight-order]");
  }
  {
    auto t = dualpipe_4_8(training);
    t.replace(1, 3, comm(op::send_forward, 1, 0, 3));  // 1SEND_F0 to rank 3 instead of 2
    CHECK(dualpipe::describe(validate_edited(t)) ==
          "invalid schedule: rank 1, instruction 3 (1SEND_F0): the peer is not the rank of the "
          "neighbouring stage; expected 1SEND_F0 with peer 2 on rank 1 [wrong-peer]");
  }
}

// A batch may hold compute between its posted sends/receives and its commit
// (posting launches nothing). The validator used to look up the partner of
// every instruction in a committed batch, compute included, and read out of
// bounds there (a compile error in a static_assert, garbage at run time).
namespace {

constexpr dualpipe::schedule_info two_rank_inference{dualpipe::schedule_kind::custom, 2,    2,   2,
                                                     dualpipe::placement::linear,     true, true};

// Rank 0: F0, post its send, F1 inside the open batch, post, commit.
// Rank 1: receive 0, commit, F, receive 1, commit, F.
constexpr dualpipe::static_table<2, 11> compute_inside_batch() {
  dualpipe::static_table<2, 11> t{};
  t.header = two_rank_inference;
  t.instructions = {dualpipe::make_forward(0, 0),
                    dualpipe::make_communication(op::send_forward, 0, 0, 1),
                    dualpipe::make_forward(0, 1),
                    dualpipe::make_communication(op::send_forward, 0, 1, 1),
                    dualpipe::make_commit(),
                    dualpipe::make_communication(op::recv_forward, 1, 0, 0),
                    dualpipe::make_commit(),
                    dualpipe::make_forward(1, 0),
                    dualpipe::make_communication(op::recv_forward, 1, 1, 0),
                    dualpipe::make_commit(),
                    dualpipe::make_forward(1, 1)};
  t.offsets = {0, 5, 11};
  return t;
}

}  // namespace

static_assert(dualpipe::validate(compute_inside_batch()).ok);

TEST_CASE("compute between a batch's posts and its commit (regression)", "[validate][bug]") {
  constexpr auto good = compute_inside_batch();
  CHECK(dualpipe::validate(good).ok);

  // Rank 1 never commits its second receive: rank 0 blocks in its commit,
  // and the report walks rank 0's batch past the compute to the send whose
  // receive is never launched.
  editable_table t(good);
  t[1].erase(t[1].begin() + 4);  // rank 1's second commit
  t[1].pop_back();               // and the forward it would have fed
  check_violation(validate_edited(t), {rule::deadlock, 0, 4, dualpipe::make_commit(),
                                       comm(op::recv_forward, 1, 1, 0), 1});
}
