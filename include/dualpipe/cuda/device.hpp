// Is there a usable GPU? cuda_device_count() answers 0 on any error from the
// runtime (no driver, an insufficient driver, no device, a device that is
// busy or prohibited), so a program can skip its GPU work instead of failing.
#pragma once

#include <cuda_runtime.h>

#include "dualpipe/cuda/error.hpp"

namespace dualpipe::cuda {

// The number of CUDA devices this process can use; 0 when the runtime
// reports any error. A machine with the toolkit but no driver answers
// cudaErrorInsufficientDriver (35) here, not cudaErrorNoDevice.
[[nodiscard]] inline int cuda_device_count() noexcept {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    (void)cudaGetLastError();  // do not leave the failure for the next check to report
    return 0;
  }
  return count < 0 ? 0 : count;
}

[[nodiscard]] inline bool has_cuda_device() noexcept {
  return cuda_device_count() > 0;
}

// The exit status test drivers (Meson, CTest, automake) read as "skipped".
inline constexpr int exit_skipped = 77;

// Makes `device` current for the calling thread: every host thread that
// enqueues work must do this, since the current device is per thread.
inline void set_device(int device) {
  DUALPIPE_CUDA_CHECK(cudaSetDevice(device));
}

[[nodiscard]] inline int current_device() {
  int device = 0;
  DUALPIPE_CUDA_CHECK(cudaGetDevice(&device));
  return device;
}

}  // namespace dualpipe::cuda
