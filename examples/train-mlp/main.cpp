// train-mlp: one training step and one inference step of a small MLP through
// a pipeline schedule, checked against the same model run without a
// pipeline, as the DualPipe reference's examples/example_dualpipe.py checks
// DualPipe; then, if asked, timed training steps. The P ranks are threads of
// this process (in-process transport) or, with --transport mpi, the P
// processes of an MPI job (mpirun -np P), one rank each.
//
//   train-mlp [--schedule dualpipe] [--ranks 4] [--microbatches 20]
//             [--hidden 64] [--microbatch-size 8] [--seed 233] [--dtype f64]
//             [--transport threads|mpi] [--steps 0] [--fail-rank -1]
//             [--timeout-ms 60000] [--spin-us 0]
//
// Exits 0 only if every per-micro-batch loss (training and inference) and
// every inference output is bitwise equal to the reference, and every weight
// gradient agrees (1 - cosine similarity below 1e-13 in f64, 1e-6 in f32);
// 1 if the check fails or a rank fails (on every rank), 2 on bad settings.
// Only rank 0 prints the report. With --steps K the last line of stdout is
// one JSON object with the step times. The GEMMs run on OpenBLAS with one
// thread per rank.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "command_line.hpp"
#include "dualpipe/io/grid.hpp"
#include "dualpipe/schedule/registry.hpp"
#include "dualpipe/transport/in_process.hpp"
#include "mlp.hpp"
#include "pipeline.hpp"
#include "step_times.hpp"
#include "thread_group.hpp"

#if DUALPIPE_EXAMPLE_HAVE_MPI
#include <mpi.h>

#include "dualpipe/transport/mpi.hpp"
#include "mpi_group.hpp"
#endif

namespace {

using settings = train_mlp::run_settings;

void print_header(const settings& cfg, const dualpipe::schedule_table& table) {
  const dualpipe::schedule_info info = table.info();
  std::printf(
      "%s: %d ranks (%s), %d stages, %d micro-batches of %d x %d (%s), hidden %d -> %d -> "
      "%d\n\n",
      cfg.schedule.c_str(), info.ranks, cfg.transport == "mpi" ? "MPI processes" : "threads",
      info.stages, info.microbatches, cfg.microbatch_size, cfg.hidden, cfg.dtype.c_str(),
      cfg.hidden, 4 * cfg.hidden, cfg.hidden);
  std::printf("%s\n", dualpipe::format_grid(table.view()).c_str());
}

// Rank 0: runs the reference, prints the comparison, says whether it passed.
template <class Real>
bool report(const dualpipe::schedule_table& table, const std::vector<train_mlp::layer<Real>>& model,
            const train_mlp::batch<Real>& data, const train_mlp::step_record<Real>& pipelined) {
  const auto reference = train_mlp::reference_step(model, data);
  const train_mlp::comparison c = train_mlp::compare(reference, pipelined);
  return train_mlp::print_comparison(c, table.info(), pipelined.overlapped_calls);
}

// The step times as the last line of stdout, one JSON object.
void print_step_times(const settings& cfg, const dualpipe::schedule_info& info,
                      const std::vector<double>& ms) {
  const train_mlp::step_time_summary t = train_mlp::summarize(ms);
  std::printf("step time over %zu steps: median %.3f ms, min %.3f ms, max %.3f ms\n", t.steps,
              t.median, t.min, t.max);
  std::printf(
      "{\"schedule\": \"%s\", \"ranks\": %d, \"microbatches\": %d, \"hidden\": %d, "
      "\"microbatch_size\": %d, \"dtype\": \"%s\", \"transport\": \"%s\", \"steps\": %zu, "
      "\"step_ms_median\": %.4f, \"step_ms_min\": %.4f, \"step_ms_max\": %.4f, "
      "\"blas_threads\": %d}\n",
      cfg.schedule.c_str(), info.ranks, info.microbatches, cfg.hidden, cfg.microbatch_size,
      cfg.dtype.c_str(), cfg.transport.c_str(), t.steps, t.median, t.min, t.max,
      openblas_get_num_threads());
}

// Everything one rank does, whether it is a thread or a process: the checked
// step, the verdict on every rank, then the timed steps. Returns the exit code.
template <class Real, class Group, class Transport>
int run_rank(Group& group, Transport& transport, const settings& cfg,
             const dualpipe::schedule_table& table,
             const std::vector<train_mlp::layer<Real>>& model, const train_mlp::batch<Real>& data) {
  try {
    train_mlp::pipeline_rank<Real, Transport> rank(table.view(), transport, model, data,
                                                   cfg.fail_rank);
    const std::optional<train_mlp::step_record<Real>> record = train_mlp::gather_record(
        group, rank.checked_step(group), table.info(), cfg.microbatch_size, cfg.hidden);
    return train_mlp::verdict_then_timed_steps(
        group, rank, record && report(table, model, data, *record), cfg.steps,
        [&](const std::vector<double>& ms) { print_step_times(cfg, table.info(), ms); });
  } catch (const std::exception& e) {
    // Every rank ends here when one fails: the failing rank with its own
    // error, the others with pipeline_aborted naming it.
    std::fprintf(stderr, "train-mlp: %s\n", e.what());
    return 1;
  }
}

template <class Real>
int run_on_threads(const settings& cfg, const dualpipe::schedule_table& table) {
  const int P = table.info().ranks;
  const auto model = train_mlp::make_model<Real>(table.info().stages, cfg.hidden, cfg.seed);
  const auto data =
      train_mlp::make_batch<Real>(cfg.microbatches, cfg.microbatch_size, cfg.hidden, cfg.seed);
  dualpipe::in_process_network<train_mlp::tensor<Real>> network(
      P, std::chrono::milliseconds(cfg.timeout_ms), std::chrono::microseconds(cfg.spin_us));
  train_mlp::thread_group group(P);
  std::vector<int> exit_codes(static_cast<std::size_t>(P));
  train_mlp::on_rank_threads(P, [&](int r) {
    train_mlp::thread_group::member me = group.at(r);
    exit_codes[static_cast<std::size_t>(r)] =
        run_rank<Real>(me, network.endpoint(r), cfg, table, model, data);
  });
  return *std::max_element(exit_codes.begin(), exit_codes.end());
}

int on_threads(const settings& cfg) {
  return train_mlp::run_job(
      cfg, "train-mlp", true, [&](const auto& table) { print_header(cfg, table); },
      [&](const dualpipe::schedule_table& table) {
        return cfg.dtype == "f32" ? run_on_threads<float>(cfg, table)
                                  : run_on_threads<double>(cfg, table);
      });
}

#if DUALPIPE_EXAMPLE_HAVE_MPI
template <class Real>
int run_on_process(const settings& cfg, const dualpipe::schedule_table& table) {
  const auto model = train_mlp::make_model<Real>(table.info().stages, cfg.hidden, cfg.seed);
  const auto data =
      train_mlp::make_batch<Real>(cfg.microbatches, cfg.microbatch_size, cfg.hidden, cfg.seed);
  train_mlp::mpi_group group(MPI_COMM_WORLD);
  dualpipe::mpi::transport<train_mlp::tensor<Real>> transport(
      MPI_COMM_WORLD, {}, {.timeout = std::chrono::milliseconds(cfg.timeout_ms)});
  return run_rank<Real>(group, transport, cfg, table, model, data);
}

int on_processes(int& argc, char**& argv, const settings& cfg) {
  return train_mlp::run_mpi_job(
      argc, argv, cfg, "train-mlp", [&](const auto& table) { print_header(cfg, table); },
      [&](const dualpipe::schedule_table& table) {
        return cfg.dtype == "f32" ? run_on_process<float>(cfg, table)
                                  : run_on_process<double>(cfg, table);
      });
}
#endif

}  // namespace

int main(int argc, char** argv) {
  train_mlp::use_one_blas_thread();
  settings cfg;
  CLI::App app{
      "Train a small MLP for one step through a pipeline schedule, on threads or MPI "
      "processes, and check it against the un-pipelined model"};
  train_mlp::add_run_options(app, cfg);
  if (const std::optional<int> exit_code = train_mlp::parse_command_line(app, cfg, argc, argv))
    return *exit_code;

  if (cfg.transport == "mpi") {
#if DUALPIPE_EXAMPLE_HAVE_MPI
    return on_processes(argc, argv, cfg);
#else
    std::fprintf(stderr,
                 "train-mlp: --transport mpi: MPI support was not built (configure with "
                 "an MPI installed, e.g. Debian's libopenmpi-dev)\n");
    return 2;
#endif
  }
  return on_threads(cfg);
}
