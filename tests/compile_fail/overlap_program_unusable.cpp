// Compile-fail case: a backward program whose first sub-op is a leaf has no
// chain sub-op for it to hang off; checked_pair_order must refuse it at
// compile time. With -DPOSITIVE_TWIN the leaf follows its computation, which
// must compile.
#include "dualpipe/overlap/issue_order.hpp"

using namespace dualpipe::overlap;

constexpr stage_programs programs{
    layer_program({sub_op{"attn"}, sub_op{"send", lane::communication}}),
#ifndef POSITIVE_TWIN
    layer_program({sub_op{"attn.W", lane::compute, role::leaf}, sub_op{"attn"}}),
#else
    layer_program({sub_op{"attn"}, sub_op{"attn.W", lane::compute, role::leaf}}),
#endif
    1};

constexpr issue_order order = checked_pair_order<programs>();
static_assert(order.size == 4);
