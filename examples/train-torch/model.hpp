// The train-torch example's model on libtorch: the DualPipe reference's
// examples/example_dualpipe.py stage, Linear(h, 4h) -> GELU -> Linear(4h, h)
// without bias, as a torch::nn::Sequential whose linear layers defer their
// weight gradient (dualpipe::libtorch::deferred_linear, the reference's
// LinearFunc and WeightGradStore) or, to show the generic way, ordinary
// torch::nn::Linear layers whose W is a second autograd pass. MSE loss per
// micro-batch. The weights and data are train-mlp's (same seed, same
// numbers), so the two examples train the same model; the records and the
// comparison with the un-pipelined model are train-mlp's too.
#pragma once

#include <torch/torch.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "dualpipe/torch/deferred_linear.hpp"
#include "dualpipe/torch/stage.hpp"
#include "mlp.hpp"

namespace train_torch {

template <class Real>
inline constexpr at::ScalarType scalar_type =
    std::is_same_v<Real, float> ? at::kFloat : at::kDouble;

// A (rows x cols) tensor holding `values`, copied.
template <class Real>
[[nodiscard]] at::Tensor to_tensor(const std::vector<Real>& values, std::int64_t rows,
                                   std::int64_t cols) {
  at::Tensor t = at::empty({rows, cols}, at::TensorOptions().dtype(scalar_type<Real>));
  std::memcpy(t.data_ptr(), values.data(), values.size() * sizeof(Real));
  return t;
}

// The values of a tensor, row-major.
template <class Real>
[[nodiscard]] std::vector<Real> values_of(const at::Tensor& t) {
  const at::Tensor c = t.detach().contiguous();
  const Real* p = c.data_ptr<Real>();
  return std::vector<Real>(p, p + c.numel());
}

// One stage with train-mlp's weights for it: deferred-W linears (the
// reference's), or ordinary ones (second_pass).
template <class Real>
[[nodiscard]] torch::nn::Sequential make_stage(const train_mlp::layer<Real>& weights,
                                               dualpipe::libtorch::weight_gradients deferral) {
  const std::int64_t h = weights.hidden;
  torch::nn::Sequential stage;
  if (deferral == dualpipe::libtorch::weight_gradients::second_pass) {
    stage->push_back(torch::nn::Linear(torch::nn::LinearOptions(h, 4 * h).bias(false)));
    stage->push_back(torch::nn::GELU());
    stage->push_back(torch::nn::Linear(torch::nn::LinearOptions(4 * h, h).bias(false)));
  } else {
    stage->push_back(
        dualpipe::libtorch::deferred_linear(torch::nn::LinearOptions(h, 4 * h).bias(false)));
    stage->push_back(torch::nn::GELU());
    stage->push_back(
        dualpipe::libtorch::deferred_linear(torch::nn::LinearOptions(4 * h, h).bias(false)));
  }
  stage->to(scalar_type<Real>);
  const torch::NoGradGuard no_grad;
  std::vector<at::Tensor> p = stage->parameters();
  p.at(0).copy_(to_tensor(weights.w1, 4 * h, h));
  p.at(1).copy_(to_tensor(weights.w2, h, 4 * h));
  return stage;
}

// The example's criterion: the reference's F.mse_loss (mean over elements).
inline at::Tensor mse(const at::Tensor& output, const at::Tensor& label) {
  return torch::mse_loss(output, label);
}

template <class Real>
struct batch {
  std::vector<at::Tensor> inputs, labels;  // (rows x hidden) each, by micro-batch
};

template <class Real>
[[nodiscard]] batch<Real> make_batch(int microbatches, int rows, int hidden, std::uint64_t seed) {
  const train_mlp::batch<Real> numbers =
      train_mlp::make_batch<Real>(microbatches, rows, hidden, seed);
  batch<Real> b;
  for (const train_mlp::tensor<Real>& x : numbers.inputs)
    b.inputs.push_back(to_tensor(x.values, x.rows, x.cols));
  for (const train_mlp::tensor<Real>& x : numbers.labels)
    b.labels.push_back(to_tensor(x.values, x.rows, x.cols));
  return b;
}

// A stage's two weight gradients (linear1's, then linear2's), flat.
template <class Real>
void append_gradients(torch::nn::Module& stage, std::vector<Real>& out) {
  for (const at::Tensor& p : stage.parameters()) {
    const std::vector<Real> g =
        p.grad().defined() ? values_of<Real>(p.grad()) : std::vector<Real>(p.numel(), Real(0));
    out.insert(out.end(), g.begin(), g.end());
  }
}

// The model without a pipeline, as the reference's ref_step: micro-batch
// after micro-batch through every stage, loss, loss.backward().
template <class Real>
[[nodiscard]] train_mlp::step_record<Real> reference_step(
    const std::vector<train_mlp::layer<Real>>& model, const batch<Real>& data,
    dualpipe::libtorch::weight_gradients deferral) {
  std::vector<torch::nn::Sequential> stages;
  for (const train_mlp::layer<Real>& l : model) stages.push_back(make_stage(l, deferral));
  train_mlp::step_record<Real> out;
  const int rows = static_cast<int>(data.inputs.front().size(0));
  const int hidden = static_cast<int>(data.inputs.front().size(1));
  for (std::size_t m = 0; m < data.inputs.size(); ++m) {
    at::Tensor x = data.inputs[m];
    for (torch::nn::Sequential& s : stages) x = s->forward(x);
    const at::Tensor loss = mse(x, data.labels[m]);
    loss.backward();
    out.train_losses.push_back(loss.item<Real>());
    train_mlp::tensor<Real>& y = out.infer_outputs.emplace_back();
    y.resize(rows, hidden);
    y.values = values_of<Real>(x);
  }
  out.infer_losses = out.train_losses;
  for (torch::nn::Sequential& s : stages) {
    std::vector<Real> g;
    append_gradients(*s, g);
    const auto half = static_cast<std::ptrdiff_t>(g.size() / 2);
    out.grad_w1.emplace_back(g.begin(), g.begin() + half);
    out.grad_w2.emplace_back(g.begin() + half, g.end());
  }
  return out;
}

}  // namespace train_torch
