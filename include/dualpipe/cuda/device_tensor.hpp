// What the CUDA transports need of a tensor type: a contiguous device
// allocation they can read and fill. cuda::device_buffer<T> models it; so does
// any user type with these members.
#pragma once

#include <concepts>
#include <cstddef>

namespace dualpipe::cuda {

//   typename T::value_type     the element type (trivially copyable)
//   t.data()                   device pointer to the first element
//   t.size()                   number of elements
//   t.resize(n)                hold n elements; contents need not be kept
//                              (a receive sizes an empty buffer this way)
template <class T>
concept device_tensor = requires(T& t, const T& ct, std::size_t n) {
  typename T::value_type;
  { t.data() } -> std::convertible_to<typename T::value_type*>;
  { ct.data() } -> std::convertible_to<const typename T::value_type*>;
  { ct.size() } -> std::convertible_to<std::size_t>;
  t.resize(n);
};

}  // namespace dualpipe::cuda
