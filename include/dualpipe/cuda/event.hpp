// RAII CUDA event: the join point between streams. A receive completes into
// one, a send waits on one, and a pooled buffer is recycled once the events
// of its last uses have completed.
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "dualpipe/cuda/error.hpp"

namespace dualpipe::cuda {

enum class event_timing : bool {
  disabled,  // cheapest: only ordering and completion queries
  enabled,   // elapsed_ms works between two such events
};

class event {
 public:
  explicit event(event_timing timing = event_timing::disabled) {
    const unsigned flags =
        timing == event_timing::enabled ? cudaEventDefault : cudaEventDisableTiming;
    DUALPIPE_CUDA_CHECK(cudaEventCreateWithFlags(&handle_, flags));
  }
  event(const event&) = delete;
  event& operator=(const event&) = delete;
  event(event&& other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
  event& operator=(event&& other) noexcept {
    if (this != &other) {
      destroy();
      handle_ = std::exchange(other.handle_, nullptr);
    }
    return *this;
  }
  ~event() { destroy(); }

  [[nodiscard]] cudaEvent_t get() const noexcept { return handle_; }

  // Captures the work enqueued on `stream` so far.
  void record(cudaStream_t stream) { DUALPIPE_CUDA_CHECK(cudaEventRecord(handle_, stream)); }

  // Has the captured work completed? Never blocks. An event never recorded
  // counts as complete, as CUDA defines it.
  [[nodiscard]] bool query() const {
    const cudaError_t status = cudaEventQuery(handle_);
    if (status == cudaErrorNotReady) {
      (void)cudaGetLastError();  // "not ready" is an answer, not a failure
      return false;
    }
    detail::check_cuda(status, "cudaEventQuery(event)", __FILE__, __LINE__);
    return true;
  }

  // Blocks the host: for step boundaries and measurements, never inside a step.
  void synchronize() const { DUALPIPE_CUDA_CHECK(cudaEventSynchronize(handle_)); }

 private:
  void destroy() noexcept {
    // Destroying an event whose work is pending is allowed: CUDA releases it
    // once the work completes. Errors here are ignored (destructors must not
    // throw, and a dead context frees everything anyway).
    if (handle_ != nullptr) (void)cudaEventDestroy(handle_);
    handle_ = nullptr;
  }

  cudaEvent_t handle_ = nullptr;
};

// Milliseconds between two completed events created with timing enabled.
[[nodiscard]] inline float elapsed_ms(const event& start, const event& stop) {
  float ms = 0.0f;
  DUALPIPE_CUDA_CHECK(cudaEventElapsedTime(&ms, start.get(), stop.get()));
  return ms;
}

}  // namespace dualpipe::cuda
