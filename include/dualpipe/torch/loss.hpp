// A libtorch criterion as the executor's loss function: anything callable as
// `Tensor criterion(const Tensor& output, const Tensor& label)` returning one
// value (torch::mse_loss, a lambda around torch::nn::functional::cross_entropy,
// a CrossEntropyLoss module's forward). The executor asks for the loss value
// when a micro-batch's last forward is done and for d loss / d output when
// its last backward starts; criterion_loss evaluates the criterion for each
// (a criterion is cheap next to a stage), so it keeps nothing in between.
//
// The gradient is exactly what `loss.backward()` seeds the model's output
// with, so a pipelined model's gradients match the un-pipelined model's.
#pragma once

#include <torch/torch.h>

#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "dualpipe/runtime/stage.hpp"
#include "dualpipe/torch/tensor.hpp"

namespace dualpipe::libtorch {

template <class Criterion>
requires std::is_invocable_r_v<at::Tensor, Criterion&, const at::Tensor&, const at::Tensor&>
class criterion_loss {
 public:
  using label_type = at::Tensor;

  explicit criterion_loss(Criterion criterion) : criterion_(std::move(criterion)) {}

  // The loss value (detached, one element).
  at::Tensor operator()(const at::Tensor& output, const at::Tensor& label) {
    const torch::NoGradGuard no_grad;
    return checked(criterion_(output, label), output);
  }

  // d loss / d output into seed.
  void gradient(const at::Tensor& output, const at::Tensor& label, at::Tensor& seed) {
    const torch::AutoGradMode grad_mode(true);
    const at::Tensor o = output.detach().requires_grad_(true);
    const at::Tensor value = checked(criterion_(o, label), output);
    if (!value.requires_grad())
      throw std::invalid_argument(
          "dualpipe::libtorch::criterion_loss: the criterion's value does not depend on the "
          "output (it has no gradient)");
    seed = torch::autograd::grad({value}, {o})[0];
    if (!seed.is_contiguous()) seed = seed.contiguous();
  }

  [[nodiscard]] Criterion& criterion() noexcept { return criterion_; }

 private:
  static at::Tensor checked(at::Tensor value, const at::Tensor& output) {
    if (!value.defined() || value.numel() != 1)
      throw std::invalid_argument("dualpipe::libtorch::criterion_loss: the criterion returned " +
                                  describe(value) + " for an output " + describe(output) +
                                  "; it must return one value (reduce with mean or sum)");
    return value;
  }

  Criterion criterion_;
};

template <class Criterion>
criterion_loss(Criterion) -> criterion_loss<Criterion>;

static_assert(check_loss_function<
              criterion_loss<at::Tensor (*)(const at::Tensor&, const at::Tensor&)>, at::Tensor>());

}  // namespace dualpipe::libtorch
