// The executor: runs one rank's part of any schedule table on the user's stage
// objects and a transport. It owns the micro-batch bookkeeping (which inputs,
// outputs and gradients are live per stage and micro-batch, the FIFO of
// deferred weight gradients, when a buffer may be reused), keeps buffers in a
// pool sized from the table before the first step, and turns any failure on
// any rank into an exception on every rank.
#pragma once

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "dualpipe/analysis/validate.hpp"
#include "dualpipe/passes/forward_only.hpp"
#include "dualpipe/passes/lower_communication.hpp"
#include "dualpipe/runtime/detail/buffer_pool.hpp"
#include "dualpipe/runtime/detail/in_flight.hpp"
#include "dualpipe/runtime/detail/rank_layout.hpp"
#include "dualpipe/runtime/stage.hpp"
#include "dualpipe/schedule/action_syntax.hpp"
#include "dualpipe/schedule/deferred_weights.hpp"
#include "dualpipe/schedule/instruction.hpp"
#include "dualpipe/schedule/table.hpp"
#include "dualpipe/transport/errors.hpp"
#include "dualpipe/transport/transport.hpp"

namespace dualpipe {

struct executor_options {
  // Validate the table once at construction (validate(), and the same for
  // its forward-only projection). Turning it off trusts the table.
  bool validate = true;
};

struct step_options {
  // Inference: run only the forwards (and their communication) of the table.
  bool forward_only = false;
  // Keep the outputs of the last stage for the micro-batches leaving at this
  // rank (step_result::outputs).
  bool return_outputs = false;
};

namespace detail {

// The loss values a step collects: nothing without a loss function.
template <class Loss, class Tensor>
struct loss_value {
  using type = loss_value_t<Loss, Tensor>;
};
template <class Tensor>
struct loss_value<no_loss, Tensor> {
  using type = no_loss;
};

}  // namespace detail

// Runs one rank of a schedule. Stage: the user's stage type (pipeline_stage),
// Transport: this rank's endpoint (pipeline_transport), Loss: the loss
// function type used on the last stage (loss_function), or no_loss.
template <class Stage, class Transport, class Loss = no_loss>
class executor {
  static_assert(check_pipeline_transport<Transport>());

 public:
  using tensor_type = typename Transport::tensor_type;
  using label_type = loss_label_t<Loss, tensor_type>;
  using loss_value_type = typename detail::loss_value<Loss, tensor_type>::type;

  static_assert(check_pipeline_stage<Stage, tensor_type>());
  static_assert(check_loss_function<Loss, tensor_type>());
  static_assert(std::default_initializable<loss_value_type> && std::movable<loss_value_type>,
                "dualpipe::executor: the loss value type must be default-constructible and "
                "movable: the executor keeps one per micro-batch");

  // Whether overlapped pairs go to the stage's overlapped_forward_backward
  // (true) or run as forward then backward (false).
  static constexpr bool overlaps_forward_backward =
      stage_with_overlapped_forward_backward<Stage, tensor_type>;

  // What a step returns; valid until the next step. The i-th loss and output
  // belong to microbatches[i], the micro-batches whose last stage runs here.
  struct step_result {
    std::span<const int> microbatches;
    std::span<const loss_value_type> losses;  // empty without a loss function
    std::span<tensor_type> outputs;           // empty unless return_outputs
  };

  // `table`: the whole schedule (all ranks); the executor keeps its own copy
  // of this rank's part. A compute-only table is lowered first
  // (lower_communication). `stage_of(s)` returns the stage object for model
  // stage s; it is called once per stage this rank holds, at construction,
  // and the objects must outlive the executor. On a bad table every rank is
  // stopped (transport.abort) and std::invalid_argument says why.
  template <class StageOf>
  executor(table_view table, Transport& transport, StageOf&& stage_of,
           executor_options options = {})
      : transport_(&transport), rank_(transport.rank()) {
    static_assert(std::invocable<StageOf&, int>,
                  "dualpipe::executor: stage_of must be callable with a stage number (int)");
    if constexpr (std::invocable<StageOf&, int>)
      static_assert(std::same_as<std::invoke_result_t<StageOf&, int>, Stage&>,
                    "dualpipe::executor: stage_of(s) must return Stage& (a reference to the "
                    "stage object, which outlives the executor); a lambda needs '-> Stage&'");
    try {
      setup(table, options);
      stages_.reserve(layout_.local_stages().size());
      for (const int s : layout_.local_stages()) stages_.push_back(&std::invoke(stage_of, s));
    } catch (const std::exception& e) {
      transport.abort(e.what());
      throw;
    }
  }

  executor(const executor&) = delete;
  executor& operator=(const executor&) = delete;
  // Movable (e.g. into a container before the threads start), not
  // move-assignable: the target's batches in flight would be dropped.
  executor(executor&&) = default;
  executor& operator=(executor&&) = delete;
  ~executor() {
    if constexpr (transport_with_deferred_completion<Transport>) {
      // Sent buffers of unfinished batches must outlive the transport's reads.
      if (transport_ != nullptr)
        in_flight_.drain([this](auto& ticket) { transport_->wait(ticket); });
    }
  }

  [[nodiscard]] int rank() const noexcept { return rank_; }
  [[nodiscard]] const schedule_info& info() const noexcept { return info_; }
  // Model stages held here, ascending.
  [[nodiscard]] std::span<const int> local_stages() const noexcept {
    return layout_.local_stages();
  }
  // Micro-batches whose first stage runs here: step() takes one input each,
  // in this order.
  [[nodiscard]] std::span<const int> entering_microbatches() const noexcept {
    return layout_.entering();
  }
  // Micro-batches whose last stage runs here: one label, loss and output each.
  [[nodiscard]] std::span<const int> leaving_microbatches() const noexcept {
    return layout_.leaving();
  }
  // This rank's instructions as it runs them (training, or forward-only).
  [[nodiscard]] std::span<const instruction> program(bool forward_only = false) const noexcept {
    return programs_[forward_only ? 1 : 0];
  }
  // Buffers in the pool: sized from the table at construction, it grows
  // only if a deferred-completion transport holds sent buffers for long.
  [[nodiscard]] std::size_t pool_size() const noexcept { return pool_.size(); }

  // A training or inference step with micro-batch vectors: inputs[i] feeds
  // entering_microbatches()[i], labels[i] goes with leaving_microbatches()[i].
  const step_result& step(std::span<const tensor_type> inputs, std::span<const label_type> labels,
                          Loss& loss, step_options options = {})
    requires(!std::same_as<Loss, no_loss>)
  {
    return run_step(inputs, labels, &loss, options);
  }
  // A step without a loss function: inference, or training on a rank that
  // holds no last stage.
  const step_result& step(std::span<const tensor_type> inputs, step_options options = {}) {
    return run_step(inputs, {}, static_cast<Loss*>(nullptr), options);
  }

  // Splitting a whole batch: split(batch, part, parts, out) writes part
  // `part` of `parts` into `out`, once per micro-batch entering here (parts =
  // entering_microbatches().size()). The buffers are the executor's and are
  // reused from step to step; pass the span to step().
  template <class Batch, class Split>
    requires std::invocable<Split&, const Batch&, int, int, tensor_type&>
  std::span<const tensor_type> split_inputs(const Batch& batch, Split&& split) {
    const int parts = static_cast<int>(layout_.entering().size());
    split_inputs_.resize(static_cast<std::size_t>(parts));
    for (int i = 0; i < parts; ++i) split(batch, i, parts, split_inputs_[static_cast<std::size_t>(i)]);
    return split_inputs_;
  }
  // The same for labels, one per micro-batch leaving here.
  template <class Batch, class Split>
    requires std::invocable<Split&, const Batch&, int, int, label_type&>
  std::span<const label_type> split_labels(const Batch& batch, Split&& split) {
    static_assert(std::default_initializable<label_type>,
                  "dualpipe::executor::split_labels: the label type must be default-constructible");
    const int parts = static_cast<int>(layout_.leaving().size());
    split_labels_.resize(static_cast<std::size_t>(parts));
    for (int i = 0; i < parts; ++i) split(batch, i, parts, split_labels_[static_cast<std::size_t>(i)]);
    return split_labels_;
  }
  // Gathering the last step's outputs: gather(outputs, whole) with the
  // outputs in leaving_microbatches() order (needs return_outputs).
  template <class Whole, class Gather>
    requires std::invocable<Gather&, std::span<const tensor_type>, Whole&>
  void gather_outputs(Whole& whole, Gather&& gather) const {
    gather(std::span<const tensor_type>(result_.outputs.data(), result_.outputs.size()), whole);
  }

 private:
  using ticket_type = decltype(std::declval<Transport&>().commit());
  static constexpr int none = -1;

  // The live buffers of one (local stage, micro-batch): pool indices.
  struct slot {
    int input = none;        // received or handed over; freed after forward
    int output = none;       // until sent, handed over, or (last stage) its backward
    int output_grad = none;  // received, handed over; freed after backward
    int input_grad = none;   // until sent or handed over
  };

  struct step_context {
    std::span<const tensor_type> inputs;
    std::span<const label_type> labels;
    Loss* loss = nullptr;
    bool forward_only = false;
    bool return_outputs = false;
  };

  // --- construction -------------------------------------------------------

  void setup(table_view table, executor_options options) {
    if (table.ranks() != transport_->ranks())
      throw std::invalid_argument("dualpipe::executor: the table is for " +
                                  std::to_string(table.ranks()) + " ranks but the transport "
                                  "connects " + std::to_string(transport_->ranks()));
    if (rank_ < 0 || rank_ >= table.ranks())
      throw std::invalid_argument("dualpipe::executor: the transport's rank " +
                                  std::to_string(rank_) + " is outside the table's 0.." +
                                  std::to_string(table.ranks() - 1));
    schedule_table lowered;
    if (!table.info.with_communication) {
      lowered = lower_communication(table);  // validates its input
      table = lowered.view();
    } else if (options.validate) {
      const validation v = validate(table);
      if (!v.ok) throw std::invalid_argument("dualpipe::executor: " + describe(v));
    }
    if (options.validate && !table.info.forward_only) {
      try {
        (void)forward_only_table(table);
      } catch (const std::invalid_argument& e) {
        throw std::invalid_argument(std::string("dualpipe::executor: ") + e.what());
      }
    }
    info_ = table.info;
    info_.with_communication = true;
    S_ = table.stages();
    N_ = table.microbatches();

    const std::span<const instruction> mine = table.rank(rank_);
    programs_[0].assign(mine.begin(), mine.end());
    programs_[1] = forward_projection(mine);
    layout_ = detail::rank_layout(info_, table.stage_ranks, rank_, programs_[0]);

    const std::size_t cells = layout_.local_stages().size() * static_cast<std::size_t>(N_);
    slots_.assign(cells, slot{});
    deferred_.reserve(cells);
    losses_.resize(layout_.leaving().size());
    outputs_.resize(layout_.leaving().size());
    std::size_t max_batch = 0, batch = 0;
    for (const instruction& x : programs_[0]) {
      if (is_send(x.kind)) ++batch;
      if (x.kind == op::commit) batch = 0;
      max_batch = std::max(max_batch, batch);
    }
    sent_.reserve(max_batch);
    if constexpr (transport_with_deferred_completion<Transport>)
      in_flight_.reserve(programs_[0].size());

    // Preallocation: walk both programs without calling anything, so the
    // pool holds the most buffers any step needs before the first step.
    if (!info_.forward_only) dry_walk(false);
    dry_walk(true);
  }

  void dry_walk(bool forward_only) {
    step_context ctx;
    ctx.forward_only = forward_only;
    reset_bookkeeping();
    walk<true>(programs_[forward_only ? 1 : 0], ctx);
    finish_walk();
  }

  // --- the step -----------------------------------------------------------

  const step_result& run_step(std::span<const tensor_type> inputs,
                              std::span<const label_type> labels, Loss* loss,
                              step_options options) {
    step_context ctx{inputs, labels, loss, options.forward_only, options.return_outputs};
    try {
      check_step(ctx);
      if constexpr (transport_with_begin_step<Transport>) transport_->begin_step();
      reset_bookkeeping();
      walk<false>(programs_[ctx.forward_only ? 1 : 0], ctx);
      finish_walk();
      if constexpr (transport_with_finish_step<Transport>) transport_->finish_step();
    } catch (const pipeline_aborted&) {
      throw;  // another rank stopped the pipeline; it already said why
    } catch (const std::exception& e) {
      transport_->abort(e.what());
      throw;
    } catch (...) {
      transport_->abort(here() + " failed with an exception of unknown type");
      throw;
    }
    result_.microbatches = layout_.leaving();
    result_.losses = ctx.loss != nullptr ? std::span<const loss_value_type>(losses_)
                                         : std::span<const loss_value_type>();
    result_.outputs = ctx.return_outputs ? std::span<tensor_type>(outputs_) : std::span<tensor_type>();
    return result_;
  }

  [[nodiscard]] std::string here() const {
    return "dualpipe::executor: rank " + std::to_string(rank_);
  }

  void check_step(const step_context& ctx) const {
    if (!ctx.forward_only && info_.forward_only)
      throw std::invalid_argument(here() + ": the table is forward-only (inference); a training "
                                           "step needs a training table, or pass forward_only");
    const std::span<const int> entering = layout_.entering();
    const std::span<const int> leaving = layout_.leaving();
    if (ctx.inputs.size() != entering.size())
      throw std::invalid_argument(
          here() + " runs the first stage (stage 0) of micro-batches " +
          detail::describe_microbatches(entering) + " (" + std::to_string(entering.size()) +
          " of them) and needs one input each, but step() was given " +
          std::to_string(ctx.inputs.size()));
    if (leaving.empty()) return;
    if (ctx.loss == nullptr && !ctx.forward_only)
      throw std::invalid_argument(
          here() + " runs the last stage (stage " + std::to_string(S_ - 1) +
          ") of micro-batches " + detail::describe_microbatches(leaving) +
          ": a training step needs a loss function there");
    if (ctx.loss != nullptr && ctx.labels.size() != leaving.size())
      throw std::invalid_argument(
          here() + " runs the last stage (stage " + std::to_string(S_ - 1) +
          ") of micro-batches " + detail::describe_microbatches(leaving) + " (" +
          std::to_string(leaving.size()) + " of them) and needs one label each for the loss, "
          "but step() was given " + std::to_string(ctx.labels.size()));
  }

  // Frees everything a previous (possibly failed) step left behind.
  void reset_bookkeeping() {
    for (slot& sl : slots_) {
      release(sl.input);
      release(sl.output);
      release(sl.output_grad);
      release(sl.input_grad);
    }
    for (int& b : sent_) release(b);
    sent_.clear();
    pending_receives_ = 0;
    deferred_.clear();
    poll_in_flight();
  }

  template <bool Dry>
  void walk(const std::vector<instruction>& program, const step_context& ctx) {
    for (std::size_t i = 0; i < program.size(); ++i) {
      const instruction& x = program[i];
      switch (x.kind) {
        case op::forward: run_forward<Dry>(x, i, ctx); break;
        case op::backward:
        case op::backward_input: run_backward<Dry>(x, i, ctx, x.stage, x.microbatch, x.kind); break;
        case op::backward_weight: run_weight<Dry>(x, i); break;
        case op::overlapped_forward_backward: run_overlapped<Dry>(x, i, ctx); break;
        case op::send_forward: post_send<Dry>(x, i, at(x.stage, x.microbatch).output, "output"); break;
        case op::send_backward:
          post_send<Dry>(x, i, at(x.stage, x.microbatch).input_grad, "input gradient");
          break;
        case op::recv_forward: post_recv<Dry>(x, i, at(x.stage, x.microbatch).input, "input"); break;
        case op::recv_backward:
          post_recv<Dry>(x, i, at(x.stage, x.microbatch).output_grad, "output gradient");
          break;
        case op::commit: run_commit<Dry>(); break;
      }
    }
  }

  // The end of a walk: everything posted was committed, every deferred weight
  // gradient ran, and every buffer was consumed.
  void finish_walk() {
    if (!sent_.empty() || pending_receives_ > 0)
      throw std::invalid_argument(here() + ": the table ends with sends or receives posted but "
                                           "never committed");
    if (!deferred_.empty()) {
      const deferred_weight w = deferred_.oldest();
      throw std::invalid_argument(here() + ": the table ends with the weight gradient of " +
                                  format_action(make_backward_input(w.stage, w.microbatch)) +
                                  " deferred but never run (no W)");
    }
    const std::span<const int> local = layout_.local_stages();
    for (std::size_t ls = 0; ls < local.size(); ++ls)
      for (int m = 0; m < N_; ++m) {
        const slot& sl = slots_[ls * static_cast<std::size_t>(N_) + static_cast<std::size_t>(m)];
        const char* left = sl.input != none         ? "an input no forward used"
                           : sl.output != none      ? "an output never sent or used"
                           : sl.output_grad != none ? "an output gradient no backward used"
                           : sl.input_grad != none  ? "an input gradient never sent"
                                                    : nullptr;
        if (left != nullptr)
          throw std::invalid_argument(here() + ": the step ends with " + left + " of stage " +
                                      std::to_string(local[ls]) + ", micro-batch " +
                                      std::to_string(m));
      }
  }

  // --- instructions ------------------------------------------------------

  [[nodiscard]] int owner(int stage, int mb) const noexcept { return layout_.owner(stage, mb); }

  slot& at(int stage, int mb) {
    const int ls = layout_.local_index(stage);
    if (ls == none || mb < 0 || mb >= N_)
      throw std::invalid_argument("dualpipe::executor: rank " + std::to_string(rank_) +
                                  " holds no stage " + std::to_string(stage) +
                                  " for micro-batch " + std::to_string(mb));
    return slots_[static_cast<std::size_t>(ls) * static_cast<std::size_t>(N_) +
                  static_cast<std::size_t>(mb)];
  }
  Stage& stage_object(int stage) {
    return *stages_[static_cast<std::size_t>(layout_.local_index(stage))];
  }

  [[noreturn]] void fail(const instruction& x, std::size_t index, const std::string& why) const {
    throw std::invalid_argument("dualpipe::executor: rank " + std::to_string(rank_) +
                                ", instruction " + std::to_string(index) + " (" +
                                format_action(x) + "): " + why);
  }

  // Runs a user call; anything it throws becomes a stage_error naming this
  // rank and the instruction, with the original nested.
  template <class F>
  void user_call(const instruction& x, std::size_t index, const char* what, F&& f) {
    try {
      f();
    } catch (...) {
      const std::string original = handled_exception_text("unknown exception");
      std::throw_with_nested(stage_error(
          rank_, "dualpipe: rank " + std::to_string(rank_) + " failed in " + what + " of " +
                     format_action(x) + " (instruction " + std::to_string(index) +
                     " of its table): " + original));
    }
  }

  int acquire() { return pool_.acquire(); }
  void release(int& b) { pool_.release(b); }
  tensor_type& buffer(int b) { return pool_[b]; }

  // The forward's input: the user's tensor on stage 0, else a received or
  // handed-over buffer.
  const tensor_type* forward_input(const instruction& x, std::size_t index, int s, int m,
                                   const step_context& ctx, int& input_buffer) {
    if (s == 0) {
      const int e = layout_.enter_index(m);
      if (e == none) fail(x, index, "micro-batch " + std::to_string(m) + " does not enter here");
      return ctx.inputs.empty() ? nullptr : &ctx.inputs[static_cast<std::size_t>(e)];
    }
    slot& sl = at(s, m);
    if (sl.input == none)
      fail(x, index, "stage " + std::to_string(s) + " has no input for micro-batch " +
                         std::to_string(m) + " (no RECV_F or hand-over before it)");
    input_buffer = sl.input;
    sl.input = none;
    return &buffer(input_buffer);
  }

  // Where a forward's output goes: the loss, the next stage here, or a send.
  template <bool Dry>
  void forward_done(const instruction& x, std::size_t index, int s, int m, int out,
                    const step_context& ctx) {
    if (s == S_ - 1) {
      const int li = layout_.leave_index(m);
      if (li == none) fail(x, index, "micro-batch " + std::to_string(m) + " does not leave here");
      if constexpr (!Dry && !std::same_as<Loss, no_loss>) {
        if (ctx.loss != nullptr)
          user_call(x, index, "the loss", [&] {
            losses_[static_cast<std::size_t>(li)] =
                (*ctx.loss)(buffer(out), ctx.labels[static_cast<std::size_t>(li)]);
          });
      }
      if (!ctx.forward_only) {
        at(s, m).output = out;  // the loss gradient needs it at the backward
      } else {
        if (ctx.return_outputs) std::swap(outputs_[static_cast<std::size_t>(li)], buffer(out));
        release(out);
      }
      return;
    }
    if (owner(s + 1, m) == rank_) {
      slot& next = at(s + 1, m);
      if (next.input != none) fail(x, index, "the next stage already holds this micro-batch's input");
      next.input = out;  // hand-over (DualPipeV's tip): no communication
    } else {
      slot& sl = at(s, m);
      if (sl.output != none) fail(x, index, "a second forward of the same stage and micro-batch");
      sl.output = out;
    }
  }

  template <bool Dry>
  void run_forward(const instruction& x, std::size_t index, const step_context& ctx) {
    const int s = x.stage, m = x.microbatch;
    int in_buffer = none;
    const tensor_type* in = forward_input(x, index, s, m, ctx, in_buffer);
    int out = acquire();
    if constexpr (!Dry)
      user_call(x, index, "forward", [&] { stage_object(s).forward(m, *in, buffer(out)); });
    release(in_buffer);
    forward_done<Dry>(x, index, s, m, out, ctx);
  }

  // The backward's output gradient: the loss gradient on the last stage,
  // else a received or handed-over buffer.
  template <bool Dry>
  int backward_seed(const instruction& x, std::size_t index, int s, int m,
                    const step_context& ctx) {
    slot& sl = at(s, m);
    if (s == S_ - 1) {
      if (sl.output == none)
        fail(x, index, "the backward of the last stage runs before its forward");
      const int li = layout_.leave_index(m);
      const int seed = acquire();
      if constexpr (!Dry && !std::same_as<Loss, no_loss>)
        user_call(x, index, "the loss gradient", [&] {
          ctx.loss->gradient(buffer(sl.output), ctx.labels[static_cast<std::size_t>(li)],
                             buffer(seed));
        });
      if (!Dry && ctx.return_outputs) std::swap(outputs_[static_cast<std::size_t>(li)], buffer(sl.output));
      release(sl.output);
      return seed;
    }
    if (sl.output_grad == none)
      fail(x, index, "stage " + std::to_string(s) + " has no output gradient for micro-batch " +
                         std::to_string(m) + " (no RECV_B or hand-over before it)");
    const int g = sl.output_grad;
    sl.output_grad = none;
    return g;
  }

  // Where a backward's input gradient goes: nowhere (stage 0), the previous
  // stage here, or a send.
  void backward_done(const instruction& x, std::size_t index, int s, int m, int in_grad) {
    if (s == 0) {
      release(in_grad);
      return;
    }
    if (owner(s - 1, m) == rank_) {
      slot& prev = at(s - 1, m);
      if (prev.output_grad != none)
        fail(x, index, "the previous stage already holds this micro-batch's output gradient");
      prev.output_grad = in_grad;
    } else {
      slot& sl = at(s, m);
      if (sl.input_grad != none) fail(x, index, "a second backward of the same stage and micro-batch");
      sl.input_grad = in_grad;
    }
  }

  template <bool Dry>
  void run_backward(const instruction& x, std::size_t index, const step_context& ctx, int s,
                    int m, op kind) {
    if (ctx.forward_only) fail(x, index, "a backward in a forward-only step");
    int seed = backward_seed<Dry>(x, index, s, m, ctx);
    int in_grad = acquire();
    if constexpr (!Dry) {
      if (kind == op::backward_input)
        user_call(x, index, "backward_input",
                  [&] { stage_object(s).backward_input(m, buffer(seed), buffer(in_grad)); });
      else
        user_call(x, index, "backward",
                  [&] { stage_object(s).backward(m, buffer(seed), buffer(in_grad)); });
    }
    release(seed);
    if (kind == op::backward_input) deferred_.defer(s, m);
    backward_done(x, index, s, m, in_grad);
  }

  template <bool Dry>
  void run_weight(const instruction& x, std::size_t index) {
    if (deferred_.empty()) fail(x, index, "no weight gradient is deferred (no I before it)");
    if (!deferred_.admits(x.stage, x.microbatch)) {
      const deferred_weight oldest = deferred_.oldest();
      fail(x, index, "the oldest deferred weight gradient is that of " +
                         format_action(make_backward_input(oldest.stage, oldest.microbatch)) +
                         "; weight gradients run first-in first-out");
    }
    (void)deferred_.pop();
    const int s = x.stage, m = x.microbatch;
    if constexpr (!Dry)
      user_call(x, index, "backward_weight", [&] { stage_object(s).backward_weight(m); });
  }

  template <bool Dry>
  void run_overlapped(const instruction& x, std::size_t index, const step_context& ctx) {
    if (ctx.forward_only) {
      run_forward<Dry>(make_forward(x.stage, x.microbatch), index, ctx);
      return;
    }
    if constexpr (!overlaps_forward_backward) {
      run_forward<Dry>(x, index, ctx);
      run_backward<Dry>(x, index, ctx, x.stage_b, x.microbatch_b, op::backward);
    } else {
      const int fs = x.stage, fm = x.microbatch, bs = x.stage_b, bm = x.microbatch_b;
      int in_buffer = none;
      const tensor_type* in = forward_input(x, index, fs, fm, ctx, in_buffer);
      int out = acquire();
      int seed = backward_seed<Dry>(x, index, bs, bm, ctx);
      int in_grad = acquire();
      if constexpr (!Dry)
        user_call(x, index, "overlapped_forward_backward", [&] {
          stage_object(fs).overlapped_forward_backward(fm, *in, buffer(out), stage_object(bs), bm,
                                                       buffer(seed), buffer(in_grad));
        });
      release(in_buffer);
      release(seed);
      forward_done<Dry>(x, index, fs, fm, out, ctx);
      backward_done(x, index, bs, bm, in_grad);
    }
  }

  template <bool Dry>
  void post_send(const instruction& x, std::size_t index, int& source, const char* what) {
    if (source == none)
      fail(x, index, std::string("stage ") + std::to_string(x.stage) + " has no " + what +
                         " of micro-batch " + std::to_string(x.microbatch) +
                         " to send (not computed yet, or sent already)");
    if constexpr (!Dry) transport_->post_send(x, buffer(source));
    sent_.push_back(source);
    source = none;
  }

  template <bool Dry>
  void post_recv(const instruction& x, std::size_t index, int& target, const char* what) {
    if (target != none)
      fail(x, index, std::string("stage ") + std::to_string(x.stage) + " already holds an " +
                         what + " of micro-batch " + std::to_string(x.microbatch));
    target = acquire();
    if constexpr (!Dry) transport_->post_recv(x, buffer(target));
    ++pending_receives_;
  }

  template <bool Dry>
  void run_commit() {
    pending_receives_ = 0;
    if constexpr (!Dry) {
      if constexpr (transport_with_deferred_completion<Transport>) {
        in_flight_.push(transport_->commit(), sent_);
        sent_.clear();
        poll_in_flight();
        return;
      } else {
        transport_->commit();
      }
    }
    for (int& b : sent_) release(b);
    sent_.clear();
  }

  // Recycles the sent buffers of batches a deferred-completion transport
  // has finished with, oldest first.
  void poll_in_flight() {
    if constexpr (transport_with_deferred_completion<Transport>)
      in_flight_.retire([this](auto& ticket) { return transport_->complete(ticket); },
                        [this](int& b) { release(b); });
  }

  // --- state ---------------------------------------------------------------

  Transport* transport_;
  int rank_;
  schedule_info info_{};
  int S_ = 0, N_ = 0;
  std::vector<instruction> programs_[2];  // training, forward-only
  detail::rank_layout layout_;
  std::vector<Stage*> stages_;  // per local stage

  detail::buffer_pool<tensor_type> pool_;
  std::vector<slot> slots_;  // local stage * N + micro-batch
  deferred_weights deferred_;
  std::vector<int> sent_;  // buffers posted in the current batch
  int pending_receives_ = 0;
  detail::in_flight_batches<std::conditional_t<std::is_void_v<ticket_type>, int, ticket_type>>
      in_flight_;

  std::vector<loss_value_type> losses_;
  std::vector<tensor_type> outputs_;
  std::vector<tensor_type> split_inputs_;
  std::vector<label_type> split_labels_;
  step_result result_{};
};

}  // namespace dualpipe
