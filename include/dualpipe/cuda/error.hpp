// Checked CUDA calls: cuda::error carries the library, the call as written,
// the library's own error string, the numeric code, and where the call was
// made. DUALPIPE_CUDA_CHECK wraps every CUDA runtime call of the backend;
// cublas.hpp and transport/nccl.hpp add the same for cuBLAS and NCCL.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

namespace dualpipe::cuda {

class error : public std::runtime_error {
 public:
  error(std::string_view library, int code, std::string_view message, std::string_view call,
        std::string_view file, int line)
      : std::runtime_error(describe(library, code, message, call, file, line)),
        library_(library),
        code_(code),
        message_(message),
        call_(call),
        file_(file),
        line_(line) {}

  // "CUDA", "NCCL" or "cuBLAS".
  [[nodiscard]] const std::string& library() const noexcept { return library_; }
  // The library's own status value (cudaError_t, ncclResult_t, cublasStatus_t).
  [[nodiscard]] int code() const noexcept { return code_; }
  // The library's description of the code.
  [[nodiscard]] const std::string& message() const noexcept { return message_; }
  // The call as written at the check, e.g. "cudaMalloc(&ptr, bytes)".
  [[nodiscard]] const std::string& call() const noexcept { return call_; }
  [[nodiscard]] const std::string& file() const noexcept { return file_; }
  [[nodiscard]] int line() const noexcept { return line_; }

  // "file:line: CUDA call cudaMalloc(&p, n) failed with error 2: out of memory"
  [[nodiscard]] static std::string describe(std::string_view library, int code,
                                            std::string_view message, std::string_view call,
                                            std::string_view file, int line) {
    std::string s;
    s.reserve(file.size() + call.size() + message.size() + 64);
    s.append(file).append(":").append(std::to_string(line)).append(": ");
    s.append(library).append(" call ").append(call);
    s.append(" failed with error ").append(std::to_string(code)).append(": ").append(message);
    return s;
  }

 private:
  std::string library_;
  int code_;
  std::string message_;
  std::string call_;
  std::string file_;
  int line_;
};

namespace detail {

// Out of line of the macro so that the success path is one comparison.
[[noreturn]] inline void throw_cuda_error(cudaError_t status, const char* call, const char* file,
                                          int line) {
  // Reading the error clears it from the thread's "last error", so a later
  // unrelated check does not report it again.
  (void)cudaGetLastError();
  const char* name = cudaGetErrorName(status);
  const char* text = cudaGetErrorString(status);
  std::string message = text != nullptr ? text : "unknown CUDA error";
  if (name != nullptr) message.append(" (").append(name).append(")");
  throw error("CUDA", static_cast<int>(status), message, call, file, line);
}

inline void check_cuda(cudaError_t status, const char* call, const char* file, int line) {
  if (status != cudaSuccess) throw_cuda_error(status, call, file, line);
}

}  // namespace detail
}  // namespace dualpipe::cuda

// The call text is what makes a failure in a long chain of enqueues findable,
// hence a macro (#call and __FILE__/__LINE__) rather than a function.
#define DUALPIPE_CUDA_CHECK(call) \
  ::dualpipe::cuda::detail::check_cuda((call), #call, __FILE__, __LINE__)
