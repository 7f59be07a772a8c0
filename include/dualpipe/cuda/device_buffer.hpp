// RAII device memory: device_buffer<T> owns `size` elements allocated with
// cudaMalloc, is move-only, and frees on destruction. Copies and fills are
// enqueued on a stream, never synchronous.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <limits>
#include <new>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "dualpipe/cuda/error.hpp"

namespace dualpipe::cuda {

template <class T>
class device_buffer {
  static_assert(std::is_trivially_copyable_v<T>,
                "device_buffer<T>: T must be trivially copyable (its bytes are copied by the GPU)");

 public:
  device_buffer() noexcept = default;
  explicit device_buffer(std::size_t size) : size_(size), capacity_(size) {
    if (size == 0) return;
    if (size > std::numeric_limits<std::size_t>::max() / sizeof(T))
      throw std::length_error("dualpipe::cuda::device_buffer: " + std::to_string(size) +
                              " elements overflow the byte count");
    void* p = nullptr;
    DUALPIPE_CUDA_CHECK(cudaMalloc(&p, size * sizeof(T)));
    data_ = static_cast<T*>(p);
  }
  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;
  device_buffer(device_buffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)),
        size_(std::exchange(other.size_, 0)),
        capacity_(std::exchange(other.capacity_, 0)) {}
  device_buffer& operator=(device_buffer&& other) noexcept {
    if (this != &other) {
      release();
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
      capacity_ = std::exchange(other.capacity_, 0);
    }
    return *this;
  }
  ~device_buffer() { release(); }

  // Makes the buffer hold `size` elements, reallocating only when it grows
  // past its capacity; the contents are not kept. A buffer whose messages
  // vary in size (a size per micro-batch) reaches its largest size in the
  // first step and never calls cudaMalloc again. (cudaFree of the old memory
  // waits for the device: a cost of growing only.)
  void resize(std::size_t size) {
    if (size <= capacity_) {
      size_ = size;
      return;
    }
    device_buffer fresh(size);
    *this = std::move(fresh);
  }
  // The elements the allocation holds (>= size()).
  [[nodiscard]] std::size_t capacity() const noexcept { return capacity_; }

  using value_type = T;

  [[nodiscard]] T* data() noexcept { return data_; }
  [[nodiscard]] const T* data() const noexcept { return data_; }
  [[nodiscard]] std::size_t size() const noexcept { return size_; }
  [[nodiscard]] std::size_t bytes() const noexcept { return size_ * sizeof(T); }
  [[nodiscard]] bool empty() const noexcept { return size_ == 0; }
  // A device span: its elements must not be dereferenced on the host.
  [[nodiscard]] std::span<T> span() noexcept { return {data_, size_}; }
  [[nodiscard]] std::span<const T> span() const noexcept { return {data_, size_}; }

  // Enqueue host -> device; `host` must stay alive (and, for overlap, be
  // pinned) until the stream reaches the copy.
  void copy_from_host(std::span<const T> host, cudaStream_t stream) {
    check_size(host.size(), "copy_from_host");
    DUALPIPE_CUDA_CHECK(
        cudaMemcpyAsync(data_, host.data(), host.size_bytes(), cudaMemcpyHostToDevice, stream));
  }
  void copy_to_host(std::span<T> host, cudaStream_t stream) const {
    check_size(host.size(), "copy_to_host");
    DUALPIPE_CUDA_CHECK(
        cudaMemcpyAsync(host.data(), data_, host.size_bytes(), cudaMemcpyDeviceToHost, stream));
  }
  void copy_from(const device_buffer& other, cudaStream_t stream) {
    check_size(other.size(), "copy_from");
    DUALPIPE_CUDA_CHECK(
        cudaMemcpyAsync(data_, other.data_, other.bytes(), cudaMemcpyDeviceToDevice, stream));
  }
  void fill_zero(cudaStream_t stream) {
    if (size_ != 0) DUALPIPE_CUDA_CHECK(cudaMemsetAsync(data_, 0, bytes(), stream));
  }

 private:
  void check_size(std::size_t n, const char* what) const {
    if (n != size_)
      throw std::invalid_argument(std::string("dualpipe::cuda::device_buffer::") + what + ": " +
                                  std::to_string(n) + " elements given, the buffer holds " +
                                  std::to_string(size_));
  }
  void release() noexcept {
    if (data_ != nullptr) (void)cudaFree(data_);  // cudaFree waits for pending work on it
    data_ = nullptr;
    size_ = 0;
    capacity_ = 0;
  }

  T* data_ = nullptr;
  std::size_t size_ = 0;
  std::size_t capacity_ = 0;
};

}  // namespace dualpipe::cuda
