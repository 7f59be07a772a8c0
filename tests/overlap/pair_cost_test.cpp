// The cost model of an overlapped pair: a timeline worked out by hand, the
// sums of a timeline (hidden communication), the F, B, W and F&B costs the
// schedule simulator takes, and DualPipe's published bubble reproduced by
// the simulator with F&B from sub-op costs, all at compile time.
#include <catch2/catch.hpp>

#include <vector>

#include "dualpipe/analysis/simulate.hpp"
#include "dualpipe/overlap/moe_layer.hpp"
#include "dualpipe/overlap/pair_cost.hpp"
#include "dualpipe/schedule/dualpipe.hpp"

using namespace dualpipe;
using namespace dualpipe::overlap;

namespace {

// Every part of the layer costs 2 (communication included).
constexpr stage_programs even = moe_layer_programs({2, 2, 2, 2, 2, 2, 2, 2});

// attention 2, dispatch 1, mlp 2, combine 1; backward: each input part 2,
// each weight part 1. F = 6 = I, B = 8, W = 2.
constexpr moe_layer_costs deepseek_like{2, 1, 2, 1, 2, 1, 2, 1};

}  // namespace

TEST_CASE("an even-cost layer pair, worked out by hand") {
  // compute:  attn(F) 0-2 | mlp(B) 2-4 | mlp.W 4-6 | mlp(F) 6-8 | attn(B) 8-10 | attn.W 10-12
  // comm:     combine(B) 0-2 | dispatch(F) 2-4 | dispatch(B) 4-6 | combine(F) 8-10
  // combine(F) waits for mlp(F) (ends at 8); all 8 units of communication lie
  // under computation, and the pair takes the 12 units of computation.
  const simulated_timeline t = simulate_order(even, make_pair_order(even).view());
  REQUIRE(t.size == 10);
  const double expected[10][2] = {{0, 2}, {0, 2}, {2, 4},  {2, 4},   {4, 6},
                                  {4, 6}, {6, 8}, {8, 10}, {10, 12}, {8, 10}};
  for (int i = 0; i < 10; ++i) {
    INFO(describe(even, t.ops[static_cast<std::size_t>(i)].op));
    CHECK(t.ops[static_cast<std::size_t>(i)].start == expected[i][0]);
    CHECK(t.ops[static_cast<std::size_t>(i)].end == expected[i][1]);
  }
  constexpr lane_totals totals = simulate_order(even, make_pair_order(even).view()).totals();
  static_assert(totals.span == 12.0 && totals.compute == 12.0 && totals.communication == 8.0);
  static_assert(totals.hidden == 8.0 && totals.hidden_fraction() == 1.0);
  // Forward then backward: the forward's 8 units in a row, then the
  // backward's 12, of which only dispatch(B) hides (under its own mlp.W).
  constexpr lane_totals sequential =
      simulate_order(even, make_sequential_order(even).view()).totals();
  static_assert(sequential.span == 18.0 && sequential.hidden == 2.0);
}

TEST_CASE("totals of a measured timeline: hidden time is communication under computation") {
  const std::vector<timed_sub_op> t = {
      {make_ref(pass::forward, 0, 0), lane::compute, 10.0, 14.0},
      {make_ref(pass::backward, 0, 0), lane::communication, 12.0, 18.0},
      {make_ref(pass::backward, 0, 1), lane::compute, 16.0, 17.0},
      {make_ref(pass::forward, 0, 1), lane::communication, 20.0, 21.0},
  };
  const lane_totals s = totals_of(t);
  CHECK(s.span == 11.0);
  CHECK(s.compute == 5.0);
  CHECK(s.communication == 7.0);
  CHECK(s.hidden == 3.0);  // 12-14 and 16-17
  CHECK(s.hidden_fraction() == Approx(3.0 / 7.0));
  CHECK(totals_of({}).hidden_fraction() == 1.0);
}

TEST_CASE("costs may be replaced, e.g. by measured means") {
  const issue_order o = make_pair_order(even);
  const simulated_timeline doubled =
      simulate_order(even, o.view(), [](sub_op_ref r) { return r.which == pass::forward ? 4 : 2; });
  CHECK(doubled.totals().span == 16.0);
}

TEST_CASE("the simulator's F, B, W and F&B from sub-op costs") {
  constexpr stage_programs p = moe_layer_programs(deepseek_like);
  constexpr stage_costs c = stage_costs_of(p);
  static_assert(c.forward == 6.0);   // the forward's parts in a row
  static_assert(c.weight == 2.0);    // the leaves alone: a deferred W
  static_assert(c.backward == 8.0);  // I (the chain alone, 6) + W
  // A whole backward alone takes 7: mlp.W hides dispatch(B).
  static_assert(simulate_order(p, make_pass_order(p, pass::backward).view()).totals().span == 7.0);
  // The pair: computation 10, communication 4, all hidden.
  static_assert(c.overlapped == 10.0);
  static_assert(pair_time(p) == c.overlapped);
  // Two layers: twice everything.
  constexpr stage_costs c2 = stage_costs_of(moe_layer_programs(deepseek_like, 2));
  static_assert(c2.forward == 12.0 && c2.backward == 16.0 && c2.weight == 4.0);
  static_assert(c2.overlapped == 20.0);
  // Communication longer than the computation shows through: four
  // all-to-alls of 4 keep the communication lane busy for all 16 units (the
  // computation, 6, hides under it instead).
  constexpr stage_costs slow = stage_costs_of(moe_layer_programs({1, 4, 1, 4, 1, 1, 1, 1}));
  static_assert(slow.overlapped == 16.0);
}

TEST_CASE("DualPipe's bubble (PP/2-1)(F&B+B-3W) with F&B from sub-op costs, at compile time") {
  // The closed form holds for F = I, W <= F and B <= F&B <= F + B, which the
  // layer above satisfies (F = 6 = I, W = 2, F&B = 10).
  constexpr stage_costs c = stage_costs_of(moe_layer_programs(deepseek_like));
  constexpr generator_options compute_only{.forward_only = false, .with_communication = false};
  constexpr auto table = schedules::dualpipe_table<8, 20, compute_only>();
  constexpr cost_model costs{c.forward, c.backward, c.weight, c.overlapped};
  static_assert(simulate(table, costs).bubble_max ==
                (8 / 2 - 1) * (c.overlapped + c.backward - 3 * c.weight));
  CHECK(simulate(table, costs).bubble_max == 36.0);  // 3 (10 + 8 - 6)
}
