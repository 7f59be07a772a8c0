// Compile-fail cases for the programmed stage. Built as is, an archetype with
// exactly what the facade asks of a derived stage (programs, run_sub_op,
// lanes) is a pipeline stage with an overlapped pair and compiles cleanly.
// With one -DMISSING_... macro a member is left out and the build must fail
// with the sentence naming it; with -DUNUSABLE_PROGRAMS the programs break a
// rule and the error spells program_problem()'s sentence.
#include <vector>

#include "dualpipe/overlap/cpu_lanes.hpp"
#include "dualpipe/overlap/moe_layer.hpp"
#include "dualpipe/overlap/program.hpp"
#include "dualpipe/overlap/stage.hpp"
#include "dualpipe/runtime/stage.hpp"

namespace archetype {

namespace ov = dualpipe::overlap;
using tensor = std::vector<float>;

// A backward whose first sub-op is a leaf: nothing for it to hang off.
constexpr ov::stage_programs leaf_first() {
  ov::stage_programs p = ov::moe_layer_programs();
  p.backward = ov::layer_program({
      ov::sub_op{"mlp.W", ov::lane::compute, ov::role::leaf},
      ov::sub_op{"mlp", ov::lane::compute, ov::role::chain},
  });
  return p;
}

struct stage : ov::programmed_stage<stage, tensor> {
#ifndef MISSING_PROGRAMS
#ifdef UNUSABLE_PROGRAMS
  static constexpr ov::stage_programs programs = leaf_first();
#else
  static constexpr ov::stage_programs programs = ov::moe_layer_programs({}, 2);
#endif
#endif
#ifndef MISSING_RUN_SUB_OP
  void run_sub_op(const ov::sub_op_call&, const tensor&, tensor&) {}
#endif
#ifndef MISSING_LANES
  ov::cpu_lanes& lanes() {
    return *lanes_;
  }
#endif
  ov::cpu_lanes* lanes_ = nullptr;
};

static_assert(dualpipe::check_pipeline_stage<stage, tensor>());
static_assert(dualpipe::stage_with_overlapped_forward_backward<stage, tensor>);

// Instantiates the facade's members, where the checks live.
inline void use(stage& a, stage& b, const tensor& in, tensor& out) {
  a.forward(0, in, out);
  a.backward(0, in, out);
  a.backward_input(0, in, out);
  a.backward_weight(0);
  a.overlapped_forward_backward(1, in, out, b, 0, in, out);
}

}  // namespace archetype
