// One pipeline stage of the moe-overlap example on one member of an expert
// group: `Layers` MoE layers (moe_model.hpp) run as the sub-op programs of
// DeepSeek-V3's layer (overlap/moe_layer.hpp). The stage supplies only what
// is its own (each sub-op's arithmetic or exchange, its lanes, how to abort
// its exchanges); dualpipe::overlap::programmed_stage derives the forward,
// the backward (whole, input part, deferred weight part) and the overlapped
// forward-backward pair the executor calls, and runs them on the rank's two
// lanes, so that one micro-batch's all-to-all runs under another's
// computation.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "dualpipe/overlap/cpu_lanes.hpp"
#include "dualpipe/overlap/moe_layer.hpp"
#include "dualpipe/overlap/stage.hpp"
#include "dualpipe/runtime/mirrored.hpp"
#include "expert_exchange.hpp"
#include "moe_model.hpp"

namespace moe_overlap {

namespace ov = dualpipe::overlap;

// What the stage objects of one rank share: the rank's lanes, the count of
// overlapped pairs (each pair's records carry its number as their tag, and
// the pair's micro-batches are noted while recording), and the fault
// --fail-rank arms: one sub-op throws, once, as a failing kernel or link
// would.
struct rank_context {
  ov::cpu_lanes lanes;
  int pairs = 0;
  struct pair_microbatches {
    int forward = -1, backward = -1;
  };
  std::vector<pair_microbatches> recorded_pairs;  // [tag - 1], while the lanes record
  // Which sub-op fails and how: mlp(B) throws, dispatch(B) throws, or
  // dispatch(B) never joins its exchange (its peers time out).
  enum class failure : std::uint8_t { compute, communication, stall } fail_how = failure::compute;
  std::atomic<bool> fail_armed{false};
  std::string fail_message;
};

// A stage's weight gradients of one layer: the attention block's and this
// member's expert's.
template <class Real>
struct layer_gradients {
  block_weights<Real> attn, expert;
};

template <class Real, int Layers>
class moe_stage : public ov::programmed_stage<moe_stage<Real, Layers>, tensor<Real>> {
 public:
  using tensor_type = tensor<Real>;
  static constexpr ov::stage_programs programs = ov::moe_layer_programs({}, Layers);

  using base = ov::programmed_stage<moe_stage<Real, Layers>, tensor<Real>>;

  // Stage `stage` of `weights`, on member `member` of `exchange`'s group
  // (which holds expert `member` of each layer), on the rank of `rank`.
  moe_stage(const model<Real>& weights, int stage, int member, int microbatches,
            expert_exchange<Real>& exchange, rank_context& rank)
      : weights_(&weights),
        stage_(stage),
        member_(member),
        microbatches_(microbatches),
        exchange_(&exchange),
        rank_(&rank),
        saved_(static_cast<std::size_t>(microbatches) * Layers),
        grads_(Layers) {
    if (weights.shape.layers != Layers)
      throw std::invalid_argument("moe_stage: the model has " +
                                  std::to_string(weights.shape.layers) +
                                  " layers per stage, the stage type " + std::to_string(Layers));
    for (int l = 0; l < Layers; ++l)
      plans_.push_back(make_route_plan(member, stage * Layers + l, weights.shape));
    keep_gradients_per_microbatch(false);
  }

  // --- what programmed_stage asks of its derived type -----------------------

  void run_sub_op(const ov::sub_op_call& call, const tensor_type& in, tensor_type& out) {
    if (call.which == ov::pass::backward &&
        call.index == (rank_->fail_how == rank_context::failure::compute
                           ? ov::moe_backward::mlp
                           : ov::moe_backward::dispatch) &&
        rank_->fail_armed.exchange(false)) {
      if (rank_->fail_how == rank_context::failure::stall) exchange_->stall(member_, tag_of(call));
      throw std::runtime_error(rank_->fail_message);
    }
    const int l = call.layer, mb = call.microbatch;
    layer_activations<Real>& s = saved(mb, l);
    const layer_weights<Real>& w = weights_->at(stage_, l);
    const route_plan& plan = plans_[static_cast<std::size_t>(l)];
    if (call.which == ov::pass::forward) {
      switch (call.index) {
        case ov::moe_forward::attention:
          attention_forward(w, l == 0 ? in : saved(mb, l - 1).y, s);
          return;
        case ov::moe_forward::dispatch:
          pack_rows(s.h, plan.order, s.sent);
          exchange(call, {&s.sent, plan.offsets}, s.expert.in, s.r_offsets);
          return;
        case ov::moe_forward::mlp:
          expert_forward(w, member_, s);
          return;
        case ov::moe_forward::combine:
          exchange(call, {&s.expert.out, s.r_offsets}, s.returned, s.returned_offsets);
          add_unpacked(s.h, plan.order, s.returned, l == Layers - 1 ? out : s.y);
          return;
        default:
          break;
      }
    } else {
      // The output gradient of layer l: the stage's, or layer l+1's input gradient.
      const tensor_type& gy = l == Layers - 1 ? in : saved(mb, l + 1).gx;
      layer_gradients<Real>& g = gradient_slot(l, mb);
      switch (call.index) {
        case ov::moe_backward::combine:
          pack_rows(gy, plan.order, s.gy_sent);
          exchange(call, {&s.gy_sent, plan.offsets}, s.gz, s.gz_offsets);
          return;
        case ov::moe_backward::mlp:
          expert_backward_input(w, member_, s);
          return;
        case ov::moe_backward::mlp_weight:
          expert_backward_weight(s, g.expert, beta());
          return;
        case ov::moe_backward::dispatch:
          exchange(call, {&s.expert.g_in, s.gz_offsets}, s.g_returned, s.returned_offsets);
          add_unpacked(gy, plan.order, s.g_returned, s.gh);
          return;
        case ov::moe_backward::attention:
          attention_backward_input(w, s, l == 0 ? out : s.gx);
          return;
        case ov::moe_backward::attention_weight:
          attention_backward_weight(s, g.attn, beta());
          return;
        default:
          break;
      }
    }
    throw std::logic_error("moe_stage: no sub-op " + std::to_string(call.index));
  }

  [[nodiscard]] ov::cpu_lanes& lanes() noexcept { return rank_->lanes; }

  // A sub-op failed on this rank: whatever the other lane is blocked in (an
  // all-to-all whose peers wait for this rank) must end.
  void abort_communication(std::string_view why) noexcept { exchange_->abort(why); }

  // The facade's pair, with its records tagged by the pair's number.
  void overlapped_forward_backward(int f_mb, const tensor_type& f_input, tensor_type& f_output,
                                   moe_stage& b_stage, int b_mb, const tensor_type& b_output_grad,
                                   tensor_type& b_input_grad) {
    const int tag = ++rank_->pairs;
    if (lanes().recording()) rank_->recorded_pairs.push_back({f_mb, b_mb});
    lanes().set_tag(lanes().recording() ? static_cast<int>(rank_->recorded_pairs.size()) : tag);
    struct untag {
      ov::cpu_lanes* lanes;
      ~untag() { lanes->set_tag(0); }
    } const guard{&lanes()};
    base::overlapped_forward_backward(f_mb, f_input, f_output, b_stage, b_mb, b_output_grad,
                                      b_input_grad);
  }

  // --- gradients ----------------------------------------------------------

  [[nodiscard]] int stage() const noexcept { return stage_; }

  // On: each micro-batch's W writes its own slot (the checked steps; see
  // reference.hpp). Off: W accumulates into one (the timed steps). Either way
  // the gradients start from zero: -0.0 in the slots, which adds to any x
  // exactly (x + -0.0 == x, bit for bit, even for x = -0.0), so the sum with
  // the mirror's slots, where only one of the two copies ran each
  // micro-batch, is exact.
  void keep_gradients_per_microbatch(bool on) {
    per_microbatch_ = on;
    const std::size_t slots = on ? static_cast<std::size_t>(microbatches_) : 1;
    const auto h = static_cast<std::size_t>(weights_->shape.hidden);
    const auto f = static_cast<std::size_t>(weights_->shape.ffn());
    for (std::vector<layer_gradients<Real>>& layer : grads_) {
      layer.resize(slots);
      for (layer_gradients<Real>& g : layer)
        for (block_weights<Real>* b : {&g.attn, &g.expert}) {
          b->w1.assign(f * h, Real(-0.0));
          b->w2.assign(h * f, Real(-0.0));
        }
    }
  }

  // DualPipe: sums this copy's gradients and the mirror rank's copy of the
  // same stage into both (dualpipe::sum_mirrored_gradients), slot by slot.
  void sum_with_mirror(moe_stage& mirror) {
    if (mirror.stage_ != stage_ || mirror.per_microbatch_ != per_microbatch_)
      throw std::logic_error("moe_stage::sum_with_mirror: not a copy of the same stage");
    for (std::size_t l = 0; l < grads_.size(); ++l)
      for (std::size_t k = 0; k < grads_[l].size(); ++k) {
        layer_gradients<Real>& a = grads_[l][k];
        layer_gradients<Real>& b = mirror.grads_[l][k];
        dualpipe::sum_mirrored_gradients(a.attn.w1, b.attn.w1);
        dualpipe::sum_mirrored_gradients(a.attn.w2, b.attn.w2);
        dualpipe::sum_mirrored_gradients(a.expert.w1, b.expert.w1);
        dualpipe::sum_mirrored_gradients(a.expert.w2, b.expert.w2);
      }
  }

  // Layer l's gradients over the step: the slots summed in micro-batch order.
  [[nodiscard]] layer_gradients<Real> gradients(int layer) const {
    layer_gradients<Real> out;
    for (const layer_gradients<Real>& g : grads_[static_cast<std::size_t>(layer)]) {
      add_into(out.attn, g.attn);
      add_into(out.expert, g.expert);
    }
    return out;
  }

 private:
  [[nodiscard]] layer_activations<Real>& saved(int mb, int layer) {
    if (mb < 0 || mb >= microbatches_)
      throw std::out_of_range("moe_stage: micro-batch " + std::to_string(mb) + " of " +
                              std::to_string(microbatches_));
    return saved_[static_cast<std::size_t>(mb) * Layers + static_cast<std::size_t>(layer)];
  }
  [[nodiscard]] layer_gradients<Real>& gradient_slot(int layer, int mb) {
    return grads_[static_cast<std::size_t>(layer)]
                 [per_microbatch_ ? static_cast<std::size_t>(mb) : 0];
  }
  [[nodiscard]] Real beta() const noexcept { return per_microbatch_ ? Real(0) : Real(1); }

  [[nodiscard]] exchange_tag tag_of(const ov::sub_op_call& call) const {
    return {stage_,     call.microbatch,
            call.layer, call.which == ov::pass::backward,
            call.index, programs.of(call.which)[call.index].name.view()};
  }
  void exchange(const ov::sub_op_call& call, send_blocks<Real> send, tensor_type& recv,
                std::vector<int>& recv_offsets) {
    exchange_->all_to_all(member_, tag_of(call), send, weights_->shape.hidden, recv, recv_offsets);
  }

  const model<Real>* weights_;
  int stage_, member_, microbatches_;
  expert_exchange<Real>* exchange_;
  rank_context* rank_;
  std::vector<route_plan> plans_;                          // per layer
  std::vector<layer_activations<Real>> saved_;             // micro-batch * Layers + layer
  std::vector<std::vector<layer_gradients<Real>>> grads_;  // [layer][slot]
  bool per_microbatch_ = false;
};

}  // namespace moe_overlap
