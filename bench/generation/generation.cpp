// Run-time cost of generating DualPipe and DualPipeV tables (with their
// communication, the default) against ranks P and micro-batches N: time per
// table, and instructions generated per second.
#include <benchmark/benchmark.h>

#include <cstdint>

#include "dualpipe/schedule/dualpipe.hpp"

namespace {

void generate(benchmark::State& state, bool v_shape) {
  const auto P = static_cast<int>(state.range(0));
  const auto N = static_cast<int>(state.range(1));
  std::size_t instructions = 0;
  for (auto _ : state) {
    const dualpipe::schedule_table table =
        v_shape ? dualpipe::schedules::dualpipev(P, N) : dualpipe::schedules::dualpipe(P, N);
    instructions = table.size();
    benchmark::DoNotOptimize(table.view().instructions.data());
  }
  state.counters["instructions"] = static_cast<double>(instructions);
  state.counters["instructions_per_second"] = benchmark::Counter(
      static_cast<double>(instructions), benchmark::Counter::kIsIterationInvariantRate);
}

void dualpipe_generation(benchmark::State& state) {
  generate(state, false);
}
void dualpipev_generation(benchmark::State& state) {
  generate(state, true);
}

void sizes(benchmark::internal::Benchmark* b) {
  for (const std::int64_t P : {4, 16, 64, 256})
    for (const std::int64_t N : {512, 1024, 2048, 4096}) b->Args({P, N});
}

}  // namespace

BENCHMARK(dualpipe_generation)->Apply(sizes)->Unit(benchmark::kMicrosecond);
BENCHMARK(dualpipev_generation)->Apply(sizes)->Unit(benchmark::kMicrosecond);

BENCHMARK_MAIN();
