// lower_communication: a lowering written out by hand, hand-offs within a
// rank, imported (explicit-map) and DualPipe compute-only tables, and the
// exact rejection of malformed compute orders.
#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "dualpipe/analysis/validate.hpp"
#include "dualpipe/schedule/action_syntax.hpp"
#include "dualpipe/schedule/dualpipe.hpp"
#include "dualpipe/schedule/gpipe.hpp"
#include "dualpipe/schedule/interleaved_1f1b.hpp"
#include "dualpipe/passes/lower_communication.hpp"
#include "dualpipe/schedule/zbv.hpp"

#include "rank_actions.hpp"

namespace {

using namespace dualpipe;

constexpr generator_options compute_only{.forward_only = false, .with_communication = false};

using test::actions;

// A compute-only table from action text, one string of actions per rank.
schedule_table table_of(schedule_info info, std::initializer_list<std::vector<std::string>> ranks) {
  schedule_table t(info);
  for (const auto& rank : ranks) {
    for (const std::string& a : rank) {
      const auto parsed = parse_action(a);
      REQUIRE(parsed);
      t.push(*parsed.action);
    }
    t.end_rank();
  }
  return t;
}

schedule_info linear(int ranks, int microbatches, bool forward_only = false) {
  schedule_info i;
  i.ranks = ranks;
  i.stages = ranks;
  i.microbatches = microbatches;
  i.where = placement::linear;
  i.forward_only = forward_only;
  return i;
}

std::string lowering_error(const schedule_table& t) {
  try {
    (void)lower_communication(t);
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "no exception";
}

int count(const schedule_table& t, op kind) {
  int n = 0;
  for (int r = 0; r < t.info().ranks; ++r)
    for (const instruction& i : t.rank(r)) n += i.kind == kind ? 1 : 0;
  return n;
}

}  // namespace

TEST_CASE("lowering GPipe P=2 N=2, derived by hand from the lock-step rounds") {
  // Rounds: rank 0 runs 0F0, 0F1 in rounds 0, 1 and 0B0, 0B1 in 4, 5; rank 1
  // runs 1F0, 1F1, 1B0, 1B1 in rounds 1, 2, 3, 4. A value made in round p is
  // exchanged between the two ranks' computes of rounds <= p and >= p+1.
  const schedule_table compute =
      table_of(linear(2, 2), {{"0F0", "0F1", "0B0", "0B1"}, {"1F0", "1F1", "1B0", "1B1"}});
  const schedule_table lowered = lower_communication(compute);
  CHECK(actions(lowered, 0) ==
        "0F0 0SEND_F0 COMMIT 0F1 0SEND_F1 0RECV_B0 COMMIT 0B0 0RECV_B1 COMMIT 0B1");
  CHECK(actions(lowered, 1) ==
        "1RECV_F0 COMMIT 1F0 1RECV_F1 COMMIT 1F1 1B0 1SEND_B0 COMMIT 1B1 1SEND_B1 COMMIT");
  for (int r = 0; r < 2; ++r)
    for (const instruction& i : lowered.rank(r))
      if (is_communication(i.kind)) CHECK(i.peer == 1 - r);
  CHECK(lowered.info().with_communication);
  CHECK(lowered.info().kind == schedule_kind::custom);
  CHECK(validate(lowered).ok);
  // The generator lowers its own compute order the same way.
  const auto generated = schedules::gpipe(2, 2);
  for (int r = 0; r < 2; ++r) CHECK(actions(lowered, r) == actions(generated, r));
}

TEST_CASE("hand-offs between two stages of one rank get no communication") {
  // Interleaved on one rank: every hand-off is local.
  const auto single = schedules::interleaved_1f1b(1, 3, 4);
  CHECK(count(single, op::send_forward) + count(single, op::recv_forward) +
            count(single, op::send_backward) + count(single, op::recv_backward) +
            count(single, op::commit) ==
        0);
  CHECK(validate(single).ok);
  // ZB-V P=2 N=4: stage 1 -> 2 stays on rank 1; 0 -> 1 and 2 -> 3 cross ranks,
  // so 2 forward and 2 backward transfers per micro-batch.
  const auto zbv = schedules::zbv(2, 4);
  CHECK(count(zbv, op::send_forward) == 8);
  CHECK(count(zbv, op::recv_forward) == 8);
  CHECK(count(zbv, op::send_backward) == 8);
  CHECK(count(zbv, op::recv_backward) == 8);
  for (const instruction& i : zbv.rank(1))
    if (is_communication(i.kind)) CHECK(i.peer == 0);
}

TEST_CASE("lowering DualPipe and DualPipeV compute-only tables validates") {
  for (const int P : {2, 4, 6, 8})
    for (const int N : {2 * P, 2 * P + 2, 3 * P + (P % 2)}) {
      INFO("P=" << P << " N=" << N);
      const auto lowered = lower_communication(schedules::dualpipe(P, N, compute_only));
      INFO(describe(validate(lowered)));
      CHECK(validate(lowered).ok);
      const auto lowered_v = lower_communication(schedules::dualpipev(P, N, compute_only));
      CHECK(validate(lowered_v).ok);
      const auto inference = lower_communication(
          schedules::dualpipe(P, N, {.forward_only = true, .with_communication = false}));
      CHECK(validate(inference).ok);
    }
}

TEST_CASE("an imported table with an explicit stage map keeps it") {
  // Three stages on two ranks: 0 and 2 on rank 0, 1 on rank 1.
  schedule_info info;
  info.ranks = 2;
  info.stages = 3;
  info.microbatches = 2;
  info.where = placement::explicit_map;
  schedule_table compute = table_of(
      info, {{"0F0", "0F1", "2F0", "2B0", "2F1", "2B1", "0B0", "0B1"},
             {"1F0", "1F1", "1B0", "1B1"}});
  compute.set_stage_ranks({0, 1, 0});
  REQUIRE(validate(compute).ok);
  const auto lowered = lower_communication(compute);
  CHECK(lowered.view().stage_ranks.size() == 3);
  CHECK(lowered.view().rank_of(2, 0) == 0);
  CHECK(validate(lowered).ok);
  CHECK(count(lowered, op::send_forward) == 4);
  CHECK(count(lowered, op::send_backward) == 4);
}

TEST_CASE("lowering rejects malformed compute orders, naming the first offending action") {
  // A backward before its forward.
  CHECK(lowering_error(table_of(linear(2, 2), {{"0B0", "0F0", "0F1", "0B1"},
                                               {"1F0", "1F1", "1B0", "1B1"}})) ==
        "lower_communication: invalid schedule: rank 0, instruction 0 (0B0): a backward runs "
        "before its own forward; expected 0F0 on rank 0 [causality]");
  // A stage on the wrong rank.
  CHECK(lowering_error(table_of(linear(2, 2), {{"0F0", "0F1", "1F0", "0B0", "0B1"},
                                               {"1F1", "1B0", "1B1"}})) ==
        "lower_communication: invalid schedule: rank 0, instruction 2 (1F0): the stage of this "
        "instruction runs on another rank; expected 1F0 on rank 1 [wrong-rank]");
  // A missing forward.
  CHECK(lowering_error(table_of(linear(2, 2, true), {{"0F0", "0F1"}, {"1F0"}})) ==
        "lower_communication: invalid schedule: rank 1: a forward never runs; expected 1F1 on "
        "rank 1 [missing]");
  // A cyclic wait: rank 0's 0B0 needs rank 1's 1B0, which comes after 1F1,
  // which needs rank 0's 0F1, which comes after 0B0.
  CHECK(lowering_error(table_of(linear(2, 2), {{"0F0", "0B0", "0F1", "0B1"},
                                               {"1F1", "1F0", "1B0", "1B1"}})) ==
        "lower_communication: invalid schedule: rank 0, instruction 1 (0B0): the ranks wait in "
        "a cycle: rank 0 waits at instruction 1 (0B0) for 1B0 on rank 1; rank 1 waits at "
        "instruction 0 (1F1) for 0F1 on rank 0 [deadlock]");
  // Weight gradients out of first-in first-out order.
  CHECK(lowering_error(table_of(linear(1, 2), {{"0F0", "0F1", "0I0", "0I1", "0W1", "0W0"}})) ==
        "lower_communication: invalid schedule: rank 0, instruction 4 (0W1): a W that is not "
        "the oldest deferred weight gradient (FIFO); expected 0W0 on rank 0 [weight-order]");
  // A table that already holds communication.
  CHECK(lowering_error(schedules::gpipe(2, 2)) ==
        "lower_communication: rank 0, instruction 1 (0SEND_F0): the table already holds "
        "communication; lowering takes a compute-only table");
  // The positive twin of each: the well-formed order lowers.
  CHECK(lowering_error(table_of(linear(2, 2), {{"0F0", "0F1", "0B0", "0B1"},
                                               {"1F0", "1F1", "1B0", "1B1"}})) ==
        "no exception");
  CHECK(lowering_error(table_of(linear(1, 2), {{"0F0", "0F1", "0I0", "0I1", "0W0", "0W1"}})) ==
        "no exception");
}
