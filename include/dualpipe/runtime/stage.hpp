// The stage concept: what a user implements for one model stage so that the
// executor can run any schedule on it, and the loss concept for the last stage
// of each direction. The tensor type is the user's; the executor only moves
// buffers of it around and never looks inside.
#pragma once

#include <concepts>
#include <type_traits>
#include <utility>

namespace dualpipe {

// ---------------------------------------------------------------------------
// Stage
//
// A stage object holds one model stage's parameters on one rank. For every
// micro-batch it is given, it keeps what its backward needs (keyed by the
// micro-batch id) from forward until the backward (B) or, for a split
// backward, until the deferred weight gradient (W) has run. The executor
// frees the input buffer right after forward: a stage that needs its input
// later copies it (into storage it reuses from step to step).
//
//   s.forward(mb, input, output)
//       Forward of micro-batch mb. `output` is a buffer the executor owns and
//       reuses; the stage overwrites it (resizing it if it must: after the
//       first step buffers already have the right size).
//   s.backward(mb, output_grad, input_grad)
//       B: full backward. Writes the input gradient into `input_grad` and
//       accumulates the weight gradient at once. On the first stage nobody
//       reads `input_grad`.
//   s.backward_input(mb, output_grad, input_grad)
//       I: backward for the input only; the weight gradient of mb is
//       deferred until backward_weight(mb).
//   s.backward_weight(mb)
//       W: the deferred weight gradient of mb. The executor calls these in
//       the order the backward_input calls were made on this rank (FIFO, as
//       the reference's WeightGradStore).
//
// Optional:
//   s.overlapped_forward_backward(f_mb, f_input, f_output,
//                                 b_stage, b_mb, b_output_grad, b_input_grad)
//       One call for a schedule's overlapped pair: forward of f_mb on `s` and
//       full backward of b_mb on `b_stage` (another stage object of the same
//       type on this rank), so the stage can interleave their computation and
//       communication (the reference's overlapped_forward_backward). When the
//       stage type has no such member, the executor runs forward then
//       backward.
//
// Every member may throw; the executor then stops the whole pipeline and
// step() throws on every rank, naming this rank and the error.
// ---------------------------------------------------------------------------

template <class S, class Tensor>
concept stage_with_forward = requires(S& s, int mb, const Tensor& in, Tensor& out) {
  s.forward(mb, in, out);
};

template <class S, class Tensor>
concept stage_with_backward = requires(S& s, int mb, const Tensor& grad, Tensor& in_grad) {
  s.backward(mb, grad, in_grad);
};

template <class S, class Tensor>
concept stage_with_backward_input = requires(S& s, int mb, const Tensor& grad, Tensor& in_grad) {
  s.backward_input(mb, grad, in_grad);
};

template <class S>
concept stage_with_backward_weight = requires(S& s, int mb) { s.backward_weight(mb); };

template <class S, class Tensor>
concept stage_with_overlapped_forward_backward =
    requires(S& f, S& b, int f_mb, const Tensor& f_in, Tensor& f_out, int b_mb,
             const Tensor& b_grad, Tensor& b_in_grad) {
      f.overlapped_forward_backward(f_mb, f_in, f_out, b, b_mb, b_grad, b_in_grad);
    };

// What the executor needs of a tensor type: it keeps a pool of them, so they
// are default-constructible (an empty buffer) and movable (buffers change
// hands by swapping, never by copying).
template <class Tensor>
concept pipeline_tensor = std::default_initializable<Tensor> && std::movable<Tensor> &&
                          std::swappable<Tensor> && std::is_object_v<Tensor>;

template <class S, class Tensor>
concept pipeline_stage = pipeline_tensor<Tensor> && stage_with_forward<S, Tensor> &&
                         stage_with_backward<S, Tensor> &&
                         stage_with_backward_input<S, Tensor> && stage_with_backward_weight<S>;

// The same requirements, each failing as a sentence. The executor evaluates
// this; users can too: static_assert(dualpipe::check_pipeline_stage<S, T>()).
template <class S, class Tensor>
consteval bool check_pipeline_stage() {
  static_assert(pipeline_tensor<Tensor>,
                "dualpipe: the tensor type must be default-constructible and movable: the "
                "executor keeps a pool of empty buffers and hands them over by swapping");
  static_assert(stage_with_forward<S, Tensor>,
                "dualpipe: the stage type needs a member forward(int microbatch, const Tensor& "
                "input, Tensor& output)");
  static_assert(stage_with_backward<S, Tensor>,
                "dualpipe: the stage type needs a member backward(int microbatch, const Tensor& "
                "output_grad, Tensor& input_grad) (B: input and weight gradients)");
  static_assert(stage_with_backward_input<S, Tensor>,
                "dualpipe: the stage type needs a member backward_input(int microbatch, const "
                "Tensor& output_grad, Tensor& input_grad) (I: weight gradient deferred)");
  static_assert(stage_with_backward_weight<S>,
                "dualpipe: the stage type needs a member backward_weight(int microbatch) (W: "
                "the deferred weight gradient of that micro-batch)");
  return pipeline_stage<S, Tensor>;
}

// ---------------------------------------------------------------------------
// Loss
//
// Called on the last stage of each direction (the rank that holds stage
// stages-1 for a micro-batch):
//   l(output, label)                 -> the loss value of one micro-batch (any
//                                       non-void type; step() collects them)
//   l.gradient(output, label, seed)  -> writes d loss / d output into `seed`,
//                                       the output gradient that starts the
//                                       backward of the last stage
// The label type is L::label_type when L names one, else the tensor type.
// ---------------------------------------------------------------------------

namespace detail {
template <class L, class Tensor>
struct loss_label {
  using type = Tensor;
};
template <class L, class Tensor>
  requires requires { typename L::label_type; }
struct loss_label<L, Tensor> {
  using type = typename L::label_type;
};
}  // namespace detail

template <class L, class Tensor>
using loss_label_t = typename detail::loss_label<L, Tensor>::type;

template <class L, class Tensor>
concept loss_with_value = requires(L& l, const Tensor& out, const loss_label_t<L, Tensor>& label) {
  { l(out, label) };
  requires !std::is_void_v<decltype(l(out, label))>;
};

template <class L, class Tensor>
concept loss_with_gradient =
    requires(L& l, const Tensor& out, const loss_label_t<L, Tensor>& label, Tensor& seed) {
      l.gradient(out, label, seed);
    };

template <class L, class Tensor>
concept loss_function = loss_with_value<L, Tensor> && loss_with_gradient<L, Tensor>;

template <class L, class Tensor>
  requires loss_with_value<L, Tensor>
using loss_value_t = std::remove_cvref_t<decltype(std::declval<L&>()(
    std::declval<const Tensor&>(), std::declval<const loss_label_t<L, Tensor>&>()))>;

// "No loss": inference without a criterion. A training step that reaches a
// last stage without a loss function is an error at run time.
struct no_loss {};

template <class L, class Tensor>
consteval bool check_loss_function() {
  if constexpr (!std::is_same_v<L, no_loss>) {
    static_assert(loss_with_value<L, Tensor>,
                  "dualpipe: the loss type needs a call operator (const Tensor& output, const "
                  "Label& label) returning the loss value (not void)");
    static_assert(loss_with_gradient<L, Tensor>,
                  "dualpipe: the loss type needs a member gradient(const Tensor& output, const "
                  "Label& label, Tensor& output_grad) that writes the gradient seed");
    return loss_function<L, Tensor>;
  } else {
    return true;
  }
}

}  // namespace dualpipe
