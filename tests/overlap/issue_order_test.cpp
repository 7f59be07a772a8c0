// The issue order of an overlapped pair: DeepSeek's published per-layer
// order from the general rule, the rule on other programs, the plain orders
// of one pass, and every check of the validator with the sentence it gives.
#include <catch2/catch.hpp>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "dualpipe/overlap/issue_order.hpp"
#include "dualpipe/overlap/moe_layer.hpp"
#include "dualpipe/overlap/pair_cost.hpp"

using namespace dualpipe::overlap;

namespace {

// "combine(B)": a sub-op as DeepSeek's trace names it, without the layer.
std::string short_name(const stage_programs& p, sub_op_ref r) {
  return std::string(sub_op_of(p, r).name.view()) + (r.which == pass::forward ? "(F)" : "(B)");
}

std::vector<std::string> names(const stage_programs& p, const issue_order& o) {
  std::vector<std::string> out;
  for (const sub_op_ref r : o) out.push_back(short_name(p, r));
  return out;
}

// DeepSeek-V3's published per-layer-pair issue order (profile-data).
const std::vector<std::string> deepseek_layer_pair = {
    "combine(B)", "attn(F)", "mlp(B)",  "dispatch(F)", "dispatch(B)",
    "mlp.W(B)",   "mlp(F)",  "attn(B)", "attn.W(B)",   "combine(F)"};

constexpr stage_programs moe1 = moe_layer_programs();

// Builds an order from (pass, layer, index) triples.
issue_order order_of(std::initializer_list<sub_op_ref> refs) {
  issue_order o{};
  for (const sub_op_ref r : refs) o.push(r);
  return o;
}

constexpr sub_op_ref F(int layer, int index) {
  return make_ref(pass::forward, layer, index);
}
constexpr sub_op_ref B(int layer, int index) {
  return make_ref(pass::backward, layer, index);
}

}  // namespace

TEST_CASE("the general rule gives DeepSeek's published order for an attention/MoE layer") {
  static_assert(checked_pair_order<moe1>().size == 10);
  CHECK(names(moe1, make_pair_order(moe1)) == deepseek_layer_pair);
  CHECK(make_pair_order(moe1) == make_interleaved_order(moe1, interleave::turns_backward_first));
}

TEST_CASE("DeepSeek's order is kept whenever no communication costs more than any computation") {
  std::mt19937 random(5);
  std::uniform_int_distribution<int> cost(1, 8);
  int tried = 0;
  while (tried < 300) {
    moe_layer_costs c{};
    for (double* x : {&c.attention, &c.dispatch, &c.mlp, &c.combine, &c.attention_input,
                      &c.attention_weight, &c.mlp_input, &c.mlp_weight})
      *x = cost(random);
    const double least = std::min({c.attention, c.mlp, c.attention_input, c.mlp_input});
    if (c.dispatch > least || c.combine > least) continue;
    ++tried;
    const stage_programs p = moe_layer_programs(c, 1 + tried % 3);
    CHECK(make_pair_order(p) == make_interleaved_order(p, interleave::turns_backward_first));
  }
}

TEST_CASE(
    "an all-to-all that outweighs the computation may get another candidate, one the "
    "model finishes sooner") {
  // attention 4, dispatch 0, mlp 6, combine 7: the turns would leave the
  // long combine(F) to the end of the pair.
  const stage_programs p = moe_layer_programs({4, 0, 6, 7, 2, 1, 4, 5});
  const issue_order turns = make_interleaved_order(p, interleave::turns_backward_first);
  const issue_order chosen = make_pair_order(p);
  CHECK_FALSE(chosen == turns);
  CHECK(check_order(p, chosen).ok());
  CHECK(simulate_order(p, chosen.view()).totals().span <
        simulate_order(p, turns.view()).totals().span);
}

TEST_CASE(
    "several layers: forward layer k pairs with backward layer L-1-k, each pair in "
    "DeepSeek's order") {
  for (int layers = 1; layers <= 4; ++layers) {
    const stage_programs p = moe_layer_programs({}, layers);
    const issue_order o = make_pair_order(p);
    REQUIRE(o.size == 10 * layers);
    const std::vector<std::string> n = names(p, o);
    for (int k = 0; k < layers; ++k) {
      const auto block = static_cast<std::ptrdiff_t>(10 * k);
      CHECK(std::vector<std::string>(n.begin() + block, n.begin() + block + 10) ==
            deepseek_layer_pair);
      for (int i = 0; i < 10; ++i) {
        const sub_op_ref r = o.ops[static_cast<std::size_t>(10 * k + i)];
        CHECK(r.layer == (r.which == pass::forward ? k : layers - 1 - k));
      }
    }
    CHECK(check_order(p, o).ok());
  }
}

TEST_CASE(
    "the rule on other programs: turns one chain sub-op at a time, backward first; "
    "leaves wait for their chain's next communication") {
  SECTION("a forward with two computations before its communication") {
    // F: a, b (compute), c (communication). B: x (communication), y
    // (compute), w (leaf of y). Turns: x, a, y, b, c; w has no communication
    // after y in its layer, so it follows y at once.
    stage_programs p{};
    p.forward = layer_program({sub_op{"a"}, sub_op{"b"}, sub_op{"c", lane::communication}});
    p.backward = layer_program(
        {sub_op{"x", lane::communication}, sub_op{"y"}, sub_op{"w", lane::compute, role::leaf}});
    CHECK(names(p, make_interleaved_order(p, interleave::turns_backward_first)) ==
          std::vector<std::string>{"x(B)", "a(F)", "y(B)", "w(B)", "b(F)", "c(F)"});
    // Communication first: x goes at once; then the forward, one computation
    // from its communication, before the backward, which has none ahead.
    CHECK(names(p, make_interleaved_order(p, interleave::communication_first)) ==
          std::vector<std::string>{"x(B)", "a(F)", "b(F)", "c(F)", "y(B)", "w(B)"});
  }
  SECTION("a leaf waits under the next communication of its own chain") {
    // B: y (compute), w (leaf), z (communication), v (compute). F: a only.
    // Turns: y, a, z (+ w under z), v.
    stage_programs p{};
    p.forward = layer_program({sub_op{"a"}});
    p.backward = layer_program({sub_op{"y"}, sub_op{"w", lane::compute, role::leaf},
                                sub_op{"z", lane::communication}, sub_op{"v"}});
    CHECK(names(p, make_interleaved_order(p, interleave::turns_backward_first)) ==
          std::vector<std::string>{"y(B)", "a(F)", "z(B)", "w(B)", "v(B)"});
  }
  SECTION("a leaf that waits for another leaf (after) is issued after it") {
    stage_programs p{};
    p.forward = layer_program({sub_op{"a"}});
    p.backward = layer_program({sub_op{"y"}, sub_op{"w", lane::compute, role::leaf},
                                sub_op{"reduce", lane::communication, role::leaf, 0.0, 1}});
    CHECK(names(p, make_interleaved_order(p, interleave::turns_backward_first)) ==
          std::vector<std::string>{"y(B)", "w(B)", "reduce(B)", "a(F)"});
    CHECK(check_order(p, make_pair_order(p)).ok());
  }
}

TEST_CASE(
    "random programs: every candidate passes the validator, and the chosen pair is the "
    "fastest of them, so never slower than forward then backward") {
  std::mt19937 random(11);
  std::uniform_int_distribution<int> size(1, 6), coin(0, 1), cost(0, 8), layers(1, 4);
  for (int trial = 0; trial < 400; ++trial) {
    stage_programs p{};
    for (layer_program* prog : {&p.forward, &p.backward}) {
      const int n = size(random);
      sub_op ops[6]{};
      for (int i = 0; i < n; ++i) {
        ops[i].name = op_name(std::string(1, static_cast<char>('a' + i)).c_str());
        ops[i].where = coin(random) == 1 ? lane::communication : lane::compute;
        ops[i].kind = i > 0 && coin(random) == 1 ? role::leaf : role::chain;
        ops[i].cost = cost(random);
        if (i > 0 && coin(random) == 1 && coin(random) == 1)
          ops[i].after = std::uniform_int_distribution<int>(0, i - 1)(random);
      }
      prog->size = n;
      for (int i = 0; i < n; ++i) prog->ops[static_cast<std::size_t>(i)] = ops[i];
    }
    p.layers = layers(random);
    INFO("trial " << trial);
    REQUIRE(program_problem(p).empty());
    const issue_order pair = make_pair_order(p), sequential = make_sequential_order(p);
    CHECK(pair.size == (p.forward.size + p.backward.size) * p.layers);
    CHECK(describe(p, check_order(p, pair)).empty());
    CHECK(check_order(p, sequential).ok());
    const double chosen = simulate_order(p, pair.view()).totals().span;
    for (const interleave how : {interleave::turns_backward_first, interleave::turns_forward_first,
                                 interleave::communication_first, interleave::forward_then_backward,
                                 interleave::backward_then_forward}) {
      const issue_order o = make_interleaved_order(p, how);
      CHECK(check_order(p, o).ok());
      CHECK(chosen <= simulate_order(p, o.view()).totals().span);
    }
    CHECK(chosen <= simulate_order(p, sequential.view()).totals().span);
  }
}

TEST_CASE("one pass alone: plain order, chain only (I) and leaves only (W)") {
  const stage_programs p = moe_layer_programs({}, 2);
  CHECK(names(p, make_pass_order(p, pass::forward)) ==
        std::vector<std::string>{"attn(F)", "dispatch(F)", "mlp(F)", "combine(F)", "attn(F)",
                                 "dispatch(F)", "mlp(F)", "combine(F)"});
  const issue_order backward = make_pass_order(p, pass::backward);
  CHECK(backward.ops[0].layer == 1);
  CHECK(backward.ops[6].layer == 0);
  CHECK(names(p, make_pass_order(p, pass::backward, pass_part::chain_only)) ==
        std::vector<std::string>{"combine(B)", "mlp(B)", "dispatch(B)", "attn(B)", "combine(B)",
                                 "mlp(B)", "dispatch(B)", "attn(B)"});
  CHECK(names(p, make_pass_order(p, pass::backward, pass_part::leaves_only)) ==
        std::vector<std::string>{"mlp.W(B)", "attn.W(B)", "mlp.W(B)", "attn.W(B)"});
  CHECK(make_sequential_order(p).size == 20);
}

TEST_CASE("every sub-op of both passes has a number, and the number names it") {
  const stage_programs p = moe_layer_programs({}, 3);
  for (int i = 0; i < (p.forward.size + p.backward.size) * p.layers; ++i) {
    CHECK(contains(p, ref_at(p, i)));
    CHECK(flat_index(p, ref_at(p, i)) == i);
  }
  CHECK_FALSE(contains(p, F(3, 0)));
  CHECK_FALSE(contains(p, B(0, 6)));
  CHECK(contains(p, B(2, 5)));
}

TEST_CASE("dependencies: the chain crosses layers, a leaf hangs off the chain sub-op before it") {
  const stage_programs p = moe_layer_programs({}, 2);
  // The forward's layer 1 starts after layer 0's combine.
  const dependencies first = dependencies_of(p, F(1, 0));
  REQUIRE(first.count == 1);
  CHECK(first.on[0] == F(0, 3));
  CHECK(dependencies_of(p, F(0, 0)).count == 0);
  // The backward runs layer 1 first: its layer 0 starts after layer 1's attn.
  const dependencies back = dependencies_of(p, B(0, 0));
  REQUIRE(back.count == 1);
  CHECK(back.on[0] == B(1, 4));
  CHECK(dependencies_of(p, B(1, 0)).count == 0);
  // mlp.W hangs off mlp; dispatch(B) waits for mlp, not for the leaf.
  CHECK(dependencies_of(p, B(0, 2)).on[0] == B(0, 1));
  CHECK(dependencies_of(p, B(0, 3)).on[0] == B(0, 1));
}

TEST_CASE("the validator names the first rule an order breaks") {
  const stage_programs p = moe1;
  const issue_order good = make_pair_order(p);
  SECTION("a sub-op twice, a sub-op missing, a sub-op the programs do not have") {
    issue_order twice = good;
    twice.ops[9] = twice.ops[0];
    const order_verdict v = check_order(p, twice);
    CHECK(v.rule == order_rule::once);
    CHECK(v.position == 9);
    CHECK(describe(p, v) == "every sub-op is issued once: combine(B) of layer 0 is issued twice");

    issue_order missing = good;
    missing.size = 9;  // combine(F) left out
    CHECK(describe(p, check_order(p, missing)) ==
          "every sub-op is issued once: combine(F) of layer 0 is missing");

    issue_order unknown = good;
    unknown.ops[3] = F(1, 0);
    CHECK(describe(p, check_order(p, unknown)) ==
          "every sub-op is issued once: the order names a sub-op the programs do not have");
  }
  SECTION("chain order") {
    const issue_order o = order_of(
        {B(0, 0), F(0, 1), F(0, 0), B(0, 1), B(0, 3), B(0, 2), F(0, 2), B(0, 4), B(0, 5), F(0, 3)});
    const order_verdict v = check_order(p, o);
    CHECK(v.rule == order_rule::chain_order);
    CHECK(v.position == 1);
    CHECK(describe(p, v) ==
          "chain order broken: dispatch(F) of layer 0 is issued before attn(F) of layer 0, "
          "which comes before it on its chain");
  }
  SECTION("a leaf before its predecessor") {
    const issue_order o = order_of(
        {B(0, 0), B(0, 2), F(0, 0), B(0, 1), F(0, 1), B(0, 3), F(0, 2), B(0, 4), B(0, 5), F(0, 3)});
    const order_verdict v = check_order(p, o);
    CHECK(v.rule == order_rule::leaf_after_predecessor);
    CHECK(describe(p, v) ==
          "a leaf is issued before its predecessor: mlp.W(B) of layer 0 hangs off mlp(B) of layer "
          "0, which is issued after it");
  }
  SECTION("a sub-op before another it waits for: the lanes would deadlock") {
    stage_programs q{};
    q.forward = layer_program({sub_op{"a"}});
    q.backward = layer_program({sub_op{"y"}, sub_op{"w", lane::compute, role::leaf},
                                sub_op{"reduce", lane::communication, role::leaf, 0.0, 1}});
    const issue_order o = order_of({B(0, 0), B(0, 2), B(0, 1), F(0, 0)});
    const order_verdict v = check_order(q, o);
    CHECK(v.rule == order_rule::deadlock);
    CHECK(describe(q, v) ==
          "deadlock on first-in-first-out lanes: reduce(B) of layer 0 waits for w(B) of layer 0, "
          "which is issued after it (its communication lane would wait forever)");
  }
  SECTION("unusable programs") {
    stage_programs q = moe1;
    q.backward = layer_program({sub_op{"w", lane::compute, role::leaf}, sub_op{"y"}});
    CHECK(check_order(q, good).rule == order_rule::program);
    CHECK(describe(q, check_order(q, good)) ==
          "the programs are unusable: the backward program: sub-op 0 is a leaf with no chain "
          "sub-op before it to hang off");
    CHECK(make_pair_order(q).size == 0);
  }
}

TEST_CASE("a part of a pair (one pass, or a backward's chain or leaves) is checked as a part") {
  const stage_programs p = moe_layer_programs({}, 2);
  for (const issue_order& part :
       {make_pass_order(p, pass::forward), make_pass_order(p, pass::backward),
        make_pass_order(p, pass::backward, pass_part::chain_only),
        make_pass_order(p, pass::backward, pass_part::leaves_only)}) {
    CHECK(check_order(p, part, order_coverage::part).ok());
    // As a whole pair it misses the rest.
    CHECK(check_order(p, part).rule == order_rule::once);
  }
  // The rules still hold inside a part: a chain in reverse, a leaf twice.
  issue_order reversed{};
  const issue_order forward = make_pass_order(p, pass::forward);
  for (int i = forward.size - 1; i >= 0; --i)
    reversed.push(forward.ops[static_cast<std::size_t>(i)]);
  CHECK(check_order(p, reversed, order_coverage::part).rule == order_rule::chain_order);
  issue_order leaves = make_pass_order(p, pass::backward, pass_part::leaves_only);
  leaves.push(leaves.ops[0]);
  CHECK(describe(p, check_order(p, leaves, order_coverage::part)) ==
        "every sub-op is issued once: mlp.W(B) of layer 1 is issued twice");
  // A leaf whose predecessor is outside the part counts it as finished.
  CHECK(check_order(p, order_of({B(1, 2)}), order_coverage::part).ok());
  CHECK(check_order(p, order_of({B(1, 2), B(1, 1)}), order_coverage::part).rule ==
        order_rule::leaf_after_predecessor);
}

TEST_CASE("program problems, one sentence each") {
  const auto problem = [](stage_programs p) { return program_problem(p); };
  stage_programs p = moe1;
  CHECK(problem(p).empty());
  p.layers = 0;
  CHECK(problem(p) == "a stage's programs repeat over 1 to 32 layers");
  p = moe1;
  p.forward.size = 0;
  CHECK(problem(p) == "the forward program must hold 1 to 12 sub-ops");
  p = moe1;
  p.forward.ops[1].name = op_name{};
  CHECK(problem(p) == "the forward program: sub-op 1 has no name");
  p = moe1;
  p.forward.ops[2].name = "mlp.experts.gate";  // 16 characters
  CHECK(problem(p) == "the forward program: sub-op 2 has a name longer than 15 characters");
  p = moe1;
  p.backward.ops[3].name = "mlp";
  CHECK(problem(p) ==
        "the backward program: sub-op 3 has the name of sub-op 1 (names in a program must differ)");
  p = moe1;
  p.backward.ops[2].cost = -1.0;
  CHECK(problem(p) == "the backward program: sub-op 2 has a cost that is negative or not finite");
  p = moe1;
  p.forward.ops[1].after = 1;
  CHECK(problem(p) ==
        "the forward program: sub-op 1 waits for a sub-op that does not come before it (after "
        "must name a lower index)");
}
