// bench/torch: what one torch stage's actions cost on one thread, the kernels
// the train-torch side by side (docs/benchmarks.md) is built of. The
// reference example's stage, Linear(h, 4h) -> GELU -> Linear(4h, h) without
// bias, f32, one intra-op and BLAS thread, driven through module_stage:
//
//   full/<layer>            forward, then a full backward (B)
//   split/<way>             forward, backward-for-input (I), then W
//   actions/<way>/<action>  one action alone (F, B, I or W), the others
//                           untimed around it
//
// <layer>: linear (torch::nn::Linear, autograd's own backward) or deferred
// (deferred_linear, the reference's LinearFunc); <way>: store
// (deferred_linear's queue) or second_pass (torch::nn::Linear, W walks the
// graph again). Sizes: tiny (h 16, 1 row) and moderate (h 256, 64 rows), as
// the side by side. Input gradients are computed, as on every stage but the
// first.
//
//   bench_torch_stage [--benchmark_filter=...] [google-benchmark flags]
#include <benchmark/benchmark.h>
#include <cblas.h>
#include <torch/torch.h>

#include <string>

#include "dualpipe/torch/deferred_linear.hpp"
#include "dualpipe/torch/stage.hpp"

namespace {

namespace lt = dualpipe::libtorch;

enum class layer { linear, deferred };
enum class action { forward, backward, backward_input, backward_weight };

torch::nn::Sequential make_stage(layer kind, int h) {
  torch::nn::Sequential s;
  if (kind == layer::linear) {
    s->push_back(torch::nn::Linear(torch::nn::LinearOptions(h, 4 * h).bias(false)));
    s->push_back(torch::nn::GELU());
    s->push_back(torch::nn::Linear(torch::nn::LinearOptions(4 * h, h).bias(false)));
  } else {
    s->push_back(lt::deferred_linear(torch::nn::LinearOptions(h, 4 * h).bias(false)));
    s->push_back(torch::nn::GELU());
    s->push_back(lt::deferred_linear(torch::nn::LinearOptions(4 * h, h).bias(false)));
  }
  return s;
}

struct size {
  int hidden, rows;
};
constexpr size sizes[] = {{16, 1}, {256, 64}};
const char* size_name(int i) {
  return i == 0 ? "tiny" : "moderate";
}

void one_thread() {
  at::set_num_threads(1);
  openblas_set_num_threads(1);
}

// F then B, every iteration.
void full(benchmark::State& state, layer kind, size sz) {
  one_thread();
  lt::module_stage stage(make_stage(kind, sz.hidden));
  const at::Tensor x = torch::randn({sz.rows, sz.hidden}), g = torch::randn({sz.rows, sz.hidden});
  at::Tensor y, gx;
  for (auto _ : state) {
    stage.forward(0, x, y);
    stage.backward(0, g, gx);
  }
}

// F, I, W every iteration (timed), or one of them (the rest untimed).
void split(benchmark::State& state, lt::weight_gradients way, size sz, const action* only) {
  one_thread();
  const layer kind = way == lt::weight_gradients::store ? layer::deferred : layer::linear;
  lt::module_stage stage(make_stage(kind, sz.hidden), {.deferral = way});
  const at::Tensor x = torch::randn({sz.rows, sz.hidden}), g = torch::randn({sz.rows, sz.hidden});
  at::Tensor y, gx;
  for (auto _ : state) {
    const auto step = [&](action a, auto&& run) {
      if (only != nullptr && *only != a) state.PauseTiming();
      run();
      if (only != nullptr && *only != a) state.ResumeTiming();
    };
    if (only != nullptr && *only == action::backward) {
      step(action::forward, [&] { stage.forward(0, x, y); });
      step(action::backward, [&] { stage.backward(0, g, gx); });
      continue;
    }
    step(action::forward, [&] { stage.forward(0, x, y); });
    step(action::backward_input, [&] { stage.backward_input(0, g, gx); });
    step(action::backward_weight, [&] { stage.backward_weight(0); });
  }
}

const action all_actions[] = {action::forward, action::backward, action::backward_input,
                              action::backward_weight};
const char* action_name(action a) {
  switch (a) {
    case action::forward:
      return "F";
    case action::backward:
      return "B";
    case action::backward_input:
      return "I";
    case action::backward_weight:
      return "W";
  }
  return "?";
}

const bool registered = [] {
  for (int i = 0; i < 2; ++i) {
    const size sz = sizes[i];
    const std::string at = std::string("/") + size_name(i);
    benchmark::RegisterBenchmark(("full/linear" + at).c_str(), full, layer::linear, sz);
    benchmark::RegisterBenchmark(("full/deferred" + at).c_str(), full, layer::deferred, sz);
    for (const auto way : {lt::weight_gradients::store, lt::weight_gradients::second_pass}) {
      const std::string w = lt::weight_gradients_name(way);
      benchmark::RegisterBenchmark(("split/" + w + at).c_str(), split, way, sz, nullptr);
      for (const action& a : all_actions)
        benchmark::RegisterBenchmark(("actions/" + w + "/" + action_name(a) + at).c_str(), split,
                                     way, sz, &a);
    }
  }
  return true;
}();

}  // namespace

BENCHMARK_MAIN();
