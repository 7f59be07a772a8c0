// bench/executor: what the executor costs.
//  (a) Dispatch: no-op stages on one rank of a table, with a loop-back
//      transport that moves nothing: the executor's own time per instruction.
//  (b) Realised against simulated makespan: stages that sleep fixed forward,
//      backward and weight times, P threads with the in-process transport;
//      the measured step time divided by simulate()'s makespan for the same
//      costs. Sleeping stages let P threads share two cores without skew.
//
//   bench_executor [--benchmark_filter=dispatch|makespan] [google-benchmark flags]
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "dualpipe/analysis/simulate.hpp"
#include "dualpipe/runtime/executor.hpp"
#include "dualpipe/schedule/registry.hpp"
#include "dualpipe/transport/in_process.hpp"

namespace {

// --- (a) dispatch -------------------------------------------------------

struct nothing {};

struct noop_stage {
  void forward(int, const nothing&, nothing&) {}
  void backward(int, const nothing&, nothing&) {}
  void backward_input(int, const nothing&, nothing&) {}
  void backward_weight(int) {}
};
struct noop_overlapping_stage : noop_stage {
  void overlapped_forward_backward(int, const nothing&, nothing&, noop_overlapping_stage&, int,
                                   const nothing&, nothing&) {}
};
struct noop_loss {
  float operator()(const nothing&, const nothing&) const { return 0.0f; }
  void gradient(const nothing&, const nothing&, nothing&) const {}
};

// Plays one rank of a P-rank table alone: sends vanish, receives leave the
// buffer as it is, commits return at once.
struct loopback_transport {
  using tensor_type = nothing;
  int self = 0;
  int count = 1;
  [[nodiscard]] int rank() const { return self; }
  [[nodiscard]] int ranks() const { return count; }
  void post_send(const dualpipe::instruction&, const nothing&) {}
  void post_recv(const dualpipe::instruction&, nothing&) {}
  void commit() {}
  void abort(std::string_view) noexcept {}
};

dualpipe::schedule_table table_of(std::string_view name, int P, int N) {
  dualpipe::schedule_request q;
  q.ranks = P;
  q.microbatches = N;
  return dualpipe::make_schedule(name, q);
}

template <class Stage>
void dispatch(benchmark::State& state, std::string_view name, int P, int N, int rank) {
  dualpipe::schedule_table table;
  try {
    table = table_of(name, P, N);
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    return;
  }
  loopback_transport transport{rank, P};
  std::vector<Stage> stages(static_cast<std::size_t>(table.info().stages));
  int used = 0;
  dualpipe::executor<Stage, loopback_transport, noop_loss> ex(
      table, transport, [&](int) -> Stage& { return stages[static_cast<std::size_t>(used++)]; });
  const std::vector<nothing> inputs(ex.entering_microbatches().size());
  const std::vector<nothing> labels(ex.leaving_microbatches().size());
  noop_loss loss;
  const auto instructions = static_cast<double>(ex.program().size());
  for (auto _ : state) {
    const auto& r = ex.step(inputs, labels, loss);
    benchmark::DoNotOptimize(r.losses.data());
  }
  state.counters["instructions"] = instructions;
  // CPU time per instruction (printed with its unit, e.g. "15.1ns").
  state.counters["per_instruction"] = benchmark::Counter(
      instructions, benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
}

// --- (b) makespan -------------------------------------------------------

struct timing {
  std::chrono::microseconds forward{2000}, backward{4000}, weight{2000};
};

// A tensor small enough that copying it costs nothing next to the sleeps.
using small = std::vector<float>;

struct sleeping_stage {
  timing t;
  double* slept_ms = nullptr;  // the rank's total time actually spent in sleeps
  void spend(std::chrono::microseconds d) const {
    const auto start = std::chrono::steady_clock::now();
    std::this_thread::sleep_until(start + d);
    *slept_ms +=
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  }
  void forward(int, const small& in, small& out) {
    spend(t.forward);
    out = in;
  }
  void backward(int, const small& g, small& gi) {
    spend(t.backward);
    gi = g;
  }
  void backward_input(int, const small& g, small& gi) {
    spend(t.backward - t.weight);
    gi = g;
  }
  void backward_weight(int) { spend(t.weight); }
  // Overlapping two sleeps gains nothing: F&B costs F + B, and the simulator
  // is told so.
};
struct sleeping_loss {
  float operator()(const small&, const small&) const { return 0.0f; }
  void gradient(const small& y, const small&, small& g) const { g = y; }
};

void makespan(benchmark::State& state, std::string_view name, int P, int N) {
  dualpipe::schedule_table table;
  try {
    table = table_of(name, P, N);
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    return;
  }
  const timing t;
  using transport_t = dualpipe::in_process_transport<small>;
  using executor_t = dualpipe::executor<sleeping_stage, transport_t, sleeping_loss>;
  dualpipe::in_process_network<small> net(P);
  std::vector<std::vector<sleeping_stage>> stages(static_cast<std::size_t>(P),
                                                  std::vector<sleeping_stage>(static_cast<std::size_t>(table.info().stages), sleeping_stage{t}));
  std::vector<double> slept_ms(static_cast<std::size_t>(P), 0.0);
  for (int r = 0; r < P; ++r)
    for (sleeping_stage& st : stages[static_cast<std::size_t>(r)]) st.slept_ms = &slept_ms[static_cast<std::size_t>(r)];
  std::vector<std::unique_ptr<executor_t>> executors;
  std::vector<std::vector<small>> inputs(static_cast<std::size_t>(P)), labels(static_cast<std::size_t>(P));
  for (int r = 0; r < P; ++r) {
    int used = 0;
    auto& mine = stages[static_cast<std::size_t>(r)];
    executors.push_back(std::make_unique<executor_t>(
        table, net.endpoint(r),
        [&mine, used](int) mutable -> sleeping_stage& { return mine[static_cast<std::size_t>(used++)]; }));
    inputs[static_cast<std::size_t>(r)].assign(executors.back()->entering_microbatches().size(), small(16, 1.0f));
    labels[static_cast<std::size_t>(r)].assign(executors.back()->leaving_microbatches().size(), small(16, 0.0f));
  }
  const auto one_step = [&] {
    std::vector<std::exception_ptr> errors(static_cast<std::size_t>(P));
    {
      std::vector<std::jthread> threads;
      for (int r = 0; r < P; ++r)
        threads.emplace_back([&, r] {
          try {
            sleeping_loss loss;
            executors[static_cast<std::size_t>(r)]->step(inputs[static_cast<std::size_t>(r)],
                                                         labels[static_cast<std::size_t>(r)], loss);
          } catch (...) {
            errors[static_cast<std::size_t>(r)] = std::current_exception();
          }
        });
    }
    for (const auto& e : errors)
      if (e) std::rethrow_exception(e);
  };
  one_step();  // warm-up: buffers reach their size

  dualpipe::cost_model costs;
  costs.forward = static_cast<double>(t.forward.count()) / 1000.0;
  costs.backward = static_cast<double>(t.backward.count()) / 1000.0;
  costs.weight = static_cast<double>(t.weight.count()) / 1000.0;
  costs.overlapped = costs.forward + costs.backward;
  const dualpipe::simulation sim = dualpipe::simulate(table.view(), costs);
  const double simulated_ms = sim.makespan;
  double nominal_busy_ms = 0;
  for (const dualpipe::rank_summary& r : sim.ranks) nominal_busy_ms += r.busy;

  std::fill(slept_ms.begin(), slept_ms.end(), 0.0);
  double measured_ms = 0;
  for (auto _ : state) {
    const auto start = std::chrono::steady_clock::now();
    one_step();
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    state.SetIterationTime(ms / 1000.0);
    measured_ms += ms;
  }
  measured_ms /= static_cast<double>(state.iterations());
  state.counters["simulated_ms"] = simulated_ms;
  state.counters["measured_ms"] = measured_ms;
  state.counters["ratio"] = measured_ms / simulated_ms;
  // How much longer the sleeps themselves took than asked (timer slack and
  // wake-up latency): the part of the ratio that is not the pipeline's.
  double slept = 0;
  for (const double ms : slept_ms) slept += ms;
  state.counters["sleep_overshoot"] =
      slept / (nominal_busy_ms * static_cast<double>(state.iterations()));
}

void register_all() {
  // (a) One rank in the middle of each pipeline (it both sends and receives).
  for (const auto& [name, P, N] : std::vector<std::tuple<std::string, int, int>>{
           {"dualpipe", 8, 64}, {"dualpipev", 8, 64}, {"1f1b", 8, 64}, {"zb1p", 8, 64}}) {
    if (dualpipe::find_schedule(name) == nullptr) continue;
    const int rank = P / 2 - 1;
    benchmark::RegisterBenchmark(("dispatch/" + name + "/P" + std::to_string(P) + "/N" +
                                  std::to_string(N) + "/rank" + std::to_string(rank))
                                     .c_str(),
                                 [name = name, P = P, N = N, rank](benchmark::State& s) {
                                   dispatch<noop_stage>(s, name, P, N, rank);
                                 });
    if (name == "dualpipe" || name == "dualpipev")
      benchmark::RegisterBenchmark(("dispatch/" + name + "-overlap-hook/P" + std::to_string(P) +
                                    "/N" + std::to_string(N) + "/rank" + std::to_string(rank))
                                       .c_str(),
                                   [name = name, P = P, N = N, rank](benchmark::State& s) {
                                     dispatch<noop_overlapping_stage>(s, name, P, N, rank);
                                   });
  }
  // (b) Whole steps on P threads.
  for (const auto& [P, N] : std::vector<std::pair<int, int>>{{4, 16}, {8, 32}})
    for (const std::string name : {"dualpipe", "dualpipev", "1f1b", "zb1p"}) {
      if (dualpipe::find_schedule(name) == nullptr) continue;
      benchmark::RegisterBenchmark(
          ("makespan/" + name + "/P" + std::to_string(P) + "/N" + std::to_string(N)).c_str(),
          [name, P = P, N = N](benchmark::State& s) { makespan(s, name, P, N); })
          ->UseManualTime()
          ->Unit(benchmark::kMillisecond)
          ->Iterations(5);
    }
}

}  // namespace

int main(int argc, char** argv) {
  register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
