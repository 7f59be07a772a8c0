// Compile-time DualPipe/DualPipeV tables: checked with static_assert (valid,
// activation bound, sizes, first and last instructions), pinned to the run-time
// path, and the run-time path's rejection of invalid (P, N).
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include <catch2/catch.hpp>

#include "dualpipe/analysis/activations.hpp"
#include "dualpipe/analysis/validate.hpp"
#include "dualpipe/schedule/dualpipe.hpp"

namespace {

using dualpipe::generator_options;
using dualpipe::instruction;
using dualpipe::op;
using dualpipe::schedules::dualpipe_table;
using dualpipe::schedules::dualpipev_table;

constexpr generator_options training{};
constexpr generator_options compute_only{.forward_only = false, .with_communication = false};
constexpr generator_options inference{.forward_only = true, .with_communication = true};
constexpr generator_options inference_compute_only{.forward_only = true,
                                                   .with_communication = false};

constexpr auto dp_2_4 = dualpipe_table<2, 4>();
constexpr auto dp_4_8 = dualpipe_table<4, 8>();
constexpr auto dp_4_8_compute = dualpipe_table<4, 8, compute_only>();
constexpr auto dp_8_20 = dualpipe_table<8, 20>();
constexpr auto dp_8_20_inference = dualpipe_table<8, 20, inference>();
constexpr auto dp_6_14_inference_compute = dualpipe_table<6, 14, inference_compute_only>();
constexpr auto dpv_2_4 = dualpipev_table<2, 4>();
constexpr auto dpv_4_8 = dualpipev_table<4, 8>();
constexpr auto dpv_3_7 = dualpipev_table<3, 7>();  // DualPipeV takes odd P and N
constexpr auto dpv_8_20_compute = dualpipev_table<8, 20, compute_only>();

// Compute instructions of a rank, counted from the eight steps: every
// micro-batch of both local stages runs one forward and one B or I; each I
// has one W; an overlapped pair merges a forward and a backward into one
// instruction. h, k as in the design brief (DualPipeV: h = P, k = r).
constexpr std::size_t expected_compute_count(int P, int N, bool v_shape, bool forward_only, int r) {
  const int per_direction = v_shape ? N : N / 2;
  const int h = v_shape ? P : P / 2;
  const int k = v_shape ? r : (r < P - 1 - r ? r : P - 1 - r);
  const bool middle = v_shape ? r == P - 1 : (r == h - 1 || r == h);
  const int forwards = 2 * per_direction;
  if (forward_only) return static_cast<std::size_t>(forwards);
  const int weights = 2 * (h - k - 1) + (k + 1);  // steps 3 and 7, plus step 6's k+1
  const int step_4 = per_direction - 2 * h + k + 1;
  const int overlapped = 2 * step_4 - (middle ? 1 : 0) + (h - k - 1);
  return static_cast<std::size_t>(forwards + forwards + weights - overlapped);
}

constexpr std::size_t expected_compute_count(int P, int N, bool v_shape, bool forward_only) {
  std::size_t total = 0;
  for (int r = 0; r < P; ++r) total += expected_compute_count(P, N, v_shape, forward_only, r);
  return total;
}

// Sends and receives of a rank: one per micro-batch of each direction that
// has a neighbouring rank, forward and (in training) backward.
constexpr std::size_t expected_communication_count(int P, int N, bool v_shape, bool forward_only,
                                                   int r) {
  const int per_direction = v_shape ? N : N / 2;
  const int neighbours = (r != 0 ? 1 : 0) + (r != P - 1 ? 1 : 0);
  return static_cast<std::size_t>(per_direction * neighbours * (forward_only ? 2 : 4));
}

template <class Table>
constexpr std::size_t count_where(const Table& t, int r, bool (*pred)(op)) {
  std::size_t n = 0;
  for (const instruction& x : t.rank(r))
    if (pred(x.kind)) ++n;
  return n;
}

constexpr bool compute_kind(op k) {
  return dualpipe::is_compute(k);
}
constexpr bool communication_kind(op k) {
  return dualpipe::is_communication(k);
}
constexpr bool commit_kind(op k) {
  return k == op::commit;
}

template <class Table>
constexpr bool counts_match(const Table& t, bool with_communication) {
  const auto& i = t.info();
  const bool v = i.kind == dualpipe::dualpipev_generator::kind;
  for (int r = 0; r < i.ranks; ++r) {
    if (count_where(t, r, compute_kind) !=
        expected_compute_count(i.ranks, i.microbatches, v, i.forward_only, r))
      return false;
    const std::size_t comm = count_where(t, r, communication_kind);
    if (comm != (with_communication
                     ? expected_communication_count(i.ranks, i.microbatches, v, i.forward_only, r)
                     : 0))
      return false;
    if (!with_communication && count_where(t, r, commit_kind) != 0) return false;
  }
  return true;
}

constexpr instruction recv_f(int stage, int mb, int peer) {
  return dualpipe::make_communication(op::recv_forward, stage, mb, peer);
}

}  // namespace

// Every compile-time table is a valid pipeline step.
static_assert(dualpipe::validate(dp_2_4).ok);
static_assert(dualpipe::validate(dp_4_8).ok);
static_assert(dualpipe::validate(dp_4_8_compute).ok);
static_assert(dualpipe::validate(dp_8_20).ok);
static_assert(dualpipe::validate(dp_8_20_inference).ok);
static_assert(dualpipe::validate(dp_6_14_inference_compute).ok);
static_assert(dualpipe::validate(dpv_2_4).ok);
static_assert(dualpipe::validate(dpv_4_8).ok);
static_assert(dualpipe::validate(dpv_3_7).ok);
static_assert(dualpipe::validate(dpv_8_20_compute).ok);

// The paper's activation memory: PP+1 stages' worth per device, PP = P for
// DualPipe and 2P for DualPipeV. Rank 0 reaches it exactly: its steps 1-2 hold
// 2h forwards and its first overlapped pair adds one more.
static_assert(dualpipe::peak_activations(dp_2_4) <= 2 + 1);
static_assert(dualpipe::peak_activations(dp_4_8) <= 4 + 1);
static_assert(dualpipe::peak_activations(dp_4_8_compute) <= 4 + 1);
static_assert(dualpipe::peak_activations(dp_8_20) <= 8 + 1);
static_assert(dualpipe::peak_activations(dp_8_20, 0) == 8 + 1);
static_assert(dualpipe::peak_activations(dpv_2_4) <= 2 * 2 + 1);
static_assert(dualpipe::peak_activations(dpv_4_8) <= 2 * 4 + 1);
static_assert(dualpipe::peak_activations(dpv_4_8, 0) == 2 * 4 + 1);
static_assert(dualpipe::peak_activations(dpv_3_7) <= 2 * 3 + 1);
static_assert(dualpipe::peak_activations(dpv_8_20_compute) <= 2 * 8 + 1);
static_assert(dualpipe::peak_activations(dpv_8_20_compute, 0) == 2 * 8 + 1);
// Inference frees each activation as soon as the next stage has it.
static_assert(dualpipe::peak_activations(dp_8_20_inference) == 1);

// Sizes: the array is exactly as long as the schedule, per rank and in all.
static_assert(decltype(dp_4_8_compute)::size() == 62);  // 16 + 15 + 15 + 16, counted by hand
static_assert(dp_4_8_compute.size() == expected_compute_count(4, 8, false, false));
static_assert(dpv_8_20_compute.size() == expected_compute_count(8, 20, true, false));
static_assert(dp_6_14_inference_compute.size() == 6 * 14);
static_assert(dp_4_8_compute.offsets.size() == 4 + 1 && dp_4_8_compute.offsets[0] == 0);
static_assert(counts_match(dp_2_4, true));
static_assert(counts_match(dp_4_8, true));
static_assert(counts_match(dp_4_8_compute, false));
static_assert(counts_match(dp_8_20, true));
static_assert(counts_match(dp_8_20_inference, true));
static_assert(counts_match(dp_6_14_inference_compute, false));
static_assert(counts_match(dpv_2_4, true));
static_assert(counts_match(dpv_4_8, true));
static_assert(counts_match(dpv_3_7, true));
static_assert(counts_match(dpv_8_20_compute, false));

// Schedule info.
static_assert(dp_8_20.info() == dualpipe::schedule_info{dualpipe::dualpipe_generator::kind, 8, 8, 20,
                                                      dualpipe::placement::mirrored, false, true});
static_assert(dpv_3_7.info() == dualpipe::schedule_info{dualpipe::dualpipev_generator::kind, 3, 6, 7,
                                                      dualpipe::placement::v_shape, false, true});
static_assert(dp_8_20_inference.info().forward_only && !dp_4_8_compute.info().with_communication);

// First and last instructions, traced by hand through the eight steps and the
// reference's commit flow. DualPipe P=4 N=8: rank 0 starts micro-batch 0 with
// nothing to receive, rank 3 starts micro-batch 4 (the other end), the middle
// ranks start by receiving; every rank ends with its last deferred W.
static_assert(dp_4_8.rank(0).front() == dualpipe::make_forward(0, 0));
static_assert(dp_4_8.rank(0).back() == dualpipe::make_backward_weight(0, 3));
static_assert(dp_4_8.rank(1).front() == recv_f(1, 0, 0));
static_assert(dp_4_8.rank(1).back() == dualpipe::make_backward_weight(1, 3));
static_assert(dp_4_8.rank(2).front() == recv_f(1, 4, 3));
static_assert(dp_4_8.rank(2).back() == dualpipe::make_backward_weight(1, 7));
static_assert(dp_4_8.rank(3).front() == dualpipe::make_forward(0, 4));
static_assert(dp_4_8.rank(3).back() == dualpipe::make_backward_weight(0, 7));
static_assert(dp_4_8_compute.rank(1).front() == dualpipe::make_forward(1, 0));
static_assert(dp_4_8_compute.rank(2).front() == dualpipe::make_forward(1, 4));
// Rank 0 in inference ends with the last forward of stage 7 (the loss stage
// of direction 1), micro-batch 19.
static_assert(dp_8_20_inference.rank(0).back() == dualpipe::make_forward(7, 19));
// DualPipeV: rank 0 ends with stage 0's last W; the last rank receives first.
static_assert(dpv_4_8.rank(0).front() == dualpipe::make_forward(0, 0));
static_assert(dpv_4_8.rank(0).back() == dualpipe::make_backward_weight(0, 7));
static_assert(dpv_4_8.rank(3).front() == recv_f(3, 0, 2));
static_assert(dpv_4_8.rank(3).back() == dualpipe::make_backward_weight(3, 7));
static_assert(dpv_2_4.rank(0).back() == dualpipe::make_backward_weight(0, 3));
static_assert(dpv_2_4.rank(1).back() == dualpipe::make_backward_weight(1, 3));

namespace {

template <class Static>
void require_same_table(const Static& compile_time, const dualpipe::schedule_table& run_time) {
  const dualpipe::table_view a = compile_time;
  const dualpipe::table_view b = run_time;
  CHECK(a.info == b.info);
  REQUIRE(a.offsets.size() == b.offsets.size());
  for (std::size_t i = 0; i < a.offsets.size(); ++i) CHECK(a.offsets[i] == b.offsets[i]);
  REQUIRE(a.instructions.size() == b.instructions.size());
  std::size_t differing = 0;
  for (std::size_t i = 0; i < a.instructions.size(); ++i)
    if (!(a.instructions[i] == b.instructions[i])) ++differing;
  CHECK(differing == 0);
}

}  // namespace

TEST_CASE("compile-time tables equal the run-time tables of the same (P, N)", "[static]") {
  using dualpipe::schedules::dualpipe;
  using dualpipe::schedules::dualpipev;
  require_same_table(dp_2_4, dualpipe(2, 4));
  require_same_table(dp_4_8, dualpipe(4, 8));
  require_same_table(dp_4_8_compute, dualpipe(4, 8, compute_only));
  require_same_table(dp_8_20, dualpipe(8, 20, training));
  require_same_table(dp_8_20_inference, dualpipe(8, 20, inference));
  require_same_table(dp_6_14_inference_compute, dualpipe(6, 14, inference_compute_only));
  require_same_table(dpv_2_4, dualpipev(2, 4));
  require_same_table(dpv_4_8, dualpipev(4, 8));
  require_same_table(dpv_3_7, dualpipev(3, 7));
  require_same_table(dpv_8_20_compute, dualpipev(8, 20, compute_only));
}

TEST_CASE("compile-time tables are usable at run time like any table", "[static]") {
  // The same checks as the static_asserts, evaluated at run time, so that a
  // constexpr-only code path cannot hide a difference.
  CHECK(dualpipe::validate(dp_8_20).ok);
  CHECK(dualpipe::peak_activations(dp_8_20, 0) == 9);
  CHECK(dp_4_8.rank(1).front() == recv_f(1, 0, 0));
  CHECK(dp_4_8_compute.size() == 62);
}

TEST_CASE("invalid (P, N) at run time throws std::invalid_argument naming the constraint",
          "[static][errors]") {
  using Catch::Contains;
  using dualpipe::schedules::dualpipe;
  using dualpipe::schedules::dualpipev;

  // P odd.
  CHECK_THROWS_AS(dualpipe(7, 14), std::invalid_argument);
  CHECK_THROWS_WITH(dualpipe(7, 14), Contains("DualPipe needs an even number of ranks (P even)") &&
                                         Contains("(got P=7, N=14)"));
  // No micro-batch at all (any N >= 1 is a table: odd N and N < 2P included).
  CHECK_THROWS_AS(dualpipe(8, 0), std::invalid_argument);
  CHECK_THROWS_WITH(dualpipe(8, 0), Contains("DualPipe needs at least 1 micro-batch (N >= 1)") &&
                                        Contains("(got P=8, N=0)"));
  CHECK_THROWS_WITH(dualpipev(4, -3),
                    Contains("DualPipeV needs at least 1 micro-batch (N >= 1)") &&
                        Contains("(got P=4, N=-3)"));
  CHECK_NOTHROW(dualpipe(8, 17));
  CHECK_NOTHROW(dualpipe(4, 6));
  CHECK_NOTHROW(dualpipev(4, 7));
  // DualPipe pairs ranks, so P < 2 stays impossible; DualPipeV runs on one rank.
  CHECK_THROWS_AS(dualpipe(0, 4), std::invalid_argument);
  CHECK_THROWS_WITH(dualpipe(1, 2), Contains("needs at least 2 ranks (P >= 2)"));
  CHECK_THROWS_WITH(dualpipe(-2, 4), Contains("needs at least 2 ranks (P >= 2)"));
  CHECK_THROWS_WITH(dualpipev(0, 2), Contains("DualPipeV needs at least 1 rank (P >= 1)"));
  CHECK_NOTHROW(dualpipev(1, 2));
  // Huge sizes are refused before anything is allocated.
  CHECK_THROWS_AS(dualpipe(16386, 40000), std::invalid_argument);
  CHECK_THROWS_WITH(dualpipe(16386, 40000), Contains("at most 16384 ranks (P <= 16384)"));
  CHECK_THROWS_WITH(dualpipev(1 << 20, 1 << 21), Contains("at most 16384 ranks (P <= 16384)"));
  CHECK_THROWS_WITH(dualpipe(2, 1 << 23), Contains("at most 4194304 micro-batches (N <= 4194304)"));
  CHECK_THROWS_WITH(dualpipev(2, 4194305),
                    Contains("at most 4194304 micro-batches (N <= 4194304)"));

  // The positive twins of each case.
  CHECK_NOTHROW(dualpipe(8, 16));
  CHECK_NOTHROW(dualpipe(2, 4));
  CHECK_NOTHROW(dualpipev(3, 7));
  CHECK_NOTHROW(dualpipev(2, 4));
}
