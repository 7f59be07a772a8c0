// A linear layer whose backward can leave its weight gradient for later, as
// the reference's LinearFunc with WeightGradStore: y = x W^T (+ b). Its
// backward always computes the input gradient; the weight (and bias)
// gradient it either accumulates at once or, while the stage's
// weight_grad_store is deferring (a backward-for-input, I), queues for that
// micro-batch's W. W then does the weight GEMM and nothing else: no second
// walk of the graph, nothing recomputed. The queued work keeps the layer's
// input and output gradient alive until it runs.
//
// Use it where torch::nn::Linear would go; module_stage (torch/stage.hpp)
// finds every deferred_linear in a stage's module and attaches its own store.
// Outside a pipeline (no store, or one that is not deferring) it is an
// ordinary linear layer, with the same kernels, so an un-pipelined model
// built of it gives bit-equal outputs and gradients.
#pragma once

#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "dualpipe/torch/weight_grad_store.hpp"

namespace dualpipe::libtorch {

namespace detail {

inline void accumulate_grad(at::Tensor& parameter, const at::Tensor& g) {
  if (!parameter.grad().defined())
    parameter.mutable_grad() = g;
  else
    parameter.mutable_grad().add_(g);
}

}  // namespace detail

// The autograd function behind deferred_linear. `store` may be null (never
// defer); it is read when the backward runs.
struct deferred_linear_function : torch::autograd::Function<deferred_linear_function> {
  // The bias is optional (an undefined tensor cannot pass through apply()).
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                            weight_grad_store* store) {
    if (bias)
      ctx->save_for_backward({input, weight, *bias});
    else
      ctx->save_for_backward({input, weight});
    // A pointer has no IValue; it travels as an integer to the backward.
    ctx->saved_data["store"] = static_cast<std::int64_t>(reinterpret_cast<std::intptr_t>(store));
    return bias ? at::linear(input, weight, *bias) : at::linear(input, weight);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    at::Tensor input = saved[0], weight = saved[1];
    at::Tensor bias = saved.size() > 2 ? saved[2] : at::Tensor();
    at::Tensor grad_output = grad_outputs[0];
    auto* store = reinterpret_cast<weight_grad_store*>(
        static_cast<std::intptr_t>(ctx->saved_data["store"].toInt()));
    // Only what this backward was asked for: a pass that wants the input
    // gradient alone (module_stage's second_pass I) must not touch the
    // weights, and one that wants the weights alone (its W) not the input.
    const bool weight_wanted = ctx->needs_input_grad(1);
    const bool bias_wanted = bias.defined() && ctx->needs_input_grad(2);
    if (weight_wanted || bias_wanted) {
      auto weight_gradient = [input, weight, bias, grad_output, weight_wanted,
                              bias_wanted]() mutable {
        const torch::NoGradGuard no_grad;
        const at::Tensor g2 = grad_output.flatten(0, -2);
        if (weight_wanted) detail::accumulate_grad(weight, g2.t().mm(input.flatten(0, -2)));
        if (bias_wanted) detail::accumulate_grad(bias, g2.sum(0));
      };
      if (store != nullptr)
        store->put(std::move(weight_gradient));
      else
        weight_gradient();
    }
    at::Tensor grad_input;
    if (ctx->needs_input_grad(0)) grad_input = grad_output.matmul(weight);
    return {grad_input, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class deferred_linear_impl : public torch::nn::Cloneable<deferred_linear_impl> {
 public:
  deferred_linear_impl(std::int64_t in_features, std::int64_t out_features)
      : deferred_linear_impl(torch::nn::LinearOptions(in_features, out_features)) {}
  explicit deferred_linear_impl(const torch::nn::LinearOptions& options) : options(options) {
    reset();  // NOLINT: Cloneable's contract
  }

  // Parameters as torch::nn::Linear makes them (same initialisation). A
  // clone gets no store: the stage that takes it attaches its own.
  void reset() override {
    weight =
        register_parameter("weight", torch::empty({options.out_features(), options.in_features()}));
    if (options.bias())
      bias = register_parameter("bias", torch::empty(options.out_features()));
    else
      bias = register_parameter("bias", {}, /*requires_grad=*/false);
    store_ = nullptr;
    const torch::NoGradGuard no_grad;
    torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
    if (bias.defined()) {
      const double bound = 1.0 / std::sqrt(static_cast<double>(options.in_features()));
      torch::nn::init::uniform_(bias, -bound, bound);
    }
  }

  at::Tensor forward(const at::Tensor& input) {
    return deferred_linear_function::apply(
        input, weight, bias.defined() ? c10::optional<at::Tensor>(bias) : c10::nullopt, store_);
  }

  // The store the backward defers into (nullptr: none), as it is when the
  // forward runs. A layer belongs to
  // one stage: attaching a second store is an error, so that a module shared
  // by two stages is caught instead of queueing one stage's work in the
  // other's W.
  void attach(weight_grad_store* store) {
    if (store != nullptr && store_ != nullptr && store_ != store)
      throw std::invalid_argument(
          "dualpipe::libtorch::deferred_linear: this layer already defers into another stage's "
          "weight_grad_store: give each stage its own module (clone() it)");
    store_ = store;
  }
  void detach_from(const weight_grad_store* store) noexcept {
    if (store_ == store) store_ = nullptr;
  }
  [[nodiscard]] weight_grad_store* store() const noexcept { return store_; }

  void pretty_print(std::ostream& stream) const override {
    stream << "dualpipe::libtorch::deferred_linear(in_features=" << options.in_features()
           << ", out_features=" << options.out_features() << ", bias=" << std::boolalpha
           << options.bias() << ")";
  }

  torch::nn::LinearOptions options;
  at::Tensor weight;
  at::Tensor bias;

 private:
  weight_grad_store* store_ = nullptr;
};

TORCH_MODULE_IMPL(deferred_linear, deferred_linear_impl);

}  // namespace dualpipe::libtorch
