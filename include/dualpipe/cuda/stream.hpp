// RAII CUDA stream. Every rank owns a compute stream and a communication
// stream; they are non-blocking with respect to the legacy default stream so
// that nothing a library enqueues there serialises them.
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "dualpipe/cuda/error.hpp"
#include "dualpipe/cuda/event.hpp"

namespace dualpipe::cuda {

class stream {
 public:
  // priority: lower numbers run first (CUDA's convention); 0 is the default.
  // Communication streams are usually given the greatest priority so that a
  // transfer another rank waits for is not queued behind long compute.
  explicit stream(int priority = 0) {
    DUALPIPE_CUDA_CHECK(cudaStreamCreateWithPriority(&handle_, cudaStreamNonBlocking, priority));
  }
  stream(const stream&) = delete;
  stream& operator=(const stream&) = delete;
  stream(stream&& other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
  stream& operator=(stream&& other) noexcept {
    if (this != &other) {
      destroy();
      handle_ = std::exchange(other.handle_, nullptr);
    }
    return *this;
  }
  ~stream() { destroy(); }

  [[nodiscard]] cudaStream_t get() const noexcept { return handle_; }
  operator cudaStream_t() const noexcept { return handle_; }  // NOLINT(google-explicit-constructor)

  // Work enqueued after this waits for the work `e` captured; the host does not wait.
  void wait(const event& e) { DUALPIPE_CUDA_CHECK(cudaStreamWaitEvent(handle_, e.get(), 0)); }
  void wait(cudaEvent_t e) { DUALPIPE_CUDA_CHECK(cudaStreamWaitEvent(handle_, e, 0)); }

  // Records `e` here: later waits on `e` order after everything enqueued so far.
  void record(event& e) { e.record(handle_); }

  // Blocks the host until the stream drains: for step boundaries only.
  void synchronize() const { DUALPIPE_CUDA_CHECK(cudaStreamSynchronize(handle_)); }

  // The range of priorities this device offers: {least, greatest}.
  [[nodiscard]] static std::pair<int, int> priority_range() {
    int least = 0, greatest = 0;
    DUALPIPE_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    return {least, greatest};
  }

 private:
  void destroy() noexcept {
    // Pending work still completes: cudaStreamDestroy returns at once and
    // releases the stream afterwards.
    if (handle_ != nullptr) (void)cudaStreamDestroy(handle_);
    handle_ = nullptr;
  }

  cudaStream_t handle_ = nullptr;
};

}  // namespace dualpipe::cuda
