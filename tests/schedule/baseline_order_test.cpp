// The baseline schedules' per-rank orders at small sizes, written out by hand
// from the orders of PyTorch's ScheduleGPipe, Schedule1F1B,
// ScheduleInterleavedZeroBubble (ZB1P), ScheduleInterleaved1F1B and
// ScheduleZBVZeroBubble, and from the zero-bubble paper's ZB-H1 description;
// the mapping of stages to ranks; peak activations; compile-time tables equal
// to run-time ones.
#include <sstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "dualpipe/analysis/activations.hpp"
#include "dualpipe/analysis/validate.hpp"
#include "dualpipe/schedule/action_syntax.hpp"
#include "dualpipe/schedule/gpipe.hpp"
#include "dualpipe/schedule/interleaved_1f1b.hpp"
#include "dualpipe/schedule/one_f_one_b.hpp"
#include "dualpipe/schedule/zb1p.hpp"
#include "dualpipe/schedule/zbv.hpp"

#include "rank_actions.hpp"

namespace {

using namespace dualpipe;

constexpr generator_options compute_only{.forward_only = false, .with_communication = false};
constexpr generator_options inference{.forward_only = true, .with_communication = false};

using test::actions;

void require_orders(const schedule_table& t, const std::vector<std::string>& expected) {
  REQUIRE(t.info().ranks == static_cast<int>(expected.size()));
  for (int r = 0; r < t.info().ranks; ++r) {
    INFO("rank " << r);
    CHECK(actions(t, r) == expected[static_cast<std::size_t>(r)]);
  }
  CHECK(validate(t).ok);
}

}  // namespace

TEST_CASE("GPipe runs every forward, then every backward oldest first") {
  require_orders(schedules::gpipe(2, 3, compute_only), {
                                                           "0F0 0F1 0F2 0B0 0B1 0B2",
                                                           "1F0 1F1 1F2 1B0 1B1 1B2",
                                                       });
  require_orders(schedules::gpipe(2, 3, inference), {"0F0 0F1 0F2", "1F0 1F1 1F2"});
}

TEST_CASE("1F1B P=4 N=8: warm-up of P-1-r forwards, steady F/B, cool-down backwards") {
  require_orders(schedules::one_f_one_b(4, 8, compute_only),
                 {
                     "0F0 0F1 0F2 0F3 0B0 0F4 0B1 0F5 0B2 0F6 0B3 0F7 0B4 0B5 0B6 0B7",
                     "1F0 1F1 1F2 1B0 1F3 1B1 1F4 1B2 1F5 1B3 1F6 1B4 1F7 1B5 1B6 1B7",
                     "2F0 2F1 2B0 2F2 2B1 2F3 2B2 2F4 2B3 2F5 2B4 2F6 2B5 2F7 2B6 2B7",
                     "3F0 3B0 3F1 3B1 3F2 3B2 3F3 3B3 3F4 3B4 3F5 3B5 3F6 3B6 3F7 3B7",
                 });
  require_orders(schedules::one_f_one_b(4, 8, inference),
                 {
                     "0F0 0F1 0F2 0F3 0F4 0F5 0F6 0F7",
                     "1F0 1F1 1F2 1F3 1F4 1F5 1F6 1F7",
                     "2F0 2F1 2F2 2F3 2F4 2F5 2F6 2F7",
                     "3F0 3F1 3F2 3F3 3F4 3F5 3F6 3F7",
                 });
}

TEST_CASE("ZB1P P=4 N=8: 1F1B with I/W split, rank r holds back its first r W's") {
  require_orders(
      schedules::zb1p(4, 8, compute_only),
      {
          "0F0 0F1 0F2 0F3 0I0 0W0 0F4 0I1 0W1 0F5 0I2 0W2 0F6 0I3 0W3 0F7 0I4 0W4 "
          "0I5 0W5 0I6 0W6 0I7 0W7",
          "1F0 1F1 1F2 1I0 1F3 1I1 1W0 1F4 1I2 1W1 1F5 1I3 1W2 1F6 1I4 1W3 1F7 1I5 1W4 "
          "1I6 1W5 1I7 1W6 1W7",
          "2F0 2F1 2I0 2F2 2I1 2F3 2I2 2W0 2F4 2I3 2W1 2F5 2I4 2W2 2F6 2I5 2W3 2F7 2I6 2W4 "
          "2I7 2W5 2W6 2W7",
          "3F0 3I0 3F1 3I1 3F2 3I2 3F3 3I3 3W0 3F4 3I4 3W1 3F5 3I5 3W2 3F6 3I6 3W3 3F7 3I7 3W4 "
          "3W5 3W6 3W7",
      });
}

TEST_CASE("interleaved 1F1B P=2 V=2 N=4: depth-first rounds of P micro-batches") {
  // Rank 0 holds stages 0 and 2, rank 1 stages 1 and 3. Rank 0 warms up with
  // (V-1)P + 2(P-1) = 4 forwards, rank 1 with 2.
  require_orders(schedules::interleaved_1f1b(2, 4, 2, compute_only),
                 {
                     "0F0 0F1 2F0 2F1 0F2 2B0 0F3 2B1 2F2 0B0 2F3 0B1 2B2 2B3 0B2 0B3",
                     "1F0 1F1 3F0 3B0 3F1 3B1 1F2 1B0 1F3 1B1 3F2 3B2 3F3 3B3 1B2 1B3",
                 });
  require_orders(schedules::interleaved_1f1b(2, 4, 2, inference),
                 {
                     "0F0 0F1 2F0 2F1 0F2 0F3 2F2 2F3",
                     "1F0 1F1 3F0 3F1 1F2 1F3 3F2 3F3",
                 });
}

TEST_CASE("ZB-V P=2 N=4: two stages per rank in a V") {
  // Rank 0 holds stages 0 and 3, rank 1 stages 1 and 2.
  require_orders(schedules::zbv(2, 4, compute_only),
                 {
                     "0F0 0F1 0F2 3F0 3I0 3W0 3F1 3I1 3W1 0F3 0I0 0W0 3F2 3I2 3W2 0I1 0W1 "
                     "3F3 3I3 3W3 0I2 0W2 0I3 0W3",
                     "1F0 2F0 1F1 2F1 2I0 2W0 1F2 1I0 1W0 2F2 2I1 2W1 1F3 1I1 1W1 2F3 2I2 2W2 "
                     "1I2 2I3 1I3 1W2 2W3 1W3",
                 });
  require_orders(schedules::zbv(2, 4, inference),
                 {"0F0 0F1 0F2 3F0 3F1 0F3 3F2 3F3", "1F0 2F0 1F1 2F1 1F2 2F2 1F3 2F3"});
}

TEST_CASE("ZB-V runs each W on the oldest deferred weight gradient of its rank") {
  // P=3 N=6, rank 2 (stages 2 and 3). PyTorch's cool-down places
  // "2W3 3W4 3W5 2W4 2W5" after the I's 2I3 3I4 2I4 3I5 2I5; the same five
  // places run the deferred weight gradients first-in first-out.
  const auto t = schedules::zbv(3, 6, compute_only);
  CHECK(actions(t, 2) ==
        "2F0 3F0 2F1 3F1 2F2 3F2 3I0 3W0 2F3 2I0 2W0 3F3 3I1 3W1 2F4 2I1 2W1 3F4 3I2 3W2 "
        "2F5 2I2 2W2 3F5 3I3 3W3 2I3 3I4 2I4 3I5 2I5 2W3 3W4 2W4 3W5 2W5");
  CHECK(validate(t).ok);
}

TEST_CASE("each baseline states its stage/rank mapping in its info") {
  const auto gpipe = schedules::gpipe(4, 8).info();
  CHECK(gpipe.kind == gpipe_generator::kind);
  CHECK(gpipe.stages == 4);
  CHECK(gpipe.where == placement::linear);
  CHECK(gpipe.with_communication);
  CHECK_FALSE(gpipe.forward_only);

  CHECK(schedules::one_f_one_b(4, 8).info().kind == one_f_one_b_generator::kind);
  CHECK(schedules::zb1p(4, 8).info().kind == zb1p_generator::kind);

  const auto interleaved = schedules::interleaved_1f1b(4, 8, 3, inference);
  CHECK(interleaved.info().kind == interleaved_1f1b_generator::kind);
  CHECK(interleaved.info().stages == 12);
  CHECK(interleaved.info().where == placement::linear);
  CHECK(interleaved.info().forward_only);
  CHECK_FALSE(interleaved.info().with_communication);
  // Stage s on rank s % P: rank 1 holds stages 1, 5 and 9.
  CHECK(interleaved.view().rank_of(9, 0) == 1);
  for (const instruction& i : interleaved.rank(1)) CHECK(i.stage % 4 == 1);

  const auto zbv = schedules::zbv(4, 8);
  CHECK(zbv.info().kind == zbv_generator::kind);
  CHECK(zbv.info().stages == 8);
  CHECK(zbv.info().where == placement::v_shape);
  // Rank r holds stages r and 2P-1-r.
  for (int r = 0; r < 4; ++r)
    for (const instruction& i : zbv.rank(r))
      if (is_compute(i.kind)) CHECK((i.stage == r || i.stage == 7 - r));
}

TEST_CASE("peak activations: P for 1F1B and ZB1P, N for GPipe") {
  for (int P = 1; P <= 8; ++P)
    for (const int N : {P, P + 1, 2 * P, 3 * P + 2}) {
      INFO("P=" << P << " N=" << N);
      const auto one_f_one_b = schedules::one_f_one_b(P, N);
      const auto zb1p = schedules::zb1p(P, N);
      CHECK(peak_activations(one_f_one_b) == P);
      CHECK(peak_activations(zb1p) == P);
      // Rank r warms up with P-1-r forwards and runs one more before its
      // first backward: P-r live.
      for (int r = 0; r < P; ++r) {
        CHECK(peak_activations(one_f_one_b, r) == P - r);
        CHECK(peak_activations(zb1p, r) == P - r);
      }
      for (int r = 0; r < P; ++r) CHECK(peak_activations(schedules::gpipe(P, N), r) == N);
    }
}

namespace {

template <class Static>
bool same_table(const Static& s, const schedule_table& t) {
  const table_view a = s.view();
  const table_view b = t.view();
  if (!(a.info == b.info) || a.instructions.size() != b.instructions.size()) return false;
  for (std::size_t i = 0; i < a.instructions.size(); ++i)
    if (!(a.instructions[i] == b.instructions[i])) return false;
  for (std::size_t r = 0; r < a.offsets.size(); ++r)
    if (a.offsets[r] != b.offsets[r]) return false;
  return true;
}

// Compile time: the tables exist as constants and validate in static_assert.
constexpr auto gpipe_4_8 = schedules::gpipe_table<4, 8>();
constexpr auto one_f_one_b_4_8 = schedules::one_f_one_b_table<4, 8>();
constexpr auto zb1p_4_8 = schedules::zb1p_table<4, 8>();
constexpr auto interleaved_2_4_2 = schedules::interleaved_1f1b_table<2, 4, 2>();
constexpr auto zbv_3_6 = schedules::zbv_table<3, 6>();
constexpr auto zb1p_4_8_compute = schedules::zb1p_table<4, 8, compute_only>();
constexpr auto zbv_2_4_inference = schedules::zbv_table<2, 4, inference>();

static_assert(validate(gpipe_4_8).ok);
static_assert(validate(one_f_one_b_4_8).ok);
static_assert(validate(zb1p_4_8).ok);
static_assert(validate(interleaved_2_4_2).ok);
static_assert(validate(zbv_3_6).ok);
static_assert(validate(zb1p_4_8_compute).ok);
static_assert(validate(zbv_2_4_inference).ok);
static_assert(peak_activations(one_f_one_b_4_8) == 4);
static_assert(peak_activations(zb1p_4_8) == 4);
static_assert(peak_activations(gpipe_4_8) == 8);
static_assert(one_f_one_b_4_8.info().with_communication && !zb1p_4_8_compute.info().with_communication);

}  // namespace

TEST_CASE("compile-time tables equal the run-time ones") {
  CHECK(same_table(gpipe_4_8, schedules::gpipe(4, 8)));
  CHECK(same_table(one_f_one_b_4_8, schedules::one_f_one_b(4, 8)));
  CHECK(same_table(zb1p_4_8, schedules::zb1p(4, 8)));
  CHECK(same_table(interleaved_2_4_2, schedules::interleaved_1f1b(2, 4, 2)));
  CHECK(same_table(zbv_3_6, schedules::zbv(3, 6)));
  CHECK(same_table(zb1p_4_8_compute, schedules::zb1p(4, 8, compute_only)));
  CHECK(same_table(zbv_2_4_inference, schedules::zbv(2, 4, inference)));
}
