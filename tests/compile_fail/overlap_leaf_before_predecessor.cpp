// Compile-fail case: an issue order that puts the leaf mlp.W(B) before
// mlp(B), the chain sub-op it hangs off, must not compile. With
// -DPOSITIVE_TWIN the leaf goes right after mlp(B), which must compile.
#include <utility>

#include "dualpipe/overlap/issue_order.hpp"
#include "dualpipe/overlap/moe_layer.hpp"

using namespace dualpipe::overlap;

constexpr stage_programs programs = moe_layer_programs();

constexpr issue_order broken() {
  issue_order o{};
  const pass F = pass::forward, B = pass::backward;
  for (const sub_op_ref r :
       {make_ref(B, 0, moe_backward::combine),
#ifndef POSITIVE_TWIN
        make_ref(B, 0, moe_backward::mlp_weight), make_ref(B, 0, moe_backward::mlp),
#else
        make_ref(B, 0, moe_backward::mlp), make_ref(B, 0, moe_backward::mlp_weight),
#endif
        make_ref(F, 0, moe_forward::attention), make_ref(F, 0, moe_forward::dispatch),
        make_ref(B, 0, moe_backward::dispatch), make_ref(F, 0, moe_forward::mlp),
        make_ref(B, 0, moe_backward::attention), make_ref(B, 0, moe_backward::attention_weight),
        make_ref(F, 0, moe_forward::combine)})
    o.push(r);
  return o;
}

constexpr issue_order order = checked_order<programs, broken()>();
static_assert(order.size == 10);
