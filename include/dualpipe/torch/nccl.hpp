// CUDA torch tensors through the NCCL transport (transport/nccl.hpp), one
// pipeline rank per GPU. NCCL moves counts of elements, not shapes, so:
//
//   cuda_tensor<T>      a CUDA torch tensor of element type T that models
//                       cuda::device_tensor (data, size, resize), which
//                       nccl_transport<cuda_tensor<T>> sends and fills;
//   cuda_module_stage   module_stage over cuda_tensor: a received buffer is
//                       flat, and the stage views it in the shape the module
//                       takes (stage_options::input_shape, e.g. {-1, hidden});
//                       gradients take their output's shape.
//
// The transport's compute stream must be the stream torch enqueues the
// stages' kernels on: construct it with at::cuda::getCurrentCUDAStream()
// (from ATen/cuda/CUDAContext.h, which a CUDA build of libtorch has), or make
// the transport's stream torch's current one (c10::cuda::CUDAStreamGuard).
// Message sizes: a fixed count per message, or a message_sizes rule
// (transport/message_sizes.hpp) when micro-batches differ in size.
//
// Needs libtorch, CUDA and NCCL. With a CPU-only libtorch (Debian's) this
// compiles, and a cuda_tensor refuses every tensor at run time.
#pragma once

#include <ATen/ATen.h>

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "dualpipe/cuda/device_tensor.hpp"
#include "dualpipe/torch/stage.hpp"
#include "dualpipe/torch/tensor.hpp"
#include "dualpipe/transport/nccl.hpp"

namespace dualpipe::libtorch {

// The torch element type of T (float, double, std::int32_t, std::int64_t,
// at::Half, at::BFloat16, ...).
template <class T>
[[nodiscard]] at::ScalarType scalar_type_for() {
  return c10::CppTypeToScalarType<T>::value;
}

template <class T>
class cuda_tensor {
 public:
  using value_type = T;

  cuda_tensor() = default;
  // Takes `t` as it is if it is a contiguous CUDA tensor of T; anything else
  // is refused (a CPU tensor, another element type: a silent conversion
  // would hide a copy in the pipeline's hot path).
  explicit cuda_tensor(at::Tensor t) : tensor_(std::move(t)) {
    if (!tensor_.defined()) return;
    if (!tensor_.is_cuda())
      throw std::invalid_argument("dualpipe::libtorch::cuda_tensor: " + describe(tensor_) +
                                  " is not a CUDA tensor (move it with .cuda() or .to(device))");
    if (tensor_.scalar_type() != scalar_type_for<T>())
      throw std::invalid_argument("dualpipe::libtorch::cuda_tensor: " + describe(tensor_) +
                                  " does not hold elements of " +
                                  std::string(at::toString(scalar_type_for<T>())));
    if (!tensor_.is_contiguous()) tensor_ = tensor_.contiguous();
  }

  [[nodiscard]] T* data() noexcept {
    return tensor_.defined() ? static_cast<T*>(tensor_.data_ptr()) : nullptr;
  }
  [[nodiscard]] const T* data() const noexcept {
    return tensor_.defined() ? static_cast<const T*>(tensor_.data_ptr()) : nullptr;
  }
  [[nodiscard]] std::size_t size() const noexcept {
    return tensor_.defined() ? static_cast<std::size_t>(tensor_.numel()) : 0;
  }

  // n elements, flat, on this tensor's GPU (or the current one). The storage
  // is reused only when this handle is its only owner; otherwise it is new,
  // so that a receive never overwrites a tensor a stage kept.
  void resize(std::size_t n) {
    const auto count = static_cast<std::int64_t>(n);
    const bool reusable = tensor_.defined() && tensor_.numel() == count && !tensor_.is_view() &&
                          tensor_.use_count() == 1 && tensor_.storage().use_count() == 1;
    if (reusable) {
      if (tensor_.dim() != 1) tensor_ = tensor_.view({count});
      return;
    }
    const at::Device device = tensor_.defined() ? tensor_.device() : at::Device(at::kCUDA);
    tensor_ = at::empty({count}, at::TensorOptions().dtype(scalar_type_for<T>()).device(device));
  }

  [[nodiscard]] at::Tensor& tensor() noexcept { return tensor_; }
  [[nodiscard]] const at::Tensor& tensor() const noexcept { return tensor_; }

 private:
  at::Tensor tensor_;
};

// module_stage for cuda_tensor<T> buffers (NCCL): the same stage, the
// buffers unwrapped on the way in and wrapped on the way out.
template <stage_module Module, class T>
class cuda_module_stage {
 public:
  using tensor_type = cuda_tensor<T>;

  explicit cuda_module_stage(Module module, stage_options options = {})
      : inner_(std::move(module), std::move(options)) {}

  [[nodiscard]] module_stage<Module>& inner() noexcept { return inner_; }
  [[nodiscard]] Module& module() noexcept { return inner_.module(); }

  void forward(int mb, const tensor_type& input, tensor_type& output) {
    at::Tensor out;
    inner_.forward(mb, input.tensor(), out);
    output = tensor_type(std::move(out));
  }
  void backward(int mb, const tensor_type& output_grad, tensor_type& input_grad) {
    at::Tensor in_grad;
    inner_.backward(mb, output_grad.tensor(), in_grad);
    input_grad = tensor_type(std::move(in_grad));
  }
  void backward_input(int mb, const tensor_type& output_grad, tensor_type& input_grad) {
    at::Tensor in_grad;
    inner_.backward_input(mb, output_grad.tensor(), in_grad);
    input_grad = tensor_type(std::move(in_grad));
  }
  void backward_weight(int mb) { inner_.backward_weight(mb); }
  void overlapped_forward_backward(int f_mb, const tensor_type& f_input, tensor_type& f_output,
                                   cuda_module_stage& b_stage, int b_mb,
                                   const tensor_type& b_output_grad, tensor_type& b_input_grad) {
    forward(f_mb, f_input, f_output);
    b_stage.backward(b_mb, b_output_grad, b_input_grad);
  }

 private:
  module_stage<Module> inner_;
};

}  // namespace dualpipe::libtorch

namespace dualpipe {
static_assert(cuda::device_tensor<libtorch::cuda_tensor<float>>);
static_assert(check_pipeline_stage<libtorch::cuda_module_stage<torch::nn::Sequential, float>,
                                   libtorch::cuda_tensor<float>>());
}  // namespace dualpipe
