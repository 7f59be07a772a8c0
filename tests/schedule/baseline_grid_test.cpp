// Every baseline generator over a grid of (P, N, V), compute-only and lowered,
// training and forward-only: the tables validate, the lowered ones keep the
// compute order, and all three ways of building a table agree (the run-time
// function, make_table over the generator, and the checked lowering pass over
// its compute-only table). Constraint violations are std::invalid_argument
// naming the rule.
#include <stdexcept>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "dualpipe/analysis/validate.hpp"
#include "dualpipe/passes/lower_communication.hpp"
#include "dualpipe/schedule/build.hpp"
#include "dualpipe/schedule/gpipe.hpp"
#include "dualpipe/schedule/interleaved_1f1b.hpp"
#include "dualpipe/schedule/one_f_one_b.hpp"
#include "dualpipe/schedule/zb1p.hpp"
#include "dualpipe/schedule/zbv.hpp"

namespace {

using namespace dualpipe;

constexpr generator_options all_options[] = {
    {.forward_only = false, .with_communication = true},
    {.forward_only = false, .with_communication = false},
    {.forward_only = true, .with_communication = true},
    {.forward_only = true, .with_communication = false},
};

// The compute instructions of one rank, in order.
std::vector<instruction> compute_of(table_view t, int rank) {
  std::vector<instruction> out;
  for (const instruction& i : t.rank(rank))
    if (is_compute(i.kind)) out.push_back(i);
  return out;
}

// The compute-only table through the checked pass, as a table from elsewhere
// is lowered: the generators' unchecked path must give the same table.
template <class G>
schedule_table through_checked_pass(const G& g) {
  G compute = g;
  compute.options.with_communication = false;
  schedule_table plain = make_table(compute);
  return g.options.with_communication ? lower_communication(plain) : plain;
}

template <class G>
void check_generator(const G& g, const schedule_table& from_function, bool every_path) {
  const validation v = validate(from_function);
  INFO(describe(v));
  REQUIRE(v.ok);
  const generator_options o = g.options;
  CHECK(from_function.info().with_communication == o.with_communication);
  CHECK(from_function.info().forward_only == o.forward_only);
  bool has_communication = false;
  for (int r = 0; r < from_function.info().ranks; ++r)
    for (const instruction& i : from_function.rank(r))
      has_communication = has_communication || !is_compute(i.kind);
  if (!o.with_communication) CHECK_FALSE(has_communication);
  if (o.with_communication && from_function.info().ranks > 1) CHECK(has_communication);
  if (o.with_communication) {
    // Lowering only adds communication around the compute order.
    G compute = g;
    compute.options.with_communication = false;
    const schedule_table plain = make_table(compute);
    for (int r = 0; r < plain.info().ranks; ++r)
      CHECK(compute_of(from_function, r) == compute_of(plain, r));
  }
  if (every_path) {
    CHECK(make_table(g) == from_function);
    CHECK(through_checked_pass(g) == from_function);
  }
}

}  // namespace

TEST_CASE("GPipe, 1F1B and ZB1P validate over a grid of (P, N)") {
  int checked = 0;
  for (const generator_options o : all_options)
    for (int P = 1; P <= 8; ++P)
      for (int N = 1; N <= 3 * P + 1; ++N) {
        INFO("P=" << P << " N=" << N << " forward_only=" << o.forward_only
                  << " with_communication=" << o.with_communication);
        const bool every_path = N % 3 == 0;
        check_generator(gpipe_generator{P, N, o}, schedules::gpipe(P, N, o), every_path);
        ++checked;
        if (N < P) continue;
        check_generator(one_f_one_b_generator{P, N, o}, schedules::one_f_one_b(P, N, o),
                        every_path);
        check_generator(zb1p_generator{P, N, o}, schedules::zb1p(P, N, o), every_path);
        checked += 2;
      }
  CHECK(checked > 500);
}

TEST_CASE("interleaved 1F1B validates over a grid of (P, N, V)") {
  for (const generator_options o : all_options)
    for (int P = 1; P <= 6; ++P)
      for (int N = P; N <= 4 * P; N += P)
        for (int V = 2; V <= 4; ++V) {
          INFO("P=" << P << " N=" << N << " V=" << V << " forward_only=" << o.forward_only
                    << " with_communication=" << o.with_communication);
          check_generator(interleaved_1f1b_generator{P, N, V, o},
                          schedules::interleaved_1f1b(P, N, V, o), N == 2 * P);
        }
}

TEST_CASE("ZB-V validates over a grid of (P, N), including N < 2P-1") {
  for (const generator_options o : all_options)
    for (int P = 1; P <= 8; ++P)
      for (int N = 1; N <= 3 * P + 1; ++N) {
        INFO("P=" << P << " N=" << N << " forward_only=" << o.forward_only
                  << " with_communication=" << o.with_communication);
        check_generator(zbv_generator{P, N, o}, schedules::zbv(P, N, o), N % 3 == 0);
      }
}

TEST_CASE("every (stage, micro-batch) runs exactly one F and one B or I+W") {
  // Counted here, independently of validate(): ZB1P P=3 N=5 and ZB-V P=3 N=4.
  const auto count = [](const schedule_table& t, op kind) {
    int n = 0;
    for (int r = 0; r < t.info().ranks; ++r)
      for (const instruction& i : t.rank(r)) n += i.kind == kind ? 1 : 0;
    return n;
  };
  const auto zb1p = schedules::zb1p(3, 5);
  CHECK(count(zb1p, op::forward) == 15);
  CHECK(count(zb1p, op::backward_input) == 15);
  CHECK(count(zb1p, op::backward_weight) == 15);
  CHECK(count(zb1p, op::backward) == 0);
  const auto zbv = schedules::zbv(3, 4);
  CHECK(count(zbv, op::forward) == 24);
  CHECK(count(zbv, op::backward_input) == 24);
  CHECK(count(zbv, op::backward_weight) == 24);
  const auto interleaved = schedules::interleaved_1f1b(3, 6, 2);
  CHECK(count(interleaved, op::forward) == 36);
  CHECK(count(interleaved, op::backward) == 36);
}

namespace {

template <class F>
std::string error_of(F&& build) {
  try {
    (void)build();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "no exception";
}

}  // namespace

TEST_CASE("run-time constraint errors name the rule and the sizes") {
  CHECK(error_of([] { return schedules::gpipe(0, 4); }) ==
        "GPipe needs at least 1 rank (P >= 1) (got P=0, N=4)");
  CHECK(error_of([] { return schedules::gpipe(2, 0); }) ==
        "GPipe needs at least 1 micro-batch (N >= 1) (got P=2, N=0)");
  CHECK(error_of([] { return schedules::gpipe(20000, 4); }) ==
        "GPipe supports at most 16384 ranks (P <= 16384) (got P=20000, N=4)");
  CHECK(error_of([] { return schedules::one_f_one_b(4, 3); }) ==
        "1F1B needs at least as many micro-batches as ranks (N >= P), as PyTorch's "
        "Schedule1F1B: rank 0 runs P-1 warm-up forwards before its first backward "
        "(got P=4, N=3)");
  CHECK(error_of([] { return schedules::one_f_one_b(4, 3, {.forward_only = true}); }) ==
        "1F1B needs at least as many micro-batches as ranks (N >= P), as PyTorch's "
        "Schedule1F1B: rank 0 runs P-1 warm-up forwards before its first backward "
        "(got P=4, N=3)");
  CHECK(error_of([] { return schedules::zb1p(8, 7); }) ==
        "ZB1P needs at least as many micro-batches as ranks (N >= P), as 1F1B: rank 0 runs "
        "P-1 warm-up forwards before its first backward (got P=8, N=7)");
  CHECK(error_of([] { return schedules::zb1p(-1, 7); }) ==
        "ZB1P needs at least 1 rank (P >= 1) (got P=-1, N=7)");
  CHECK(error_of([] { return schedules::interleaved_1f1b(4, 6, 2); }) ==
        "interleaved 1F1B needs the number of micro-batches to be a multiple of the number of "
        "ranks (N % P == 0), as Megatron-LM requires: micro-batches enter in rounds of P "
        "(got P=4, N=6, V=2)");
  CHECK(error_of([] { return schedules::interleaved_1f1b(4, 8, 1); }) ==
        "interleaved 1F1B needs at least 2 stages per rank (V >= 2); with one stage per rank "
        "use 1F1B (got P=4, N=8, V=1)");
  CHECK(error_of([] { return schedules::interleaved_1f1b(128, 128, 256); }) ==
        "interleaved 1F1B supports at most 16384 stages in all (P*V <= 16384) "
        "(got P=128, N=128, V=256)");
  CHECK(error_of([] { return schedules::zbv(0, 4); }) ==
        "ZB-V needs at least 1 rank (P >= 1) (got P=0, N=4)");
  CHECK(error_of([] { return schedules::zbv(9000, 4); }) ==
        "ZB-V supports at most 8192 ranks (P <= 8192, 2P stages) (got P=9000, N=4)");
  CHECK(error_of([] { return schedules::zbv(2, 0); }) ==
        "ZB-V needs at least 1 micro-batch (N >= 1) (got P=2, N=0)");
  // Positive twins: the smallest sizes each rule allows.
  CHECK(error_of([] { return schedules::gpipe(1, 1); }) == "no exception");
  CHECK(error_of([] { return schedules::one_f_one_b(4, 4); }) == "no exception");
  CHECK(error_of([] { return schedules::zb1p(8, 8); }) == "no exception");
  CHECK(error_of([] { return schedules::interleaved_1f1b(4, 4, 2); }) == "no exception");
  CHECK(error_of([] { return schedules::zbv(1, 1); }) == "no exception");
}
