// The programs of DeepSeek-V3's layer (report, section 3.2.1): attention,
// all-to-all dispatch to the experts, the experts' MLP, all-to-all combine;
// the backward in reverse, each computation split into its input part (on
// the chain) and its weight part (a leaf). make_pair_order gives them the
// issue order of DeepSeek's published training trace.
#pragma once

#include "dualpipe/overlap/program.hpp"

namespace dualpipe::overlap {

// The time of each part of one layer, in any unit (0: unknown).
struct moe_layer_costs {
  double attention = 0.0;  // forward
  double dispatch = 0.0;   // one all-to-all, either direction
  double mlp = 0.0;        // forward
  double combine = 0.0;    // one all-to-all, either direction
  // Backward parts: input gradient and weight gradient of each computation.
  double attention_input = 0.0, attention_weight = 0.0;
  double mlp_input = 0.0, mlp_weight = 0.0;
};

// Sub-op indices of the two programs, for stages that switch on them.
namespace moe_forward {
inline constexpr int attention = 0, dispatch = 1, mlp = 2, combine = 3;
}
namespace moe_backward {
inline constexpr int combine = 0, mlp = 1, mlp_weight = 2, dispatch = 3, attention = 4,
                     attention_weight = 5;
}

[[nodiscard]] constexpr stage_programs moe_layer_programs(const moe_layer_costs& c = {},
                                                          int layers = 1) {
  constexpr lane compute = lane::compute, communication = lane::communication;
  stage_programs p{};
  p.forward = layer_program({
      sub_op{"attn", compute, role::chain, c.attention},
      sub_op{"dispatch", communication, role::chain, c.dispatch},
      sub_op{"mlp", compute, role::chain, c.mlp},
      sub_op{"combine", communication, role::chain, c.combine},
  });
  p.backward = layer_program({
      sub_op{"combine", communication, role::chain, c.combine},
      sub_op{"mlp", compute, role::chain, c.mlp_input},
      sub_op{"mlp.W", compute, role::leaf, c.mlp_weight},
      sub_op{"dispatch", communication, role::chain, c.dispatch},
      sub_op{"attn", compute, role::chain, c.attention_input},
      sub_op{"attn.W", compute, role::leaf, c.attention_weight},
  });
  p.layers = layers;
  return p;
}

}  // namespace dualpipe::overlap
