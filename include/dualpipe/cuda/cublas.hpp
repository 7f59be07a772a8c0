// cuBLAS beside the backend: checked calls (DUALPIPE_CUBLAS_CHECK throws
// cuda::error with library "cuBLAS") and an RAII handle bound to one stream,
// for stages whose GEMMs run on their rank's compute stream.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>
#include <utility>

#include "dualpipe/cuda/error.hpp"

namespace dualpipe::cuda {
namespace detail {

[[noreturn]] inline void throw_cublas_error(cublasStatus_t status, const char* call,
                                            const char* file, int line) {
  const char* name = cublasGetStatusName(status);
  const char* text = cublasGetStatusString(status);
  std::string message = text != nullptr ? text : "unknown cuBLAS status";
  if (name != nullptr) message.append(" (").append(name).append(")");
  throw error("cuBLAS", static_cast<int>(status), message, call, file, line);
}

inline void check_cublas(cublasStatus_t status, const char* call, const char* file, int line) {
  if (status != CUBLAS_STATUS_SUCCESS) throw_cublas_error(status, call, file, line);
}

}  // namespace detail
}  // namespace dualpipe::cuda

#define DUALPIPE_CUBLAS_CHECK(call) \
  ::dualpipe::cuda::detail::check_cublas((call), #call, __FILE__, __LINE__)

namespace dualpipe::cuda {

class cublas_handle {
 public:
  // Binds the handle to `stream`: every GEMM through it is enqueued there.
  explicit cublas_handle(cudaStream_t stream) {
    DUALPIPE_CUBLAS_CHECK(cublasCreate(&handle_));
    try {
      DUALPIPE_CUBLAS_CHECK(cublasSetStream(handle_, stream));
    } catch (...) {
      (void)cublasDestroy(handle_);
      throw;
    }
  }
  cublas_handle(const cublas_handle&) = delete;
  cublas_handle& operator=(const cublas_handle&) = delete;
  cublas_handle(cublas_handle&& other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
  cublas_handle& operator=(cublas_handle&& other) noexcept {
    if (this != &other) {
      destroy();
      handle_ = std::exchange(other.handle_, nullptr);
    }
    return *this;
  }
  ~cublas_handle() { destroy(); }

  [[nodiscard]] cublasHandle_t get() const noexcept { return handle_; }

 private:
  void destroy() noexcept {
    if (handle_ != nullptr) (void)cublasDestroy(handle_);
    handle_ = nullptr;
  }
  cublasHandle_t handle_ = nullptr;
};

}  // namespace dualpipe::cuda
