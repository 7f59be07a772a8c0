// The pipelined side of the train-torch check, for ranks that are threads
// (in-process transport) and ranks that are processes (MPI transport): one
// rank's stages (module_stage over its copies of the modules), its executor
// with the MSE criterion, and its share of a checked step as train-mlp's
// rank_record, which train-mlp's gather_record merges on rank 0. How the
// rank sums DualPipe's mirrored gradients is given to it: directly between
// two threads' modules, or over MPI (dualpipe/torch/mpi.hpp).
// pipeline_step runs all of it on P threads, for the tests.
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <cstddef>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "dualpipe/runtime/executor.hpp"
#include "dualpipe/runtime/mirrored.hpp"
#include "dualpipe/schedule/table.hpp"
#include "dualpipe/torch/loss.hpp"
#include "dualpipe/torch/mirrored.hpp"
#include "dualpipe/torch/stage.hpp"
#include "dualpipe/torch/tensor.hpp"
#include "dualpipe/transport/in_process.hpp"
#include "model.hpp"
#include "pipeline.hpp"  // train-mlp's: rank_record, gather_record, take_share
#include "thread_group.hpp"

namespace train_torch {

// module_stage, plus the example's fault: a stage told to fail throws at its
// first backward (the path --fail-rank shows).
class stage {
 public:
  stage(torch::nn::Sequential module, dualpipe::libtorch::stage_options options)
      : inner_(std::move(module), options) {}

  void fail_next_backward(std::string why) { fail_ = std::move(why); }
  [[nodiscard]] torch::nn::Sequential& module() noexcept { return inner_.module(); }
  [[nodiscard]] const dualpipe::libtorch::module_stage<torch::nn::Sequential>& inner() const {
    return inner_;
  }

  void forward(int mb, const at::Tensor& in, at::Tensor& out) { inner_.forward(mb, in, out); }
  void backward(int mb, const at::Tensor& g, at::Tensor& in_grad) {
    maybe_fail();
    inner_.backward(mb, g, in_grad);
  }
  void backward_input(int mb, const at::Tensor& g, at::Tensor& in_grad) {
    maybe_fail();
    inner_.backward_input(mb, g, in_grad);
  }
  void backward_weight(int mb) { inner_.backward_weight(mb); }
  void overlapped_forward_backward(int f_mb, const at::Tensor& f_in, at::Tensor& f_out,
                                   stage& b_stage, int b_mb, const at::Tensor& b_g,
                                   at::Tensor& b_in_grad) {
    b_stage.maybe_fail();
    inner_.overlapped_forward_backward(f_mb, f_in, f_out, b_stage.inner_, b_mb, b_g, b_in_grad);
  }

 private:
  void maybe_fail() {
    if (!fail_.empty()) throw std::runtime_error(std::exchange(fail_, {}));
  }
  dualpipe::libtorch::module_stage<torch::nn::Sequential> inner_;
  std::string fail_;
};

using loss_type =
    dualpipe::libtorch::criterion_loss<at::Tensor (*)(const at::Tensor&, const at::Tensor&)>;

// One rank of the pipelined model: its stages (its own copies of the
// modules), its executor on `transport`, and its share of the data.
template <class Real, class Transport>
class pipeline_rank {
 public:
  using executor_type = dualpipe::executor<stage, Transport, loss_type>;

  pipeline_rank(dualpipe::table_view table, Transport& transport,
                const std::vector<train_mlp::layer<Real>>& model, const batch<Real>& data,
                dualpipe::libtorch::weight_gradients deferral, int failing_rank = -1)
      : info_(table.info), executor_(table, transport, [&](int s) -> stage& {
          // Stage 0 only ever runs first: nobody reads its input gradient.
          return *stages_.emplace_back(
              std::make_unique<stage>(make_stage(model.at(static_cast<std::size_t>(s)), deferral),
                                      dualpipe::libtorch::stage_options{
                                          .deferral = deferral, .input_requires_grad = s != 0}));
        }) {
    train_mlp::take_share(executor_, data.inputs, data.labels, inputs_, labels_);
    train_mlp::fail_if_told(stages_, executor_.rank(), failing_rank);
  }

  [[nodiscard]] int rank() const noexcept { return executor_.rank(); }
  [[nodiscard]] const dualpipe::schedule_info& info() const noexcept { return info_; }
  // This rank's modules, in local_stages() order (ascending stage).
  [[nodiscard]] std::vector<torch::nn::Sequential> modules() const {
    std::vector<torch::nn::Sequential> out;
    for (const auto& st : stages_) out.push_back(st->module());
    return out;
  }

  // A training step, as the timed steps run it (gradients keep accumulating,
  // which changes the work of no later step).
  void train() { executor_.step(inputs_, labels_, loss_); }

  // A training step, `sum_with_mirror()` (which must leave this rank's
  // modules holding the mirrored sum), and an inference step under
  // NoGradGuard, recorded.
  [[nodiscard]] train_mlp::rank_record<Real> checked_step(
      const std::function<void()>& sum_with_mirror) {
    train_mlp::rank_record<Real> out;
    const auto& trained = executor_.step(inputs_, labels_, loss_);
    out.microbatches.assign(trained.microbatches.begin(), trained.microbatches.end());
    for (const at::Tensor& l : trained.losses) out.train_losses.push_back(l.item<Real>());
    sum_with_mirror();
    {
      const torch::NoGradGuard no_grad;
      const auto& inferred =
          executor_.step(inputs_, labels_, loss_, {.forward_only = true, .return_outputs = true});
      for (const at::Tensor& l : inferred.losses) out.infer_losses.push_back(l.item<Real>());
      for (const at::Tensor& y : inferred.outputs) {
        const std::vector<Real> v = values_of<Real>(y);
        out.infer_outputs.insert(out.infer_outputs.end(), v.begin(), v.end());
      }
    }
    out.stages.assign(executor_.local_stages().begin(), executor_.local_stages().end());
    for (const auto& st : stages_) {
      append_gradients(*st->module(), out.gradients);
      out.overlapped_calls += st->inner().overlapped_calls();
    }
    return out;
  }

 private:
  dualpipe::schedule_info info_;
  std::vector<std::unique_ptr<stage>> stages_;  // before executor_: it holds references
  executor_type executor_;
  std::vector<at::Tensor> inputs_, labels_;
  loss_type loss_{&mse};
};

// Ranks as threads: every rank's modules, so that the lower rank of each
// mirror pair can sum the pair's gradients directly.
class thread_mirrors {
 public:
  explicit thread_mirrors(int ranks) : modules_(static_cast<std::size_t>(ranks)) {}

  void publish(int rank, std::vector<torch::nn::Sequential> modules) {
    modules_.at(static_cast<std::size_t>(rank)) = std::move(modules);
  }
  // Collective over `group`: after it, every mirror pair's modules hold the
  // summed gradients. Rank r and its mirror hold the same stages in the same
  // (ascending) order, so their module lists line up.
  template <class Group>
  void sum(Group& group, const dualpipe::schedule_info& info) {
    group.barrier();  // every rank's step is done
    const int r = group.rank();
    const int mirror = dualpipe::mirror_rank(info, r);
    if (mirror > r) {
      auto& mine = modules_[static_cast<std::size_t>(r)];
      auto& theirs = modules_[static_cast<std::size_t>(mirror)];
      for (std::size_t i = 0; i < mine.size(); ++i)
        dualpipe::libtorch::sum_mirrored_gradients(*mine.at(i), *theirs.at(i));
    }
    group.barrier();  // every sum is done
  }

 private:
  std::vector<std::vector<torch::nn::Sequential>> modules_;
};

struct pipeline_options {
  std::chrono::nanoseconds timeout = std::chrono::seconds(60);
  dualpipe::libtorch::weight_gradients deferral = dualpipe::libtorch::weight_gradients::store;
  int failing_rank = -1;
};

// One checked step of `table` on P threads (each with one intra-op thread),
// merged into one record. Rethrows the lowest rank's error, if any.
template <class Real>
[[nodiscard]] train_mlp::step_record<Real> pipeline_step(
    dualpipe::table_view table, const std::vector<train_mlp::layer<Real>>& model,
    const batch<Real>& data, pipeline_options options = {}) {
  const int P = table.ranks();
  if (static_cast<int>(model.size()) != table.stages() ||
      static_cast<int>(data.inputs.size()) != table.microbatches())
    throw std::invalid_argument("pipeline_step: the table has " + std::to_string(table.stages()) +
                                " stages and " + std::to_string(table.microbatches()) +
                                " micro-batches; the model and data do not match");
  const int rows = static_cast<int>(data.inputs.front().size(0));
  const int hidden = model.front().hidden;
  dualpipe::in_process_network<at::Tensor> network(P, options.timeout);
  train_mlp::thread_group group(P);
  thread_mirrors mirrors(P);
  std::optional<train_mlp::step_record<Real>> out;
  train_mlp::on_rank_threads(P, [&](int r) {
    at::set_num_threads(1);
    train_mlp::thread_group::member me = group.at(r);
    pipeline_rank<Real, dualpipe::in_process_transport<at::Tensor>> rank(
        table, network.endpoint(r), model, data, options.deferral, options.failing_rank);
    mirrors.publish(r, rank.modules());
    auto record = train_mlp::gather_record(
        me, rank.checked_step([&] { mirrors.sum(me, rank.info()); }), table.info, rows, hidden);
    if (record) out = std::move(record);
  });
  return std::move(*out);
}

}  // namespace train_torch
