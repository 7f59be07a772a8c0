// Sub-op programs: how a stage describes its forward and its backward as a
// short sequence of sub-ops, each on a lane (compute or communication) and
// with a role (on the micro-batch's chain, or a leaf that hangs off it, such
// as a weight gradient). A stage of several layers gives one layer's program
// and a layer count; the forward runs the layers in order and the backward in
// reverse, as Megatron-Core pairs layer i of a forward with layer L-1-i of a
// backward. Everything here is a structural value, so a program can be a
// template argument and every check a compile-time one.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "dualpipe/schedule/action_syntax.hpp"

namespace dualpipe::overlap {

// Where a sub-op runs. Each lane is first-in first-out: it runs its sub-ops
// in the order they are issued.
enum class lane : std::uint8_t { compute, communication };

// On the chain, a sub-op waits for the chain sub-op before it (across layers
// too) and the next one waits for it. A leaf waits for its predecessor (the
// chain sub-op before it in its layer) but nothing waits for it: a weight
// gradient, or a reduction of one.
enum class role : std::uint8_t { chain, leaf };

// Which half of an overlapped pair a sub-op belongs to.
enum class pass : std::uint8_t { forward, backward };

inline constexpr std::size_t max_name_length = 15;
inline constexpr std::size_t max_sub_ops = 12;  // per layer program
inline constexpr int max_layers = 32;
// The most sub-ops an overlapped pair issues: both programs, every layer.
inline constexpr std::size_t max_pair_sub_ops = 2 * max_sub_ops * max_layers;

// A sub-op's name as a structural value ("attn", "dispatch", "mlp.W").
struct op_name {
  char text[max_name_length + 1]{};

  // Set when the text given was longer than max_name_length (it is cut):
  // program_problem refuses such a name, as it refuses an empty one.
  bool too_long = false;

  constexpr op_name() = default;
  constexpr op_name(const char* s) {  // NOLINT(google-explicit-constructor): a name is its text
    for (std::size_t i = 0; s[i] != '\0'; ++i) {
      if (i == max_name_length) {
        too_long = true;
        break;
      }
      text[i] = s[i];
    }
  }
  [[nodiscard]] constexpr std::string_view view() const noexcept {
    std::size_t n = 0;
    while (n < max_name_length && text[n] != '\0') ++n;
    return {text, n};
  }
  friend constexpr bool operator==(const op_name&, const op_name&) = default;
};

struct sub_op {
  op_name name{};
  lane where = lane::compute;
  role kind = role::chain;
  // Time of one run, in any unit shared by the program (0: unknown). The cost
  // model (pair_cost.hpp) reads it; execution ignores it.
  double cost = 0.0;
  // An extra sub-op of the same layer program this one waits for (its
  // index, which must be lower), beyond its chain predecessor; -1 for none.
  // E.g. a leaf that reduces a weight gradient across ranks waits for the
  // leaf that computes it.
  int after = -1;

  friend constexpr bool operator==(const sub_op&, const sub_op&) = default;
};

// One layer's sub-ops in the order they run when nothing overlaps.
struct layer_program {
  std::array<sub_op, max_sub_ops> ops{};
  int size = 0;

  constexpr layer_program() = default;
  template <std::size_t N>
  constexpr layer_program(const sub_op (&list)[N]) {  // NOLINT(google-explicit-constructor)
    static_assert(N <= max_sub_ops, "dualpipe::overlap: a layer program holds at most 12 sub-ops");
    for (std::size_t i = 0; i < N; ++i) ops[i] = list[i];
    size = static_cast<int>(N);
  }
  [[nodiscard]] constexpr const sub_op& operator[](int i) const {
    return ops[static_cast<std::size_t>(i)];
  }
  friend constexpr bool operator==(const layer_program&, const layer_program&) = default;
};

// A stage's two programs and how many layers repeat them.
struct stage_programs {
  layer_program forward{};
  layer_program backward{};
  int layers = 1;

  [[nodiscard]] constexpr const layer_program& of(pass p) const noexcept {
    return p == pass::forward ? forward : backward;
  }
  friend constexpr bool operator==(const stage_programs&, const stage_programs&) = default;
};

// One sub-op of one layer of one pass: what an issue order lists.
struct sub_op_ref {
  pass which = pass::forward;
  std::uint8_t index = 0;   // in the layer program
  std::uint16_t layer = 0;  // the model layer within the stage (0 first)

  friend constexpr bool operator==(const sub_op_ref&, const sub_op_ref&) = default;
};

// For index < max_sub_ops and layer < max_layers (else it would be cut).
[[nodiscard]] constexpr sub_op_ref make_ref(pass which, int layer, int index) noexcept {
  return {which, static_cast<std::uint8_t>(index), static_cast<std::uint16_t>(layer)};
}

// Whether the programs have this sub-op (a layer and an index in range).
[[nodiscard]] constexpr bool contains(const stage_programs& p, sub_op_ref r) noexcept {
  return r.layer < p.layers && r.index < p.of(r.which).size;
}

// The sub-op a reference names; the reference must be one the programs
// contain.
[[nodiscard]] constexpr const sub_op& sub_op_of(const stage_programs& p, sub_op_ref r) {
  return p.of(r.which)[r.index];
}

// "dispatch(F) of layer 1": how messages name a sub-op.
[[nodiscard]] constexpr std::string describe(const stage_programs& p, sub_op_ref r) {
  std::string out(sub_op_of(p, r).name.view());
  out += r.which == pass::forward ? "(F) of layer " : "(B) of layer ";
  ::dualpipe::detail::append_int(out, r.layer);
  return out;
}

[[nodiscard]] constexpr std::string_view lane_name(lane l) noexcept {
  return l == lane::compute ? "compute" : "communication";
}

// A number for each sub-op of both passes, every layer, from 0: the
// forward's layers, then the backward's.
[[nodiscard]] constexpr int flat_index(const stage_programs& p, sub_op_ref r) {
  const int per_layer = p.of(r.which).size;
  const int base = r.which == pass::forward ? 0 : p.forward.size * p.layers;
  return base + r.layer * per_layer + r.index;
}

// The sub-op numbered `i` by flat_index (0 <= i < the sub-ops of both passes).
[[nodiscard]] constexpr sub_op_ref ref_at(const stage_programs& p, int i) noexcept {
  const int forward_total = p.forward.size * p.layers;
  const bool forward = i < forward_total;
  const int j = forward ? i : i - forward_total;
  const int per_layer = forward ? p.forward.size : p.backward.size;
  return make_ref(forward ? pass::forward : pass::backward, j / per_layer, j % per_layer);
}

// ---------------------------------------------------------------------------
// The dependencies of a sub-op: one home for what waits for what.
//
// A pass's sub-ops in their plain order are its layers (forward: 0..L-1,
// backward: L-1..0), each in program order. A chain sub-op waits for the
// previous chain sub-op in that order; a leaf for the last chain sub-op
// before it in its own layer; either also for `after`.
// ---------------------------------------------------------------------------

// The layer that runs k-th (0-based) in a pass of `layers` layers; also the
// k at which layer `k` runs (the mapping is its own inverse).
[[nodiscard]] constexpr int layer_at(pass p, int k, int layers) noexcept {
  return p == pass::forward ? k : layers - 1 - k;
}

struct dependencies {
  sub_op_ref on[2]{};
  int count = 0;
};

[[nodiscard]] constexpr dependencies dependencies_of(const stage_programs& p, sub_op_ref r) {
  dependencies d{};
  const layer_program& prog = p.of(r.which);
  const sub_op& op = prog[r.index];
  // The chain sub-op before r in its layer, or -1.
  int before = -1;
  for (int i = r.index - 1; i >= 0 && before < 0; --i)
    if (prog[i].kind == role::chain) before = i;
  if (before >= 0) {
    d.on[d.count++] = make_ref(r.which, r.layer, before);
  } else if (op.kind == role::chain) {
    // The first chain sub-op of a layer waits for the last chain sub-op of
    // the layer that ran before it in this pass.
    const int k = layer_at(r.which, r.layer, p.layers);  // its layer runs k-th
    if (k > 0) {
      int last = -1;
      for (int i = 0; i < prog.size; ++i)
        if (prog[i].kind == role::chain) last = i;
      d.on[d.count++] = make_ref(r.which, layer_at(r.which, k - 1, p.layers), last);
    }
  }
  if (op.after >= 0) d.on[d.count++] = make_ref(r.which, r.layer, op.after);
  return d;
}

// ---------------------------------------------------------------------------
// Program checks: what makes a program unusable, as one sentence or empty.
// ---------------------------------------------------------------------------

namespace detail {
[[nodiscard]] constexpr std::string program_problem(const layer_program& prog, pass which) {
  const std::string who = which == pass::forward ? "the forward program" : "the backward program";
  if (prog.size < 1 || prog.size > static_cast<int>(max_sub_ops))
    return who + " must hold 1 to 12 sub-ops";
  bool chain_seen = false;
  for (int i = 0; i < prog.size; ++i) {
    const sub_op& op = prog[i];
    std::string at = who + ": sub-op ";
    ::dualpipe::detail::append_int(at, i);
    if (op.name.view().empty()) return at + " has no name";
    if (op.name.too_long) return at + " has a name longer than 15 characters";
    for (int j = 0; j < i; ++j)
      if (prog[j].name == op.name) {
        at += " has the name of sub-op ";
        ::dualpipe::detail::append_int(at, j);
        return at + " (names in a program must differ)";
      }
    if (!(op.cost >= 0.0 && op.cost <= 1.0e300))
      return at + " has a cost that is negative or not finite";
    if (op.after != -1 && (op.after < 0 || op.after >= i))
      return at +
             " waits for a sub-op that does not come before it (after must name a lower index)";
    if (op.kind == role::leaf && !chain_seen)
      return at + " is a leaf with no chain sub-op before it to hang off";
    if (op.kind == role::chain) chain_seen = true;
  }
  return {};
}
}  // namespace detail

// The first reason the programs cannot run, as a sentence; empty when they
// can.
[[nodiscard]] constexpr std::string program_problem(const stage_programs& p) {
  if (p.layers < 1 || p.layers > max_layers) return "a stage's programs repeat over 1 to 32 layers";
  std::string f = detail::program_problem(p.forward, pass::forward);
  if (!f.empty()) return f;
  return detail::program_problem(p.backward, pass::backward);
}

}  // namespace dualpipe::overlap
