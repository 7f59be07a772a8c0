// From a torch module to a pipeline stage: module_stage wraps anything that
// maps a tensor to a tensor and holds parameters (a torch::nn::Sequential, a
// ModuleHolder of your own Module with `Tensor forward(Tensor)`) and gives
// the executor what dualpipe::pipeline_stage asks for: forward, backward (B),
// backward_input (I), backward_weight (W) and the overlapped pair.
//
// Per micro-batch it keeps what autograd needs from the forward until the
// backward, or for a split backward until the W, and then lets it go. Two
// ways to defer W, chosen by stage_options::weight_gradients:
//
//   store        the layers that can split their backward (deferred_linear)
//                queue their weight GEMMs in this stage's weight_grad_store
//                during I; W runs exactly those. Nothing is recomputed. Other
//                parameters of the module (a LayerNorm's, say) get their
//                gradients during I, as the reference does.
//   second_pass  any module: I asks autograd for the input gradient alone
//                and keeps the graph; W walks it again for the parameters'
//                gradients. Bit-equal to one full backward, but W recomputes
//                every activation gradient between the output and the first
//                parameter (docs/torch.md measures what that costs).
//   automatic    store if the module holds a deferred_linear, else
//                second_pass (the default).
//
// Inference: run the step under torch::NoGradGuard (on every rank's thread)
// and forward keeps nothing.
#pragma once

#include <torch/torch.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "dualpipe/runtime/stage.hpp"
#include "dualpipe/torch/deferred_linear.hpp"
#include "dualpipe/torch/tensor.hpp"
#include "dualpipe/torch/weight_grad_store.hpp"

namespace dualpipe::libtorch {

enum class weight_gradients { automatic, store, second_pass };

[[nodiscard]] constexpr const char* weight_gradients_name(weight_gradients w) noexcept {
  switch (w) {
    case weight_gradients::automatic:
      return "automatic";
    case weight_gradients::store:
      return "store";
    case weight_gradients::second_pass:
      return "second_pass";
  }
  return "unknown";
}

struct stage_options {
  weight_gradients deferral = weight_gradients::automatic;
  // Whether the stage computes the gradient of its input. Turn it off on a
  // stage that only ever runs first (stage 0), whose input gradient nobody
  // reads: its backward then skips that GEMM, as autograd does for a model's
  // input. input_grad is then left undefined.
  bool input_requires_grad = true;
  // When not empty, every input is viewed in this shape first (one entry
  // may be -1): for transports that deliver a flat buffer of the right
  // count (NCCL), e.g. {-1, hidden}. Output gradients always take the shape
  // of the output they belong to.
  std::vector<std::int64_t> input_shape{};
};

// What module_stage calls: module->forward(x) (a ModuleHolder or a
// shared_ptr to a Module) with parameters() and modules().
template <class M>
concept stage_module = requires(M& m, const at::Tensor& x) {
  { m->forward(x) } -> std::convertible_to<at::Tensor>;
  { m->parameters() } -> std::convertible_to<std::vector<at::Tensor>>;
  m->modules();
};

template <stage_module Module>
class module_stage {
 public:
  explicit module_stage(Module module, stage_options options = {})
      : module_(std::move(module)),
        options_(options),
        store_(std::make_unique<weight_grad_store>()) {
    for (const std::shared_ptr<torch::nn::Module>& m : module_->modules())
      if (auto layer = std::dynamic_pointer_cast<deferred_linear_impl>(m)) {
        layer->attach(store_.get());
        deferred_layers_.push_back(std::move(layer));
      }
    resolved_ = options.deferral != weight_gradients::automatic ? options.deferral
                : deferred_layers_.empty()                      ? weight_gradients::second_pass
                                                                : weight_gradients::store;
    if (resolved_ == weight_gradients::store && deferred_layers_.empty())
      throw std::invalid_argument(
          "dualpipe::libtorch::module_stage: weight_gradients::store needs a module that holds "
          "at least one deferred_linear (nothing could defer its weight gradient); use "
          "second_pass for any module");
    // Attaching above also caught a layer that another stage holds; a
    // second_pass stage then lets its layers go again, so that they compute
    // at once what autograd asks for.
    if (resolved_ == weight_gradients::second_pass) {
      for (const auto& layer : deferred_layers_) layer->detach_from(store_.get());
      for (at::Tensor& p : module_->parameters())
        if (p.requires_grad()) weights_.push_back(p);
    }
  }

  // Movable (the store keeps its address, so the layers' pointers stay
  // good), not assignable: an assignment would free the store that the
  // overwritten stage's layers still point to.
  module_stage(const module_stage&) = delete;
  module_stage& operator=(const module_stage&) = delete;
  module_stage(module_stage&&) noexcept = default;
  module_stage& operator=(module_stage&&) = delete;
  ~module_stage() {
    if (store_)
      for (const auto& layer : deferred_layers_) layer->detach_from(store_.get());
  }

  [[nodiscard]] Module& module() noexcept { return module_; }
  [[nodiscard]] const Module& module() const noexcept { return module_; }
  // How this stage defers W (never automatic).
  [[nodiscard]] weight_gradients deferral() const noexcept { return resolved_; }
  // Micro-batches whose autograd state this stage holds now: forwards
  // awaiting their backward, and (second_pass) graphs awaiting their W.
  [[nodiscard]] std::size_t kept() const noexcept {
    std::size_t n = 0;
    for (const kept_state& k : kept_)
      if (k.output.defined()) ++n;
    return n;
  }
  // Weight gradients waiting for their W, oldest first.
  [[nodiscard]] std::vector<int> deferred_microbatches() const {
    if (resolved_ == weight_gradients::store) return store_->pending_microbatches();
    return {second_pass_queue_.begin(), second_pass_queue_.end()};
  }
  [[nodiscard]] int overlapped_calls() const noexcept { return overlapped_calls_; }

  // Drops every kept graph and deferred weight gradient (after a failed
  // step; a new step needs none of them).
  void clear() noexcept {
    kept_.clear();
    second_pass_queue_.clear();
    store_->clear();
  }

  void forward(int mb, const at::Tensor& input, at::Tensor& output) {
    if (!torch::GradMode::is_enabled()) {
      output = contiguous(module_->forward(shaped_input(input)));
      return;
    }
    at::Tensor x = shaped_input(input).detach();
    if (options_.input_requires_grad) {
      if (!at::isFloatingType(x.scalar_type()) && !at::isComplexType(x.scalar_type()))
        throw std::invalid_argument(
            "dualpipe::libtorch::module_stage: the input of micro-batch " + std::to_string(mb) +
            " is " + describe(x) +
            ", which has no gradient; construct the stage with input_requires_grad = false");
      x.requires_grad_(true);
    }
    at::Tensor y = module_->forward(x);
    kept_state& k = state(mb);
    k = kept_state{};
    k.input = std::move(x);
    output = contiguous(y.detach());
    k.output = std::move(y);
  }

  // B: input gradient into input_grad, weight gradients accumulated now.
  void backward(int mb, const at::Tensor& output_grad, at::Tensor& input_grad) {
    kept_state& k = forwarded(mb, "backward");
    const at::Tensor g = shaped_gradient(mb, k, output_grad);
    if (k.output.requires_grad()) torch::autograd::backward({k.output}, {g});
    input_grad = input_gradient(k);
    k = kept_state{};
  }

  // I: input gradient now, weight gradients deferred to backward_weight(mb).
  void backward_input(int mb, const at::Tensor& output_grad, at::Tensor& input_grad) {
    kept_state& k = forwarded(mb, "backward_input");
    const at::Tensor g = shaped_gradient(mb, k, output_grad);
    if (resolved_ == weight_gradients::store) {
      store_->open(mb);
      try {
        if (k.output.requires_grad()) torch::autograd::backward({k.output}, {g});
      } catch (...) {
        store_->discard();
        throw;
      }
      store_->close(mb);
      input_grad = input_gradient(k);
      k = kept_state{};
      return;
    }
    if (options_.input_requires_grad && k.output.requires_grad())
      input_grad = contiguous(torch::autograd::grad({k.output}, {k.input}, {g},
                                                    /*retain_graph=*/true)[0]);
    else
      input_grad = at::Tensor();
    k.input = at::Tensor();
    k.output_grad = g;
    k.awaiting_weight = true;
    second_pass_queue_.push_back(mb);
  }

  // W: the deferred weight gradients of mb, first in, first out.
  void backward_weight(int mb) {
    if (resolved_ == weight_gradients::store) {
      store_->run(mb);
      return;
    }
    if (second_pass_queue_.empty() || second_pass_queue_.front() != mb)
      throw std::logic_error(
          "dualpipe::libtorch::module_stage: W of micro-batch " + std::to_string(mb) + ", but " +
          (second_pass_queue_.empty() ? std::string("no weight gradient is deferred on this stage")
                                      : "the oldest deferred weight gradient is micro-batch " +
                                            std::to_string(second_pass_queue_.front()) +
                                            "'s: weight gradients run first in, first out"));
    second_pass_queue_.pop_front();
    kept_state& k = state(mb);
    if (!weights_.empty() && k.output.requires_grad())
      torch::autograd::backward({k.output}, {k.output_grad}, /*retain_graph=*/false,
                                /*create_graph=*/false, weights_);
    k = kept_state{};
  }

  // The schedule's overlapped pair: forward of f_mb here, full backward of
  // b_mb on b_stage. Run one after the other (the reference example's own
  // choice); this is the place to interleave them.
  void overlapped_forward_backward(int f_mb, const at::Tensor& f_input, at::Tensor& f_output,
                                   module_stage& b_stage, int b_mb, const at::Tensor& b_output_grad,
                                   at::Tensor& b_input_grad) {
    ++overlapped_calls_;
    forward(f_mb, f_input, f_output);
    b_stage.backward(b_mb, b_output_grad, b_input_grad);
  }

 private:
  struct kept_state {
    at::Tensor input;        // detached input, a leaf (its .grad is the input gradient)
    at::Tensor output;       // the module's output, with its graph
    at::Tensor output_grad;  // second_pass: the gradient W walks the graph with again
    bool awaiting_weight = false;
  };

  static at::Tensor contiguous(const at::Tensor& t) {
    return t.defined() && !t.is_contiguous() ? t.contiguous() : t;
  }

  at::Tensor shaped_input(const at::Tensor& input) const {
    return options_.input_shape.empty() ? input : input.reshape(options_.input_shape);
  }

  // The received gradient in its output's shape (a flat buffer of the
  // right count is viewed so; another count is an error).
  static at::Tensor shaped_gradient(int mb, const kept_state& k, const at::Tensor& g) {
    if (!g.defined())
      throw std::invalid_argument(
          "dualpipe::libtorch::module_stage: the output gradient of "
          "micro-batch " +
          std::to_string(mb) + " is undefined");
    if (g.sizes() == k.output.sizes()) return g;
    if (g.numel() != k.output.numel())
      throw std::invalid_argument(
          "dualpipe::libtorch::module_stage: the output gradient of "
          "micro-batch " +
          std::to_string(mb) + " is " + describe(g) + ", its output " + describe(k.output));
    return g.reshape(k.output.sizes());
  }

  kept_state& state(int mb) {
    if (mb < 0)
      throw std::invalid_argument("dualpipe::libtorch::module_stage: micro-batch " +
                                  std::to_string(mb));
    if (static_cast<std::size_t>(mb) >= kept_.size())
      kept_.resize(static_cast<std::size_t>(mb) + 1);
    return kept_[static_cast<std::size_t>(mb)];
  }

  kept_state& forwarded(int mb, const char* what) {
    kept_state& k = state(mb);
    if (!k.output.defined() || k.awaiting_weight)
      throw std::logic_error(std::string("dualpipe::libtorch::module_stage: ") + what +
                             " of micro-batch " + std::to_string(mb) + " without its forward" +
                             (k.awaiting_weight ? " (its backward-for-input already ran)"
                                                : " (or its forward ran under NoGradGuard)"));
    return k;
  }

  at::Tensor input_gradient(const kept_state& k) const {
    if (!options_.input_requires_grad) return {};
    const at::Tensor& g = k.input.grad();
    return g.defined() ? contiguous(g) : at::zeros_like(k.input);
  }

  Module module_;
  stage_options options_;
  weight_gradients resolved_ = weight_gradients::second_pass;
  // Its address is what the deferred layers hold, so it stays put when the
  // stage moves.
  std::unique_ptr<weight_grad_store> store_;
  std::vector<std::shared_ptr<deferred_linear_impl>> deferred_layers_;
  std::vector<at::Tensor> weights_;  // second_pass: the parameters W differentiates
  std::vector<kept_state> kept_;     // by micro-batch
  std::deque<int> second_pass_queue_;
  int overlapped_calls_ = 0;
};

// Class template argument deduction from a ModuleHolder or shared_ptr.
template <class Module>
module_stage(Module, stage_options) -> module_stage<Module>;
template <class Module>
module_stage(Module) -> module_stage<Module>;

static_assert(check_pipeline_stage<module_stage<torch::nn::Sequential>, at::Tensor>());

}  // namespace dualpipe::libtorch
