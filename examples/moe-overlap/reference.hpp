// The moe-overlap example's un-pipelined model and its checks: every
// replica's micro-batches through every layer of every stage on one thread,
// the all-to-all done by the same receive_blocks the threads use and every
// computation by the same moe_model.hpp functions; what a step records
// (losses, outputs, weight gradients); and the comparisons main prints.
//
// Weight gradients are kept per micro-batch (each W writes its own slot) and
// summed in micro-batch order, then over replicas in replica order, here and
// in the pipeline: the order in which a schedule runs its W's, and which of
// DualPipe's two copies of a stage runs which micro-batch, then changes no
// bit, so gradients too compare bitwise. (A trainer would accumulate in W
// order and agree only up to rounding.)
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "expert_exchange.hpp"
#include "mlp.hpp"
#include "moe_model.hpp"

namespace moe_overlap {

// Every replica's micro-batches: inputs and labels, (tokens x h) each.
template <class Real>
struct batch {
  std::vector<std::vector<tensor<Real>>> inputs, labels;  // [replica][micro-batch]
};

template <class Real>
[[nodiscard]] batch<Real> make_batch(const model_shape& shape, int microbatches,
                                     std::uint64_t seed) {
  batch<Real> b;
  for (auto* v : {&b.inputs, &b.labels}) v->resize(static_cast<std::size_t>(shape.members));
  for (int e = 0; e < shape.members; ++e) {
    train_mlp::random_stream rng(seed ^
                                 (0x5DEECE66Dull + 0x1000193ull * static_cast<std::uint64_t>(e)));
    for (auto* v : {&b.inputs, &b.labels}) {
      std::vector<tensor<Real>>& mine = (*v)[static_cast<std::size_t>(e)];
      mine.resize(static_cast<std::size_t>(microbatches));
      for (tensor<Real>& t : mine) {
        t.resize(shape.tokens, shape.hidden);
        for (Real& x : t.values) x = static_cast<Real>(rng.normal());
      }
    }
  }
  return b;
}

// What a checked step gives, whole (all replicas, all stages).
template <class Real>
struct step_record {
  std::vector<std::vector<Real>> train_losses, infer_losses;  // [replica][micro-batch]
  std::vector<std::vector<tensor<Real>>> infer_outputs;       // [replica][micro-batch]
  // Per global layer: the attention block's gradient summed over replicas;
  // each expert's (on its member).
  std::vector<block_weights<Real>> grad_attn;                 // [layer]
  std::vector<std::vector<block_weights<Real>>> grad_expert;  // [layer][expert]
  bool copies_identical = true;  // pipelined: DualPipe's two copies of each stage agree
  int overlapped_pairs = 0;      // pipelined: calls of overlapped_forward_backward
};

// The un-pipelined model: for each micro-batch, every replica through every
// layer (the exchanges done on this thread), the loss, and back.
template <class Real>
[[nodiscard]] step_record<Real> reference_step(const model<Real>& m, const batch<Real>& data) {
  const model_shape& shape = m.shape;
  const int E = shape.members, G = shape.global_layers();
  const int N = static_cast<int>(data.inputs.at(0).size());
  const auto ue = static_cast<std::size_t>(E);
  std::vector<std::vector<route_plan>> plans(static_cast<std::size_t>(G));
  for (int g = 0; g < G; ++g)
    for (int e = 0; e < E; ++e)
      plans[static_cast<std::size_t>(g)].push_back(make_route_plan(e, g, shape));

  step_record<Real> out;
  out.train_losses.assign(ue, std::vector<Real>(static_cast<std::size_t>(N)));
  out.infer_outputs.assign(ue, std::vector<tensor<Real>>(static_cast<std::size_t>(N)));
  // Per-micro-batch weight gradients: [layer][member][micro-batch].
  const auto h = static_cast<std::size_t>(shape.hidden), f = static_cast<std::size_t>(shape.ffn());
  block_weights<Real> zero;
  zero.w1.assign(f * h, Real(0));
  zero.w2.assign(h * f, Real(0));
  const std::vector<std::vector<std::vector<block_weights<Real>>>> slots(
      static_cast<std::size_t>(G),
      std::vector<std::vector<block_weights<Real>>>(
          ue, std::vector<block_weights<Real>>(static_cast<std::size_t>(N), zero)));
  auto attn_slots = slots, expert_slots = slots;

  train_mlp::mse_loss<Real> loss;
  std::vector<std::vector<layer_activations<Real>>> acts(static_cast<std::size_t>(G),
                                                         std::vector<layer_activations<Real>>(ue));
  std::vector<tensor<Real>> x(ue), y(ue), gy(ue), gx(ue);
  std::vector<send_blocks<Real>> board(ue);
  std::vector<int> offsets;
  for (int mb = 0; mb < N; ++mb) {
    const auto um = static_cast<std::size_t>(mb);
    for (std::size_t e = 0; e < ue; ++e) x[e] = data.inputs[e][um];
    for (int g = 0; g < G; ++g) {
      const layer_weights<Real>& w = m.layers[static_cast<std::size_t>(g)];
      std::vector<layer_activations<Real>>& a = acts[static_cast<std::size_t>(g)];
      const std::vector<route_plan>& plan = plans[static_cast<std::size_t>(g)];
      for (std::size_t e = 0; e < ue; ++e) {
        attention_forward(w, x[e], a[e]);
        pack_rows(a[e].h, plan[e].order, a[e].sent);
        board[e] = {&a[e].sent, plan[e].offsets};
      }
      for (int j = 0; j < E; ++j) {
        auto& aj = a[static_cast<std::size_t>(j)];
        receive_blocks<Real>(j, board, shape.hidden, aj.expert.in, aj.r_offsets);
      }
      for (int j = 0; j < E; ++j) {
        auto& aj = a[static_cast<std::size_t>(j)];
        expert_forward(w, j, aj);
      }
      for (std::size_t j = 0; j < ue; ++j) board[j] = {&a[j].expert.out, a[j].r_offsets};
      for (int e = 0; e < E; ++e) {
        auto& ae = a[static_cast<std::size_t>(e)];
        receive_blocks<Real>(e, board, shape.hidden, ae.returned, offsets);
        add_unpacked(ae.h, plan[static_cast<std::size_t>(e)].order, ae.returned,
                     y[static_cast<std::size_t>(e)]);
      }
      std::swap(x, y);
    }
    for (std::size_t e = 0; e < ue; ++e) {
      out.train_losses[e][um] = loss(x[e], data.labels[e][um]);
      out.infer_outputs[e][um] = x[e];
      loss.gradient(x[e], data.labels[e][um], gy[e]);
    }
    for (int g = G - 1; g >= 0; --g) {
      const auto ug = static_cast<std::size_t>(g);
      const layer_weights<Real>& w = m.layers[ug];
      std::vector<layer_activations<Real>>& a = acts[ug];
      const std::vector<route_plan>& plan = plans[ug];
      for (std::size_t e = 0; e < ue; ++e) {
        pack_rows(gy[e], plan[e].order, a[e].gy_sent);
        board[e] = {&a[e].gy_sent, plan[e].offsets};
      }
      for (int j = 0; j < E; ++j) {
        auto& aj = a[static_cast<std::size_t>(j)];
        receive_blocks<Real>(j, board, shape.hidden, aj.gz, aj.gz_offsets);
      }
      for (int j = 0; j < E; ++j) {
        const auto uj = static_cast<std::size_t>(j);
        expert_backward_input(w, j, a[uj]);
        expert_backward_weight(a[uj], expert_slots[ug][uj][um], Real(0));
      }
      for (std::size_t j = 0; j < ue; ++j) board[j] = {&a[j].expert.g_in, a[j].gz_offsets};
      for (int e = 0; e < E; ++e) {
        const auto ue2 = static_cast<std::size_t>(e);
        receive_blocks<Real>(e, board, shape.hidden, a[ue2].g_returned, offsets);
        add_unpacked(gy[ue2], plan[ue2].order, a[ue2].g_returned, a[ue2].gh);
        attention_backward_input(w, a[ue2], gx[ue2]);
        attention_backward_weight(a[ue2], attn_slots[ug][ue2][um], Real(0));
      }
      std::swap(gy, gx);
    }
  }
  out.infer_losses = out.train_losses;
  out.grad_attn.resize(static_cast<std::size_t>(G));
  out.grad_expert.assign(static_cast<std::size_t>(G), std::vector<block_weights<Real>>(ue));
  for (std::size_t g = 0; g < static_cast<std::size_t>(G); ++g)
    for (std::size_t e = 0; e < ue; ++e) {
      block_weights<Real> replica;
      for (const block_weights<Real>& s : attn_slots[g][e]) add_into(replica, s);
      add_into(out.grad_attn[g], replica);
      for (const block_weights<Real>& s : expert_slots[g][e]) add_into(out.grad_expert[g][e], s);
    }
  return out;
}

// ---------------------------------------------------------------------------
// Comparisons.

template <class Real>
[[nodiscard]] bool same_bits(const std::vector<Real>& a, const std::vector<Real>& b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(Real)) == 0);
}
template <class Real>
[[nodiscard]] bool same_bits(const block_weights<Real>& a, const block_weights<Real>& b) {
  return same_bits(a.w1, b.w1) && same_bits(a.w2, b.w2);
}

struct comparison {
  bool train_losses = true, infer_losses = true, outputs = true, gradients = true;
  bool copies_identical = true;
  std::string first_mismatch;  // where, for the first check that failed
  [[nodiscard]] bool ok() const noexcept {
    return train_losses && infer_losses && outputs && gradients && copies_identical;
  }
};

// Everything bitwise: losses, inference outputs, every weight gradient.
template <class Real>
[[nodiscard]] comparison compare(const step_record<Real>& want, const step_record<Real>& got) {
  comparison c;
  c.copies_identical = got.copies_identical;
  const auto note = [&c](const std::string& where) {
    if (c.first_mismatch.empty()) c.first_mismatch = where;
  };
  for (std::size_t e = 0; e < want.train_losses.size(); ++e)
    for (std::size_t m = 0; m < want.train_losses[e].size(); ++m) {
      const std::string at = "replica " + std::to_string(e) + ", micro-batch " + std::to_string(m);
      if (!train_mlp::bitwise_equal(want.train_losses[e][m], got.train_losses.at(e).at(m))) {
        c.train_losses = false;
        note("training loss of " + at);
      }
      if (!train_mlp::bitwise_equal(want.infer_losses[e][m], got.infer_losses.at(e).at(m))) {
        c.infer_losses = false;
        note("inference loss of " + at);
      }
      if (!train_mlp::bitwise_equal(want.infer_outputs[e][m], got.infer_outputs.at(e).at(m))) {
        c.outputs = false;
        note("inference output of " + at);
      }
    }
  for (std::size_t g = 0; g < want.grad_attn.size(); ++g) {
    if (!same_bits(want.grad_attn[g], got.grad_attn.at(g))) {
      c.gradients = false;
      note("attention block's gradient of layer " + std::to_string(g));
    }
    for (std::size_t j = 0; j < want.grad_expert[g].size(); ++j)
      if (!same_bits(want.grad_expert[g][j], got.grad_expert.at(g).at(j))) {
        c.gradients = false;
        note("gradient of expert " + std::to_string(j) + " of layer " + std::to_string(g));
      }
  }
  return c;
}

// One block of verdict lines, the way train-mlp prints them.
inline bool print_comparison(const char* against, const comparison& c, bool mirrored) {
  const auto verdict = [](bool ok) { return ok ? "ok  " : "FAIL"; };
  std::printf("%s training losses bitwise equal to %s\n", verdict(c.train_losses), against);
  std::printf("%s inference losses bitwise equal\n", verdict(c.infer_losses));
  std::printf("%s inference outputs bitwise equal\n", verdict(c.outputs));
  std::printf("%s weight gradients (attention, every expert) bitwise equal\n",
              verdict(c.gradients));
  if (mirrored)
    std::printf("%s mirrored copies (rank r and rank P-1-r) hold identical summed gradients\n",
                verdict(c.copies_identical));
  if (!c.first_mismatch.empty()) std::printf("     first mismatch: %s\n", c.first_mismatch.c_str());
  return c.ok();
}

}  // namespace moe_overlap
