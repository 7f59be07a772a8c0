// The train-torch example's checks (examples/train-torch) on every schedule
// of the registry over a grid of sizes, with both ways of deferring W: torch
// stages pipelined on threads give losses and inference outputs bitwise
// equal to the un-pipelined torch model, weight gradients equal up to
// summation order, DualPipe's mirrored copies identical; a failing rank
// stops every rank.
// torch first: Debian's c10 includes glog, whose CHECK macro would replace
// Catch2's.
#include <torch/torch.h>
#undef CHECK
#define CATCH_CONFIG_EXTERNAL_INTERFACES  // for the listener below
#include <catch2/catch.hpp>

#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "dualpipe/schedule/dualpipe.hpp"
#include "dualpipe/schedule/registry.hpp"
#include "dualpipe/transport/errors.hpp"
#include "model.hpp"
#include "torch_pipeline.hpp"

namespace {

using dualpipe::libtorch::weight_gradients;

// Bitwise checks need the reference and the ranks on one BLAS thread; each
// rank thread of pipeline_step sets one intra-op thread, so the reference
// (this thread) does too.
struct one_thread : Catch::TestEventListenerBase {
  using TestEventListenerBase::TestEventListenerBase;
  void testRunStarting(const Catch::TestRunInfo& info) override {
    train_mlp::use_one_blas_thread();
    at::set_num_threads(1);
    TestEventListenerBase::testRunStarting(info);
  }
};
CATCH_REGISTER_LISTENER(one_thread)

int overlapped_pairs(const dualpipe::schedule_table& t) {
  int n = 0;
  for (const dualpipe::instruction& x : t.view().instructions)
    n += x.kind == dualpipe::op::overlapped_forward_backward;
  return n;
}

template <class Real>
void check(const std::string& name, const dualpipe::schedule_table& table, weight_gradients w,
           int hidden = 8, int rows = 2) {
  const dualpipe::schedule_info info = table.info();
  CAPTURE(name, info.ranks, info.microbatches, info.stages, sizeof(Real),
          dualpipe::libtorch::weight_gradients_name(w));
  const auto model = train_mlp::make_model<Real>(info.stages, hidden, 7);
  const auto data = train_torch::make_batch<Real>(info.microbatches, rows, hidden, 7);
  const auto reference = train_torch::reference_step(model, data, w);
  const auto pipelined = train_torch::pipeline_step(table.view(), model, data, {.deferral = w});
  const train_mlp::comparison c = train_mlp::compare(reference, pipelined);
  CAPTURE(c.first_loss_mismatch, c.first_output_mismatch, c.worst_gradient_difference);
  REQUIRE(c.train_losses_equal);
  REQUIRE(c.infer_losses_equal);
  REQUIRE(c.outputs_equal);
  REQUIRE(c.copies_identical);
  REQUIRE(c.gradients_agree());
  REQUIRE(pipelined.overlapped_calls == overlapped_pairs(table));
}

}  // namespace

TEST_CASE("every registered schedule trains torch stages like the un-pipelined model",
          "[train-torch]") {
  std::map<std::string, int> ran;
  const std::vector<std::pair<int, int>> sizes{{1, 3}, {2, 4}, {2, 5}, {4, 8}, {4, 12}};
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
      for (const weight_gradients w : {weight_gradients::store, weight_gradients::second_pass})
        check<double>(std::string(e.name), table, w);
      ++ran[std::string(e.name)];
    }
  for (const dualpipe::schedule_entry& e : dualpipe::schedule_registry()) {
    CAPTURE(e.name);
    REQUIRE(ran[std::string(e.name)] >= 2);
  }
}

TEST_CASE("DualPipe and DualPipeV on torch stages in f32, at the example's sizes",
          "[train-torch]") {
  for (const weight_gradients w : {weight_gradients::store, weight_gradients::second_pass}) {
    check<float>("dualpipe", dualpipe::schedules::dualpipe(4, 20), w, 16, 3);
    check<float>("dualpipev", dualpipe::schedules::dualpipev(4, 16), w, 16, 3);
    check<double>("dualpipe", dualpipe::schedules::dualpipe(8, 5), w, 16, 3);
  }
}

TEST_CASE("the torch comparison catches a wrong model", "[train-torch]") {
  const auto table = dualpipe::schedules::dualpipe(2, 4);
  const auto model = train_mlp::make_model<double>(2, 8, 7);
  const auto other = train_mlp::make_model<double>(2, 8, 8);
  const auto data = train_torch::make_batch<double>(4, 2, 8, 7);
  const auto c =
      train_mlp::compare(train_torch::reference_step(model, data, weight_gradients::store),
                         train_torch::pipeline_step(table.view(), other, data));
  REQUIRE_FALSE(c.train_losses_equal);
  REQUIRE_FALSE(c.outputs_equal);
  REQUIRE_FALSE(c.gradients_agree());
}

TEST_CASE("a torch rank whose stage throws stops every rank, and they name it", "[train-torch]") {
  const auto table = dualpipe::schedules::dualpipev(4, 8);
  const auto model = train_mlp::make_model<double>(8, 8, 7);
  const auto data = train_torch::make_batch<double>(8, 2, 8, 7);
  try {
    (void)train_torch::pipeline_step(table.view(), model, data, {.failing_rank = 2});
    FAIL("the step did not throw");
  } catch (const dualpipe::pipeline_aborted& e) {
    REQUIRE(e.origin_rank() == 2);
    REQUIRE_THAT(e.what(), Catch::Contains("rank 2 fails at its first backward"));
  }
}
