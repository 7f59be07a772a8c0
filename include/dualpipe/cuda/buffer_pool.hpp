// A pool of device buffers recycled by events, so that a pipeline step does
// no cudaMalloc after warm-up and the host never waits for the GPU to reuse
// memory: a buffer handed back is re-issued only once the events recorded
// after its last uses (on every stream that touched it) have completed, or at
// once to work on the one stream that used it last (stream order suffices).
//
// One pool per rank and host thread: it is not thread-safe. Handles must not
// outlive their pool.
#pragma once

#include <cuda_runtime.h>

#include <array>
#include <cstddef>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "dualpipe/cuda/device_buffer.hpp"
#include "dualpipe/cuda/error.hpp"
#include "dualpipe/cuda/event.hpp"

namespace dualpipe::cuda {

template <class T>
class buffer_pool;

// A buffer on loan from a pool. Move-only; when it is destroyed (or
// release()d) the pool records an event on every stream the buffer was used
// on, and re-issues the memory once all of them have completed.
template <class T>
class pooled_buffer {
 public:
  // Streams one buffer can be used on: compute, communication, and a spare.
  static constexpr std::size_t max_streams = 4;

  pooled_buffer() noexcept = default;
  pooled_buffer(const pooled_buffer&) = delete;
  pooled_buffer& operator=(const pooled_buffer&) = delete;
  pooled_buffer(pooled_buffer&& other) noexcept { take(std::move(other)); }
  pooled_buffer& operator=(pooled_buffer&& other) noexcept {
    if (this != &other) {
      release();
      take(std::move(other));
    }
    return *this;
  }
  ~pooled_buffer() { release(); }

  [[nodiscard]] T* data() const noexcept { return data_; }
  [[nodiscard]] std::size_t size() const noexcept { return size_; }
  [[nodiscard]] std::size_t bytes() const noexcept { return size_ * sizeof(T); }
  [[nodiscard]] std::span<T> span() const noexcept { return {data_, size_}; }
  [[nodiscard]] explicit operator bool() const noexcept { return pool_ != nullptr; }

  // Declares that work on `stream` uses the buffer (the stream it was
  // acquired for is already known). Throws if more than max_streams are named.
  void use_on(cudaStream_t stream) {
    for (std::size_t i = 0; i < used_; ++i)
      if (streams_[i] == stream) return;
    if (used_ == max_streams)
      throw std::length_error("dualpipe::cuda::pooled_buffer: used on more than " +
                              std::to_string(max_streams) + " streams");
    streams_[used_++] = stream;
  }

  // Hands the buffer back now (the destructor does the same).
  void release() noexcept;

 private:
  friend class buffer_pool<T>;
  void take(pooled_buffer&& other) noexcept {
    pool_ = std::exchange(other.pool_, nullptr);
    slot_ = other.slot_;
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    streams_ = other.streams_;
    used_ = std::exchange(other.used_, 0);
  }

  buffer_pool<T>* pool_ = nullptr;
  std::size_t slot_ = 0;
  T* data_ = nullptr;
  std::size_t size_ = 0;
  std::array<cudaStream_t, max_streams> streams_{};
  std::size_t used_ = 0;
};

template <class T>
class buffer_pool {
 public:
  buffer_pool() = default;
  buffer_pool(const buffer_pool&) = delete;
  buffer_pool& operator=(const buffer_pool&) = delete;
  // Not movable either: handles point at the pool.
  buffer_pool(buffer_pool&&) = delete;
  buffer_pool& operator=(buffer_pool&&) = delete;
  ~buffer_pool() = default;

  // A buffer of exactly `size` elements whose previous uses have completed,
  // allocated only if none is free. `stream` is where it will first be used.
  [[nodiscard]] pooled_buffer<T> acquire(std::size_t size, cudaStream_t stream) {
    std::optional<std::size_t> found;
    for (std::size_t i = 0; i < slots_.size(); ++i) {
      slot& s = *slots_[i];
      if (s.state == slot_state::in_use || s.memory.size() != size) continue;
      if (s.state == slot_state::pending) {
        // Work enqueued later on the same stream runs after the last uses,
        // so a buffer last used only on `stream` is reusable at once, as with
        // a stream-ordered allocator; otherwise its events must have completed.
        if (!s.only_on(stream) && !s.completed()) continue;
        s.state = slot_state::free;
      }
      found = i;
      break;
    }
    if (!found) {
      slots_.push_back(std::make_unique<slot>(size));
      ++allocations_;
      found = slots_.size() - 1;
    }
    slot& s = *slots_[*found];
    s.state = slot_state::in_use;
    pooled_buffer<T> b;
    b.pool_ = this;
    b.slot_ = *found;
    b.data_ = s.memory.data();
    b.size_ = s.memory.size();
    b.use_on(stream);
    return b;
  }

  // How many buffers were allocated so far: constant once warmed up.
  [[nodiscard]] std::size_t allocations() const noexcept { return allocations_; }
  // How many buffers are lent out now.
  [[nodiscard]] std::size_t in_use() const noexcept {
    std::size_t n = 0;
    for (const auto& s : slots_) n += s->state == slot_state::in_use ? 1 : 0;
    return n;
  }
  [[nodiscard]] std::size_t capacity() const noexcept { return slots_.size(); }

 private:
  friend class pooled_buffer<T>;

  enum class slot_state : unsigned char { free, in_use, pending, lost };

  struct slot {
    explicit slot(std::size_t size) : memory(size) {}
    device_buffer<T> memory;
    // One event per stream of the last loan; created as needed, then reused.
    std::vector<event> done;
    std::size_t recorded = 0;
    slot_state state = slot_state::free;

    cudaStream_t last_stream = nullptr;  // the stream of the last loan, if it was one

    [[nodiscard]] bool only_on(cudaStream_t stream) const noexcept {
      return recorded == 1 && last_stream == stream;
    }
    [[nodiscard]] bool completed() {
      for (std::size_t i = 0; i < recorded; ++i)
        if (!done[i].query()) return false;
      return true;
    }
  };

  // Called by the handle; noexcept because handles release in destructors.
  void recycle(std::size_t index, std::span<const cudaStream_t> streams) noexcept {
    slot& s = *slots_[index];
    try {
      while (s.done.size() < streams.size()) s.done.emplace_back();
      for (std::size_t i = 0; i < streams.size(); ++i) s.done[i].record(streams[i]);
      s.recorded = streams.size();
      s.last_stream = streams.size() == 1 ? streams[0] : nullptr;
      s.state = slot_state::pending;
    } catch (...) {
      // The GPU may still be using the memory and no event says when it
      // stops: never lend it again rather than risk a race.
      s.state = slot_state::lost;
    }
  }

  std::vector<std::unique_ptr<slot>> slots_;
  std::size_t allocations_ = 0;
};

template <class T>
void pooled_buffer<T>::release() noexcept {
  if (pool_ == nullptr) return;
  pool_->recycle(slot_, std::span<const cudaStream_t>(streams_.data(), used_));
  pool_ = nullptr;
  data_ = nullptr;
  size_ = 0;
  used_ = 0;
}

}  // namespace dualpipe::cuda
