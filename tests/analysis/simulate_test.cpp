// The cost-model simulator against an independent model of the same rules
// (a fixed-point iteration over start times, not an event loop), against
// hand-computed timelines, and its errors.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "dualpipe/analysis/simulate.hpp"
#include "dualpipe/schedule/dualpipe.hpp"

#include "schedule_catalogue.hpp"

using namespace dualpipe;

namespace {

struct costs5 {
  double F, B, W, FB, comm;
};

// What the independent model reports.
struct reference_result {
  double makespan = 0.0;
  std::vector<double> busy, bubble;
  std::vector<int> peak;
  std::vector<std::vector<std::pair<double, double>>> spans;  // per rank, per compute
};

// The same cost model, computed the slow way: every compute's start is the
// latest of its rank's previous end and its inputs' ends (plus comm when the
// input was produced on another rank); sweep until nothing changes.
reference_result reference_simulate(const table_view& t, const costs5& c) {
  struct item {
    int rank;
    instruction x;
    double start = 0.0, end = 0.0;
  };
  std::vector<std::vector<item>> ranks(static_cast<std::size_t>(t.ranks()));
  // (kind, stage, mb) -> (rank, position) of the producer. kind 0: forward
  // output, 1: backward output (B, I, or the B half of a pair), 2: I (for W).
  std::map<std::tuple<int, int, int>, std::pair<int, int>> producer;
  std::size_t total = 0;
  for (int r = 0; r < t.ranks(); ++r) {
    for (const instruction& x : t.rank(r)) {
      if (x.kind > op::overlapped_forward_backward) continue;
      const int pos = static_cast<int>(ranks[static_cast<std::size_t>(r)].size());
      ranks[static_cast<std::size_t>(r)].push_back({r, x});
      switch (x.kind) {
        case op::forward:
          producer[{0, x.stage, x.microbatch}] = {r, pos};
          break;
        case op::backward:
          producer[{1, x.stage, x.microbatch}] = {r, pos};
          break;
        case op::backward_input:
          producer[{1, x.stage, x.microbatch}] = {r, pos};
          producer[{2, x.stage, x.microbatch}] = {r, pos};
          break;
        case op::overlapped_forward_backward:
          producer[{0, x.stage, x.microbatch}] = {r, pos};
          producer[{1, x.stage_b, x.microbatch_b}] = {r, pos};
          break;
        default:
          break;
      }
      ++total;
    }
  }
  auto duration = [&](const instruction& x) {
    switch (x.kind) {
      case op::forward:
        return c.F;
      case op::backward:
        return c.B;
      case op::backward_input:
        return c.B - c.W;
      case op::backward_weight:
        return c.W;
      default:
        return c.FB;
    }
  };
  auto input_end = [&](int r, int kind, int s, int m) {
    const auto it = producer.find({kind, s, m});
    if (it == producer.end()) FAIL("the reference model found no producer of an input");
    const auto [pr, pos] = it->second;
    return ranks[static_cast<std::size_t>(pr)][static_cast<std::size_t>(pos)].end +
           (pr != r && kind != 2 ? c.comm : 0.0);
  };
  auto forward_ready = [&](int r, int s, int m) {
    return s == 0 ? 0.0 : input_end(r, 0, s - 1, m);
  };
  auto backward_ready = [&](int r, int s, int m) {
    double at = input_end(r, 0, s, m);
    if (s + 1 < t.stages()) at = std::max(at, input_end(r, 1, s + 1, m));
    return at;
  };
  bool changed = true;
  std::size_t sweeps = 0;
  while (changed) {
    REQUIRE(sweeps++ <= total + 1);  // start times only grow; a cycle would not converge
    changed = false;
    for (auto& list : ranks) {
      double clock = 0.0;
      for (item& it : list) {
        double ready = 0.0;
        switch (it.x.kind) {
          case op::forward:
            ready = forward_ready(it.rank, it.x.stage, it.x.microbatch);
            break;
          case op::backward:
          case op::backward_input:
            ready = backward_ready(it.rank, it.x.stage, it.x.microbatch);
            break;
          case op::backward_weight:
            ready = input_end(it.rank, 2, it.x.stage, it.x.microbatch);
            break;
          default:
            ready = std::max(forward_ready(it.rank, it.x.stage, it.x.microbatch),
                             backward_ready(it.rank, it.x.stage_b, it.x.microbatch_b));
        }
        const double start = std::max(clock, ready);
        if (start != it.start) changed = true;
        it.start = start;
        it.end = start + duration(it.x);
        clock = it.end;
      }
    }
  }
  reference_result out;
  for (const auto& list : ranks) {
    double busy = 0.0;
    std::vector<std::pair<double, double>> spans;
    for (const item& it : list) {
      out.makespan = std::max(out.makespan, it.end);
      busy += it.end - it.start;
      spans.emplace_back(it.start, it.end);
    }
    out.busy.push_back(busy);
    out.spans.push_back(spans);
  }
  for (const double b : out.busy) out.bubble.push_back(out.makespan - b);
  // Live activations: a forward adds its (stage, mb), a backward (B or I)
  // removes it; an overlapped pair holds both before releasing. Inference
  // frees each forward's activations at once: one at a time.
  for (int r = 0; r < t.ranks(); ++r) {
    if (t.info.forward_only) {
      out.peak.push_back(t.rank(r).empty() ? 0 : 1);
      continue;
    }
    std::set<std::pair<int, int>> live;
    std::size_t peak = 0;
    for (const instruction& x : t.rank(r)) {
      if (x.kind == op::forward || x.kind == op::overlapped_forward_backward) {
        live.insert({x.stage, x.microbatch});
        peak = std::max(peak, live.size());
      }
      if (x.kind == op::backward || x.kind == op::backward_input)
        live.erase({x.stage, x.microbatch});
      if (x.kind == op::overlapped_forward_backward) live.erase({x.stage_b, x.microbatch_b});
    }
    out.peak.push_back(static_cast<int>(peak));
  }
  return out;
}

void require_agreement(const std::string& name, const table_view& t, const costs5& c) {
  INFO(name << " costs F=" << c.F << " B=" << c.B << " W=" << c.W << " FB=" << c.FB
            << " comm=" << c.comm);
  const simulation got = simulate(t, cost_model{c.F, c.B, c.W, c.FB, c.comm});
  const reference_result want = reference_simulate(t, c);
  REQUIRE(got.makespan == Approx(want.makespan).epsilon(1e-12));
  REQUIRE(got.ranks.size() == static_cast<std::size_t>(t.ranks()));
  double bubble_max = 0.0;
  for (int r = 0; r < t.ranks(); ++r) {
    INFO("rank " << r);
    const rank_summary& g = got.ranks[static_cast<std::size_t>(r)];
    REQUIRE(g.rank == r);
    REQUIRE(g.busy == Approx(want.busy[static_cast<std::size_t>(r)]).epsilon(1e-12));
    REQUIRE(g.bubble ==
            Approx(want.bubble[static_cast<std::size_t>(r)]).epsilon(1e-12).margin(1e-9));
    REQUIRE(g.peak_activations == want.peak[static_cast<std::size_t>(r)]);
    bubble_max = std::max(bubble_max, want.bubble[static_cast<std::size_t>(r)]);
  }
  REQUIRE(got.bubble_max == Approx(bubble_max).epsilon(1e-12).margin(1e-9));
  // The timeline: every compute, per rank in order, with the same spans.
  std::size_t k = 0;
  std::string first_difference;
  for (int r = 0; r < t.ranks(); ++r)
    for (const auto& [start, end] : want.spans[static_cast<std::size_t>(r)]) {
      REQUIRE(k < got.timeline.size());
      const timed_instruction& e = got.timeline[k];
      if (first_difference.empty() &&
          (e.rank != r || std::abs(e.start - start) > 1e-9 || std::abs(e.end - end) > 1e-9))
        first_difference = "timeline entry " + std::to_string(k) + " (rank " +
                           std::to_string(e.rank) + ", " + format_action(e.what) + ") runs [" +
                           std::to_string(e.start) + ", " + std::to_string(e.end) +
                           "], expected rank " + std::to_string(r) + " [" + std::to_string(start) +
                           ", " + std::to_string(end) + "]";
      ++k;
    }
  REQUIRE(first_difference == "");
  REQUIRE(k == got.timeline.size());
}

// A table built by hand: one vector of instructions per rank.
schedule_table hand_table(schedule_info info, const std::vector<std::vector<instruction>>& lists) {
  schedule_table t(info);
  for (const auto& list : lists) {
    for (const instruction& x : list) t.push(x);
    t.end_rank();
  }
  return t;
}

schedule_info linear_info(int ranks, int stages, int microbatches) {
  return {schedule_kind::custom, ranks, stages, microbatches, placement::linear, false, false};
}

}  // namespace

TEST_CASE("the simulator agrees with an independent fixed-point model on every schedule") {
  std::mt19937 random(20241228);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  const auto catalogue = test_catalogue::all_schedules(32);
  REQUIRE(!catalogue.empty());
  for (const auto& entry : catalogue) {
    // Fixed settings, including the closed forms' ones, then random ones with
    // comm > 0.
    std::vector<costs5> settings = {{1, 2, 1, 3, 0}, {1, 2, 1, 2.5, 0}, {1, 1, 0, 1.5, 0.25}};
    for (int i = 0; i < 2; ++i) {
      const double F = 0.5 + 1.5 * unit(random);
      const double B = F * (1.0 + 2.0 * unit(random));
      const double W = B * unit(random);
      const double FB = (F + B) * (0.5 + 0.5 * unit(random));
      const double comm = unit(random);
      settings.push_back({F, B, W, FB, comm});
    }
    for (const costs5& c : settings) require_agreement(entry.name, entry.table, c);
  }
}

TEST_CASE("SEND/RECV/COMMIT do not change the simulation") {
  const generator_options plain{.with_communication = false};
  const std::vector<std::pair<schedule_table, schedule_table>> pairs = {
      {schedules::dualpipe(4, 12), schedules::dualpipe(4, 12, plain)},
      {schedules::dualpipev(4, 12), schedules::dualpipev(4, 12, plain)},
      {schedules::one_f_one_b(4, 7), schedules::one_f_one_b(4, 7, plain)},
      {schedules::zb1p(4, 7), schedules::zb1p(4, 7, plain)},
      {schedules::zbv(3, 7), schedules::zbv(3, 7, plain)},
      {schedules::interleaved_1f1b(2, 4, 2), schedules::interleaved_1f1b(2, 4, 2, plain)},
  };
  for (const auto& [with, without] : pairs) {
    INFO(with.info().kind.name);
    REQUIRE(with.size() > without.size());
    const cost_model c{1.0, 2.0, 1.0, 2.5, 0.3};
    const simulation a = simulate(with, c);
    const simulation b = simulate(without, c);
    REQUIRE(a.makespan == b.makespan);
    REQUIRE(a.timeline.size() == b.timeline.size());
    for (std::size_t i = 0; i < a.timeline.size(); ++i) {
      REQUIRE(a.timeline[i].what == b.timeline[i].what);
      REQUIRE(a.timeline[i].start == b.timeline[i].start);
    }
  }
}

TEST_CASE("a two-rank pipeline of one micro-batch, by hand") {
  // rank 0: F0 then B0 of stage 0; rank 1: F and B of stage 1.
  const auto t = hand_table(linear_info(2, 2, 1), {{make_forward(0, 0), make_backward(0, 0)},
                                                   {make_forward(1, 0), make_backward(1, 0)}});
  // F0 [0,1]; F1 [1+c, 2+c]; B1 [2+c, 4+c]; B0 [4+2c, 6+2c].
  const simulation s =
      simulate(t, cost_model{.forward = 1, .backward = 2, .weight = 1, .comm = 0.5});
  REQUIRE(s.makespan == 7.0);
  REQUIRE(s.ranks[0].busy == 3.0);
  REQUIRE(s.ranks[1].busy == 3.0);
  REQUIRE(s.ranks[0].bubble == 4.0);
  REQUIRE(s.bubble_max == 4.0);
  REQUIRE(s.bubble_min == 4.0);
  REQUIRE(s.timeline.size() == 4);
  REQUIRE(s.timeline[1].what == make_backward(0, 0));
  REQUIRE(s.timeline[1].start == 5.0);
  REQUIRE(s.timeline[1].index == 1);
  REQUIRE(s.timeline[2].rank == 1);
  REQUIRE(s.timeline[2].start == 1.5);
  REQUIRE(s.timeline[3].start == 2.5);
  REQUIRE(s.ranks[0].peak_activations == 1);
  REQUIRE(s.ranks[0].parameter_copies == 1);
}

TEST_CASE("backward-input and weight gradient, overlapped pair, local hand-off") {
  // One rank holds both stages (no comm on the local hand-off), two
  // micro-batches: F0 F1 (stage 0 mb 0, stage 1 mb 0), then I of stage 1,
  // overlapped (F stage 0 mb 1; B stage 0 mb 0), F of stage 1 mb 1, B, B, W.
  const auto t = hand_table(linear_info(1, 2, 2),
                            {{make_forward(0, 0), make_forward(1, 0), make_backward_input(1, 0),
                              make_overlapped(0, 1, 0, 0), make_forward(1, 1), make_backward(1, 1),
                              make_backward(0, 1), make_backward_weight(1, 0)}});
  const simulation s = simulate(
      t, cost_model{.forward = 1, .backward = 3, .weight = 1, .overlapped = 3.5, .comm = 10});
  // 1 + 1 + (3-1) + 3.5 + 1 + 3 + 3 + 1 = 15.5, back to back: no input ever waits.
  REQUIRE(s.makespan == 15.5);
  REQUIRE(s.ranks[0].bubble == 0.0);
  REQUIRE(s.timeline[3].start == 4.0);
  REQUIRE(s.timeline[3].end == 7.5);
  REQUIRE(s.ranks[0].parameter_copies == 2);
  REQUIRE(s.ranks[0].computes == 8);
  // Live: F0 -> 1, F1 -> 2, I -> 1, pair holds 2 then 1, F -> 2.
  REQUIRE(s.ranks[0].peak_activations == 2);
}

TEST_CASE("per-stage costs: override and scale") {
  const auto t = hand_table(linear_info(2, 2, 1), {{make_forward(0, 0), make_backward(0, 0)},
                                                   {make_forward(1, 0), make_backward(1, 0)}});
  const stage_costs per_stage[] = {{1, 2, 1, 3}, {2, 4, 1, 6}};
  const double scale[] = {1.0, 0.5};
  SECTION("override") {
    const simulation s = simulate(t, cost_model{.per_stage = per_stage});
    // F0 [0,1] F1 [1,3] B1 [3,7] B0 [7,9]
    REQUIRE(s.makespan == 9.0);
    REQUIRE(s.ranks[1].busy == 6.0);
  }
  SECTION("override and scale") {
    const simulation s = simulate(t, cost_model{.per_stage = per_stage, .stage_scale = scale});
    // F0 [0,1] F1 [1,2] B1 [2,4] B0 [4,6]
    REQUIRE(s.makespan == 6.0);
    REQUIRE(s.ranks[1].busy == 3.0);
    REQUIRE(s.ranks[0].bubble == 3.0);
  }
  SECTION("an overlapped pair costs the mean of its two stages' F&B") {
    const auto one = hand_table(
        linear_info(1, 2, 2),
        {{make_forward(0, 0), make_forward(1, 0), make_overlapped(0, 1, 1, 0), make_forward(1, 1),
          make_backward(0, 0), make_backward(1, 1), make_backward(0, 1)}});
    const simulation s = simulate(one, cost_model{.per_stage = per_stage});
    REQUIRE(s.timeline[2].end - s.timeline[2].start == 4.5);
  }
}

TEST_CASE("a table that cannot run is an error naming the stuck instructions") {
  SECTION("a cycle across two ranks") {
    // rank 0 runs B of micro-batch 0 before F of micro-batch 1; rank 1 runs
    // F of micro-batch 1 before B of micro-batch 0: each waits on the other.
    const auto t = hand_table(
        linear_info(2, 2, 2),
        {{make_forward(0, 0), make_backward(0, 0), make_forward(0, 1), make_backward(0, 1)},
         {make_forward(1, 1), make_forward(1, 0), make_backward(1, 0), make_backward(1, 1)}});
    try {
      (void)simulate(t);
      FAIL("expected an exception");
    } catch (const std::invalid_argument& e) {
      const std::string what = e.what();
      INFO(what);
      REQUIRE(what.find("cannot run") != std::string::npos);
      REQUIRE(what.find("rank 0 waits at instruction 1 (0B0) for 1B0 or its I (rank 1)") !=
              std::string::npos);
      REQUIRE(what.find("rank 1 waits at instruction 0 (1F1) for 0F1 (rank 0)") !=
              std::string::npos);
    }
  }
  SECTION("a backward before its own forward") {
    const auto t = hand_table(linear_info(2, 2, 1), {{make_backward(0, 0), make_forward(0, 0)},
                                                     {make_forward(1, 0), make_backward(1, 0)}});
    REQUIRE_THROWS_WITH(simulate(t),
                        Catch::Contains("rank 0 waits at instruction 0 (0B0) for 0F0 (rank 0)") &&
                            Catch::Contains("rank 1 waits at instruction 0 (1F0) for 0F0"));
  }
}

TEST_CASE("a W with no deferred I waits forever and is reported") {
  const auto t =
      hand_table(linear_info(1, 1, 1),
                 {{make_forward(0, 0), make_backward_weight(0, 0), make_backward_input(0, 0)}});
  REQUIRE_THROWS_WITH(simulate(t), Catch::Contains("rank 0 waits at instruction 1 (0W0) for 0I0"));
}

TEST_CASE("a table that runs to its end but leaves work undone is refused") {
  // A makespan for such a table would time a step that does not train (or
  // infer) every micro-batch; the message names the first missing piece.
  const std::string undone =
      "dualpipe::simulate: the table runs to its end but leaves work undone: ";
  SECTION("an I whose W never runs") {
    const auto t =
        hand_table(linear_info(2, 2, 1), {{make_forward(0, 0), make_backward(0, 0)},
                                          {make_forward(1, 0), make_backward_input(1, 0)}});
    REQUIRE_THROWS_WITH(simulate(t), undone + "a deferred weight gradient (W) never runs; "
                                              "expected 1W0 on rank 1");
    const auto twin =
        hand_table(linear_info(2, 2, 1),
                   {{make_forward(0, 0), make_backward(0, 0)},
                    {make_forward(1, 0), make_backward_input(1, 0), make_backward_weight(1, 0)}});
    REQUIRE_NOTHROW(simulate(twin));
  }
  SECTION("a backward that never runs") {
    const auto t = hand_table(
        linear_info(2, 2, 2),
        {{make_forward(0, 0), make_forward(0, 1), make_backward(0, 0)},
         {make_forward(1, 0), make_backward(1, 0), make_forward(1, 1), make_backward(1, 1)}});
    REQUIRE_THROWS_WITH(simulate(t),
                        undone + "a backward (B or I) never runs; expected 0B1 on rank 0");
  }
  SECTION("a forward that never runs, in a forward-only table") {
    schedule_info info = linear_info(2, 2, 2);
    info.forward_only = true;
    const auto t =
        hand_table(info, {{make_forward(0, 0), make_forward(0, 1)}, {make_forward(1, 0)}});
    REQUIRE_THROWS_WITH(simulate(t), undone + "a forward never runs; expected 1F1 on rank 1");
    // A forward-only table owes no backward.
    const auto twin = hand_table(
        info, {{make_forward(0, 0), make_forward(0, 1)}, {make_forward(1, 0), make_forward(1, 1)}});
    REQUIRE(simulate(twin).makespan == 3.0);
  }
  SECTION("in a table with communication, the compute is what counts") {
    // DualPipe 2x4 loses the W of its last I on rank 0.
    const auto full = schedules::dualpipe(2, 4);
    schedule_table t(full.info());
    for (int r = 0; r < 2; ++r) {
      for (const instruction& x : full.rank(r))
        if (!(r == 0 && x == make_backward_weight(0, 1))) t.push(x);
      t.end_rank();
    }
    REQUIRE(t.size() + 1 == full.size());
    REQUIRE_THROWS_WITH(simulate(t), undone + "a deferred weight gradient (W) never runs; "
                                              "expected 0W1 on rank 0");
  }
}

TEST_CASE("malformed tables and costs are errors with a precise message") {
  const auto dup = hand_table(linear_info(1, 1, 1),
                              {{make_forward(0, 0), make_forward(0, 0), make_backward(0, 0)}});
  REQUIRE_THROWS_WITH(simulate(dup),
                      Catch::Contains("rank 0, instruction 1 (0F0): a second forward"));
  const auto w_after_b =
      hand_table(linear_info(1, 1, 1),
                 {{make_forward(0, 0), make_backward(0, 0), make_backward_weight(0, 0)}});
  REQUIRE_THROWS_WITH(simulate(w_after_b),
                      Catch::Contains("instruction 2 (0W0): a W for a micro-batch"));
  const auto outside = hand_table(linear_info(1, 1, 1), {{make_forward(0, 3)}});
  REQUIRE_THROWS_WITH(simulate(outside), Catch::Contains("outside the table's sizes"));

  const auto ok = hand_table(linear_info(1, 1, 1), {{make_forward(0, 0), make_backward(0, 0)}});
  REQUIRE_THROWS_WITH(simulate(ok, cost_model{.backward = 1, .weight = 2}),
                      Catch::Contains("W exceeds the full backward B"));
  REQUIRE_THROWS_WITH(simulate(ok, cost_model{.forward = -1}), Catch::Contains("non-negative"));
  REQUIRE_THROWS_WITH(simulate(ok, cost_model{.forward = std::nan("")}), Catch::Contains("finite"));
  REQUIRE_THROWS_WITH(simulate(ok, cost_model{.comm = -0.5}), Catch::Contains("latency"));
  const double two[] = {1.0, 1.0};
  REQUIRE_THROWS_WITH(simulate(ok, cost_model{.stage_scale = two}),
                      Catch::Contains("stage_scale has 2 entries, the table has 1 stages"));
  REQUIRE_NOTHROW(simulate(ok));

  // A view whose offsets point past its instructions.
  const instruction one[] = {make_forward(0, 0)};
  const std::uint32_t offsets[] = {0, 5};
  const table_view past_the_end{linear_info(1, 1, 1), one, offsets, {}};
  REQUIRE_THROWS_WITH(simulate(past_the_end), Catch::Contains("offsets do not cover"));
}

TEST_CASE("the simulation is a constant expression") {
  static constexpr auto table = schedules::dualpipe_table<8, 20>();
  // F = I = 1, W = 1, F&B = 2.5: the published (PP/2-1)(F&B+B-3W) = 3 * 1.5.
  static_assert(simulate(table, cost_model{1.0, 2.0, 1.0, 2.5, 0.0}).bubble_max == 4.5);
  static constexpr auto summary = simulate_summary(table, cost_model{1.0, 2.0, 1.0, 2.5, 0.0});
  static_assert(summary.ranks.size() == 8);
  static_assert(summary.ranks[3].bubble == 4.5);  // a middle rank
  static_assert(summary.ranks[0].parameter_copies == 2);
  static_assert(summary.ranks[0].peak_activations == 9);
  const simulation runtime =
      simulate(schedules::dualpipe(8, 20), cost_model{1.0, 2.0, 1.0, 2.5, 0.0});
  REQUIRE(runtime.makespan == summary.makespan);
  REQUIRE(runtime.bubble_min == summary.bubble_min);
}
