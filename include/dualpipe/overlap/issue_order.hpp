// The issue order of an overlapped pair (one micro-batch's forward with
// another's backward on the same rank), its generator and its checks.
//
// Execution model, the one both lane backends implement: every sub-op is
// issued in this order to its lane; each lane is first-in first-out and runs
// ahead of the issuer; a sub-op starts once its lane is free and its
// dependencies (dependencies_of) have finished. On CUDA a dependency is an
// event, which must be recorded (issued) before anything waits for it; on CPU
// a completion token.
//
// The rule (make_pair_order). Per layer pair (the backward's layer L-1-k
// with the forward's layer k) a few orders are built, each by a principle
// that places one chain's computation under the other's communication, and
// the one the timeline model finishes first is taken; ties go to the first:
//   1. turns, backward first: the chains take turns one chain sub-op at a
//      time, so that under each communication sub-op of one chain sits the
//      next sub-op of the other, computation in a program that alternates;
//   2. turns, forward first;
//   3. communication first: a chain whose next sub-op communicates goes at
//      once; otherwise the one with the fewest computations before its next
//      communication;
//   4. forward then backward, and 5. backward then forward, so that the
//      pair is never slower than not overlapping at all.
// In every one a leaf waits, so as not to hold up its own chain, until its
// chain's next communication sub-op is issued, and then fills the compute
// lane under it; with none left in its layer it follows its predecessor at
// once. For DeepSeek-V3's layer (attention, dispatch, MLP, combine) the first
// gives the order of DeepSeek's published training trace, combine(B),
// attn(F), mlp(B), dispatch(F), dispatch(B), mlp(W), mlp(F), attn(B),
// attn(W), combine(F). It is taken when the costs are unknown (zero), and
// whenever no communication costs more than any computation (tested over
// random costs); a layer whose all-to-all outweighs its computation may get
// another candidate, one the model finishes strictly sooner.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <span>
#include <string>
#include <string_view>

#include "dualpipe/overlap/program.hpp"
#include "dualpipe/overlap/timeline.hpp"
#include "dualpipe/schedule/build.hpp"

namespace dualpipe::overlap {

// A sequence of sub-ops, as issued (fixed capacity, so that it is a
// structural value and a compile-time constant).
struct issue_order {
  std::array<sub_op_ref, max_pair_sub_ops> ops{};
  int size = 0;

  constexpr void push(sub_op_ref r) { ops[static_cast<std::size_t>(size++)] = r; }
  [[nodiscard]] constexpr std::span<const sub_op_ref> view() const noexcept {
    return {ops.data(), static_cast<std::size_t>(size)};
  }
  [[nodiscard]] constexpr const sub_op_ref* begin() const noexcept { return ops.data(); }
  [[nodiscard]] constexpr const sub_op_ref* end() const noexcept { return ops.data() + size; }
  friend constexpr bool operator==(const issue_order&, const issue_order&) = default;
};

namespace detail {

// Issues, for one layer of one pass, whatever of it is ready under the rule:
// bookkeeping of which sub-ops of the layer have been issued.
struct layer_cursor {
  const stage_programs* programs = nullptr;
  pass which = pass::forward;
  int layer = 0;
  bool issued[max_sub_ops]{};
  int next_chain = 0;  // index of the next chain sub-op to issue, or size

  [[nodiscard]] constexpr const layer_program& prog() const { return programs->of(which); }
  constexpr void skip_to_chain() {
    while (next_chain < prog().size && prog()[next_chain].kind != role::chain) ++next_chain;
  }
  [[nodiscard]] constexpr bool chain_left() const { return next_chain < prog().size; }

  // Issues sub-op i after whatever `after` it still waits for.
  constexpr void issue(int i, issue_order& out) {
    if (issued[i]) return;
    const int a = prog()[i].after;
    if (a >= 0) issue(a, out);
    issued[i] = true;
    out.push(make_ref(which, layer, i));
  }

  // Whether a communication chain sub-op comes at or after index `from`.
  [[nodiscard]] constexpr bool communication_ahead(int from) const {
    for (int i = from; i < prog().size; ++i)
      if (prog()[i].kind == role::chain && prog()[i].where == lane::communication) return true;
    return false;
  }

  // Leaves whose time has come: their predecessor is issued and either a
  // communication chain sub-op after it has just been issued, or none is
  // left in the layer.
  constexpr void release_leaves(issue_order& out, int just_issued) {
    for (int i = 0; i < prog().size; ++i) {
      if (issued[i] || prog()[i].kind != role::leaf) continue;
      int pred = i - 1;
      while (prog()[pred].kind != role::chain) --pred;
      if (!issued[pred]) continue;
      const bool under_own_communication =
          just_issued > pred && prog()[just_issued].where == lane::communication;
      if (under_own_communication || !communication_ahead(pred + 1)) issue(i, out);
    }
  }

  constexpr void issue_next_chain(issue_order& out) {
    const int c = next_chain++;
    issue(c, out);
    skip_to_chain();
    release_leaves(out, c);
  }

  constexpr void issue_rest(issue_order& out) {
    for (int i = 0; i < prog().size; ++i) issue(i, out);
  }
};

constexpr layer_cursor make_cursor(const stage_programs& p, pass which, int layer) {
  layer_cursor c{&p, which, layer, {}, 0};
  c.skip_to_chain();
  return c;
}

}  // namespace detail

// How the candidate orders of make_pair_order interleave the chains.
enum class interleave : std::uint8_t {
  turns_backward_first,
  turns_forward_first,
  communication_first,
  forward_then_backward,
  backward_then_forward,
};

namespace detail {

// Chain computations before the next communication chain sub-op, from the
// cursor on (a large number when none is left in the layer).
[[nodiscard]] constexpr int computations_before_communication(const layer_cursor& c) {
  int n = 0;
  for (int i = c.next_chain; i < c.prog().size; ++i) {
    if (c.prog()[i].kind != role::chain) continue;
    if (c.prog()[i].where == lane::communication) return n;
    ++n;
  }
  return 1 << 20;
}

constexpr void interleave_layer_pair(const stage_programs& p, int k, interleave how,
                                     issue_order& out) {
  auto b = make_cursor(p, pass::backward, layer_at(pass::backward, k, p.layers));
  auto f = make_cursor(p, pass::forward, layer_at(pass::forward, k, p.layers));
  bool backward_turn = how != interleave::turns_forward_first;
  while (b.chain_left() || f.chain_left()) {
    bool pick_backward = false;
    if (!f.chain_left() || !b.chain_left()) {
      pick_backward = b.chain_left();
    } else if (how == interleave::communication_first) {
      const int nb = computations_before_communication(b);
      const int nf = computations_before_communication(f);
      pick_backward = nb <= nf;
    } else {
      pick_backward = backward_turn;
    }
    (pick_backward ? b : f).issue_next_chain(out);
    backward_turn = !pick_backward;
  }
  b.issue_rest(out);
  f.issue_rest(out);
}

}  // namespace detail

// One candidate of the rule: every layer pair interleaved `how`. Programs
// that program_problem() refuses give an empty order.
[[nodiscard]] constexpr issue_order make_interleaved_order(const stage_programs& p,
                                                           interleave how) {
  issue_order out{};
  if (!program_problem(p).empty()) return out;
  if (how == interleave::forward_then_backward || how == interleave::backward_then_forward) {
    // Whole passes, not layer by layer: the second pass starts on a free lane.
    const pass first = how == interleave::forward_then_backward ? pass::forward : pass::backward;
    for (const pass which : {first, first == pass::forward ? pass::backward : pass::forward})
      for (int k = 0; k < p.layers; ++k) {
        auto c = detail::make_cursor(p, which, layer_at(which, k, p.layers));
        c.issue_rest(out);
      }
    return out;
  }
  for (int k = 0; k < p.layers; ++k) detail::interleave_layer_pair(p, k, how, out);
  return out;
}

// The rule above: the candidate the timeline model finishes first, the
// earliest on a tie. Programs that program_problem() refuses give an empty
// order.
[[nodiscard]] constexpr issue_order make_pair_order(const stage_programs& p) {
  issue_order best{};
  double best_span = 0.0;
  for (const interleave how : {interleave::turns_backward_first, interleave::turns_forward_first,
                               interleave::communication_first, interleave::forward_then_backward,
                               interleave::backward_then_forward}) {
    const issue_order o = make_interleaved_order(p, how);
    const double span = simulate_order(p, o.view()).totals().span;
    if (how == interleave::turns_backward_first || span < best_span) {
      best = o;
      best_span = span;
    }
  }
  return best;
}

// One pass alone in its plain order: every layer in turn, each in program
// order. `chain_only` keeps the chain (a backward for the input, I),
// `leaves_only` the leaves (the deferred weight gradient, W).
enum class pass_part : std::uint8_t { whole, chain_only, leaves_only };

[[nodiscard]] constexpr issue_order make_pass_order(const stage_programs& p, pass which,
                                                    pass_part part = pass_part::whole) {
  issue_order out{};
  if (!program_problem(p).empty()) return out;
  const layer_program& prog = p.of(which);
  for (int k = 0; k < p.layers; ++k) {
    const int layer = layer_at(which, k, p.layers);
    for (int i = 0; i < prog.size; ++i) {
      const bool leaf = prog[i].kind == role::leaf;
      if ((part == pass_part::chain_only && leaf) || (part == pass_part::leaves_only && !leaf))
        continue;
      out.push(make_ref(which, layer, i));
    }
  }
  return out;
}

// The pair without overlap: the whole forward, then the whole backward.
[[nodiscard]] constexpr issue_order make_sequential_order(const stage_programs& p) {
  return make_interleaved_order(p, interleave::forward_then_backward);
}

// ---------------------------------------------------------------------------
// The validator
// ---------------------------------------------------------------------------

enum class order_rule : std::uint8_t {
  none,         // the order is valid
  program,      // the programs themselves are unusable (program_problem)
  once,         // every sub-op of both programs, every layer, exactly once
  chain_order,  // a chain's sub-ops in their plain order
  leaf_after_predecessor,
  deadlock,  // a sub-op issued before one it waits for
};

struct order_verdict {
  order_rule rule = order_rule::none;
  int position = -1;  // in the order, of the sub-op that breaks the rule
  sub_op_ref op{};
  sub_op_ref other{};  // the sub-op it conflicts with
  [[nodiscard]] constexpr bool ok() const noexcept { return rule == order_rule::none; }
};

// What an order must cover: a whole overlapped pair (every sub-op of both
// passes, every layer), or a part, such as one pass alone or the chain or
// the leaves of a backward (I, W), which a lane backend also runs. In a
// part, a dependency outside the order counts as finished already.
enum class order_coverage : std::uint8_t { whole_pair, part };

namespace detail {

// Position of a sub-op in its pass's plain order (layer_at is its own
// inverse: the layer run k-th is layer_at(k), and layer l runs
// layer_at(l)-th).
[[nodiscard]] constexpr int plain_position(const stage_programs& p, sub_op_ref r) {
  return layer_at(r.which, r.layer, p.layers) * p.of(r.which).size + r.index;
}

// check_order for programs known to be usable: allocates nothing, so a lane
// backend can run it on every run.
[[nodiscard]] constexpr order_verdict check_usable_order(const stage_programs& p,
                                                         std::span<const sub_op_ref> order,
                                                         order_coverage coverage) {
  const int total = (p.forward.size + p.backward.size) * p.layers;
  std::array<int, max_pair_sub_ops> seen_at{};
  for (int i = 0; i < total; ++i) seen_at[static_cast<std::size_t>(i)] = -1;
  for (int pos = 0; pos < static_cast<int>(order.size()); ++pos) {
    const sub_op_ref r = order[static_cast<std::size_t>(pos)];
    if (!contains(p, r)) return {order_rule::once, pos, r, r};
    int& at = seen_at[static_cast<std::size_t>(flat_index(p, r))];
    if (at >= 0) return {order_rule::once, pos, r, r};
    at = pos;
  }
  if (coverage == order_coverage::whole_pair)
    for (int i = 0; i < total; ++i)
      if (seen_at[static_cast<std::size_t>(i)] < 0) {
        const sub_op_ref missing = ref_at(p, i);
        return {order_rule::once, -1, missing, missing};
      }
  // Where a sub-op is issued; -1 (before everything) when not in the order.
  const auto position = [&](sub_op_ref r) {
    return seen_at[static_cast<std::size_t>(flat_index(p, r))];
  };
  // Chain order: the chain sub-ops of each pass appear in their plain order.
  // The first chain sub-op that a later chain sub-op of its pass precedes in
  // the plain order, found in linear time (the lanes check every run): from
  // the end, the least plain position still to come in each pass; then the
  // first position above it, and the first later sub-op that is below.
  const auto pass_of = [](sub_op_ref r) { return r.which == pass::forward ? 0 : 1; };
  const int n = static_cast<int>(order.size());
  std::array<int, max_pair_sub_ops> least_after{};
  int least[2] = {total, total};
  for (int pos = n - 1; pos >= 0; --pos) {
    const sub_op_ref r = order[static_cast<std::size_t>(pos)];
    least_after[static_cast<std::size_t>(pos)] = least[pass_of(r)];
    if (sub_op_of(p, r).kind == role::chain)
      least[pass_of(r)] = std::min(least[pass_of(r)], plain_position(p, r));
  }
  for (int pos = 0; pos < n; ++pos) {
    const sub_op_ref r = order[static_cast<std::size_t>(pos)];
    if (sub_op_of(p, r).kind != role::chain ||
        least_after[static_cast<std::size_t>(pos)] > plain_position(p, r))
      continue;
    for (int q = pos + 1; q < n; ++q) {
      const sub_op_ref later = order[static_cast<std::size_t>(q)];
      if (later.which == r.which && sub_op_of(p, later).kind == role::chain &&
          plain_position(p, later) < plain_position(p, r))
        return {order_rule::chain_order, pos, r, later};
    }
  }
  // Leaves after their predecessor; then every other dependency (after).
  for (int pos = 0; pos < static_cast<int>(order.size()); ++pos) {
    const sub_op_ref r = order[static_cast<std::size_t>(pos)];
    const dependencies d = dependencies_of(p, r);
    if (sub_op_of(p, r).kind == role::leaf && position(d.on[0]) > pos)
      return {order_rule::leaf_after_predecessor, pos, r, d.on[0]};
  }
  for (int pos = 0; pos < static_cast<int>(order.size()); ++pos) {
    const sub_op_ref r = order[static_cast<std::size_t>(pos)];
    const dependencies d = dependencies_of(p, r);
    for (int k = 0; k < d.count; ++k)
      if (position(d.on[k]) > pos) return {order_rule::deadlock, pos, r, d.on[k]};
  }
  return {};
}

}  // namespace detail

// Checks an issue order against the programs: the first rule it breaks, in
// the order of order_rule, and where.
[[nodiscard]] constexpr order_verdict check_order(
    const stage_programs& p, std::span<const sub_op_ref> order,
    order_coverage coverage = order_coverage::whole_pair) {
  if (!program_problem(p).empty()) return {order_rule::program, -1, {}, {}};
  return detail::check_usable_order(p, order, coverage);
}

[[nodiscard]] constexpr order_verdict check_order(const stage_programs& p, const issue_order& o) {
  return check_order(p, o.view());
}

// The verdict as a sentence (empty when valid).
[[nodiscard]] constexpr std::string describe(const stage_programs& p, const order_verdict& v) {
  switch (v.rule) {
    case order_rule::none:
      return {};
    case order_rule::program:
      return "the programs are unusable: " + program_problem(p);
    case order_rule::once:
      if (v.position < 0)
        return "every sub-op is issued once: " + describe(p, v.op) + " is missing";
      if (!contains(p, v.op))
        return "every sub-op is issued once: the order names a sub-op the programs do not have";
      return "every sub-op is issued once: " + describe(p, v.op) + " is issued twice";
    case order_rule::chain_order:
      return "chain order broken: " + describe(p, v.op) + " is issued before " +
             describe(p, v.other) + ", which comes before it on its chain";
    case order_rule::leaf_after_predecessor:
      return "a leaf is issued before its predecessor: " + describe(p, v.op) + " hangs off " +
             describe(p, v.other) + ", which is issued after it";
    case order_rule::deadlock:
      return "deadlock on first-in-first-out lanes: " + describe(p, v.op) + " waits for " +
             describe(p, v.other) + ", which is issued after it (its " +
             std::string(lane_name(sub_op_of(p, v.op).where)) + " lane would wait forever)";
  }
  return {};
}

// ---------------------------------------------------------------------------
// Compile time: the same checks as a compile error that spells the sentence.
// ---------------------------------------------------------------------------

namespace detail {

template <auto Programs, auto Order>
constexpr auto order_problem_sentence() {
  return ::dualpipe::detail::sentence_of<[] {
    return describe(Programs, check_order(Programs, Order));
  }>();
}

// Instantiated only for an order that breaks a rule: the error names the
// rule in the template argument.
template <auto Problem>
struct issue_order_rule_broken {
  static_assert(Problem.text[0] == '\0',
                "dualpipe::overlap: this issue order breaks the rule spelled out in the template "
                "argument of issue_order_rule_broken above");
};

}  // namespace detail

// The order, checked at compile time: a broken rule is a compile error that
// names it.
template <stage_programs Programs, issue_order Order>
[[nodiscard]] constexpr issue_order checked_order() {
  if constexpr (!check_order(Programs, Order).ok()) {
    (void)detail::issue_order_rule_broken<detail::order_problem_sentence<Programs, Order>()>{};
    return {};
  } else {
    return Order;
  }
}

// The generated pair order of a stage's programs, checked at compile time.
template <stage_programs Programs>
[[nodiscard]] constexpr issue_order checked_pair_order() {
  return checked_order<Programs, make_pair_order(Programs)>();
}

}  // namespace dualpipe::overlap
