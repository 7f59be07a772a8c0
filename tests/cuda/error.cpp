// Checked CUDA calls and "no GPU" detection: these need the CUDA runtime
// library but no GPU, so they run on every machine that builds the backend.
#include <catch2/catch.hpp>

#include <cuda_runtime.h>

#include <string>

#include "dualpipe/cuda/device.hpp"
#include "dualpipe/cuda/error.hpp"

namespace cuda = dualpipe::cuda;

TEST_CASE("error: the message names file, line, library, call, code and text") {
  const cuda::error e("CUDA", 2, "out of memory (cudaErrorMemoryAllocation)",
                      "cudaMalloc(&p, bytes)", "stage.cpp", 42);
  CHECK(std::string(e.what()) ==
        "stage.cpp:42: CUDA call cudaMalloc(&p, bytes) failed with error 2: out of memory "
        "(cudaErrorMemoryAllocation)");
  CHECK(e.library() == "CUDA");
  CHECK(e.code() == 2);
  CHECK(e.call() == "cudaMalloc(&p, bytes)");
  CHECK(e.file() == "stage.cpp");
  CHECK(e.line() == 42);
}

TEST_CASE("DUALPIPE_CUDA_CHECK throws cuda::error carrying the failing call") {
  // An invalid device id fails with or without a GPU (without a driver the
  // runtime answers "insufficient driver" first): either way the check throws.
  int line = 0;
  try {
    line = __LINE__ + 1;
    DUALPIPE_CUDA_CHECK(cudaSetDevice(-7));
    FAIL("cudaSetDevice(-7) did not fail");
  } catch (const cuda::error& e) {
    CHECK(e.call() == "cudaSetDevice(-7)");
    CHECK(e.line() == line);
    CHECK(e.library() == "CUDA");
    CHECK(e.code() != 0);
    CHECK(e.file().find("error.cpp") != std::string::npos);
    const std::string what = e.what();
    CHECK(what.find("cudaSetDevice(-7)") != std::string::npos);
    CHECK(what.find(":" + std::to_string(line) + ":") != std::string::npos);
    CHECK(!e.message().empty());
    // The runtime's name of the code is part of the message, e.g. (cudaErrorInvalidDevice).
    CHECK(e.message().find("(cudaError") != std::string::npos);
  }
  // With a working runtime the failure was consumed and does not leak into
  // the next check. (Without a driver every call, cudaGetLastError too,
  // reports the failed initialisation again.)
  if (cuda::has_cuda_device()) CHECK(cudaGetLastError() == cudaSuccess);
}

TEST_CASE("DUALPIPE_CUDA_CHECK is silent on success") {
  // cudaGetErrorString-like calls that cannot fail are not status calls; use
  // the one status call that succeeds without a GPU: reading the runtime version.
  int version = 0;
  CHECK_NOTHROW(DUALPIPE_CUDA_CHECK(cudaRuntimeGetVersion(&version)));
  CHECK(version >= 12000);  // this project targets CUDA 12 and later
}

TEST_CASE("cuda_device_count treats any runtime error as no GPU") {
  int raw = -1;
  const cudaError_t status = cudaGetDeviceCount(&raw);
  (void)cudaGetLastError();
  const int count = cuda::cuda_device_count();
  CHECK(count >= 0);
  if (status != cudaSuccess) {
    // The machines that build this without a GPU answer 35
    // (cudaErrorInsufficientDriver); any error must read as "no GPU".
    CHECK(count == 0);
    CHECK_FALSE(cuda::has_cuda_device());
  } else {
    CHECK(count == raw);
    CHECK(cuda::has_cuda_device() == (raw > 0));
  }
  // With a GPU, asking must not leave an error behind for the next checked call.
  if (count > 0) CHECK(cudaGetLastError() == cudaSuccess);
  CHECK(cuda::exit_skipped == 77);
}
