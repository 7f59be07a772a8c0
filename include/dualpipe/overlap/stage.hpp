// The programmed stage: a facade, in the manner of range-v3's view_facade,
// that makes a pipeline stage (runtime/stage.hpp) out of a stage described by
// sub-op programs (program.hpp). The derived stage supplies its programs, one
// function that runs one sub-op, and its rank's lanes; it gets forward,
// backward, backward_input, backward_weight and overlapped_forward_backward,
// each run through the lanes in the order issue_order.hpp makes, so the
// executor (unchanged) runs its overlapped pairs with communication hidden
// under computation. Standard library only; CUDA lanes (cuda_lanes.hpp) plug
// in as the Lanes parameter.
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>

#include "dualpipe/overlap/cpu_lanes.hpp"
#include "dualpipe/overlap/issue_order.hpp"
#include "dualpipe/overlap/program.hpp"
#include "dualpipe/runtime/stage.hpp"
#include "dualpipe/schedule/build.hpp"

namespace dualpipe::overlap {

// What run_sub_op is asked to run: which sub-op (pass, lane, layer, index in
// the layer program), for which micro-batch, and on CUDA lanes the lane's
// stream (a cudaStream_t; nullptr on CPU lanes).
struct sub_op_call {
  pass which = pass::forward;
  lane where = lane::compute;
  int layer = 0;
  int index = 0;
  int microbatch = 0;
  void* stream = nullptr;
};

// How overlapped_forward_backward issues its pair: the generated order
// (make_pair_order), or the whole forward then the whole backward
// (make_sequential_order), the baseline for comparisons.
enum class pair_mode : std::uint8_t { overlapped, sequential };

// ---------------------------------------------------------------------------
// What a derived stage supplies, each as a concept and, in
// check_programmed_stage(), as a sentence.
// ---------------------------------------------------------------------------

template <class S>
concept stage_with_programs = requires {
  { S::programs } -> std::convertible_to<const stage_programs&>;
  // A constant: the orders are generated and checked at compile time.
  typename std::integral_constant<int, S::programs.layers>;
};

template <class S, class Tensor>
concept stage_with_run_sub_op = requires(S& s, const sub_op_call& call, const Tensor& in,
                                         Tensor& out) {
  s.run_sub_op(call, in, out);
};

template <class S, class Lanes>
concept stage_with_lanes = requires(S& s) {
  { s.lanes() } -> std::same_as<Lanes&>;
};

template <class S>
concept stage_with_abort_communication = requires(S& s, std::string_view why) {
  { s.abort_communication(why) }
  noexcept;
};

template <class Derived, class Tensor, class Lanes>
class programmed_stage;

namespace detail {

template <stage_programs Programs>
constexpr auto program_problem_sentence() {
  return ::dualpipe::detail::sentence_of<[] { return program_problem(Programs); }>();
}

// Instantiated only for programs that cannot run: the error spells the
// reason in the template argument.
template <auto Problem>
struct stage_programs_unusable {
  static_assert(Problem.text[0] == '\0',
                "dualpipe::overlap::programmed_stage: the stage's programs cannot run, for the "
                "reason spelled out in the template argument of stage_programs_unusable above");
};

// Every order a programmed stage issues, generated once at compile time.
template <stage_programs Programs>
struct stage_orders {
  static constexpr issue_order pair = checked_pair_order<Programs>();
  static constexpr issue_order sequential = make_sequential_order(Programs);
  static constexpr issue_order forward = make_pass_order(Programs, pass::forward);
  static constexpr issue_order backward = make_pass_order(Programs, pass::backward);
  static constexpr issue_order backward_input =
      make_pass_order(Programs, pass::backward, pass_part::chain_only);
  static constexpr issue_order backward_weight =
      make_pass_order(Programs, pass::backward, pass_part::leaves_only);
};

}  // namespace detail

// The requirements on a derived stage, each failing as a sentence; then its
// programs, failing with program_problem()'s sentence.
template <class Derived, class Tensor, class Lanes>
consteval bool check_programmed_stage() {
  static_assert(std::derived_from<Derived, programmed_stage<Derived, Tensor, Lanes>>,
                "dualpipe::overlap::programmed_stage: the stage type must derive publicly from "
                "programmed_stage<Stage, Tensor, Lanes>, naming itself as the first argument");
  static_assert(stage_with_programs<Derived>,
                "dualpipe::overlap::programmed_stage: the stage type needs a member `static "
                "constexpr dualpipe::overlap::stage_programs programs` (its forward and backward "
                "programs and their layer count)");
  static_assert(stage_with_run_sub_op<Derived, Tensor>,
                "dualpipe::overlap::programmed_stage: the stage type needs a member "
                "run_sub_op(const sub_op_call& call, const Tensor& in, Tensor& out) that runs "
                "one sub-op");
  static_assert(stage_with_lanes<Derived, Lanes>,
                "dualpipe::overlap::programmed_stage: the stage type needs a member lanes() "
                "returning Lanes& (its rank's lanes, shared by the rank's stage objects)");
  if constexpr (stage_with_programs<Derived>) {
    static_assert(program_problem(Derived::programs).empty(),
                  "dualpipe::overlap::programmed_stage: the stage's programs cannot run "
                  "(program_problem(Stage::programs) is not empty; the next error spells it)");
    if constexpr (!program_problem(Derived::programs).empty()) {
      (void)
          detail::stage_programs_unusable<detail::program_problem_sentence<Derived::programs>()>{};
      return false;
    }
  }
  return std::derived_from<Derived, programmed_stage<Derived, Tensor, Lanes>> &&
         stage_with_programs<Derived> && stage_with_run_sub_op<Derived, Tensor> &&
         stage_with_lanes<Derived, Lanes>;
}

// ---------------------------------------------------------------------------
// programmed_stage<Derived, Tensor, Lanes>
//
// The derived stage supplies (as public members):
//   static constexpr stage_programs programs = ...;
//   void run_sub_op(const sub_op_call& call, const Tensor& in, Tensor& out);
//       For a forward sub-op, `in` and `out` are the forward's input and
//       output; for a backward sub-op, the output gradient and the input
//       gradient; for a leaf run by backward_weight (the deferred W), empty
//       tensors owned by the facade: such a leaf reads only what the stage
//       kept. Sub-ops of one lane run in issue order, but the two lanes run
//       at once (on CPU lanes: compute on the rank's thread, communication on
//       the lanes' worker), so sub-ops of different lanes must not touch the
//       same state unless one depends on the other: e.g. keep per-micro-batch
//       state in storage sized before the step, not in a map that grows.
//   Lanes& lanes();
//       The rank's lanes, shared by all of the rank's stage objects.
// Optional:
//   void abort_communication(std::string_view why) noexcept;
//       Called once when a sub-op fails (on the lane that failed, while the
//       other may be blocked in a collective): wake peers and local waiters,
//       e.g. abort an all-to-all communicator. In a pair it is called on both
//       stage objects (once each, once if they are the same object).
//
// It gets the pipeline_stage interface and overlapped_forward_backward, so
// the executor picks up the pair. A sub-op's exception leaves as the lanes'
// sub_op_error, naming it, with the exception nested.
// ---------------------------------------------------------------------------

template <class Derived, class Tensor, class Lanes = cpu_lanes>
class programmed_stage {
 public:
  using tensor_type = Tensor;
  using lanes_type = Lanes;

  // F: the forward program, every layer in turn.
  void forward(int microbatch, const Tensor& input, Tensor& output) {
    if constexpr (checked()) {
      const half f{&derived(), microbatch, &input, &output};
      run(orders<>::forward.view(), f, f);
    }
  }
  // B: the backward program, layers in reverse, leaves included.
  void backward(int microbatch, const Tensor& output_grad, Tensor& input_grad) {
    if constexpr (checked()) {
      const half b{&derived(), microbatch, &output_grad, &input_grad};
      run(orders<>::backward.view(), b, b);
    }
  }
  // I: the backward's chain only; its leaves wait for backward_weight.
  void backward_input(int microbatch, const Tensor& output_grad, Tensor& input_grad) {
    if constexpr (checked()) {
      const half b{&derived(), microbatch, &output_grad, &input_grad};
      run(orders<>::backward_input.view(), b, b);
    }
  }
  // W: the backward's leaves, on empty tensors.
  void backward_weight(int microbatch) {
    if constexpr (checked()) {
      const Tensor no_input{};
      Tensor no_output{};
      const half b{&derived(), microbatch, &no_input, &no_output};
      run(orders<>::backward_weight.view(), b, b);
    }
  }
  // The overlapped pair: forward of f_microbatch here and full backward of
  // b_microbatch on b_stage (this rank's, possibly this object), issued in
  // pair_order(mode()) through this stage's lanes.
  void overlapped_forward_backward(int f_microbatch, const Tensor& f_input, Tensor& f_output,
                                   Derived& b_stage, int b_microbatch, const Tensor& b_output_grad,
                                   Tensor& b_input_grad) {
    if constexpr (checked()) {
      const half f{&derived(), f_microbatch, &f_input, &f_output};
      const half b{&b_stage, b_microbatch, &b_output_grad, &b_input_grad};
      run(pair_order(mode_), f, b);
    }
  }

  // Overlapped (the default) or sequential pairs: switch for comparisons.
  void set_pair_mode(pair_mode m) noexcept { mode_ = m; }
  [[nodiscard]] pair_mode mode() const noexcept { return mode_; }

  // The order a pair is issued in under `m`, checked at compile time.
  [[nodiscard]] static std::span<const sub_op_ref> pair_order(
      pair_mode m = pair_mode::overlapped) noexcept {
    if constexpr (checked())
      return m == pair_mode::overlapped ? orders<>::pair.view() : orders<>::sequential.view();
    else
      return {};
  }

 private:
  // Derived is complete only where members are instantiated: the checks and
  // the orders are reached from there.
  static consteval bool checked() { return check_programmed_stage<Derived, Tensor, Lanes>(); }
  template <class D = Derived>
  using orders = detail::stage_orders<D::programs>;

  // One pass of a run: the stage object, its micro-batch and its tensors.
  struct half {
    Derived* stage;
    int microbatch;
    const Tensor* in;
    Tensor* out;
  };

  Derived& derived() noexcept { return static_cast<Derived&>(*this); }

  void run(std::span<const sub_op_ref> order, const half& f, const half& b) {
    constexpr const stage_programs& programs = Derived::programs;
    // CUDA lanes pass the lane's stream; CPU lanes pass none.
    const auto run_sub_op = [&](sub_op_ref r, auto... stream) {
      static_assert(sizeof...(stream) <= 1);
      const half& h = r.which == pass::forward ? f : b;
      sub_op_call call{r.which, sub_op_of(programs, r).where, r.layer, r.index, h.microbatch,
                       nullptr};
      ((call.stream = static_cast<void*>(stream)), ...);
      h.stage->run_sub_op(call, *h.in, *h.out);
    };
    const auto abort = [&](std::string_view why) noexcept {
      if constexpr (stage_with_abort_communication<Derived>) {
        f.stage->abort_communication(why);
        if (b.stage != f.stage) b.stage->abort_communication(why);
      } else {
        (void)why;
      }
    };
    derived().lanes().run(programs, order, run_sub_op, abort);
  }

  pair_mode mode_ = pair_mode::overlapped;
};

}  // namespace dualpipe::overlap
