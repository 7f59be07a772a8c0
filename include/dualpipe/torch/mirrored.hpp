// DualPipe's mirrored copies of a torch module: stage s lives on rank s and
// on rank P-1-s, and after a step each copy holds the weight gradient of its
// half of the micro-batches. Summing the two into both keeps the copies
// identical, bit for bit, for the optimizer step (see runtime/mirrored.hpp).
//
// This header sums two copies held by one process (ranks as threads): call
// it once per mirror pair, after both ranks finished the step (e.g. after a
// barrier, from one of the two threads). Across processes, torch/mpi.hpp
// exchanges the gradients with the mirror rank first.
#pragma once

#include <torch/torch.h>

#include <cstddef>
#include <stdexcept>
#include <string>
#include <vector>

#include "dualpipe/torch/tensor.hpp"

namespace dualpipe::libtorch {

namespace detail {

// Empty if the two parameter lists line up (same count, each pair of the
// same shape and element type), else the first difference.
[[nodiscard]] inline std::string mirror_mismatch(const std::vector<at::Tensor>& on_rank,
                                                 const std::vector<at::Tensor>& on_mirror) {
  if (on_rank.size() != on_mirror.size())
    return "the two copies hold " + std::to_string(on_rank.size()) + " and " +
           std::to_string(on_mirror.size()) + " parameters";
  for (std::size_t i = 0; i < on_rank.size(); ++i)
    if (on_rank[i].sizes() != on_mirror[i].sizes() ||
        on_rank[i].scalar_type() != on_mirror[i].scalar_type())
      return "parameter " + std::to_string(i) + " is " + describe(on_rank[i]) +
             " in one copy and " + describe(on_mirror[i]) + " in the other";
  return {};
}

// The parameter's gradient, made zero (and defined) if it has none yet.
inline at::Tensor& defined_grad(at::Tensor& parameter) {
  if (!parameter.grad().defined()) parameter.mutable_grad() = at::zeros_like(parameter);
  return parameter.mutable_grad();
}

}  // namespace detail

// Afterwards on_rank[i].grad() == on_mirror[i].grad() == the sum of the two,
// element by element, for every parameter (a missing gradient counts as
// zero). Throws std::invalid_argument, changing nothing, if the two lists do
// not line up.
inline void sum_mirrored_gradients(std::vector<at::Tensor> on_rank,
                                   std::vector<at::Tensor> on_mirror) {
  if (const std::string why = detail::mirror_mismatch(on_rank, on_mirror); !why.empty())
    throw std::invalid_argument("dualpipe::libtorch::sum_mirrored_gradients: " + why);
  const torch::NoGradGuard no_grad;
  for (std::size_t i = 0; i < on_rank.size(); ++i) {
    if (!on_rank[i].grad().defined() && !on_mirror[i].grad().defined()) continue;
    at::Tensor& a = detail::defined_grad(on_rank[i]);
    at::Tensor& b = detail::defined_grad(on_mirror[i]);
    const at::Tensor sum = a + b;
    a.copy_(sum);
    b.copy_(sum);
  }
}

// The same for two copies of one module (e.g. stage s on rank s and on rank
// P-1-s): their parameters, in registration order.
inline void sum_mirrored_gradients(torch::nn::Module& on_rank, torch::nn::Module& on_mirror) {
  sum_mirrored_gradients(on_rank.parameters(), on_mirror.parameters());
}

}  // namespace dualpipe::libtorch
