// The train-mlp example's checks, on every schedule of the registry over a
// grid of sizes (the smallest legal ones included): pipelined losses and
// inference outputs bitwise equal to the un-pipelined model, weight gradients
// equal up to summation order, DualPipe's mirrored copies identical; and a
// failing rank stops every rank.
#define CATCH_CONFIG_EXTERNAL_INTERFACES  // for the listener below
#include <catch2/catch.hpp>

#include <algorithm>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "dualpipe/transport/errors.hpp"
#include "dualpipe/schedule/dualpipe.hpp"
#include "dualpipe/schedule/registry.hpp"
#include "mlp.hpp"
#include "pipeline.hpp"

namespace {

// Bitwise checks need the reference and the ranks on one BLAS thread count,
// set before any test runs.
struct one_blas_thread : Catch::TestEventListenerBase {
  using TestEventListenerBase::TestEventListenerBase;
  void testRunStarting(const Catch::TestRunInfo& info) override {
    train_mlp::use_one_blas_thread();
    TestEventListenerBase::testRunStarting(info);
  }
};
CATCH_REGISTER_LISTENER(one_blas_thread)

int overlapped_pairs(const dualpipe::schedule_table& t) {
  int n = 0;
  for (const dualpipe::instruction& x : t.view().instructions)
    n += x.kind == dualpipe::op::overlapped_forward_backward;
  return n;
}

template <class Real>
void check(const std::string& name, const dualpipe::schedule_table& table, int hidden, int rows) {
  const dualpipe::schedule_info info = table.info();
  CAPTURE(name, info.ranks, info.microbatches, info.stages, sizeof(Real));
  const auto model = train_mlp::make_model<Real>(info.stages, hidden, 7);
  const auto data = train_mlp::make_batch<Real>(info.microbatches, rows, hidden, 7);
  const auto reference = train_mlp::reference_step(model, data);
  const auto pipelined = train_mlp::pipeline_step(table.view(), model, data);
  const train_mlp::comparison c = train_mlp::compare(reference, pipelined);
  CAPTURE(c.first_loss_mismatch, c.first_output_mismatch, c.worst_gradient_difference);
  REQUIRE(c.train_losses_equal);
  REQUIRE(c.infer_losses_equal);
  REQUIRE(c.outputs_equal);
  REQUIRE(c.copies_identical);
  REQUIRE(c.gradients_agree());
  // The hook ran once per overlapped pair of the training table.
  REQUIRE(pipelined.overlapped_calls == overlapped_pairs(table));
}

}  // namespace

TEST_CASE("every registered schedule trains the MLP like the un-pipelined model", "[train-mlp]") {
  std::map<std::string, int> ran;
  const std::vector<std::pair<int, int>> sizes{{1, 1}, {1, 3}, {2, 2},  {2, 4},  {2, 6},
                                               {3, 6}, {4, 8}, {4, 12}, {6, 12}, {8, 16}};
  for (const dualpipe::schedule_entry& e : dualpipe::schedule_registry())
    for (const auto& [P, N] : sizes) {
      dualpipe::schedule_request q;
      q.ranks = P;
      q.microbatches = N;
      dualpipe::schedule_table table;
      try {
        table = dualpipe::make_schedule(e.name, q);
      } catch (const std::invalid_argument&) {
        continue;  // sizes this schedule does not take
      }
      check<double>(std::string(e.name), table, 8, 2);
      ++ran[std::string(e.name)];
    }
  for (const dualpipe::schedule_entry& e : dualpipe::schedule_registry()) {
    CAPTURE(e.name);
    REQUIRE(ran[std::string(e.name)] >= 2);
  }
}

TEST_CASE("the smallest legal DualPipe and DualPipeV, and f32", "[train-mlp]") {
  check<double>("dualpipe", dualpipe::schedules::dualpipe(2, 4), 8, 2);
  check<double>("dualpipev", dualpipe::schedules::dualpipev(2, 4), 8, 2);
  check<float>("dualpipe", dualpipe::schedules::dualpipe(2, 4), 8, 2);
  check<float>("dualpipe", dualpipe::schedules::dualpipe(4, 20), 16, 3);
  check<float>("dualpipev", dualpipe::schedules::dualpipev(4, 10), 16, 3);
  // The example's defaults.
  check<double>("dualpipe", dualpipe::schedules::dualpipe(4, 20), 16, 3);
}

TEST_CASE("DualPipe and DualPipeV train for every N the reference refuses", "[train-mlp][any-n]") {
  // Odd N and N < 2P (padded, then dropped), and DualPipeV on one rank.
  for (const int P : {2, 4, 6, 8})
    for (int N = 1; N <= 2 * P + 1; ++N)
      if (N % 2 == 1 || N < 2 * P) check<double>("dualpipe", dualpipe::schedules::dualpipe(P, N), 8, 2);
  for (const int P : {1, 2, 3, 5, 8})
    for (int N = 1; N < 2 * P; ++N)
      check<double>("dualpipev", dualpipe::schedules::dualpipev(P, N), 8, 2);
  check<float>("dualpipe", dualpipe::schedules::dualpipe(8, 5), 16, 3);
  check<float>("dualpipev", dualpipe::schedules::dualpipev(4, 3), 16, 3);
}

TEST_CASE("compute-only tables are lowered and train the same", "[train-mlp]") {
  check<double>("dualpipe", dualpipe::schedules::dualpipe(4, 8, {.with_communication = false}), 8,
                2);
  check<double>("dualpipev", dualpipe::schedules::dualpipev(4, 8, {.with_communication = false}), 8,
                2);
}

TEST_CASE("the comparison catches a wrong model", "[train-mlp]") {
  // Negative twin: a pipeline run on other weights must fail every check.
  const auto table = dualpipe::schedules::dualpipe(2, 4);
  const auto model = train_mlp::make_model<double>(2, 8, 7);
  const auto other = train_mlp::make_model<double>(2, 8, 8);
  const auto data = train_mlp::make_batch<double>(4, 2, 8, 7);
  const auto c = train_mlp::compare(train_mlp::reference_step(model, data),
                                    train_mlp::pipeline_step(table.view(), other, data));
  REQUIRE_FALSE(c.train_losses_equal);
  REQUIRE_FALSE(c.outputs_equal);
  REQUIRE_FALSE(c.gradients_agree());
  REQUIRE_FALSE(c.ok());
}

TEST_CASE("sum_mirrored_gradients leaves both copies equal to the sum", "[train-mlp]") {
  std::vector<double> a{1.0, 0.1, -3.5}, b{2.0, 0.2, 3.5};
  dualpipe::sum_mirrored_gradients(a, b);
  REQUIRE(a == std::vector<double>{3.0, 0.1 + 0.2, 0.0});
  REQUIRE(b == a);
  std::vector<double> c(2);
  REQUIRE_THROWS_WITH(dualpipe::sum_mirrored_gradients(a, c), Catch::Contains("differ in size"));
  const dualpipe::schedule_info info = dualpipe::schedules::dualpipe(4, 8).info();
  REQUIRE(dualpipe::mirror_rank(info, 0) == 3);
  REQUIRE(dualpipe::mirror_rank(info, 2) == 1);
  REQUIRE(dualpipe::mirror_rank(dualpipe::schedules::dualpipev(4, 8).info(), 0) == -1);
}

TEST_CASE("a rank whose stage throws stops every rank, and they name it", "[train-mlp]") {
  const auto table = dualpipe::schedules::dualpipe(4, 8);
  const auto model = train_mlp::make_model<double>(4, 8, 7);
  const auto data = train_mlp::make_batch<double>(8, 2, 8, 7);
  try {
    (void)train_mlp::pipeline_step(table.view(), model, data, {.failing_rank = 2});
    FAIL("the step did not throw");
  } catch (const dualpipe::pipeline_aborted& e) {
    // Rank 0's error (the lowest rank's is the one rethrown) names rank 2 and its error.
    REQUIRE(e.origin_rank() == 2);
    REQUIRE_THAT(e.what(),
                 Catch::Contains("aborted by rank 2 (dualpipe: rank 2 failed in backward") &&
                     Catch::Contains("rank 2 fails at its first backward"));
  }
}

TEST_CASE("a tensor's wire form is its (rows x cols) of f32 or f64", "[train-mlp]") {
  using traits = dualpipe::wire_traits<train_mlp::tensor<float>>;
  STATIC_REQUIRE(dualpipe::check_wire_tensor<train_mlp::tensor<float>>());
  train_mlp::tensor<float> x;
  x.resize(3, 5);
  x(2, 4) = 1.5f;
  const dualpipe::wire_shape s = traits::shape(x);
  REQUIRE(dualpipe::describe(s) == "f32[3, 5]");
  REQUIRE(traits::bytes(x).size() == s.bytes);
  train_mlp::tensor<float> y;
  const auto target = traits::prepare(y, s);
  REQUIRE(target.size() == s.bytes);
  std::copy(traits::bytes(x).begin(), traits::bytes(x).end(), target.begin());
  REQUIRE(train_mlp::bitwise_equal(x, y));
  train_mlp::tensor<double> z;
  REQUIRE_THROWS_WITH(dualpipe::wire_traits<train_mlp::tensor<double>>::prepare(z, s),
                      Catch::Contains("f64 elements cannot hold"));
}
