// programmed_stage: a two-layer MoE-shaped stage on std::vector<double>,
// described by moe_layer_programs and run through cpu_lanes, is a pipeline
// stage with an overlapped pair; trained through the real executor (DualPipe
// and DualPipeV on threads) it gives bitwise the same losses, outputs and
// weight gradients with overlapped pairs, sequential pairs, and no pair hook
// at all (forward then backward). Also: each pass gives run_sub_op the right
// sub-ops and tensors, and a failing sub-op aborts both stages of a pair.
#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <exception>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "dualpipe/overlap/cpu_lanes.hpp"
#include "dualpipe/overlap/issue_order.hpp"
#include "dualpipe/overlap/moe_layer.hpp"
#include "dualpipe/overlap/stage.hpp"
#include "dualpipe/runtime/executor.hpp"
#include "dualpipe/runtime/stage.hpp"
#include "dualpipe/schedule/dualpipe.hpp"
#include "dualpipe/transport/in_process.hpp"
#include "rank_threads.hpp"

namespace {

namespace ov = dualpipe::overlap;
using vec = std::vector<double>;
constexpr int width = 4;
constexpr int layers = 2;

// w[i] = v[(i + k) % n]: the all-to-all of this toy, a fixed permutation.
vec rotate(const vec& v, std::size_t k) {
  vec w(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) w[i] = v[(i + k) % v.size()];
  return w;
}

// Per layer: attention h = a x + 0.1 x^2, dispatch d = rotate(h, 1), MLP
// y = m tanh(d), combine out = rotate(y, -1). Backward by hand, the weight
// gradients (sums over the micro-batch's elements) in the leaves.
class moe_stage : public ov::programmed_stage<moe_stage, vec> {
 public:
  static constexpr ov::stage_programs programs = ov::moe_layer_programs({}, layers);

  moe_stage(int stage, int microbatches, ov::cpu_lanes& lanes)
      : state_(static_cast<std::size_t>(microbatches)), lanes_(&lanes) {
    for (std::size_t l = 0; l < layers; ++l) {
      a[l] = 0.9 + 0.01 * stage + 0.003 * static_cast<double>(l);
      m[l] = 1.1 - 0.02 * stage + 0.001 * static_cast<double>(l);
    }
  }

  ov::cpu_lanes& lanes() { return *lanes_; }

  void run_sub_op(const ov::sub_op_call& call, const vec& in, vec& out) {
    if (call.stream != nullptr) throw std::logic_error("CPU lanes pass no stream");
    microbatch_state& s = state_.at(static_cast<std::size_t>(call.microbatch));
    const auto l = static_cast<std::size_t>(call.layer);
    layer_state& x = s.layer[l];
    if (call.which == ov::pass::forward) {
      const vec& layer_in = l == 0 ? in : s.layer[l - 1].out;
      vec& layer_out = l + 1 == layers ? out : x.out;
      switch (call.index) {
        case ov::moe_forward::attention:
          x.x = layer_in;
          x.h.resize(x.x.size());
          for (std::size_t i = 0; i < x.x.size(); ++i)
            x.h[i] = a[l] * x.x[i] + 0.1 * x.x[i] * x.x[i];
          break;
        case ov::moe_forward::dispatch:
          x.d = rotate(x.h, 1);
          break;
        case ov::moe_forward::mlp:
          x.y.resize(x.d.size());
          for (std::size_t i = 0; i < x.d.size(); ++i) x.y[i] = m[l] * std::tanh(x.d[i]);
          break;
        case ov::moe_forward::combine:
          layer_out = rotate(x.y, width - 1);
          break;
        default:
          throw std::logic_error("no such forward sub-op");
      }
      return;
    }
    switch (call.index) {
      case ov::moe_backward::combine: {
        const vec& grad_out = l + 1 == layers ? in : s.layer[l + 1].g_x;
        x.g_y = rotate(grad_out, 1);
        break;
      }
      case ov::moe_backward::mlp:
        x.g_d.resize(x.g_y.size());
        for (std::size_t i = 0; i < x.g_y.size(); ++i) {
          const double t = std::tanh(x.d[i]);
          x.g_d[i] = x.g_y[i] * m[l] * (1.0 - t * t);
        }
        break;
      case ov::moe_backward::mlp_weight:
        for (std::size_t i = 0; i < x.g_y.size(); ++i) grad_m[l] += x.g_y[i] * std::tanh(x.d[i]);
        break;
      case ov::moe_backward::dispatch:
        x.g_h = rotate(x.g_d, width - 1);
        break;
      case ov::moe_backward::attention: {
        vec& grad_in = l == 0 ? out : x.g_x;
        grad_in.resize(x.g_h.size());
        for (std::size_t i = 0; i < x.g_h.size(); ++i)
          grad_in[i] = x.g_h[i] * (a[l] + 0.2 * x.x[i]);
        break;
      }
      case ov::moe_backward::attention_weight:
        for (std::size_t i = 0; i < x.g_h.size(); ++i) grad_a[l] += x.g_h[i] * x.x[i];
        break;
      default:
        throw std::logic_error("no such backward sub-op");
    }
  }

  std::array<double, layers> a{}, m{}, grad_a{}, grad_m{};

 private:
  struct layer_state {
    vec x, h, d, y, out, g_y, g_d, g_h, g_x;
  };
  struct microbatch_state {
    std::array<layer_state, layers> layer;
  };
  // Sized before the step: the two lanes touch different micro-batches' states.
  std::vector<microbatch_state> state_;
  ov::cpu_lanes* lanes_;
};

static_assert(dualpipe::check_pipeline_stage<moe_stage, vec>());
static_assert(dualpipe::stage_with_overlapped_forward_backward<moe_stage, vec>);
static_assert(ov::check_programmed_stage<moe_stage, vec, ov::cpu_lanes>());

// The same stage without the pair hook: the executor runs forward then
// backward.
struct plain_stage {
  moe_stage* inner;
  void forward(int mb, const vec& in, vec& out) { inner->forward(mb, in, out); }
  void backward(int mb, const vec& g, vec& ig) { inner->backward(mb, g, ig); }
  void backward_input(int mb, const vec& g, vec& ig) { inner->backward_input(mb, g, ig); }
  void backward_weight(int mb) { inner->backward_weight(mb); }
};
static_assert(dualpipe::check_pipeline_stage<plain_stage, vec>());
static_assert(!dualpipe::stage_with_overlapped_forward_backward<plain_stage, vec>);

struct squared_error {
  double operator()(const vec& y, const vec& label) const {
    double sum = 0.0;
    for (std::size_t i = 0; i < y.size(); ++i) sum += 0.5 * (y[i] - label[i]) * (y[i] - label[i]);
    return sum;
  }
  void gradient(const vec& y, const vec& label, vec& g) const {
    g.resize(y.size());
    for (std::size_t i = 0; i < y.size(); ++i) g[i] = y[i] - label[i];
  }
};

vec input_of(int mb) {
  vec v(width);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = 0.1 * mb - 0.05 * static_cast<double>(i) + 0.2;
  return v;
}
vec label_of(int mb) {
  vec v(width);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = 0.3 - 0.02 * mb + 0.07 * static_cast<double>(i);
  return v;
}

enum class mode { overlapped, sequential, plain };

// What a training run gives, per rank: losses, outputs, and per stage
// object (ascending stage) its weight gradients.
struct trained {
  std::vector<std::vector<double>> losses;
  std::vector<std::vector<vec>> outputs;
  std::vector<std::vector<std::array<double, 2 * layers>>> gradients;
};

template <class Stage>
void train_rank(const dualpipe::schedule_table& table, dualpipe::in_process_network<vec>& net,
                int r, mode md, int steps, trained& out) {
  const int N = table.info().microbatches;
  ov::cpu_lanes lanes;
  std::vector<std::unique_ptr<moe_stage>> stages;
  std::vector<std::unique_ptr<plain_stage>> plain;
  dualpipe::executor<Stage, dualpipe::in_process_transport<vec>, squared_error> ex(
      table, net.endpoint(r), [&](int s) -> Stage& {
        stages.push_back(std::make_unique<moe_stage>(s, N, lanes));
        if (md == mode::sequential) stages.back()->set_pair_mode(ov::pair_mode::sequential);
        if constexpr (std::is_same_v<Stage, plain_stage>) {
          plain.push_back(std::make_unique<plain_stage>(plain_stage{stages.back().get()}));
          return *plain.back();
        } else {
          return *stages.back();
        }
      });
  std::vector<vec> inputs, labels;
  for (const int mb : ex.entering_microbatches()) inputs.push_back(input_of(mb));
  for (const int mb : ex.leaving_microbatches()) labels.push_back(label_of(mb));
  squared_error loss;
  const auto ri = static_cast<std::size_t>(r);
  for (int step = 0; step < steps; ++step) {
    const auto& res = ex.step(inputs, labels, loss, {.return_outputs = true});
    out.losses[ri].insert(out.losses[ri].end(), res.losses.begin(), res.losses.end());
    out.outputs[ri].insert(out.outputs[ri].end(), res.outputs.begin(), res.outputs.end());
  }
  // stage_of is called in ascending stage order (local_stages()).
  for (const auto& s : stages) {
    std::array<double, 2 * layers> g{};
    for (std::size_t l = 0; l < layers; ++l) {
      g[2 * l] = s->grad_a[l];
      g[2 * l + 1] = s->grad_m[l];
    }
    out.gradients[ri].push_back(g);
  }
}

template <class Stage>
trained train(const dualpipe::schedule_table& table, mode md, int steps = 2) {
  const int P = table.info().ranks;
  dualpipe::in_process_network<vec> net(P, std::chrono::seconds(60));
  trained out;
  out.losses.resize(static_cast<std::size_t>(P));
  out.outputs.resize(static_cast<std::size_t>(P));
  out.gradients.resize(static_cast<std::size_t>(P));
  dualpipe::test::rethrow_any(dualpipe::test::on_ranks(
      P, [&](int r) { train_rank<Stage>(table, net, r, md, steps, out); }));
  return out;
}

using overlapped_executor =
    dualpipe::executor<moe_stage, dualpipe::in_process_transport<vec>, squared_error>;
using plain_executor =
    dualpipe::executor<plain_stage, dualpipe::in_process_transport<vec>, squared_error>;
static_assert(overlapped_executor::overlaps_forward_backward);
static_assert(!plain_executor::overlaps_forward_backward);

bool has_overlapped_pairs(const dualpipe::schedule_table& table, int rank) {
  for (const dualpipe::instruction& x : table.rank(rank))
    if (x.kind == dualpipe::op::overlapped_forward_backward) return true;
  return false;
}

}  // namespace

TEST_CASE("trained through the executor, overlapped, sequential and plain runs agree bitwise",
          "[programmed_stage]") {
  for (const auto& [name, table] : std::vector<std::pair<std::string, dualpipe::schedule_table>>{
           {"dualpipe", dualpipe::schedules::dualpipe(4, 8)},
           {"dualpipev", dualpipe::schedules::dualpipev(2, 8)}}) {
    CAPTURE(name);
    for (int r = 0; r < table.info().ranks; ++r) REQUIRE(has_overlapped_pairs(table, r));
    const trained overlapped = train<moe_stage>(table, mode::overlapped);
    const trained sequential = train<moe_stage>(table, mode::sequential);
    const trained plain = train<plain_stage>(table, mode::plain);
    // Something was computed: every micro-batch's loss, twice (two steps),
    // finite and not all alike; gradients that are not zero.
    std::size_t losses = 0;
    for (const auto& l : overlapped.losses) {
      losses += l.size();
      for (const double x : l) REQUIRE(std::isfinite(x));
    }
    REQUIRE(losses == 2 * static_cast<std::size_t>(table.info().microbatches));
    for (const auto& rank : overlapped.gradients)
      for (const auto& g : rank)
        for (const double x : g) REQUIRE(x != 0.0);
    // Bitwise: == on doubles.
    REQUIRE(overlapped.losses == sequential.losses);
    REQUIRE(overlapped.losses == plain.losses);
    REQUIRE(overlapped.outputs == sequential.outputs);
    REQUIRE(overlapped.outputs == plain.outputs);
    REQUIRE(overlapped.gradients == sequential.gradients);
    REQUIRE(overlapped.gradients == plain.gradients);
  }
}

namespace {

// Records what run_sub_op is given.
struct seen_call {
  ov::sub_op_call call;
  const vec* in;
  const vec* out;
  bool empty;  // both tensors, when called (backward_weight's live only during the call)
  std::thread::id thread;
};

class recording_stage : public ov::programmed_stage<recording_stage, vec> {
 public:
  static constexpr ov::stage_programs programs = ov::moe_layer_programs({}, layers);
  explicit recording_stage(ov::cpu_lanes& lanes) : lanes_(&lanes) {}
  ov::cpu_lanes& lanes() { return *lanes_; }
  void run_sub_op(const ov::sub_op_call& call, const vec& in, vec& out) {
    if (call.where == ov::lane::communication)
      communication.push_back(
          {call, &in, &out, in.empty() && out.empty(), std::this_thread::get_id()});
    else
      compute.push_back({call, &in, &out, in.empty() && out.empty(), std::this_thread::get_id()});
    if (fail_at && call.which == fail_at->which && call.layer == fail_at->layer &&
        call.index == fail_at->index)
      throw std::runtime_error("sub-op failed");
  }
  void abort_communication(std::string_view why) noexcept {
    ++aborts;
    abort_why = std::string(why);
  }

  // One vector per lane: each is appended to by its lane's thread only.
  std::vector<seen_call> compute, communication;
  std::optional<ov::sub_op_call> fail_at;
  std::atomic<int> aborts{0};
  std::string abort_why;

 private:
  ov::cpu_lanes* lanes_;
};

// The sub-ops a stage saw, merged back into issue order.
std::vector<seen_call> in_order(const recording_stage& s, std::span<const ov::sub_op_ref> order) {
  std::vector<seen_call> out;
  std::size_t c = 0, k = 0;
  for (const ov::sub_op_ref r : order) {
    const auto& list = ov::sub_op_of(recording_stage::programs, r).where == ov::lane::compute
                           ? s.compute
                           : s.communication;
    std::size_t& at = &list == &s.compute ? c : k;
    if (at < list.size()) out.push_back(list[at++]);
  }
  return out;
}

}  // namespace

TEST_CASE("each pass gives run_sub_op its sub-ops, micro-batch and tensors", "[programmed_stage]") {
  ov::cpu_lanes lanes;
  recording_stage s(lanes);
  const vec in(3, 1.0), grad(3, 2.0);
  vec out, in_grad;
  const auto check = [&](std::span<const ov::sub_op_ref> order, int mb, const vec* pin,
                         const vec* pout) {
    const auto seen = in_order(s, order);
    REQUIRE(seen.size() == order.size());
    for (std::size_t i = 0; i < seen.size(); ++i) {
      const ov::sub_op_ref r = order[i];
      CAPTURE(describe(recording_stage::programs, r));
      REQUIRE(seen[i].call.which == r.which);
      REQUIRE(seen[i].call.layer == r.layer);
      REQUIRE(seen[i].call.index == r.index);
      REQUIRE(seen[i].call.where == ov::sub_op_of(recording_stage::programs, r).where);
      REQUIRE(seen[i].call.microbatch == mb);
      REQUIRE(seen[i].call.stream == nullptr);
      if (pin != nullptr) {
        REQUIRE(seen[i].in == pin);
        REQUIRE(seen[i].out == pout);
      } else {
        REQUIRE(seen[i].empty);
      }
      const bool on_caller = seen[i].thread == std::this_thread::get_id();
      REQUIRE(on_caller == (seen[i].call.where == ov::lane::compute));
    }
    s.compute.clear();
    s.communication.clear();
  };
  constexpr auto P = recording_stage::programs;
  s.forward(3, in, out);
  check(ov::make_pass_order(P, ov::pass::forward).view(), 3, &in, &out);
  s.backward(4, grad, in_grad);
  check(ov::make_pass_order(P, ov::pass::backward).view(), 4, &grad, &in_grad);
  s.backward_input(5, grad, in_grad);
  check(ov::make_pass_order(P, ov::pass::backward, ov::pass_part::chain_only).view(), 5, &grad,
        &in_grad);
  s.backward_weight(5);
  check(ov::make_pass_order(P, ov::pass::backward, ov::pass_part::leaves_only).view(), 5, nullptr,
        nullptr);
  // The pair order is the generated one, or the sequential one.
  REQUIRE(std::ranges::equal(recording_stage::pair_order(), ov::make_pair_order(P).view()));
  REQUIRE(std::ranges::equal(recording_stage::pair_order(ov::pair_mode::sequential),
                             ov::make_sequential_order(P).view()));
  REQUIRE(s.mode() == ov::pair_mode::overlapped);
  s.set_pair_mode(ov::pair_mode::sequential);
  REQUIRE(s.mode() == ov::pair_mode::sequential);
  REQUIRE(s.aborts == 0);
}

TEST_CASE("a failing sub-op in a pair names itself and aborts both stages' communication",
          "[programmed_stage][errors]") {
  ov::cpu_lanes lanes;
  recording_stage f(lanes), b(lanes);
  const vec in(3, 1.0), grad(3, 2.0);
  vec out, in_grad;
  b.fail_at = ov::sub_op_call{
      ov::pass::backward, ov::lane::communication, 0, ov::moe_backward::dispatch, 0, nullptr};
  try {
    f.overlapped_forward_backward(1, in, out, b, 0, grad, in_grad);
    FAIL("no exception");
  } catch (const ov::sub_op_error& e) {
    REQUIRE(std::string(e.what()) ==
            "dualpipe::overlap: dispatch(B) of layer 0 failed on the communication lane: "
            "sub-op failed");
  }
  REQUIRE(f.aborts == 1);
  REQUIRE(b.aborts == 1);
  REQUIRE(f.abort_why == b.abort_why);
  // attn(B) of layer 0 waits for the failed dispatch(B): never run.
  for (const auto& c : b.compute)
    REQUIRE_FALSE((c.call.layer == 0 && c.call.index == ov::moe_backward::attention));
  // The same stage on both sides of a pair is aborted once.
  f.aborts = 0;
  f.fail_at =
      ov::sub_op_call{ov::pass::forward, ov::lane::compute, 1, ov::moe_forward::mlp, 0, nullptr};
  REQUIRE_THROWS_AS(f.overlapped_forward_backward(2, in, out, f, 0, grad, in_grad),
                    ov::sub_op_error);
  REQUIRE(f.aborts == 1);
  // And the lanes run on.
  f.fail_at.reset();
  b.fail_at.reset();
  f.overlapped_forward_backward(2, in, out, b, 0, grad, in_grad);
}
