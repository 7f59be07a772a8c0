// The train-mlp example's model, in plain C++: every pipeline stage is
// Linear(h, 4h) -> GELU -> Linear(4h, h) without bias, with hand-written
// forward and backward on OpenBLAS GEMMs, and an MSE loss, as in the DualPipe
// reference's examples/example_dualpipe.py. Also the un-pipelined reference
// step (one micro-batch after another through every stage), the comparison
// of a pipelined step with it, and the wire form of the tensor for the MPI
// transport. The pipelined step itself is in pipeline.hpp.
#pragma once

#include <cblas.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <numbers>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "dualpipe/schedule/table.hpp"
#include "dualpipe/transport/wire.hpp"
#include "gelu.hpp"

namespace train_mlp {

// A row-major matrix: one row per sample of a micro-batch. Resizing keeps the
// capacity, so the executor's reused buffers stop allocating after one step.
template <class Real>
struct tensor {
  int rows = 0;
  int cols = 0;
  std::vector<Real> values;

  void resize(int r, int c) {
    rows = r;
    cols = c;
    values.resize(static_cast<std::size_t>(r) * static_cast<std::size_t>(c));
  }
  [[nodiscard]] Real& operator()(int i, int j) {
    return values[static_cast<std::size_t>(i) * static_cast<std::size_t>(cols) +
                  static_cast<std::size_t>(j)];
  }
  [[nodiscard]] Real operator()(int i, int j) const {
    return values[static_cast<std::size_t>(i) * static_cast<std::size_t>(cols) +
                  static_cast<std::size_t>(j)];
  }
};

// Same shape and the same bits in every element.
template <class Real>
[[nodiscard]] bool bitwise_equal(const tensor<Real>& a, const tensor<Real>& b) {
  return a.rows == b.rows && a.cols == b.cols &&
         (a.values.empty() ||
          std::memcmp(a.values.data(), b.values.data(), a.values.size() * sizeof(Real)) == 0);
}
template <class Real>
[[nodiscard]] bool bitwise_equal(Real a, Real b) {
  if constexpr (sizeof(Real) == 8)
    return std::bit_cast<std::uint64_t>(a) == std::bit_cast<std::uint64_t>(b);
  else
    return std::bit_cast<std::uint32_t>(a) == std::bit_cast<std::uint32_t>(b);
}

// The reference's cal_diff: 1 - 2<x,y> / (<x,x> + <y,y>), in double; 0 when
// the two are equal, small when they agree up to rounding.
template <class Real>
[[nodiscard]] double cosine_difference(std::span<const Real> x, std::span<const Real> y) {
  double xy = 0, xx = 0, yy = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double a = static_cast<double>(x[i]), b = static_cast<double>(y[i]);
    xy += a * b;
    xx += a * a;
    yy += b * b;
  }
  if (xx + yy == 0) return 0.0;
  return 1.0 - 2.0 * xy / (xx + yy);
}

// Deterministic numbers from a seed (splitmix64), the same on every platform.
class random_stream {
 public:
  explicit random_stream(std::uint64_t seed) : state_(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, 1).
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  // Standard normal (Box-Muller).
  double normal() {
    const double u1 = 1.0 - uniform(), u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
  }

 private:
  std::uint64_t state_;
};

// One stage's parameters: w1 is (4h x h), w2 is (h x 4h), as nn.Linear keeps
// them (out_features x in_features).
template <class Real>
struct layer {
  int hidden = 0;
  std::vector<Real> w1, w2;
};

// nn.Linear's default initialisation: uniform in +-1/sqrt(in_features).
template <class Real>
[[nodiscard]] std::vector<layer<Real>> make_model(int stages, int hidden, std::uint64_t seed) {
  random_stream rng(seed);
  std::vector<layer<Real>> model(static_cast<std::size_t>(stages));
  const auto h = static_cast<std::size_t>(hidden);
  for (layer<Real>& l : model) {
    l.hidden = hidden;
    l.w1.resize(4 * h * h);
    l.w2.resize(h * 4 * h);
    const double b1 = 1.0 / std::sqrt(static_cast<double>(hidden));
    const double b2 = 1.0 / std::sqrt(4.0 * static_cast<double>(hidden));
    for (Real& w : l.w1) w = static_cast<Real>((2.0 * rng.uniform() - 1.0) * b1);
    for (Real& w : l.w2) w = static_cast<Real>((2.0 * rng.uniform() - 1.0) * b2);
  }
  return model;
}

// ---------------------------------------------------------------------------
// Kernels. x: (B x k) rows; w: (n x k) as nn.Linear stores it.

// The ranks are this example's parallelism, and OpenBLAS's bits depend on its
// thread count (its GEMMs split the sums by thread): one BLAS thread, set
// before any kernel runs, keeps every rank's products bit-identical to the
// reference's. (Elsewhere, OPENBLAS_NUM_THREADS=1 does the same.)
inline void use_one_blas_thread() {
  openblas_set_num_threads(1);
}

// c = op(a) op(b) + beta c, row-major, in the caller's thread.
template <class Real>
void gemm(CBLAS_TRANSPOSE op_a, CBLAS_TRANSPOSE op_b, int m, int n, int k, const Real* a, int lda,
          const Real* b, int ldb, Real beta, Real* c, int ldc) {
  static_assert(std::same_as<Real, float> || std::same_as<Real, double>,
                "train_mlp: the kernels take f32 or f64");
  if constexpr (std::same_as<Real, float>)
    cblas_sgemm(CblasRowMajor, op_a, op_b, m, n, k, 1.0f, a, lda, b, ldb, beta, c, ldc);
  else
    cblas_dgemm(CblasRowMajor, op_a, op_b, m, n, k, 1.0, a, lda, b, ldb, beta, c, ldc);
}

// y = x w^T: (B x n).
template <class Real>
void linear_forward(const tensor<Real>& x, const std::vector<Real>& w, int n, tensor<Real>& y) {
  const int B = x.rows, k = x.cols;
  y.resize(B, n);
  gemm<Real>(CblasNoTrans, CblasTrans, B, n, k, x.values.data(), k, w.data(), k, Real(0),
             y.values.data(), n);
}

// gx = gy w: (B x k) from gy (B x n).
template <class Real>
void linear_input_grad(const tensor<Real>& gy, const std::vector<Real>& w, int k,
                       tensor<Real>& gx) {
  const int B = gy.rows, n = gy.cols;
  gx.resize(B, k);
  gemm<Real>(CblasNoTrans, CblasNoTrans, B, k, n, gy.values.data(), n, w.data(), k, Real(0),
             gx.values.data(), k);
}

// dw += gy^T x: (n x k), the reference's grad_weight_fn.
template <class Real>
void linear_weight_grad(const tensor<Real>& gy, const tensor<Real>& x, std::vector<Real>& dw) {
  const int B = gy.rows, n = gy.cols, k = x.cols;
  gemm<Real>(CblasTrans, CblasNoTrans, n, k, B, gy.values.data(), n, x.values.data(), k, Real(1),
             dw.data(), k);
}

// ---------------------------------------------------------------------------

// One pipeline stage: a copy of one layer's weights and their gradients.
// What backward needs is kept per micro-batch in tensors that are reused from
// step to step.
template <class Real>
class mlp_stage {
 public:
  using tensor_type = tensor<Real>;

  mlp_stage(const layer<Real>& weights, int microbatches)
      : w_(weights),
        grad_w1_(weights.w1.size(), Real(0)),
        grad_w2_(weights.w2.size(), Real(0)),
        saved_(static_cast<std::size_t>(microbatches)) {}

  void forward(int mb, const tensor_type& x, tensor_type& y) {
    saved& s = saved_.at(static_cast<std::size_t>(mb));
    const int h = w_.hidden;
    if (x.cols != h)
      throw std::invalid_argument("mlp_stage: input has " + std::to_string(x.cols) +
                                  " features, the layer takes " + std::to_string(h));
    s.x = x;  // kept for the weight gradient of the first linear layer
    linear_forward(x, w_.w1, 4 * h, s.h1);
    s.a.resize(s.h1.rows, s.h1.cols);
    gelu_forward(std::span<const Real>(s.h1.values), std::span<Real>(s.a.values));
    linear_forward(s.a, w_.w2, h, y);
  }

  void backward(int mb, const tensor_type& gy, tensor_type& gx) {
    input_grad(mb, gy, gx);
    weight_grad(mb);
  }
  void backward_input(int mb, const tensor_type& gy, tensor_type& gx) { input_grad(mb, gy, gx); }
  void backward_weight(int mb) { weight_grad(mb); }

  // The reference example's overlap "strategy": forward, then backward. It
  // exists to show where a real implementation would interleave the two.
  void overlapped_forward_backward(int f_mb, const tensor_type& x, tensor_type& y,
                                   mlp_stage& b_stage, int b_mb, const tensor_type& gy,
                                   tensor_type& gx) {
    forward(f_mb, x, y);
    b_stage.backward(b_mb, gy, gx);
    ++overlapped_calls_;
  }

  // The next backward or backward-input throws `why` instead of running, as
  // a failing kernel would: how the example's --fail-rank exercises the
  // pipeline's fault path.
  void fail_next_backward(std::string why) { failure_ = std::move(why); }

  [[nodiscard]] std::vector<Real>& grad_w1() noexcept { return grad_w1_; }
  [[nodiscard]] std::vector<Real>& grad_w2() noexcept { return grad_w2_; }
  [[nodiscard]] int overlapped_calls() const noexcept { return overlapped_calls_; }

 private:
  struct saved {
    tensor_type x, h1, a;  // forward: input, pre-activation, activation
    tensor_type gy, gh;    // backward-input: output gradient, pre-activation gradient
  };

  void input_grad(int mb, const tensor_type& gy, tensor_type& gx) {
    if (!failure_.empty()) throw std::runtime_error(std::exchange(failure_, {}));
    saved& s = saved_.at(static_cast<std::size_t>(mb));
    const int h = w_.hidden;
    s.gy = gy;
    linear_input_grad(gy, w_.w2, 4 * h, s.gh);  // gradient of the activation
    gelu_backward(std::span<const Real>(s.h1.values), std::span<Real>(s.gh.values));
    linear_input_grad(s.gh, w_.w1, h, gx);
  }
  void weight_grad(int mb) {
    saved& s = saved_.at(static_cast<std::size_t>(mb));
    linear_weight_grad(s.gy, s.a, grad_w2_);
    linear_weight_grad(s.gh, s.x, grad_w1_);
  }

  const layer<Real>& w_;
  std::vector<Real> grad_w1_, grad_w2_;
  std::vector<saved> saved_;
  int overlapped_calls_ = 0;
  std::string failure_;  // empty: backward runs
};

// Mean squared error over all elements of a micro-batch, as F.mse_loss.
template <class Real>
struct mse_loss {
  using label_type = tensor<Real>;
  Real operator()(const tensor<Real>& y, const tensor<Real>& label) const {
    Real sum = 0;
    for (std::size_t i = 0; i < y.values.size(); ++i) {
      const Real d = y.values[i] - label.values[i];
      sum += d * d;
    }
    return sum / static_cast<Real>(y.values.size());
  }
  void gradient(const tensor<Real>& y, const tensor<Real>& label, tensor<Real>& seed) const {
    seed.resize(y.rows, y.cols);
    const Real scale = Real(2) / static_cast<Real>(y.values.size());
    for (std::size_t i = 0; i < y.values.size(); ++i)
      seed.values[i] = scale * (y.values[i] - label.values[i]);
  }
};

// N micro-batches of inputs and labels, normally distributed.
template <class Real>
struct batch {
  std::vector<tensor<Real>> inputs, labels;
};
template <class Real>
[[nodiscard]] batch<Real> make_batch(int microbatches, int microbatch_size, int hidden,
                                     std::uint64_t seed) {
  random_stream rng(seed ^ 0x5DEECE66Dull);
  batch<Real> b;
  for (auto* v : {&b.inputs, &b.labels}) {
    v->resize(static_cast<std::size_t>(microbatches));
    for (tensor<Real>& t : *v) {
      t.resize(microbatch_size, hidden);
      for (Real& x : t.values) x = static_cast<Real>(rng.normal());
    }
  }
  return b;
}

// Per micro-batch losses and outputs, and per stage weight gradients.
template <class Real>
struct step_record {
  std::vector<Real> train_losses, infer_losses;     // indexed by micro-batch
  std::vector<tensor<Real>> infer_outputs;          // indexed by micro-batch
  std::vector<std::vector<Real>> grad_w1, grad_w2;  // indexed by stage
  // Pipelined runs: whether every stage's copies held identical gradients
  // after the mirrored sum, and how many overlapped hooks ran.
  bool copies_identical = true;
  int overlapped_calls = 0;
};

// The model without a pipeline: micro-batch after micro-batch through every
// stage, forward, loss, backward (the reference's ref_step).
template <class Real>
[[nodiscard]] step_record<Real> reference_step(const std::vector<layer<Real>>& model,
                                               const batch<Real>& data) {
  const int S = static_cast<int>(model.size());
  const int N = static_cast<int>(data.inputs.size());
  std::vector<mlp_stage<Real>> stages;
  stages.reserve(model.size());
  for (const layer<Real>& l : model) stages.emplace_back(l, N);
  mse_loss<Real> loss;
  step_record<Real> out;
  out.train_losses.resize(static_cast<std::size_t>(N));
  out.infer_outputs.resize(static_cast<std::size_t>(N));
  tensor<Real> x, y, g, gx;
  for (int m = 0; m < N; ++m) {
    x = data.inputs[static_cast<std::size_t>(m)];
    for (int s = 0; s < S; ++s) {
      stages[static_cast<std::size_t>(s)].forward(m, x, y);
      std::swap(x, y);
    }
    const tensor<Real>& label = data.labels[static_cast<std::size_t>(m)];
    out.train_losses[static_cast<std::size_t>(m)] = loss(x, label);
    out.infer_outputs[static_cast<std::size_t>(m)] = x;
    loss.gradient(x, label, g);
    for (int s = S - 1; s >= 0; --s) {
      stages[static_cast<std::size_t>(s)].backward(m, g, gx);
      std::swap(g, gx);
    }
  }
  out.infer_losses = out.train_losses;
  for (mlp_stage<Real>& st : stages) {
    out.grad_w1.push_back(st.grad_w1());
    out.grad_w2.push_back(st.grad_w2());
  }
  return out;
}

// What the example prints and exits on.
struct comparison {
  bool train_losses_equal = true;
  bool infer_losses_equal = true;
  bool outputs_equal = true;
  bool copies_identical = true;
  double worst_gradient_difference = 0.0;  // max over parameters of cosine_difference
  double gradient_tolerance = 0.0;
  int first_loss_mismatch = -1, first_output_mismatch = -1;

  [[nodiscard]] bool gradients_agree() const noexcept {
    return worst_gradient_difference < gradient_tolerance;
  }
  [[nodiscard]] bool ok() const noexcept {
    return train_losses_equal && infer_losses_equal && outputs_equal && copies_identical &&
           gradients_agree();
  }
};

// The reference example's criteria: bitwise-equal losses and outputs, and
// 1 - cosine similarity of every weight gradient below 1e-13 (double) or
// 1e-6 (float).
template <class Real>
[[nodiscard]] comparison compare(const step_record<Real>& reference,
                                 const step_record<Real>& pipelined) {
  comparison c;
  c.gradient_tolerance = sizeof(Real) == 8 ? 1e-13 : 1e-6;
  c.copies_identical = pipelined.copies_identical;
  for (std::size_t m = 0; m < reference.train_losses.size(); ++m) {
    const bool train = bitwise_equal(reference.train_losses[m], pipelined.train_losses[m]);
    const bool infer = bitwise_equal(reference.infer_losses[m], pipelined.infer_losses[m]);
    const bool output = bitwise_equal(reference.infer_outputs[m], pipelined.infer_outputs[m]);
    if ((!train || !infer) && c.first_loss_mismatch < 0)
      c.first_loss_mismatch = static_cast<int>(m);
    if (!output && c.first_output_mismatch < 0) c.first_output_mismatch = static_cast<int>(m);
    c.train_losses_equal = c.train_losses_equal && train;
    c.infer_losses_equal = c.infer_losses_equal && infer;
    c.outputs_equal = c.outputs_equal && output;
  }
  for (std::size_t s = 0; s < reference.grad_w1.size(); ++s) {
    const double d1 = cosine_difference<Real>(reference.grad_w1[s], pipelined.grad_w1[s]);
    const double d2 = cosine_difference<Real>(reference.grad_w2[s], pipelined.grad_w2[s]);
    for (const double d : {d1, d2})  // NaN never passes
      c.worst_gradient_difference =
          std::isnan(d) ? HUGE_VAL : std::max(c.worst_gradient_difference, d);
  }
  return c;
}

// The verdict both examples print, one line per check, ending in PASS or
// FAIL; returns c.ok().
inline bool print_comparison(const comparison& c, const dualpipe::schedule_info& info,
                             int overlapped_calls) {
  const auto verdict = [](bool ok) { return ok ? "ok  " : "FAIL"; };
  std::printf("%s training losses of %d micro-batches bitwise equal to the un-pipelined model",
              verdict(c.train_losses_equal), info.microbatches);
  if (c.first_loss_mismatch >= 0)
    std::printf(" (first mismatch: micro-batch %d)", c.first_loss_mismatch);
  std::printf("\n%s inference losses bitwise equal\n", verdict(c.infer_losses_equal));
  std::printf("%s inference outputs bitwise equal", verdict(c.outputs_equal));
  if (c.first_output_mismatch >= 0)
    std::printf(" (first mismatch: micro-batch %d)", c.first_output_mismatch);
  std::printf("\n%s weight gradients of %d stages agree: max 1 - cos = %.3g (tolerance %.0e)\n",
              verdict(c.gradients_agree()), info.stages, c.worst_gradient_difference,
              c.gradient_tolerance);
  if (info.where == dualpipe::placement::mirrored)
    std::printf("%s mirrored copies (rank r and rank P-1-r) hold identical summed gradients\n",
                verdict(c.copies_identical));
  std::printf("     overlapped forward-backward hook calls: %d\n", overlapped_calls);
  std::printf("%s\n", c.ok() ? "PASS" : "FAIL");
  return c.ok();
}

}  // namespace train_mlp

// The wire form of a tensor for transports between processes: f32 or f64
// elements in a (rows x cols) shape, row-major, so a receiver shapes its
// buffer from the message.
template <class Real>
struct dualpipe::wire_traits<train_mlp::tensor<Real>> {
  static wire_shape shape(const train_mlp::tensor<Real>& t) {
    const std::int64_t dims[] = {t.rows, t.cols};
    return make_wire_shape<Real>(dims);
  }
  static std::span<const std::byte> bytes(const train_mlp::tensor<Real>& t) {
    return std::as_bytes(std::span<const Real>(t.values));
  }
  static std::span<std::byte> prepare(train_mlp::tensor<Real>& t, const wire_shape& s) {
    check_wire_element<Real>(s, "train_mlp::tensor");
    constexpr std::int64_t most = std::numeric_limits<int>::max();
    if (s.dims_used != 2 || s.dims[0] > most || s.dims[1] > most)
      throw std::invalid_argument("train_mlp::tensor: received " + describe(s) +
                                  ", a tensor holds (rows x cols) of at most " +
                                  std::to_string(most) + " each");
    t.resize(static_cast<int>(s.dims[0]), static_cast<int>(s.dims[1]));
    return std::as_writable_bytes(std::span<Real>(t.values));
  }
};
