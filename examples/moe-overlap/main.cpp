// moe-overlap: a small mixture-of-experts model trained through DualPipe or
// DualPipeV with expert parallelism, its overlapped pairs run on two lanes
// per rank (dualpipe/overlap/: the rank's thread computes while a worker
// thread runs the all-to-all exchanges) so that one micro-batch's
// communication hides under another's computation, as DeepSeek-V3 does.
//
// World: P pipeline ranks x E replicas, every one a thread of this process.
// Replica e is a whole pipeline with its own data; at pipeline rank p the E
// threads form an expert group, expert j of each layer living on member j,
// and dispatch and combine really move token rows between them
// (expert_exchange.hpp). --link-us-per-kib and --link-latency-us emulate a
// wire by making each exchange last at least that long (a sleep on the
// communication lane), so that there is communication to hide on a CPU.
//
//   moe-overlap [--schedule dualpipev] [--ranks 2] [--experts 2]
//               [--microbatches 8] [--layers 1] [--tokens 32] [--hidden 32]
//               [--dtype f64] [--seed 233] [--link-us-per-kib 1]
//               [--link-latency-us 0] [--steps 0] [--pair-timeline FILE]
//               [--fail-rank -1] [--fail-lane compute|communication|stall]
//               [--timeout-ms 60000] [--exchange-timeout-ms 0] [--spin-us 0]
//
// Checks, all bitwise: losses, inference outputs and weight gradients of
// overlapped pairs against sequential pairs (forward then backward), and
// both against the un-pipelined model. Exits 0 only if all pass, 1 on a
// mismatch or a failed thread (every thread ends and names the failure), 2
// on bad options. With --steps K the last line of stdout is one JSON object:
// step times in both modes, the share of communication hidden in the
// overlapped pairs, and the median pair measured and predicted.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <optional>

#include "command_line.hpp"
#include "dualpipe/io/grid.hpp"
#include "mlp.hpp"
#include "options.hpp"
#include "run.hpp"

namespace {

using moe_overlap::settings;

void print_header(const settings& cfg, const dualpipe::schedule_table& table) {
  const dualpipe::schedule_info info = table.info();
  std::printf(
      "%s: %d pipeline ranks x %d replicas (%d threads, expert groups of %d), %d stages of %d "
      "MoE layer(s), %d micro-batches of %d tokens x %d (%s), experts %d -> %d -> %d; emulated "
      "wire %g us/KiB + %g us per all-to-all\n\n",
      cfg.run.schedule.c_str(), info.ranks, cfg.experts, info.ranks * cfg.experts, cfg.experts,
      info.stages, cfg.layers, info.microbatches, cfg.tokens, cfg.run.hidden, cfg.run.dtype.c_str(),
      cfg.run.hidden, 4 * cfg.run.hidden, cfg.run.hidden, cfg.link_us_per_kib, cfg.link_latency_us);
  std::printf("%s\n", dualpipe::format_grid(table.view()).c_str());
  std::fflush(stdout);
}

template <class Real, int Layers>
int run_with(const settings& cfg, const dualpipe::schedule_table& table) {
  if constexpr (Layers < moe_overlap::most_layers) {
    if (cfg.layers > Layers) return run_with<Real, Layers + 1>(cfg, table);
  }
  moe_overlap::moe_job<Real, Layers> job(cfg, table);
  return job.run();
}

}  // namespace

int main(int argc, char** argv) {
  train_mlp::use_one_blas_thread();
  settings cfg;
  CLI::App app{
      "Train a small mixture-of-experts model with expert parallelism through DualPipe or "
      "DualPipeV, its forward and backward overlapped on two lanes per rank, and check it "
      "against the same pairs run in sequence and against the un-pipelined model"};
  moe_overlap::add_options(app, cfg);
  if (const std::optional<int> code = moe_overlap::parse(app, cfg, argc, argv)) return *code;
  return train_mlp::run_job(
      cfg.run, "moe-overlap", true, [&](const auto& table) { print_header(cfg, table); },
      [&](const dualpipe::schedule_table& table) {
        return cfg.run.dtype == "f32" ? run_with<float, 1>(cfg, table)
                                      : run_with<double, 1>(cfg, table);
      });
}
