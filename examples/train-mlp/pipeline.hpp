// The pipelined side of the train-mlp check, written once for ranks that are
// threads (in-process transport, thread_group) and ranks that are processes
// (MPI transport, mpi_group): one rank's stages and executor, the sum of
// DualPipe's mirrored gradients with the mirror rank, and the gathering of
// every rank's losses, outputs and gradients to rank 0 as one step_record.
// pipeline_step runs all of it on P threads, for the tests.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "dualpipe/runtime/executor.hpp"
#include "dualpipe/runtime/mirrored.hpp"
#include "dualpipe/schedule/table.hpp"
#include "dualpipe/transport/in_process.hpp"
#include "mlp.hpp"
#include "thread_group.hpp"

namespace train_mlp {

// One rank's share of a checked step, in flat arrays that travel between
// processes as they are.
template <class Real>
struct rank_record {
  std::vector<int> microbatches;                 // whose last stage ran here
  std::vector<Real> train_losses, infer_losses;  // one per entry of microbatches
  std::vector<Real> infer_outputs;               // (rows x hidden) per entry, back to back
  std::vector<int> stages;                       // held here, ascending
  std::vector<Real> gradients;  // per held stage, grad_w1 then grad_w2, after the mirrored sum
  int overlapped_calls = 0;
};

// This rank's share of a batch: the inputs of the micro-batches whose first
// stage runs here and the labels of those whose last stage does, in the
// order the executor takes them.
template <class Executor, class Tensor>
void take_share(const Executor& executor, const std::vector<Tensor>& inputs,
                const std::vector<Tensor>& labels, std::vector<Tensor>& my_inputs,
                std::vector<Tensor>& my_labels) {
  for (const int m : executor.entering_microbatches())
    my_inputs.push_back(inputs.at(static_cast<std::size_t>(m)));
  for (const int m : executor.leaving_microbatches())
    my_labels.push_back(labels.at(static_cast<std::size_t>(m)));
}

// On the failing rank, every stage (held by pointer) throws at its first
// backward: the examples' fault path.
template <class Stages>
void fail_if_told(const Stages& stages, int rank, int failing_rank) {
  if (rank != failing_rank) return;
  for (const auto& st : stages)
    st->fail_next_backward("rank " + std::to_string(failing_rank) +
                           " fails at its first backward, as it was told to");
}

// One rank of the pipelined model: its copies of the stages it holds, its
// executor on `transport`, and its share of the micro-batches' inputs and
// labels. `failing_rank`: that rank's stages throw at their first backward.
template <class Real, class Transport>
class pipeline_rank {
 public:
  using stage_type = mlp_stage<Real>;
  using executor_type = dualpipe::executor<stage_type, Transport, mse_loss<Real>>;

  pipeline_rank(dualpipe::table_view table, Transport& transport,
                const std::vector<layer<Real>>& model, const batch<Real>& data,
                int failing_rank = -1)
      : info_(table.info), executor_(table, transport, [&](int s) -> stage_type& {
          return *stages_.emplace_back(std::make_unique<stage_type>(
              model.at(static_cast<std::size_t>(s)), table.microbatches()));
        }) {
    take_share(executor_, data.inputs, data.labels, inputs_, labels_);
    fail_if_told(stages_, executor_.rank(), failing_rank);
  }

  [[nodiscard]] int rank() const noexcept { return executor_.rank(); }

  // A training step, as the timed steps run it: the weight gradients keep
  // accumulating, which changes the work of no later step.
  void train() { executor_.step(inputs_, labels_, loss_); }

  // A training step, the sum of DualPipe's mirrored gradients with the
  // mirror rank, and an inference step, recorded. Collective over `group`.
  template <class Group>
  [[nodiscard]] rank_record<Real> checked_step(Group& group) {
    rank_record<Real> out;
    const auto& trained = executor_.step(inputs_, labels_, loss_);
    out.microbatches.assign(trained.microbatches.begin(), trained.microbatches.end());
    out.train_losses.assign(trained.losses.begin(), trained.losses.end());
    sum_gradients_with_mirror(group);
    const auto& inferred =
        executor_.step(inputs_, labels_, loss_, {.forward_only = true, .return_outputs = true});
    out.infer_losses.assign(inferred.losses.begin(), inferred.losses.end());
    for (const tensor<Real>& y : inferred.outputs)
      out.infer_outputs.insert(out.infer_outputs.end(), y.values.begin(), y.values.end());
    out.stages.assign(executor_.local_stages().begin(), executor_.local_stages().end());
    out.gradients = local_gradients();
    for (const auto& st : stages_) out.overlapped_calls += st->overlapped_calls();
    return out;
  }

 private:
  // Every held stage's grad_w1 then grad_w2, in local_stages() order.
  [[nodiscard]] std::vector<Real> local_gradients() const {
    std::vector<Real> out;
    for (const auto& st : stages_) {
      out.insert(out.end(), st->grad_w1().begin(), st->grad_w1().end());
      out.insert(out.end(), st->grad_w2().begin(), st->grad_w2().end());
    }
    return out;
  }

  // Rank r and its mirror P-1-r hold the same stages (in the same ascending
  // order), so their flat gradient arrays line up element by element.
  template <class Group>
  void sum_gradients_with_mirror(Group& group) {
    const int mirror = dualpipe::mirror_rank(info_, rank());
    const int peer = mirror == rank() ? -1 : mirror;
    const std::vector<Real> mine = local_gradients();
    std::vector<Real> theirs(mine.size());
    group.exchange(peer, std::span<const Real>(mine), std::span<Real>(theirs));
    if (peer < 0) return;
    std::size_t at = 0;
    for (const auto& st : stages_)
      for (std::vector<Real>* grad : {&st->grad_w1(), &st->grad_w2()}) {
        dualpipe::sum_mirrored_gradients(*grad, std::span<Real>(theirs).subspan(at, grad->size()));
        at += grad->size();
      }
  }

  dualpipe::schedule_info info_;
  std::vector<std::unique_ptr<stage_type>> stages_;  // before executor_: it holds references
  executor_type executor_;
  std::vector<tensor<Real>> inputs_, labels_;
  mse_loss<Real> loss_;
};

// Every rank's record, merged on rank 0 into one step_record (nullopt on the
// other ranks). Collective over `group`. `rows` x `hidden`: one output.
template <class Real, class Group>
[[nodiscard]] std::optional<step_record<Real>> gather_record(Group& group,
                                                             const rank_record<Real>& mine,
                                                             const dualpipe::schedule_info& info,
                                                             int rows, int hidden) {
  const auto microbatches = group.gather(std::span<const int>(mine.microbatches));
  const auto train_losses = group.gather(std::span<const Real>(mine.train_losses));
  const auto infer_losses = group.gather(std::span<const Real>(mine.infer_losses));
  const auto infer_outputs = group.gather(std::span<const Real>(mine.infer_outputs));
  const auto stages = group.gather(std::span<const int>(mine.stages));
  const auto gradients = group.gather(std::span<const Real>(mine.gradients));
  const auto overlapped = group.gather(std::span<const int>(&mine.overlapped_calls, 1));
  if (group.rank() != 0) return std::nullopt;

  const auto N = static_cast<std::size_t>(info.microbatches);
  const auto S = static_cast<std::size_t>(info.stages);
  const auto output_size = static_cast<std::size_t>(rows) * static_cast<std::size_t>(hidden);
  const auto h = static_cast<std::size_t>(hidden);
  step_record<Real> out;
  out.train_losses.resize(N);
  out.infer_losses.resize(N);
  out.infer_outputs.resize(N);
  out.grad_w1.resize(S);
  out.grad_w2.resize(S);
  std::vector<bool> found(S, false);
  for (std::size_t r = 0; r < microbatches.size(); ++r) {
    out.overlapped_calls += overlapped[r].at(0);
    for (std::size_t i = 0; i < microbatches[r].size(); ++i) {
      const auto m = static_cast<std::size_t>(microbatches[r][i]);
      out.train_losses.at(m) = train_losses[r].at(i);
      out.infer_losses.at(m) = infer_losses[r].at(i);
      tensor<Real>& y = out.infer_outputs.at(m);
      y.resize(rows, hidden);
      const auto from = infer_outputs[r].begin() + static_cast<std::ptrdiff_t>(i * output_size);
      std::copy(from, from + static_cast<std::ptrdiff_t>(output_size), y.values.begin());
    }
    auto at = gradients[r].begin();
    for (const int stage : stages[r]) {
      const auto s = static_cast<std::size_t>(stage);
      const std::vector<Real> w1(at, at + static_cast<std::ptrdiff_t>(4 * h * h));
      const std::vector<Real> w2(at + static_cast<std::ptrdiff_t>(4 * h * h),
                                 at + static_cast<std::ptrdiff_t>(8 * h * h));
      at += static_cast<std::ptrdiff_t>(8 * h * h);
      if (!found.at(s)) {
        out.grad_w1[s] = w1;
        out.grad_w2[s] = w2;
        found[s] = true;
      } else {
        out.copies_identical = out.copies_identical && w1 == out.grad_w1[s] && w2 == out.grad_w2[s];
      }
    }
  }
  for (std::size_t s = 0; s < S; ++s)
    if (!found[s]) throw std::logic_error("gather_record: no rank held stage " + std::to_string(s));
  return out;
}

struct pipeline_options {
  // How long a rank waits on another before it throws transport_timeout.
  std::chrono::nanoseconds timeout = std::chrono::seconds(60);
  // That rank's stages throw at their first backward (-1: none).
  int failing_rank = -1;
};

// One training step and one inference step of `table` on P threads, each
// rank with its own copies of its stages' weights, through the executor and
// the in-process transport, with DualPipe's mirrored copies summed. Rethrows
// the lowest rank's error, if any.
template <class Real>
[[nodiscard]] step_record<Real> pipeline_step(dualpipe::table_view table,
                                              const std::vector<layer<Real>>& model,
                                              const batch<Real>& data,
                                              pipeline_options options = {}) {
  const int P = table.ranks();
  if (static_cast<int>(model.size()) != table.stages() ||
      static_cast<int>(data.inputs.size()) != table.microbatches())
    throw std::invalid_argument("pipeline_step: the table has " + std::to_string(table.stages()) +
                                " stages and " + std::to_string(table.microbatches()) +
                                " micro-batches; the model and data do not match");
  const int rows = data.inputs.empty() ? 0 : data.inputs.front().rows;
  const int hidden = model.empty() ? 0 : model.front().hidden;

  dualpipe::in_process_network<tensor<Real>> network(P, options.timeout);
  thread_group group(P);
  std::optional<step_record<Real>> out;
  on_rank_threads(P, [&](int r) {
    thread_group::member me = group.at(r);
    pipeline_rank<Real, dualpipe::in_process_transport<tensor<Real>>> rank(
        table, network.endpoint(r), model, data, options.failing_rank);
    auto record = gather_record(me, rank.checked_step(me), table.info, rows, hidden);
    if (record) out = std::move(record);
  });
  return std::move(*out);
}

}  // namespace train_mlp
