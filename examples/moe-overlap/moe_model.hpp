// The moe-overlap example's model, in plain C++ on OpenBLAS: every layer is
//
//   attn:     h = x + block_a(x)          (on this replica's tokens; every replica
//                                          holds a copy of block_a)
//   dispatch: each token's row goes to its expert's member (all-to-all)
//   mlp:      z = block_j(r)              (expert j, on the rows r it received)
//   combine:  the rows come back; y = h + z (all-to-all, and the residual)
//
// where a block is the dense h -> 4h -> h of train-mlp, gelu(x W1^T) W2^T.
// "attn" is a stand-in for attention: it mixes features, not tokens, but
// costs about what the experts cost, so that a layer balances computation
// as DeepSeek-V3's does and both halves of an overlapped pair have
// computation to put under the other half's all-to-all. The routing is fixed
// (route(): a hash of replica, token and layer), so the arithmetic is
// bit-reproducible and nothing needs a router gradient. The backward runs in
// reverse, each computation split into its input part and its weight part.
// Expert j of every layer lives on member j of the expert group.
//
// This header holds the weights, the routing, and each sub-op's arithmetic
// on one member's activations; the pipelined stage (moe_stage.hpp) and the
// un-pipelined model (reference.hpp) both call these functions, so their
// results can be compared bit for bit.
#pragma once

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "gelu.hpp"
#include "mlp.hpp"

namespace moe_overlap {

using train_mlp::tensor;

struct model_shape {
  int stages = 1;   // pipeline stages (model chunks)
  int layers = 1;   // MoE layers per stage
  int members = 2;  // the expert-parallel group: E replicas, E experts per layer
  int tokens = 32;  // rows of one micro-batch on one replica
  int hidden = 32;  // h
  [[nodiscard]] int ffn() const noexcept { return 4 * hidden; }
  [[nodiscard]] int global_layers() const noexcept { return stages * layers; }
};

// A dense block's weights, as nn.Linear keeps them: w1 (4h x h), w2 (h x 4h).
// Also the shape of their gradients.
template <class Real>
struct block_weights {
  std::vector<Real> w1, w2;
};

// One layer: the attention block every replica holds a copy of, and every
// expert (member j uses only expert j).
template <class Real>
struct layer_weights {
  block_weights<Real> attn;
  std::vector<block_weights<Real>> experts;
};

template <class Real>
struct model {
  model_shape shape;
  std::vector<layer_weights<Real>> layers;  // global layer stage * layers + layer
  [[nodiscard]] const layer_weights<Real>& at(int stage, int layer) const {
    return layers.at(static_cast<std::size_t>(stage * shape.layers + layer));
  }
};

// Uniform in +-1/sqrt(fan_in), as nn.Linear, the second matrix of each block
// halved so that the residual stream stays of order one over the layers.
template <class Real>
[[nodiscard]] model<Real> make_model(const model_shape& shape, std::uint64_t seed) {
  train_mlp::random_stream rng(seed);
  model<Real> m;
  m.shape = shape;
  const auto h = static_cast<std::size_t>(shape.hidden);
  const auto f = static_cast<std::size_t>(shape.ffn());
  const auto fill = [&rng, h, f](block_weights<Real>& b) {
    b.w1.resize(f * h);
    b.w2.resize(h * f);
    for (Real& x : b.w1)
      x = static_cast<Real>((2.0 * rng.uniform() - 1.0) / std::sqrt(static_cast<double>(h)));
    for (Real& x : b.w2)
      x = static_cast<Real>((2.0 * rng.uniform() - 1.0) * 0.5 / std::sqrt(static_cast<double>(f)));
  };
  m.layers.resize(static_cast<std::size_t>(shape.global_layers()));
  for (layer_weights<Real>& l : m.layers) {
    fill(l.attn);
    l.experts.resize(static_cast<std::size_t>(shape.members));
    for (block_weights<Real>& e : l.experts) fill(e);
  }
  return m;
}

// The expert of token t of replica `member` in global layer g: a hash, so
// the load differs from expert to expert and layer to layer (as real
// routing does) while staying a fixed function.
[[nodiscard]] inline int route(int member, int token, int global_layer, int members) {
  std::uint64_t z =
      0x9E3779B97F4A7C15ull *
      (static_cast<std::uint64_t>(member) * 1000003u + static_cast<std::uint64_t>(token) * 7919u +
       static_cast<std::uint64_t>(global_layer) * 104729u + 1u);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<int>(z % static_cast<std::uint64_t>(members));
}

// A member's tokens grouped by expert: order[k] is the token in row k of
// what it sends, block j (to member j) being rows [offsets[j], offsets[j+1]),
// tokens ascending within a block. Combine returns the rows in this order.
struct route_plan {
  std::vector<int> order;
  std::vector<int> offsets;
};

[[nodiscard]] inline route_plan make_route_plan(int member, int global_layer,
                                                const model_shape& shape) {
  route_plan p;
  p.offsets.assign(static_cast<std::size_t>(shape.members) + 1, 0);
  for (int j = 0; j < shape.members; ++j) {
    for (int t = 0; t < shape.tokens; ++t)
      if (route(member, t, global_layer, shape.members) == j) p.order.push_back(t);
    p.offsets[static_cast<std::size_t>(j) + 1] = static_cast<int>(p.order.size());
  }
  return p;
}

// What a dense block keeps from its forward to its weight gradient.
template <class Real>
struct block_activations {
  tensor<Real> in, pre, act, out;  // input, pre-activation, activation, output
  tensor<Real> g_pre, g_in;        // gradients of the pre-activation and of the input
};

// What one member keeps of one layer for one micro-batch, from its forward
// to its backward and weight gradient. The token side is this replica's
// micro-batch; the expert side holds the rows every replica sent to this
// member's expert.
template <class Real>
struct layer_activations {
  // Token side.
  block_activations<Real> attn;       // attn.in: the layer's input x
  tensor<Real> h;                     // x + attn.out
  tensor<Real> sent;                  // h's rows grouped by expert (dispatch)
  tensor<Real> returned;              // the experts' outputs, rows in route order (combine)
  std::vector<int> returned_offsets;  // where each expert's rows start in returned
  tensor<Real> y;                     // the layer's output (when another layer follows)
  tensor<Real> gy_sent;               // the output gradient's rows grouped by expert
  tensor<Real> g_returned;            // the experts' input gradients, in route order
  tensor<Real> gh;                    // gradient of h
  tensor<Real> gx;                    // the layer's input gradient (when a layer precedes)
  // Expert side.
  block_activations<Real> expert;  // expert.in: the rows received
  std::vector<int> r_offsets;      // where each member's rows start in expert.in
  tensor<Real> gz;                 // the gradient of expert.out, received
  std::vector<int> gz_offsets;
};

// ---------------------------------------------------------------------------
// Kernels. Products of whole row blocks on OpenBLAS (one thread per caller,
// set by main), in the same calls on both sides of every comparison.

template <class Real>
void gemm(CBLAS_TRANSPOSE op_a, CBLAS_TRANSPOSE op_b, int m, int n, int k, const Real* a, int lda,
          const Real* b, int ldb, Real beta, Real* c, int ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {  // an expert that got no rows: a zero product
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j) {
        Real& x = c[static_cast<std::size_t>(i) * static_cast<std::size_t>(ldc) +
                    static_cast<std::size_t>(j)];
        x = beta == Real(0) ? Real(0) : beta * x;
      }
    return;
  }
  train_mlp::gemm<Real>(op_a, op_b, m, n, k, a, lda, b, ldb, beta, c, ldc);
}

// y = x w^T, w stored (n x k).
template <class Real>
void linear(const tensor<Real>& x, const std::vector<Real>& w, int n, tensor<Real>& y) {
  y.resize(x.rows, n);
  gemm<Real>(CblasNoTrans, CblasTrans, x.rows, n, x.cols, x.values.data(), x.cols, w.data(), x.cols,
             Real(0), y.values.data(), n);
}

// gx = gy w (+ gx when beta is 1), w stored (n x k).
template <class Real>
void linear_input_grad(const tensor<Real>& gy, const std::vector<Real>& w, int k, tensor<Real>& gx,
                       Real beta) {
  gx.resize(gy.rows, k);
  gemm<Real>(CblasNoTrans, CblasNoTrans, gy.rows, k, gy.cols, gy.values.data(), gy.cols, w.data(),
             k, beta, gx.values.data(), k);
}

// dw = gy^T x (+ dw when beta is 1): (n x k).
template <class Real>
void linear_weight_grad(const tensor<Real>& gy, const tensor<Real>& x, std::vector<Real>& dw,
                        Real beta) {
  gemm<Real>(CblasTrans, CblasNoTrans, gy.cols, x.cols, gy.rows, gy.values.data(), gy.cols,
             x.values.data(), x.cols, beta, dw.data(), x.cols);
}

// out's rows order[k] <- rows[k] of `from` packed in route order.
template <class Real>
void pack_rows(const tensor<Real>& from, const std::vector<int>& order, tensor<Real>& out) {
  out.resize(static_cast<int>(order.size()), from.cols);
  const auto w = static_cast<std::size_t>(from.cols);
  for (std::size_t k = 0; k < order.size(); ++k)
    std::copy_n(
        from.values.begin() + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(order[k]) * w),
        w, out.values.begin() + static_cast<std::ptrdiff_t>(k * w));
}

// out[order[k]] = base[order[k]] + rows[k]: the residual plus what came back.
// Every token is in exactly one block, so every row of out is written.
template <class Real>
void add_unpacked(const tensor<Real>& base, const std::vector<int>& order, const tensor<Real>& rows,
                  tensor<Real>& out) {
  if (rows.rows != static_cast<int>(order.size()) || rows.cols != base.cols)
    throw std::logic_error("moe_overlap: " + std::to_string(rows.rows) + " rows came back for " +
                           std::to_string(order.size()) + " tokens");
  out.resize(base.rows, base.cols);
  const auto w = static_cast<std::size_t>(base.cols);
  for (std::size_t k = 0; k < order.size(); ++k) {
    const std::size_t at = static_cast<std::size_t>(order[k]) * w;
    for (std::size_t i = 0; i < w; ++i)
      out.values[at + i] = base.values[at + i] + rows.values[k * w + i];
  }
}

// A sum in a fixed order: zero plus each term in turn (weight gradients over
// micro-batches, then over replicas; the same order in every comparison).
template <class Real>
void add_into(std::vector<Real>& sum, const std::vector<Real>& term) {
  if (sum.empty()) sum.assign(term.size(), Real(0));
  for (std::size_t i = 0; i < term.size(); ++i) sum[i] += term[i];
}
template <class Real>
void add_into(block_weights<Real>& sum, const block_weights<Real>& term) {
  add_into(sum.w1, term.w1);
  add_into(sum.w2, term.w2);
}

// ---------------------------------------------------------------------------
// The dense block, and the computing sub-ops of one layer on one member.

// out = gelu(in W1^T) W2^T.
template <class Real>
void block_forward(const block_weights<Real>& w, block_activations<Real>& s) {
  const int h = s.in.cols, f = 4 * h;
  linear(s.in, w.w1, f, s.pre);
  s.act.resize(s.pre.rows, s.pre.cols);
  train_mlp::gelu_forward(std::span<const Real>(s.pre.values), std::span<Real>(s.act.values));
  linear(s.act, w.w2, h, s.out);
}

// g_in = (g_out W2 * gelu'(pre)) W1.
template <class Real>
void block_backward_input(const block_weights<Real>& w, const tensor<Real>& g_out,
                          block_activations<Real>& s) {
  const int h = g_out.cols, f = 4 * h;
  linear_input_grad(g_out, w.w2, f, s.g_pre, Real(0));
  train_mlp::gelu_backward(std::span<const Real>(s.pre.values), std::span<Real>(s.g_pre.values));
  linear_input_grad(s.g_pre, w.w1, h, s.g_in, Real(0));
}

// dW2 = g_out^T act, dW1 = g_pre^T in (beta 0: written; 1: accumulated).
template <class Real>
void block_backward_weight(const tensor<Real>& g_out, const block_activations<Real>& s,
                           block_weights<Real>& grad, Real beta) {
  linear_weight_grad(g_out, s.act, grad.w2, beta);
  linear_weight_grad(s.g_pre, s.in, grad.w1, beta);
}

// c = a + b, element by element.
template <class Real>
void add(const tensor<Real>& a, const tensor<Real>& b, tensor<Real>& c) {
  c.resize(a.rows, a.cols);
  for (std::size_t i = 0; i < c.values.size(); ++i) c.values[i] = a.values[i] + b.values[i];
}

// attn (F): h = x + block_a(x). x is copied: the weight gradient needs it, and
// the executor reuses the stage's input buffer.
template <class Real>
void attention_forward(const layer_weights<Real>& w, const tensor<Real>& x,
                       layer_activations<Real>& s) {
  s.attn.in = x;
  block_forward(w.attn, s.attn);
  add(s.attn.in, s.attn.out, s.h);
}

// attn (B), input part: gx = gh + block_a's input gradient.
template <class Real>
void attention_backward_input(const layer_weights<Real>& w, layer_activations<Real>& s,
                              tensor<Real>& gx) {
  block_backward_input(w.attn, s.gh, s.attn);
  add(s.gh, s.attn.g_in, gx);
}

// attn.W.
template <class Real>
void attention_backward_weight(const layer_activations<Real>& s, block_weights<Real>& grad,
                               Real beta) {
  block_backward_weight(s.gh, s.attn, grad, beta);
}

// mlp (F), (B) and mlp.W: expert `expert` on the rows it received.
template <class Real>
void expert_forward(const layer_weights<Real>& w, int expert, layer_activations<Real>& s) {
  block_forward(w.experts[static_cast<std::size_t>(expert)], s.expert);
}
template <class Real>
void expert_backward_input(const layer_weights<Real>& w, int expert, layer_activations<Real>& s) {
  block_backward_input(w.experts[static_cast<std::size_t>(expert)], s.gz, s.expert);
}
template <class Real>
void expert_backward_weight(const layer_activations<Real>& s, block_weights<Real>& grad,
                            Real beta) {
  block_backward_weight(s.gz, s.expert, grad, beta);
}

}  // namespace moe_overlap
