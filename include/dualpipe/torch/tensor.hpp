// torch::Tensor (at::Tensor) as a pipeline tensor. The executor and the
// in-process transport take it as it is: a tensor is a handle, so a buffer
// handed to another thread shares its storage, and nothing is copied. The
// stages made by module_stage (torch/stage.hpp) never write into a buffer
// they were given or handed out; a stage of your own must not either.
//
// For transports that cross a process boundary (MPI), this header provides
// dualpipe::wire_traits<at::Tensor>: a message carries the tensor's element
// type and shape, so each micro-batch may have its own. Only dense, strided
// CPU tensors go on the wire; a non-contiguous tensor is refused with an
// error that says so (never sent in the wrong order), as is a CUDA tensor
// (use the NCCL transport, torch/nccl.hpp) and an element type the wire has
// no code for.
#pragma once

#include <ATen/ATen.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>

#include "dualpipe/transport/wire.hpp"

namespace dualpipe::libtorch {

namespace detail {

// Every torch element type the wire names, with its code: the one home of
// the mapping both ways.
struct element_code {
  at::ScalarType type;
  wire_dtype code;
};
inline constexpr element_code element_codes[] = {
    {at::kFloat, wire_dtype::f32},        {at::kDouble, wire_dtype::f64},
    {at::kHalf, wire_dtype::f16},         {at::kBFloat16, wire_dtype::bf16},
    {at::kChar, wire_dtype::i8},          {at::kByte, wire_dtype::u8},
    {at::kShort, wire_dtype::i16},        {at::kInt, wire_dtype::i32},
    {at::kLong, wire_dtype::i64},         {at::kBool, wire_dtype::boolean},
    {at::kComplexFloat, wire_dtype::c64}, {at::kComplexDouble, wire_dtype::c128},
};

}  // namespace detail

// The wire code of a torch element type; nullopt for those the wire cannot
// name (quantized types, bits types, ...).
[[nodiscard]] inline std::optional<wire_dtype> wire_dtype_of(at::ScalarType t) noexcept {
  for (const detail::element_code& e : detail::element_codes)
    if (e.type == t) return e.code;
  return std::nullopt;
}

// The torch element type of a wire code; nullopt for `bytes`, which names no
// torch type.
[[nodiscard]] inline std::optional<at::ScalarType> scalar_type_of(wire_dtype d) noexcept {
  for (const detail::element_code& e : detail::element_codes)
    if (e.code == d) return e.type;
  return std::nullopt;
}

// "f32[8, 64]" (for messages; any tensor, defined or not).
[[nodiscard]] inline std::string describe(const at::Tensor& t) {
  if (!t.defined()) return "an undefined tensor";
  const std::optional<wire_dtype> d = wire_dtype_of(t.scalar_type());
  std::string out = d ? wire_dtype_name(*d) : std::string(at::toString(t.scalar_type()));
  out += '[';
  for (std::int64_t i = 0; i < t.dim(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(t.size(i));
  }
  out += ']';
  if (!t.is_cpu()) out += " on " + t.device().str();
  return out;
}

// Empty if `t` can go on the wire as it is, else why not.
[[nodiscard]] inline std::string wire_refusal(const at::Tensor& t) {
  if (!t.defined()) return "an undefined tensor has nothing to send";
  if (t.layout() != at::kStrided)
    return describe(t) + " is not a dense tensor (sparse or other layout): make it dense first";
  if (!t.is_cpu())
    return describe(t) +
           " is not in CPU memory: the wire form is for CPU tensors (CUDA tensors go through "
           "the NCCL transport)";
  if (!wire_dtype_of(t.scalar_type()))
    return describe(t) + ": the wire has no code for this element type";
  if (t.dim() > wire_shape::max_dims)
    return describe(t) + " has " + std::to_string(t.dim()) + " dimensions, at most " +
           std::to_string(wire_shape::max_dims) + " travel";
  if (!t.is_contiguous())
    return describe(t) +
           " is not contiguous: its bytes are not in row-major order; send t.contiguous()";
  return {};
}

namespace detail {

inline void check_sendable(const at::Tensor& t, const char* who) {
  if (std::string why = wire_refusal(t); !why.empty())
    throw std::invalid_argument(std::string(who) + ": " + why);
}

}  // namespace detail
}  // namespace dualpipe::libtorch

namespace dualpipe {

// The MPI transport's view of a torch tensor (see dualpipe/transport/wire.hpp).
template <>
struct wire_traits<at::Tensor> {
  static wire_shape shape(const at::Tensor& t) {
    libtorch::detail::check_sendable(t, "dualpipe::wire_traits<torch::Tensor>::shape");
    wire_shape s;
    s.dtype = *libtorch::wire_dtype_of(t.scalar_type());
    s.element_size = static_cast<std::uint32_t>(t.element_size());
    s.dims_used = static_cast<std::uint32_t>(t.dim());
    for (std::int64_t d = 0; d < t.dim(); ++d) s.dims[static_cast<std::size_t>(d)] = t.size(d);
    s.bytes = static_cast<std::uint64_t>(t.nbytes());
    return s;
  }

  static std::span<const std::byte> bytes(const at::Tensor& t) {
    libtorch::detail::check_sendable(t, "dualpipe::wire_traits<torch::Tensor>::bytes");
    return {static_cast<const std::byte*>(t.data_ptr()), t.nbytes()};
  }

  // Reuses t's storage only when nothing else can see it (this handle is its
  // only owner and it already has the shape); otherwise t gets new storage,
  // so that a tensor a stage kept (its saved input, a queued weight
  // gradient's operands) is never overwritten by a later message.
  static std::span<std::byte> prepare(at::Tensor& t, const wire_shape& s) {
    constexpr const char* who = "dualpipe::wire_traits<torch::Tensor>::prepare";
    if (const std::string e = wire_shape_error(s); !e.empty())
      throw std::invalid_argument(std::string(who) + ": received " + e);
    const std::optional<at::ScalarType> type = libtorch::scalar_type_of(s.dtype);
    if (!type || static_cast<std::size_t>(at::elementSize(*type)) != s.element_size)
      throw std::invalid_argument(std::string(who) + ": received " + describe(s) +
                                  ", which no torch element type holds");
    const at::IntArrayRef dims(s.dims.data(), s.dims_used);
    const bool reusable = t.defined() && t.is_cpu() && t.layout() == at::kStrided &&
                          t.scalar_type() == *type && t.sizes() == dims && t.is_contiguous() &&
                          !t.requires_grad() && !t.is_view() && t.use_count() == 1 &&
                          t.storage().use_count() == 1;
    if (!reusable) t = at::empty(dims, at::TensorOptions().dtype(*type));
    return {static_cast<std::byte*>(t.data_ptr()), t.nbytes()};
  }
};

}  // namespace dualpipe
