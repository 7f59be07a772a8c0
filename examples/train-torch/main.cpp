// train-torch: the DualPipe reference's examples (example_dualpipe.py,
// example_dualpipev.py) in C++ on libtorch. One training step and one
// inference step of Linear(h, 4h) -> GELU -> Linear(4h, h) stages through a
// pipeline schedule, checked against the same torch model run without a
// pipeline; then, if asked, timed training steps. The P ranks are threads of
// this process (in-process transport) or, with --transport mpi, the P
// processes of an MPI job (mpirun -np P), one rank each.
//
//   train-torch [--schedule dualpipe] [--ranks 4] [--microbatches 20]
//               [--hidden 64] [--microbatch-size 8] [--seed 233] [--dtype f64]
//               [--transport threads|mpi] [--weight-gradients store|second_pass]
//               [--threads 1] [--steps 0] [--fail-rank -1] [--timeout-ms 60000]
//               [--spin-us 0]
//
// Exits 0 only if every per-micro-batch loss (training and inference) and
// every inference output is bitwise equal to the un-pipelined model's, every
// weight gradient agrees (1 - cosine similarity below 1e-13 in f64, 1e-6 in
// f32) and DualPipe's mirrored copies are identical; 1 if the check fails or
// a rank fails (on every rank), 2 on bad settings. Only rank 0 prints the
// report. With --steps K the last line of stdout is one JSON object with the
// step times.
#include <torch/torch.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "command_line.hpp"
#include "dualpipe/io/grid.hpp"
#include "dualpipe/schedule/registry.hpp"
#include "dualpipe/torch/stage.hpp"
#include "dualpipe/transport/in_process.hpp"
#include "model.hpp"
#include "step_times.hpp"
#include "thread_group.hpp"
#include "torch_pipeline.hpp"

#if DUALPIPE_EXAMPLE_HAVE_MPI
#include <mpi.h>

#include "dualpipe/torch/mpi.hpp"
#include "dualpipe/transport/mpi.hpp"
#include "mpi_group.hpp"
#endif

namespace {

using dualpipe::libtorch::weight_gradients;

struct settings : train_mlp::run_settings {
  std::string deferral = "store";
  int threads = 1;

  [[nodiscard]] weight_gradients weight_deferral() const {
    return deferral == "second_pass" ? weight_gradients::second_pass : weight_gradients::store;
  }
};

void print_header(const settings& cfg, const dualpipe::schedule_table& table) {
  const dualpipe::schedule_info info = table.info();
  std::printf(
      "%s on libtorch %s: %d ranks (%s), %d stages, %d micro-batches of %d x %d (%s), hidden "
      "%d -> %d -> %d, weight gradients deferred by %s, %d intra-op thread%s per rank\n\n",
      cfg.schedule.c_str(), TORCH_VERSION, info.ranks,
      cfg.transport == "mpi" ? "MPI processes" : "threads", info.stages, info.microbatches,
      cfg.microbatch_size, cfg.hidden, cfg.dtype.c_str(), cfg.hidden, 4 * cfg.hidden, cfg.hidden,
      cfg.deferral == "store" ? "deferred_linear's store" : "a second autograd pass", cfg.threads,
      cfg.threads == 1 ? "" : "s");
  std::printf("%s\n", dualpipe::format_grid(table.view()).c_str());
}

// Rank 0: runs the un-pipelined model, prints the comparison, says whether
// it passed.
template <class Real>
bool report(const settings& cfg, const dualpipe::schedule_table& table,
            const std::vector<train_mlp::layer<Real>>& model, const train_torch::batch<Real>& data,
            const train_mlp::step_record<Real>& pipelined) {
  const auto reference = train_torch::reference_step(model, data, cfg.weight_deferral());
  const train_mlp::comparison c = train_mlp::compare(reference, pipelined);
  return train_mlp::print_comparison(c, table.info(), pipelined.overlapped_calls);
}

void print_step_times(const settings& cfg, const dualpipe::schedule_info& info,
                      const std::vector<double>& ms) {
  const train_mlp::step_time_summary t = train_mlp::summarize(ms);
  std::printf("step time over %zu steps: median %.3f ms, min %.3f ms, max %.3f ms\n", t.steps,
              t.median, t.min, t.max);
  std::printf(
      "{\"example\": \"train-torch\", \"schedule\": \"%s\", \"ranks\": %d, \"microbatches\": %d, "
      "\"hidden\": %d, \"microbatch_size\": %d, \"dtype\": \"%s\", \"transport\": \"%s\", "
      "\"weight_gradients\": \"%s\", \"intra_op_threads\": %d, \"steps\": %zu, "
      "\"step_ms_median\": %.4f, \"step_ms_min\": %.4f, \"step_ms_max\": %.4f}\n",
      cfg.schedule.c_str(), info.ranks, info.microbatches, cfg.hidden, cfg.microbatch_size,
      cfg.dtype.c_str(), cfg.transport.c_str(), cfg.deferral.c_str(), cfg.threads, t.steps,
      t.median, t.min, t.max);
}

// Everything one rank does, whether it is a thread or a process: the checked
// step, the verdict on every rank, then the timed steps. Returns the exit code.
template <class Real, class Group, class Transport, class SumWithMirror>
int run_rank(Group& group, Transport& transport, const settings& cfg,
             const dualpipe::schedule_table& table,
             const std::vector<train_mlp::layer<Real>>& model, const train_torch::batch<Real>& data,
             SumWithMirror&& sum_with_mirror) {
  try {
    at::set_num_threads(cfg.threads);  // per thread: OpenMP's count is the caller's
    train_torch::pipeline_rank<Real, Transport> rank(table.view(), transport, model, data,
                                                     cfg.weight_deferral(), cfg.fail_rank);
    const std::optional<train_mlp::step_record<Real>> record =
        train_mlp::gather_record(group, rank.checked_step([&] { sum_with_mirror(rank); }),
                                 table.info(), cfg.microbatch_size, cfg.hidden);
    return train_mlp::verdict_then_timed_steps(
        group, rank, record && report(cfg, table, model, data, *record), cfg.steps,
        [&](const std::vector<double>& ms) { print_step_times(cfg, table.info(), ms); });
  } catch (const std::exception& e) {
    // Every rank ends here when one fails: the failing rank with its own
    // error, the others with pipeline_aborted naming it.
    std::fprintf(stderr, "train-torch: %s\n", e.what());
    return 1;
  }
}

template <class Real>
int run_on_threads(const settings& cfg, const dualpipe::schedule_table& table) {
  const int P = table.info().ranks;
  const auto model = train_mlp::make_model<Real>(table.info().stages, cfg.hidden, cfg.seed);
  const auto data =
      train_torch::make_batch<Real>(cfg.microbatches, cfg.microbatch_size, cfg.hidden, cfg.seed);
  dualpipe::in_process_network<at::Tensor> network(P, std::chrono::milliseconds(cfg.timeout_ms),
                                                   std::chrono::microseconds(cfg.spin_us));
  train_mlp::thread_group group(P);
  train_torch::thread_mirrors mirrors(P);
  std::vector<int> exit_codes(static_cast<std::size_t>(P));
  train_mlp::on_rank_threads(P, [&](int r) {
    train_mlp::thread_group::member me = group.at(r);
    exit_codes[static_cast<std::size_t>(r)] =
        run_rank<Real>(me, network.endpoint(r), cfg, table, model, data, [&](auto& rank) {
          mirrors.publish(rank.rank(), rank.modules());
          mirrors.sum(me, rank.info());
        });
  });
  return *std::max_element(exit_codes.begin(), exit_codes.end());
}

int on_threads(const settings& cfg) {
  return train_mlp::run_job(
      cfg, "train-torch", true, [&](const auto& table) { print_header(cfg, table); },
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
      train_torch::make_batch<Real>(cfg.microbatches, cfg.microbatch_size, cfg.hidden, cfg.seed);
  train_mlp::mpi_group group(MPI_COMM_WORLD);
  dualpipe::mpi::transport<at::Tensor> transport(
      MPI_COMM_WORLD, {}, {.timeout = std::chrono::milliseconds(cfg.timeout_ms)});
  return run_rank<Real>(group, transport, cfg, table, model, data, [&](auto& rank) {
    // Rank r's stages and its mirror's are the same two, both ascending.
    std::vector<at::Tensor> parameters;
    for (const torch::nn::Sequential& m : rank.modules())
      for (const at::Tensor& p : m->parameters()) parameters.push_back(p);
    dualpipe::libtorch::sum_mirrored_gradients(
        parameters, MPI_COMM_WORLD, dualpipe::mirror_rank(rank.info(), rank.rank()),
        {.timeout = std::chrono::milliseconds(cfg.timeout_ms)});
  });
}

int on_processes(int& argc, char**& argv, const settings& cfg) {
  return train_mlp::run_mpi_job(
      argc, argv, cfg, "train-torch", [&](const auto& table) { print_header(cfg, table); },
      [&](const dualpipe::schedule_table& table) {
        return cfg.dtype == "f32" ? run_on_process<float>(cfg, table)
                                  : run_on_process<double>(cfg, table);
      });
}
#endif

}  // namespace

int main(int argc, char** argv) {
  settings cfg;
  CLI::App app{
      "Train Linear -> GELU -> Linear torch stages for one step through a pipeline schedule, on "
      "threads or MPI processes, and check them against the un-pipelined model"};
  train_mlp::add_run_options(app, cfg, " (train-mlp's numbers)");
  app.add_option("--weight-gradients", cfg.deferral,
                 "how W is deferred: store (deferred_linear layers queue their weight GEMMs, as "
                 "the reference's WeightGradStore) or second_pass (ordinary torch::nn::Linear "
                 "layers, W walks the graph again)")
      ->capture_default_str()
      ->check(CLI::IsMember({"store", "second_pass"}));
  app.add_option("--threads", cfg.threads, "intra-op threads per rank (at::set_num_threads)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  if (const std::optional<int> exit_code = train_mlp::parse_command_line(app, cfg, argc, argv))
    return *exit_code;
  // Torch's GEMMs go to the system BLAS (OpenBLAS here): one thread of it
  // inside each intra-op thread, so ranks do not oversubscribe the cores and
  // the bits do not depend on the machine's core count.
  train_mlp::use_one_blas_thread();

  if (cfg.transport == "mpi") {
#if DUALPIPE_EXAMPLE_HAVE_MPI
    return on_processes(argc, argv, cfg);
#else
    std::fprintf(stderr,
                 "train-torch: --transport mpi: MPI support was not built (configure with "
                 "an MPI installed, e.g. Debian's libopenmpi-dev)\n");
    return 2;
#endif
  }
  return on_threads(cfg);
}
