// The rules of the schedule model that have one home under schedule/ (see
// docs/architecture.md): placement, the first-in first-out queue of deferred
// weight gradients, the shape of a table view, kinds, and the calls both
// table types answer; and the forward-only pass built on them.
#include <array>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "dualpipe/analysis/validate.hpp"
#include "dualpipe/passes/forward_only.hpp"
#include "dualpipe/schedule/deferred_weights.hpp"
#include "dualpipe/schedule/dualpipe.hpp"
#include "dualpipe/schedule/placement.hpp"
#include "dualpipe/schedule/registry.hpp"
#include "dualpipe/schedule/table.hpp"

using namespace dualpipe;

// Placement, at compile time: DualPipe's mirror, the V's fold, the loops of a
// linear placement, and an explicit list.
static_assert(stage_rank(placement::mirrored, 4, 4, 8, 1, 3) == 1);
static_assert(stage_rank(placement::mirrored, 4, 4, 8, 1, 4) == 2);
static_assert(stage_rank(placement::v_shape, 4, 8, 8, 3, 0) == 3);
static_assert(stage_rank(placement::v_shape, 4, 8, 8, 4, 0) == 3);
static_assert(stage_rank(placement::v_shape, 4, 8, 8, 7, 0) == 0);
static_assert(stage_rank(placement::linear, 4, 8, 8, 6, 0) == 2);
static_assert(stage_rank(placement::linear, 4, 8, 8, 8, 0) == -1);  // no stage 8
static_assert(stage_rank(placement::linear, 0, 8, 8, 1, 0) == -1);  // no ranks
constexpr std::array<std::int32_t, 3> explicit_ranks{2, 0, 1};
static_assert(stage_rank(placement::explicit_map, 3, 3, 4, 0, 0, explicit_ranks) == 2);
static_assert(stage_rank(placement::explicit_map, 3, 4, 4, 3, 0, explicit_ranks) == -1);
static_assert(!on_return_leg(placement::mirrored, 4, 8, 0, 3) &&
              on_return_leg(placement::mirrored, 4, 8, 0, 4));
static_assert(!on_return_leg(placement::v_shape, 4, 8, 3, 0) &&
              on_return_leg(placement::v_shape, 4, 8, 4, 0));
static_assert(on_return_leg(placement::linear, 2, 8, 2, 0) &&
              !on_return_leg(placement::linear, 2, 8, 4, 0));
static_assert(!on_return_leg(placement::explicit_map, 2, 8, 1, 0));
static_assert(mirror_of(placement::mirrored, 4, 1) == 2 &&
              mirror_of(placement::mirrored, 4, 4) == -1);
static_assert(mirror_of(placement::v_shape, 4, 1) == -1);

TEST_CASE("tables answer rank_of with the one placement function", "[model]") {
  const schedule_table t = schedules::dualpipev(3, 6);
  for (int s = 0; s < t.info().stages; ++s)
    for (int m = 0; m < t.info().microbatches; ++m)
      CHECK(t.view().rank_of(s, m) == stage_rank(placement::v_shape, 3, 6, 6, s, m));
}

// The queue, at compile time: first in, first out, and admits only the oldest.
static_assert([] {
  deferred_weights q;
  q.defer(1, 0);
  q.defer(2, 0);
  if (q.admits(2, 0) || !q.admits(1, 0) || q.size() != 2) return false;
  const deferred_weight first = q.pop();
  const deferred_weight second = q.pop();
  return first == deferred_weight{1, 0} && second == deferred_weight{2, 0} && q.empty();
}());

TEST_CASE("the deferred weight queue refuses a W with nothing deferred", "[model]") {
  deferred_weights q;
  CHECK_FALSE(q.admits(0, 0));
  REQUIRE_THROWS_WITH(q.pop(), "dualpipe: a W with no deferred weight gradient");
  q.defer(0, 1);
  q.clear();
  CHECK(q.empty());
}

TEST_CASE("shape_violation names what is wrong with a view, and which rank", "[model]") {
  const schedule_table good = schedules::dualpipe(2, 4);
  CHECK(shape_violation(good.view()).empty());

  table_view no_sizes = good.view();
  no_sizes.info.microbatches = 0;
  CHECK(shape_violation(no_sizes).what == "the table has no ranks, stages or micro-batches");

  table_view short_offsets = good.view();
  short_offsets.offsets = short_offsets.offsets.first(2);
  CHECK(shape_violation(short_offsets).what == "the rank offsets do not cover the instructions");

  const std::vector<instruction> two(2, make_forward(0, 0));
  const std::array<std::uint32_t, 4> decreasing{0, 2, 1, 2};
  const table_view bad{
      {schedule_kind::custom, 3, 1, 1, placement::linear, true, false}, two, decreasing, {}};
  const shape_problem p = shape_violation(bad);
  CHECK(p.what == "the rank offsets decrease");
  CHECK(p.rank == 1);
}

// Both table types answer info(), view(), rank(r) and size() alike, so code
// written against one (mirror_rank(table.info(), r), table.rank(r)) takes the
// other.
template <class Table>
int calls_every_table_answers(const Table& t) {
  const schedule_info& info = t.info();
  return info.ranks + static_cast<int>(t.view().instructions.size()) +
         static_cast<int>(t.rank(0).size()) + static_cast<int>(t.size());
}

TEST_CASE("static_table and schedule_table answer the same calls", "[model]") {
  constexpr auto compile_time = schedules::dualpipe_table<4, 8>();
  const schedule_table run_time = schedules::dualpipe(4, 8);
  static_assert(compile_time.info().kind == dualpipe_generator::kind);
  CHECK(calls_every_table_answers(compile_time) == calls_every_table_answers(run_time));
  CHECK(compile_time.info() == run_time.info());
}

TEST_CASE("kinds compare by name and carry their generator's placement", "[model]") {
  STATIC_REQUIRE(schedule_kind::custom.is_custom());
  STATIC_REQUIRE(schedule_kind{"dualpipe"} == dualpipe_generator::kind);
  STATIC_REQUIRE_FALSE(dualpipe_generator::kind == dualpipev_generator::kind);
  CHECK(schedules::dualpipe(2, 4).info().where == dualpipe_generator::kind.where);
  CHECK(schedules::dualpipev(2, 4).info().where == dualpipev_generator::kind.where);
}

TEST_CASE("the run-time and compile-time errors of a generator share one sentence", "[model]") {
  constexpr dualpipe_generator odd{5, 8};
  CHECK(broken_rule(odd) ==
        "DualPipe needs an even number of ranks (P even): rank r pairs with its mirror P-1-r");
  REQUIRE_THROWS_WITH(
      schedules::dualpipe(5, 8),
      "DualPipe needs an even number of ranks (P even): rank r pairs with its mirror P-1-r "
      "(got P=5, N=8)");
  CHECK(broken_rule(dualpipe_generator{4, 7}).empty());
}

TEST_CASE("the forward-only pass of a DualPipe table is DualPipe's own inference table",
          "[model][passes]") {
  for (const bool v : {false, true}) {
    const schedule_table training = v ? schedules::dualpipev(4, 8) : schedules::dualpipe(4, 8);
    const schedule_table inference = v ? schedules::dualpipev(4, 8, {.forward_only = true})
                                       : schedules::dualpipe(4, 8, {.forward_only = true});
    const schedule_table projected = project_forward_only(training);
    CHECK(projected == inference);
    CHECK(forward_only_table(training) == inference);
    CHECK(validate(projected).ok);
  }
}

TEST_CASE("the checked forward-only pass names why a projection cannot run", "[model][passes]") {
  // Rank 1 runs its forward before the batch that receives its input: the
  // forwards themselves are out of order, so the projection is refused.
  schedule_table t({schedule_kind::custom, 2, 2, 1, placement::linear, false, true});
  t.push(make_forward(0, 0));
  t.push(make_communication(op::send_forward, 0, 0, 1));
  t.push(make_commit());
  t.push(make_communication(op::recv_backward, 0, 0, 1));
  t.push(make_commit());
  t.push(make_backward(0, 0));
  t.end_rank();
  t.push(make_forward(1, 0));
  t.push(make_communication(op::recv_forward, 1, 0, 0));
  t.push(make_commit());
  t.push(make_backward(1, 0));
  t.push(make_communication(op::send_backward, 1, 0, 0));
  t.push(make_commit());
  t.end_rank();
  REQUIRE_THROWS_WITH(
      forward_only_table(t),
      "the table's forward-only projection (its forwards and their communication) is not a "
      "valid schedule, so it cannot run inference: invalid schedule: rank 1, instruction 0 "
      "(1F0): a forward runs before its input was received (no committed RECV_F); expected "
      "1RECV_F0 with peer 0 on rank 1 [causality]");

  // A table whose shape is broken is refused before anything is read.
  table_view broken = t.view();
  broken.offsets = broken.offsets.first(1);
  REQUIRE_THROWS_WITH(forward_only_table(broken),
                      "dualpipe: forward-only projection: the rank offsets do not cover the "
                      "instructions");
}
