// Compile-fail case: a leaf that reduces a weight gradient across ranks
// (communication) waits for the leaf that computes it (after = 1); an order
// that issues the reduction first would leave its lane waiting forever and
// must not compile. With -DPOSITIVE_TWIN the two leaves come in order,
// which must compile.
#include "dualpipe/overlap/issue_order.hpp"

using namespace dualpipe::overlap;

constexpr stage_programs programs{
    layer_program({sub_op{"attn"}}),
    layer_program({sub_op{"attn"}, sub_op{"attn.W", lane::compute, role::leaf},
                   sub_op{"reduce.W", lane::communication, role::leaf, 0.0, 1}}),
    1};

constexpr issue_order broken() {
  issue_order o{};
  o.push(make_ref(pass::backward, 0, 0));
#ifndef POSITIVE_TWIN
  o.push(make_ref(pass::backward, 0, 2));
  o.push(make_ref(pass::backward, 0, 1));
#else
  o.push(make_ref(pass::backward, 0, 1));
  o.push(make_ref(pass::backward, 0, 2));
#endif
  o.push(make_ref(pass::forward, 0, 0));
  return o;
}

constexpr issue_order order = checked_order<programs, broken()>();
static_assert(order.size == 4);
