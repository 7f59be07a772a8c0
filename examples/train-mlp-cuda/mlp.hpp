// The CUDA MLP stage of the example (and of the GPU bench): Linear(h, 4h) ->
// GELU -> Linear(4h, h) on one rank's compute stream, with cuBLAS GEMMs, the
// kernels of kernels.cu, and saved activations drawn from an event-recycled
// buffer pool; plus the MSE loss and deterministic weights and data.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "dualpipe/cuda/buffer_pool.hpp"
#include "dualpipe/cuda/cublas.hpp"
#include "dualpipe/cuda/device_buffer.hpp"
#include "dualpipe/cuda/error.hpp"
#include "kernels.hpp"

namespace mlp_cuda {

using tensor = dualpipe::cuda::device_buffer<float>;

// One stage's parameters (or their gradients) on the host, row-major:
// w1 is 4h x h, w2 is h x 4h.
struct stage_parameters {
  std::vector<float> w1, b1, w2, b2;

  [[nodiscard]] static stage_parameters zeros(int hidden) {
    const auto h = static_cast<std::size_t>(hidden);
    return {std::vector<float>(4 * h * h), std::vector<float>(4 * h), std::vector<float>(4 * h * h),
            std::vector<float>(h)};
  }
  // All parameters end to end: what cosine similarity compares.
  [[nodiscard]] std::vector<double> flat() const {
    std::vector<double> v;
    v.reserve(w1.size() + b1.size() + w2.size() + b2.size());
    for (const auto* part : {&w1, &b1, &w2, &b2}) v.insert(v.end(), part->begin(), part->end());
    return v;
  }
  void add(const stage_parameters& o) {
    auto acc = [](std::vector<float>& a, const std::vector<float>& b) {
      for (std::size_t i = 0; i < a.size(); ++i) a[i] += b[i];
    };
    acc(w1, o.w1);
    acc(b1, o.b1);
    acc(w2, o.w2);
    acc(b2, o.b2);
  }
  void sgd(const stage_parameters& grad, float lr) {
    auto step = [lr](std::vector<float>& a, const std::vector<float>& g) {
      for (std::size_t i = 0; i < a.size(); ++i) a[i] -= lr * g[i];
    };
    step(w1, grad.w1);
    step(b1, grad.b1);
    step(w2, grad.w2);
    step(b2, grad.b2);
  }
};

// A small deterministic generator (SplitMix64): the same weights and data
// on every machine, whatever the standard library.
class random_stream {
 public:
  explicit random_stream(std::uint64_t seed) : state_(seed) {}
  // Uniform in [-1, 1).
  float next() {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return static_cast<float>(static_cast<double>(z >> 11) * 0x1.0p-53 * 2.0 - 1.0);
  }
  void fill(std::vector<float>& v, float scale) {
    for (float& x : v) x = scale * next();
  }

 private:
  std::uint64_t state_;
};

// Stage s's initial parameters, the same for every copy of the stage.
[[nodiscard]] inline stage_parameters initial_parameters(int stage, int hidden,
                                                         std::uint64_t seed) {
  stage_parameters p = stage_parameters::zeros(hidden);
  random_stream r(seed * 1000003ull + static_cast<std::uint64_t>(stage) * 7919ull + 1);
  // Scaled as PyTorch's Linear: uniform in +-1/sqrt(fan_in).
  r.fill(p.w1, 1.0f / std::sqrt(static_cast<float>(hidden)));
  r.fill(p.b1, 1.0f / std::sqrt(static_cast<float>(hidden)));
  r.fill(p.w2, 1.0f / std::sqrt(static_cast<float>(4 * hidden)));
  r.fill(p.b2, 1.0f / std::sqrt(static_cast<float>(4 * hidden)));
  return p;
}

// Row-major C (M x N) = alpha op(A) op(B) + beta C, on cuBLAS's column-major
// GEMM: row-major C is column-major C^T = op(B)^T op(A)^T.
inline void gemm(cublasHandle_t handle, bool transpose_a, bool transpose_b, int M, int N, int K,
                 float alpha, const float* A, const float* B, float beta, float* C) {
  const int lda = transpose_a ? M : K;  // row length of A as stored
  const int ldb = transpose_b ? K : N;
  DUALPIPE_CUBLAS_CHECK(cublasSgemm(handle, transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                                    transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &alpha, B,
                                    ldb, A, lda, &beta, C, N));
}

// One model stage on one rank. Every member enqueues on the rank's compute
// stream and returns at once. Models dualpipe::pipeline_stage<stage, tensor>.
class stage {
 public:
  stage(int stage_id, int hidden, int rows, int microbatches, cudaStream_t stream,
        cublasHandle_t blas, dualpipe::cuda::buffer_pool<float>& pool)
      : id_(stage_id),
        h_(hidden),
        rows_(rows),
        stream_(stream),
        blas_(blas),
        pool_(&pool),
        w1_(elements(4 * hidden, hidden)),
        b1_(static_cast<std::size_t>(4 * hidden)),
        w2_(elements(hidden, 4 * hidden)),
        b2_(static_cast<std::size_t>(hidden)),
        gw1_(elements(4 * hidden, hidden)),
        gb1_(static_cast<std::size_t>(4 * hidden)),
        gw2_(elements(hidden, 4 * hidden)),
        gb2_(static_cast<std::size_t>(hidden)),
        ones_(static_cast<std::size_t>(rows)),
        saved_(static_cast<std::size_t>(microbatches)) {
    const std::vector<float> ones(static_cast<std::size_t>(rows), 1.0f);
    ones_.copy_from_host(ones, stream_);
    zero_grad();
  }

  [[nodiscard]] int id() const noexcept { return id_; }
  // Inference: forwards keep nothing for a backward.
  void set_inference(bool on) noexcept { inference_ = on; }

  void load(const stage_parameters& p) {
    w1_.copy_from_host(p.w1, stream_);
    b1_.copy_from_host(p.b1, stream_);
    w2_.copy_from_host(p.w2, stream_);
    b2_.copy_from_host(p.b2, stream_);
    DUALPIPE_CUDA_CHECK(cudaStreamSynchronize(stream_));  // p may go away
  }
  void zero_grad() {
    gw1_.fill_zero(stream_);
    gb1_.fill_zero(stream_);
    gw2_.fill_zero(stream_);
    gb2_.fill_zero(stream_);
  }
  // Blocks: for the step boundary.
  [[nodiscard]] stage_parameters gradients() const {
    stage_parameters g = stage_parameters::zeros(h_);
    gw1_.copy_to_host(g.w1, stream_);
    gb1_.copy_to_host(g.b1, stream_);
    gw2_.copy_to_host(g.w2, stream_);
    gb2_.copy_to_host(g.b2, stream_);
    DUALPIPE_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return g;
  }

  void forward(int mb, const tensor& in, tensor& out) {
    check_rows(in, mb, "forward input");
    const std::size_t n_h = elements(rows_, h_), n_4h = elements(rows_, 4 * h_);
    auto x = pool_->acquire(n_h, stream_);
    auto z = pool_->acquire(n_4h, stream_);
    auto a = pool_->acquire(n_4h, stream_);
    DUALPIPE_CUDA_CHECK(
        cudaMemcpyAsync(x.data(), in.data(), x.bytes(), cudaMemcpyDeviceToDevice, stream_));
    out.resize(n_h);
    gemm(blas_, false, true, rows_, 4 * h_, h_, 1.0f, x.data(), w1_.data(), 0.0f, z.data());
    bias_gelu_forward(z.data(), a.data(), b1_.data(), rows_, 4 * h_, stream_);
    gemm(blas_, false, true, rows_, h_, 4 * h_, 1.0f, a.data(), w2_.data(), 0.0f, out.data());
    add_bias(out.data(), b2_.data(), rows_, h_, stream_);
    if (!inference_) {
      saved& s = at(mb);
      s.x = std::move(x);
      s.z = std::move(z);
      s.a = std::move(a);
    }
  }

  void backward_input(int mb, const tensor& grad_out, tensor& grad_in) {
    check_rows(grad_out, mb, "output gradient");
    saved& s = at(mb);
    if (!s.x) throw std::logic_error(where(mb) + ": backward before forward");
    auto gy = pool_->acquire(elements(rows_, h_), stream_);
    auto dz = pool_->acquire(elements(rows_, 4 * h_), stream_);
    DUALPIPE_CUDA_CHECK(
        cudaMemcpyAsync(gy.data(), grad_out.data(), gy.bytes(), cudaMemcpyDeviceToDevice, stream_));
    // da = gy W2 (into dz), dz = da * gelu'(z), gx = dz W1.
    gemm(blas_, false, false, rows_, 4 * h_, h_, 1.0f, gy.data(), w2_.data(), 0.0f, dz.data());
    gelu_backward(s.z.data(), dz.data(), dz.data(), dz.size(), stream_);
    grad_in.resize(elements(rows_, h_));
    gemm(blas_, false, false, rows_, h_, 4 * h_, 1.0f, dz.data(), w1_.data(), 0.0f, grad_in.data());
    s.z.release();  // only the weight gradient remains: it needs x, a, gy, dz
    s.gy = std::move(gy);
    s.dz = std::move(dz);
  }

  void backward_weight(int mb) {
    saved& s = at(mb);
    if (!s.gy) throw std::logic_error(where(mb) + ": weight gradient before backward_input");
    // dW2 += gy^T a, db2 += 1^T gy, dW1 += dz^T x, db1 += 1^T dz.
    gemm(blas_, true, false, h_, 4 * h_, rows_, 1.0f, s.gy.data(), s.a.data(), 1.0f, gw2_.data());
    gemm(blas_, false, false, 1, h_, rows_, 1.0f, ones_.data(), s.gy.data(), 1.0f, gb2_.data());
    gemm(blas_, true, false, 4 * h_, h_, rows_, 1.0f, s.dz.data(), s.x.data(), 1.0f, gw1_.data());
    gemm(blas_, false, false, 1, 4 * h_, rows_, 1.0f, ones_.data(), s.dz.data(), 1.0f, gb1_.data());
    s = saved{};  // back to the pool, reusable by later work on this stream
  }

  void backward(int mb, const tensor& grad_out, tensor& grad_in) {
    backward_input(mb, grad_out, grad_in);
    backward_weight(mb);
  }

 private:
  struct saved {
    dualpipe::cuda::pooled_buffer<float> x, z, a, gy, dz;
  };

  [[nodiscard]] static std::size_t elements(int a, int b) {
    return static_cast<std::size_t>(a) * static_cast<std::size_t>(b);
  }
  saved& at(int mb) {
    if (mb < 0 || static_cast<std::size_t>(mb) >= saved_.size())
      throw std::out_of_range(where(mb) + ": micro-batch out of range");
    return saved_[static_cast<std::size_t>(mb)];
  }
  void check_rows(const tensor& t, int mb, const char* what) const {
    if (t.size() != static_cast<std::size_t>(rows_) * h_)
      throw std::invalid_argument(where(mb) + ": " + what + " holds " + std::to_string(t.size()) +
                                  " elements, expected " + std::to_string(rows_) + " x " +
                                  std::to_string(h_));
  }
  [[nodiscard]] std::string where(int mb) const {
    return "stage " + std::to_string(id_) + ", micro-batch " + std::to_string(mb);
  }

  int id_, h_, rows_;
  cudaStream_t stream_;
  cublasHandle_t blas_;
  dualpipe::cuda::buffer_pool<float>* pool_;
  tensor w1_, b1_, w2_, b2_;
  tensor gw1_, gb1_, gw2_, gb2_;
  tensor ones_;
  std::vector<saved> saved_;
  bool inference_ = false;
};

// The label of one micro-batch: its target and where its loss goes.
struct label {
  const tensor* target = nullptr;
  int microbatch = -1;
};

// What the loss call returns: the micro-batch whose loss is now enqueued
// into mse::losses() (read after the step, at the step boundary).
struct loss_slot {
  int microbatch = -1;
};

// Mean squared error per micro-batch, on the compute stream of the rank that
// runs the last stage. Models dualpipe::loss_function<mse, tensor>.
class mse {
 public:
  using label_type = label;

  mse(cudaStream_t stream, int microbatches)
      : stream_(stream), losses_(static_cast<std::size_t>(microbatches)) {}

  loss_slot operator()(const tensor& y, const label& l) {
    check(y, l);
    mse_loss(y.data(), l.target->data(), losses_.data() + l.microbatch, y.size(), stream_);
    return {l.microbatch};
  }
  void gradient(const tensor& y, const label& l, tensor& seed) {
    check(y, l);
    seed.resize(y.size());
    mse_gradient(y.data(), l.target->data(), seed.data(), y.size(), stream_);
  }
  // Per micro-batch losses (entries of micro-batches this rank finished);
  // blocks on the stream.
  [[nodiscard]] std::vector<float> losses() const {
    std::vector<float> host(losses_.size());
    losses_.copy_to_host(host, stream_);
    DUALPIPE_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return host;
  }

 private:
  void check(const tensor& y, const label& l) const {
    if (l.target == nullptr || l.target->size() != y.size() || l.microbatch < 0 ||
        static_cast<std::size_t>(l.microbatch) >= losses_.size())
      throw std::invalid_argument("mse: the label of micro-batch " + std::to_string(l.microbatch) +
                                  " does not match the output (" + std::to_string(y.size()) +
                                  " elements)");
  }
  cudaStream_t stream_;
  tensor losses_;
};

}  // namespace mlp_cuda
