// The element-wise and reduction kernels of the CUDA MLP (kernels.cu, built
// by nvcc): plain declarations, so host code is built by the C++ compiler.
// Every launcher enqueues on `stream` and returns at once; launch errors are
// reported by the next checked CUDA call, or at once with the check here.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

namespace mlp_cuda {

// z[r, c] += bias[c]; a = gelu(z) (the exact, erf-based GELU). rows x cols.
void bias_gelu_forward(float* z, float* a, const float* bias, int rows, int cols,
                       cudaStream_t stream);
// y[r, c] += bias[c].
void add_bias(float* y, const float* bias, int rows, int cols, cudaStream_t stream);
// dz = da * gelu'(z), element-wise over n.
void gelu_backward(const float* z, const float* da, float* dz, std::size_t n, cudaStream_t stream);
// *loss = mean((y - target)^2) over n elements, by one block in a fixed
// order (deterministic from run to run).
void mse_loss(const float* y, const float* target, float* loss, std::size_t n, cudaStream_t stream);
// grad = 2 (y - target) / n: d mean((y - target)^2) / dy.
void mse_gradient(const float* y, const float* target, float* grad, std::size_t n,
                  cudaStream_t stream);
// Busy-waits about `cycles` GPU clock cycles on one thread: a stand-in for
// heavier stage compute when measuring overlap.
void spin(long long cycles, cudaStream_t stream);

}  // namespace mlp_cuda
