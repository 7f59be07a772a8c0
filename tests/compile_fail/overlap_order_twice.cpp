// Compile-fail case: an overlapped pair's issue order that issues combine(B)
// twice (and leaves combine(F) out) must not compile; checked_order names the
// first broken rule. With -DPOSITIVE_TWIN the generated order is checked,
// which must compile.
#include "dualpipe/overlap/issue_order.hpp"
#include "dualpipe/overlap/moe_layer.hpp"

using namespace dualpipe::overlap;

constexpr stage_programs programs = moe_layer_programs();

constexpr issue_order broken() {
  issue_order o = make_pair_order(programs);
#ifndef POSITIVE_TWIN
  o.ops[9] = o.ops[0];
#endif
  return o;
}

constexpr issue_order order = checked_order<programs, broken()>();
static_assert(order.size == 10);
