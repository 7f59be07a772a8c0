// include/dualpipe/torch: the tensor's wire form, the weight-gradient store,
// the deferred linear layer, module_stage's two ways of deferring W, the
// criterion loss and the mirrored sum of two modules' gradients.
// torch first: Debian's c10 includes glog, whose CHECK macro would replace
// Catch2's; Catch2 then defines its own.
#include <torch/torch.h>
#undef CHECK
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "dualpipe/torch/deferred_linear.hpp"
#include "dualpipe/torch/loss.hpp"
#include "dualpipe/torch/mirrored.hpp"
#include "dualpipe/torch/stage.hpp"
#include "dualpipe/torch/tensor.hpp"
#include "dualpipe/torch/weight_grad_store.hpp"

namespace lt = dualpipe::libtorch;
using traits = dualpipe::wire_traits<at::Tensor>;
using Catch::Matchers::Contains;

namespace {

// The reference example's stage: Linear(h, 4h) -> GELU -> Linear(4h, h), no
// bias, with deferred-W linears or ordinary ones.
torch::nn::Sequential deferred_stage(int h, at::ScalarType dtype) {
  torch::nn::Sequential s(lt::deferred_linear(torch::nn::LinearOptions(h, 4 * h).bias(false)),
                          torch::nn::GELU(),
                          lt::deferred_linear(torch::nn::LinearOptions(4 * h, h).bias(false)));
  s->to(dtype);
  return s;
}
torch::nn::Sequential plain_stage(int h, at::ScalarType dtype) {
  torch::nn::Sequential s(torch::nn::Linear(torch::nn::LinearOptions(h, 4 * h).bias(false)),
                          torch::nn::GELU(),
                          torch::nn::Linear(torch::nn::LinearOptions(4 * h, h).bias(false)));
  s->to(dtype);
  return s;
}

// Same parameter values in `to` as in `from`.
void copy_parameters(torch::nn::Module& from, torch::nn::Module& to) {
  const torch::NoGradGuard no_grad;
  auto a = from.parameters();
  auto b = to.parameters();
  REQUIRE(a.size() == b.size());
  for (std::size_t i = 0; i < a.size(); ++i) b[i].copy_(a[i]);
}

std::vector<at::Tensor> grads(torch::nn::Module& m) {
  std::vector<at::Tensor> out;
  for (const at::Tensor& p : m.parameters()) out.push_back(p.grad().clone());
  return out;
}

bool bitwise_equal(const at::Tensor& a, const at::Tensor& b) {
  return a.defined() && b.defined() && a.sizes() == b.sizes() &&
         a.scalar_type() == b.scalar_type() &&
         std::memcmp(a.contiguous().data_ptr(), b.contiguous().data_ptr(), a.nbytes()) == 0;
}

}  // namespace

TEST_CASE("a torch tensor's wire form carries its element type and shape", "[torch][wire]") {
  static_assert(dualpipe::check_wire_tensor<at::Tensor>());
  for (const at::ScalarType t : {at::kFloat, at::kDouble, at::kLong, at::kBool, at::kHalf}) {
    const at::Tensor x = at::ones({3, 4, 5}, at::TensorOptions().dtype(t));
    const dualpipe::wire_shape s = traits::shape(x);
    CHECK(s.dims_used == 3);
    CHECK(s.dims[0] == 3);
    CHECK(s.dims[2] == 5);
    CHECK(s.bytes == x.nbytes());
    CHECK(dualpipe::wire_shape_error(s).empty());
    CHECK(lt::scalar_type_of(s.dtype) == t);
    at::Tensor y;
    const auto into = traits::prepare(y, s);
    const auto from = traits::bytes(x);
    REQUIRE(into.size() == from.size());
    std::memcpy(into.data(), from.data(), from.size());
    CHECK(y.scalar_type() == t);
    CHECK(torch::equal(x, y));
  }
  CHECK(dualpipe::describe(traits::shape(at::zeros({8, 64}))) == "f32[8, 64]");
}

TEST_CASE("every wire code but bytes names one torch element type, both ways", "[torch][wire]") {
  int named = 0;
  for (std::uint32_t c = 0; c <= static_cast<std::uint32_t>(dualpipe::wire_dtype::c128); ++c) {
    const auto code = static_cast<dualpipe::wire_dtype>(c);
    CAPTURE(dualpipe::wire_dtype_name(code));
    const std::optional<at::ScalarType> type = lt::scalar_type_of(code);
    if (code == dualpipe::wire_dtype::bytes) {
      CHECK_FALSE(type);
      continue;
    }
    REQUIRE(type);
    CHECK(lt::wire_dtype_of(*type) == code);
    ++named;
  }
  CHECK(named == 12);
}

TEST_CASE("a tensor the wire cannot carry is refused with the reason", "[torch][wire]") {
  const at::Tensor t = at::arange(12, at::kFloat).reshape({3, 4}).t();
  REQUIRE_FALSE(t.is_contiguous());
  CHECK_THROWS_WITH(traits::shape(t),
                    Contains("f32[4, 3] is not contiguous") && Contains("send t.contiguous()"));
  CHECK_THROWS_WITH(traits::bytes(t), Contains("not contiguous"));
  CHECK_THROWS_WITH(traits::shape(at::Tensor()), Contains("an undefined tensor"));
  CHECK_THROWS_WITH(traits::shape(at::zeros({1, 1, 1, 1, 1, 1, 1, 1, 1})),
                    Contains("has 9 dimensions, at most 8"));
  CHECK_THROWS_WITH(traits::shape(at::empty({2}, at::kComplexHalf)), Contains("no code"));
  CHECK(lt::wire_refusal(t.contiguous()).empty());

  dualpipe::wire_shape bytes_only = traits::shape(at::zeros({4}));
  bytes_only.dtype = dualpipe::wire_dtype::bytes;
  at::Tensor y;
  CHECK_THROWS_WITH(traits::prepare(y, bytes_only), Contains("no torch element type holds"));
  dualpipe::wire_shape lying = traits::shape(at::zeros({4}));
  lying.bytes = 3;
  CHECK_THROWS_WITH(traits::prepare(y, lying), Contains("but the header says 3"));
}

TEST_CASE("a receive reuses a buffer only when nothing else sees its storage", "[torch][wire]") {
  const dualpipe::wire_shape s = traits::shape(at::zeros({2, 3}));
  at::Tensor buffer = at::zeros({2, 3});
  void* const storage = buffer.data_ptr();
  (void)traits::prepare(buffer, s);
  CHECK(buffer.data_ptr() == storage);  // alone: filled in place

  const at::Tensor kept = buffer.detach();  // a stage kept it (shares the storage)
  (void)traits::prepare(buffer, s);
  CHECK(buffer.data_ptr() != storage);  // fresh storage: `kept` stays as it was
  CHECK(kept.data_ptr() == storage);

  at::Tensor other_shape = at::zeros({3, 2});
  const auto span = traits::prepare(other_shape, s);
  CHECK((other_shape.sizes() == at::IntArrayRef({2, 3})));
  CHECK(span.size() == 24);
}

TEST_CASE("the weight-gradient store runs groups first in, first out, checked", "[torch][store]") {
  lt::weight_grad_store store;
  std::vector<int> ran;
  store.put([&] { ran.push_back(-1); });  // not deferring: now
  CHECK((ran == std::vector<int>{-1}));
  for (const int mb : {3, 5}) {
    store.open(mb);
    store.put([&, mb] { ran.push_back(mb); });
    store.put([&, mb] { ran.push_back(10 * mb); });
    store.close(mb);
  }
  store.open(7);
  store.close(7);  // an empty group keeps its place
  CHECK((store.pending_microbatches() == std::vector<int>{3, 5, 7}));
  CHECK_THROWS_WITH(store.run(5), Contains("W of micro-batch 5, but the oldest deferred weight "
                                           "gradient is micro-batch 3's"));
  store.run(3);
  store.run(5);
  store.run(7);
  CHECK((ran == std::vector<int>{-1, 3, 30, 5, 50}));
  CHECK_THROWS_WITH(store.run(7), Contains("no weight gradient is deferred"));
  store.open(1);
  CHECK_THROWS_WITH(store.open(2), Contains("while micro-batch 1's has not finished"));
  store.discard();
  CHECK(store.pending() == 0);
}

TEST_CASE("deferred_linear computes what torch::nn::Linear does, and defers on request",
          "[torch][deferred_linear]") {
  torch::manual_seed(3);
  lt::deferred_linear ours(torch::nn::LinearOptions(6, 5));
  torch::nn::Linear theirs(torch::nn::LinearOptions(6, 5));
  ours->to(at::kDouble);
  theirs->to(at::kDouble);
  copy_parameters(*ours, *theirs);
  const at::Tensor x = at::randn({4, 6}, at::kDouble);
  const at::Tensor g = at::randn({4, 5}, at::kDouble);

  lt::weight_grad_store store;
  ours->attach(&store);
  const at::Tensor x1 = x.clone().requires_grad_(true);
  const at::Tensor x2 = x.clone().requires_grad_(true);
  const at::Tensor y1 = ours(x1);
  const at::Tensor y2 = theirs(x2);
  CHECK(torch::allclose(y1, y2));

  store.open(0);
  torch::autograd::backward({y1}, {g});
  store.close(0);
  CHECK(x1.grad().defined());                  // the input gradient now
  CHECK_FALSE(ours->weight.grad().defined());  // the weight's waits for W
  CHECK_FALSE(ours->bias.grad().defined());
  store.run(0);
  torch::autograd::backward({y2}, {g});
  CHECK(torch::allclose(x1.grad(), x2.grad()));
  CHECK(torch::allclose(ours->weight.grad(), theirs->weight.grad()));
  CHECK(torch::allclose(ours->bias.grad(), theirs->bias.grad()));

  lt::weight_grad_store other;
  CHECK_THROWS_WITH(ours->attach(&other), Contains("already defers into another stage's"));
  const auto copy = std::dynamic_pointer_cast<lt::deferred_linear_impl>(ours->clone());
  CHECK(copy->store() == nullptr);  // a clone is free to join another stage
}

TEMPLATE_TEST_CASE("module_stage: a split backward gives a full backward's gradients, bit for bit",
                   "[torch][stage]", float, double) {
  const at::ScalarType dtype = std::is_same_v<TestType, float> ? at::kFloat : at::kDouble;
  const int h = 8;
  torch::manual_seed(11);
  const at::Tensor x0 = at::randn({3, h}, dtype), x1 = at::randn({3, h}, dtype);
  const at::Tensor g0 = at::randn({3, h}, dtype), g1 = at::randn({3, h}, dtype);

  for (const bool deferred_layers : {true, false}) {
    for (const lt::weight_gradients mode :
         {lt::weight_gradients::store, lt::weight_gradients::second_pass}) {
      if (mode == lt::weight_gradients::store && !deferred_layers) continue;
      CAPTURE(deferred_layers, lt::weight_gradients_name(mode));
      auto make = [&] {
        return deferred_layers ? deferred_stage(h, dtype) : plain_stage(h, dtype);
      };
      torch::nn::Sequential a = make(), b = make();
      copy_parameters(*a, *b);
      lt::module_stage split(a, {.deferral = mode});
      lt::module_stage whole(b);
      CHECK(split.deferral() == mode);

      at::Tensor ya0, ya1, yb0, yb1, ia0, ia1, ib0, ib1;
      split.forward(0, x0, ya0);
      split.forward(1, x1, ya1);
      whole.forward(0, x0, yb0);
      whole.forward(1, x1, yb1);
      CHECK(bitwise_equal(ya0, yb0));
      CHECK(split.kept() == 2);
      split.backward_input(0, g0, ia0);
      split.backward_input(1, g1, ia1);
      CHECK((split.deferred_microbatches() == std::vector<int>{0, 1}));
      CHECK_FALSE(a->parameters()[0].grad().defined());
      CHECK_THROWS_WITH(split.backward_weight(1),
                        Contains("W of micro-batch 1, but the oldest deferred weight gradient is "
                                 "micro-batch 0's"));
      split.backward_weight(0);
      split.backward_weight(1);
      CHECK(split.kept() == 0);
      CHECK(split.deferred_microbatches().empty());
      whole.backward(0, g0, ib0);
      whole.backward(1, g1, ib1);
      CHECK(bitwise_equal(ia0, ib0));
      CHECK(bitwise_equal(ia1, ib1));
      const auto ga = grads(*a), gb = grads(*b);
      for (std::size_t i = 0; i < ga.size(); ++i) CHECK(bitwise_equal(ga[i], gb[i]));
    }
  }
}

TEST_CASE("module_stage: inference keeps nothing; errors name what is missing", "[torch][stage]") {
  lt::module_stage stage(deferred_stage(4, at::kFloat));
  CHECK(stage.deferral() == lt::weight_gradients::store);
  at::Tensor y, ig;
  {
    const torch::NoGradGuard no_grad;
    stage.forward(0, at::ones({2, 4}), y);
  }
  CHECK((y.sizes() == at::IntArrayRef({2, 4})));
  CHECK(stage.kept() == 0);
  CHECK_THROWS_WITH(stage.backward(0, at::ones({2, 4}), ig),
                    Contains("backward of micro-batch 0 without its forward"));
  CHECK_THROWS_WITH(stage.backward_weight(0), Contains("no weight gradient is deferred"));

  stage.forward(0, at::ones({2, 4}), y);
  CHECK_THROWS_WITH(stage.backward(0, at::ones({3, 4}), ig),
                    Contains("the output gradient of micro-batch 0 is f32[3, 4], its output "
                             "f32[2, 4]"));
  CHECK_THROWS_WITH(
      lt::module_stage(plain_stage(4, at::kFloat), {.deferral = lt::weight_gradients::store}),
      Contains("needs a module that holds at least one deferred_linear"));
  CHECK(lt::module_stage(plain_stage(4, at::kFloat)).deferral() ==
        lt::weight_gradients::second_pass);

  torch::nn::Sequential shared = deferred_stage(4, at::kFloat);
  lt::module_stage first(shared);
  CHECK_THROWS_WITH(lt::module_stage(shared), Contains("give each stage its own module"));

  lt::module_stage integer_input(plain_stage(4, at::kFloat));
  CHECK_THROWS_WITH(integer_input.forward(0, at::ones({2, 4}, at::kLong), y),
                    Contains("which has no gradient; construct the stage with "
                             "input_requires_grad = false"));
}

TEST_CASE("module_stage: a first stage computes no input gradient", "[torch][stage]") {
  for (const auto mode : {lt::weight_gradients::store, lt::weight_gradients::second_pass}) {
    torch::nn::Sequential a = deferred_stage(4, at::kDouble), b = deferred_stage(4, at::kDouble);
    copy_parameters(*a, *b);
    lt::module_stage first(a, {.deferral = mode, .input_requires_grad = false});
    lt::module_stage reference(b, {.deferral = mode});
    const at::Tensor x = at::randn({2, 4}, at::kDouble), g = at::randn({2, 4}, at::kDouble);
    at::Tensor y, ig, y2, ig2;
    first.forward(0, x, y);
    first.backward_input(0, g, ig);
    first.backward_weight(0);
    reference.forward(0, x, y2);
    reference.backward_input(0, g, ig2);
    reference.backward_weight(0);
    CHECK_FALSE(ig.defined());
    CHECK(ig2.defined());
    const auto ga = grads(*a), gb = grads(*b);
    for (std::size_t i = 0; i < ga.size(); ++i) CHECK(bitwise_equal(ga[i], gb[i]));
  }
}

TEST_CASE("criterion_loss seeds the backward as loss.backward() does", "[torch][loss]") {
  lt::criterion_loss loss(
      [](const at::Tensor& y, const at::Tensor& l) { return torch::mse_loss(y, l); });
  const at::Tensor y = at::randn({3, 4}, at::kDouble), label = at::randn({3, 4}, at::kDouble);
  const at::Tensor value = loss(y, label);
  at::Tensor seed;
  loss.gradient(y, label, seed);

  const at::Tensor y2 = y.clone().requires_grad_(true);
  const at::Tensor l2 = torch::mse_loss(y2, label);
  l2.backward();
  CHECK(bitwise_equal(value, l2.detach()));
  CHECK(bitwise_equal(seed, y2.grad()));

  lt::criterion_loss unreduced([](const at::Tensor& a, const at::Tensor& b) {
    return torch::mse_loss(a, b, at::Reduction::None);
  });
  CHECK_THROWS_WITH(unreduced(y, label), Contains("must return one value"));
}

TEST_CASE("mirrored copies of a module hold the summed gradients, bit for bit",
          "[torch][mirrored]") {
  torch::nn::Sequential a = plain_stage(4, at::kFloat), b = plain_stage(4, at::kFloat);
  const at::Tensor x = at::randn({2, 4});
  a->forward(x).sum().backward();
  b->forward(x * 2).sum().backward();
  const auto ga = grads(*a), gb = grads(*b);
  lt::sum_mirrored_gradients(*a, *b);
  const auto sa = grads(*a), sb = grads(*b);
  for (std::size_t i = 0; i < ga.size(); ++i) {
    CHECK(bitwise_equal(sa[i], sb[i]));
    CHECK(bitwise_equal(sa[i], ga[i] + gb[i]));
  }
  torch::nn::Sequential c = plain_stage(5, at::kFloat);
  CHECK_THROWS_WITH(lt::sum_mirrored_gradients(*a, *c), Contains("parameter 0 is f32[16, 4]"));
}

TEST_CASE("module_stage: flat buffers take the module's shapes", "[torch][stage]") {
  // As the NCCL transport delivers them: a count of elements, no shape.
  torch::nn::Sequential a = deferred_stage(4, at::kDouble), b = deferred_stage(4, at::kDouble);
  copy_parameters(*a, *b);
  lt::module_stage flat(a, {.input_shape = {-1, 4}});
  lt::module_stage shaped(b);
  const at::Tensor x = at::randn({3, 4}, at::kDouble), g = at::randn({3, 4}, at::kDouble);
  at::Tensor y1, y2, i1, i2;
  flat.forward(0, x.reshape({12}), y1);
  shaped.forward(0, x, y2);
  CHECK(bitwise_equal(y1, y2));
  flat.backward(0, g.reshape({12}), i1);
  shaped.backward(0, g, i2);
  CHECK(bitwise_equal(i1, i2));
  const auto ga = grads(*a), gb = grads(*b);
  for (std::size_t i = 0; i < ga.size(); ++i) CHECK(bitwise_equal(ga[i], gb[i]));
  CHECK_THROWS(flat.forward(1, at::ones({10}, at::kDouble), y1));  // 10 is no multiple of 4
}

TEST_CASE("module_stage: clear() drops what a failed step left behind", "[torch][stage]") {
  STATIC_REQUIRE(std::is_move_constructible_v<lt::module_stage<torch::nn::Sequential>>);
  STATIC_REQUIRE_FALSE(std::is_move_assignable_v<lt::module_stage<torch::nn::Sequential>>);
  for (const auto mode : {lt::weight_gradients::store, lt::weight_gradients::second_pass}) {
    CAPTURE(lt::weight_gradients_name(mode));
    lt::module_stage stage(deferred_stage(4, at::kFloat), {.deferral = mode});
    at::Tensor y, ig;
    // A step that stopped after an I: its W never ran, a later forward kept.
    stage.forward(0, at::ones({2, 4}), y);
    stage.backward_input(0, at::ones({2, 4}), ig);
    stage.forward(1, at::ones({2, 4}), y);
    CHECK(stage.deferred_microbatches() == std::vector<int>{0});
    stage.clear();
    CHECK(stage.deferred_microbatches().empty());
    CHECK(stage.kept() == 0);
    // The next step starts from nothing: micro-batch 1's W comes first now.
    stage.forward(1, at::ones({2, 4}), y);
    stage.backward_input(1, at::ones({2, 4}), ig);
    CHECK_NOTHROW(stage.backward_weight(1));
  }
}
