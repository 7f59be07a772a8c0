// The wire form of a pipeline tensor: what a transport that crosses a process
// boundary (MPI) needs of the user's tensor type. A tensor goes out as a short
// fixed-size header (its element type and shape) followed by its contiguous
// bytes; the receiver shapes its own buffer from the header before the bytes
// land, so shapes may differ from micro-batch to micro-batch.
//
// A type models wire_tensor through a specialisation of wire_traits:
//
//   template <> struct dualpipe::wire_traits<my_tensor> {
//     static wire_shape shape(const my_tensor& t);                // header
//     static std::span<const std::byte> bytes(const my_tensor& t); // payload
//     static std::span<std::byte> prepare(my_tensor& t, const wire_shape& s);
//   };
//
// prepare() reshapes t to s (throwing if s cannot be held, e.g. another
// element type) and returns t's storage, exactly s.bytes bytes long, for the
// transport to fill. std::vector<T> of a trivially copyable T is provided.
#pragma once

#include <array>
#include <complex>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace dualpipe {

// Element types a header can name. Types a transport does not know travel as
// `bytes` (their size in shape.element_size); the code only has to agree
// between sender and receiver, and a receiver refuses a code it cannot hold.
enum class wire_dtype : std::uint32_t {
  bytes = 0,
  f16 = 1,
  bf16 = 2,
  f32 = 3,
  f64 = 4,
  i8 = 5,
  u8 = 6,
  i16 = 7,
  i32 = 8,
  i64 = 9,
  boolean = 10,
  c64 = 11,
  c128 = 12,
};

[[nodiscard]] constexpr const char* wire_dtype_name(wire_dtype d) noexcept {
  switch (d) {
    case wire_dtype::bytes:
      return "bytes";
    case wire_dtype::f16:
      return "f16";
    case wire_dtype::bf16:
      return "bf16";
    case wire_dtype::f32:
      return "f32";
    case wire_dtype::f64:
      return "f64";
    case wire_dtype::i8:
      return "i8";
    case wire_dtype::u8:
      return "u8";
    case wire_dtype::i16:
      return "i16";
    case wire_dtype::i32:
      return "i32";
    case wire_dtype::i64:
      return "i64";
    case wire_dtype::boolean:
      return "bool";
    case wire_dtype::c64:
      return "c64";
    case wire_dtype::c128:
      return "c128";
  }
  return "unknown";
}

// The header of one message: element type, up to eight dimensions, and the
// payload's length in bytes (which must equal the product of the dimensions
// times element_size: wire_shape_error() says when it does not).
struct wire_shape {
  static constexpr int max_dims = 8;
  wire_dtype dtype = wire_dtype::bytes;
  std::uint32_t element_size = 1;
  std::uint32_t dims_used = 0;
  std::uint32_t reserved = 0;
  std::array<std::int64_t, max_dims> dims{};
  std::uint64_t bytes = 0;

  friend constexpr bool operator==(const wire_shape&, const wire_shape&) = default;
};
static_assert(std::is_trivially_copyable_v<wire_shape> && std::is_standard_layout_v<wire_shape>);

// "f32[8, 64]".
[[nodiscard]] inline std::string describe(const wire_shape& s) {
  std::string out = wire_dtype_name(s.dtype);
  if (s.dtype == wire_dtype::bytes) out += std::to_string(s.element_size);
  out += '[';
  for (std::uint32_t d = 0; d < s.dims_used && d < wire_shape::max_dims; ++d) {
    if (d > 0) out += ", ";
    out += std::to_string(s.dims[d]);
  }
  return out + ']';
}

// Empty if `s` is self-consistent, else what is wrong with it.
[[nodiscard]] inline std::string wire_shape_error(const wire_shape& s) {
  if (s.dims_used > static_cast<std::uint32_t>(wire_shape::max_dims))
    return "a shape of " + std::to_string(s.dims_used) + " dimensions (at most " +
           std::to_string(wire_shape::max_dims) + ")";
  if (s.element_size == 0) return "an element size of 0 bytes";
  std::uint64_t elements = 1;
  for (std::uint32_t d = 0; d < s.dims_used; ++d) {
    if (s.dims[d] < 0) return "a negative dimension in " + describe(s);
    elements *= static_cast<std::uint64_t>(s.dims[d]);
  }
  if (elements * s.element_size != s.bytes)
    return describe(s) + " holds " + std::to_string(elements * s.element_size) +
           " bytes, but the header says " + std::to_string(s.bytes);
  return {};
}

// The code of a C++ element type (bytes for anything else).
template <class T>
[[nodiscard]] constexpr wire_dtype wire_dtype_of() noexcept {
  if constexpr (std::same_as<T, float>)
    return wire_dtype::f32;
  else if constexpr (std::same_as<T, double>)
    return wire_dtype::f64;
  else if constexpr (std::same_as<T, bool>)
    return wire_dtype::boolean;
  else if constexpr (std::same_as<T, std::int8_t>)
    return wire_dtype::i8;
  else if constexpr (std::same_as<T, std::uint8_t>)
    return wire_dtype::u8;
  else if constexpr (std::same_as<T, std::int16_t>)
    return wire_dtype::i16;
  else if constexpr (std::same_as<T, std::int32_t>)
    return wire_dtype::i32;
  else if constexpr (std::same_as<T, std::int64_t>)
    return wire_dtype::i64;
  else if constexpr (std::same_as<T, std::complex<float>>)
    return wire_dtype::c64;
  else if constexpr (std::same_as<T, std::complex<double>>)
    return wire_dtype::c128;
  else
    return wire_dtype::bytes;
}

// A header for `count` elements of T in the given dimensions.
template <class T>
[[nodiscard]] wire_shape make_wire_shape(std::span<const std::int64_t> dims) {
  wire_shape s;
  s.dtype = wire_dtype_of<T>();
  s.element_size = static_cast<std::uint32_t>(sizeof(T));
  if (dims.size() > static_cast<std::size_t>(wire_shape::max_dims))
    throw std::invalid_argument("dualpipe::make_wire_shape: " + std::to_string(dims.size()) +
                                " dimensions, at most " + std::to_string(wire_shape::max_dims));
  s.dims_used = static_cast<std::uint32_t>(dims.size());
  std::uint64_t elements = 1;
  for (std::size_t d = 0; d < dims.size(); ++d) {
    s.dims[d] = dims[d];
    elements *= static_cast<std::uint64_t>(dims[d] < 0 ? 0 : dims[d]);
  }
  s.bytes = elements * sizeof(T);
  return s;
}

// Refuses a header whose element type T cannot hold (same code and size).
template <class T>
void check_wire_element(const wire_shape& s, const char* who) {
  if (s.dtype != wire_dtype_of<T>() || s.element_size != sizeof(T))
    throw std::invalid_argument(
        std::string(who) + ": received " + describe(s) + ", which a buffer of " +
        wire_dtype_name(wire_dtype_of<T>()) +
        (wire_dtype_of<T>() == wire_dtype::bytes ? std::to_string(sizeof(T)) : std::string()) +
        " elements cannot hold");
  if (const std::string e = wire_shape_error(s); !e.empty())
    throw std::invalid_argument(std::string(who) + ": received " + e);
}

// Specialise for your tensor type (see the top of this file).
template <class T>
struct wire_traits;

template <class T>
concept wire_tensor = requires(const T& ct, T& t, const wire_shape& s) {
  { wire_traits<T>::shape(ct) } -> std::same_as<wire_shape>;
  { wire_traits<T>::bytes(ct) } -> std::same_as<std::span<const std::byte>>;
  { wire_traits<T>::prepare(t, s) } -> std::same_as<std::span<std::byte>>;
};

// The same requirement, failing as a sentence.
template <class T>
consteval bool check_wire_tensor() {
  static_assert(requires { sizeof(wire_traits<T>); },
                "dualpipe: the tensor type has no dualpipe::wire_traits specialisation (its "
                "shape, bytes and prepare: see dualpipe/transport/wire.hpp)");
  if constexpr (requires { sizeof(wire_traits<T>); }) {
    static_assert(requires(const T& t) {
                    { wire_traits<T>::shape(t) } -> std::same_as<wire_shape>;
                  },
                  "dualpipe: wire_traits<Tensor> needs static wire_shape shape(const Tensor&)");
    static_assert(requires(const T& t) {
                    { wire_traits<T>::bytes(t) } -> std::same_as<std::span<const std::byte>>;
                  },
                  "dualpipe: wire_traits<Tensor> needs static std::span<const std::byte> "
                  "bytes(const Tensor&)");
    static_assert(requires(T& t, const wire_shape& s) {
                    { wire_traits<T>::prepare(t, s) } -> std::same_as<std::span<std::byte>>;
                  },
                  "dualpipe: wire_traits<Tensor> needs static std::span<std::byte> "
                  "prepare(Tensor&, const wire_shape&)");
  }
  return wire_tensor<T>;
}

// std::vector<T> of trivially copyable elements: one dimension.
template <class T, class Allocator>
  requires std::is_trivially_copyable_v<T>
struct wire_traits<std::vector<T, Allocator>> {
  static wire_shape shape(const std::vector<T, Allocator>& v) {
    const std::int64_t n = static_cast<std::int64_t>(v.size());
    return make_wire_shape<T>(std::span<const std::int64_t>(&n, 1));
  }
  static std::span<const std::byte> bytes(const std::vector<T, Allocator>& v) {
    return std::as_bytes(std::span<const T>(v));
  }
  static std::span<std::byte> prepare(std::vector<T, Allocator>& v, const wire_shape& s) {
    check_wire_element<T>(s, "dualpipe::wire_traits<std::vector>");
    if (s.dims_used != 1)
      throw std::invalid_argument("dualpipe::wire_traits<std::vector>: received " + describe(s) +
                                  ", a vector holds one dimension");
    v.resize(static_cast<std::size_t>(s.dims[0]));
    return std::as_writable_bytes(std::span<T>(v));
  }
};

}  // namespace dualpipe
