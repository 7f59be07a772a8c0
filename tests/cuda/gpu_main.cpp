// Catch2's runner for tests that need a GPU: without one it says so and
// exits 77, which Meson counts as skipped.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cstdio>

#include "dualpipe/cuda/device.hpp"

int main(int argc, char** argv) {
  if (dualpipe::cuda::cuda_device_count() == 0) {
    std::puts("no CUDA device: skipped");
    return dualpipe::cuda::exit_skipped;
  }
  return Catch::Session().run(argc, argv);
}
