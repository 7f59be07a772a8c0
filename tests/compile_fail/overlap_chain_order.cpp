// Compile-fail case: an issue order that puts dispatch(F) before attn(F),
// which comes first on the forward's chain, must not compile. With
// -DPOSITIVE_TWIN the two stay in chain order, which must compile.
#include <utility>

#include "dualpipe/overlap/issue_order.hpp"
#include "dualpipe/overlap/moe_layer.hpp"

using namespace dualpipe::overlap;

constexpr stage_programs programs = moe_layer_programs();

constexpr issue_order broken() {
  issue_order o = make_pair_order(programs);  // combine(B), attn(F), mlp(B), dispatch(F), ...
#ifndef POSITIVE_TWIN
  std::swap(o.ops[1], o.ops[3]);  // dispatch(F) before attn(F)
#else
  std::swap(o.ops[2], o.ops[3]);  // dispatch(F) before mlp(B): another chain, allowed
#endif
  return o;
}

constexpr issue_order order = checked_order<programs, broken()>();
static_assert(order.size == 10);
