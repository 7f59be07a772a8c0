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
#include <climits>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <map>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "dualpipe/io/grid.hpp"
#include "dualpipe/schedule/registry.hpp"
#include "dualpipe/transport/in_process.hpp"
#include "mlp.hpp"
#include "pipeline.hpp"
#include "thread_group.hpp"

#if DUALPIPE_EXAMPLE_HAVE_MPI
#include <mpi.h>

#include "dualpipe/transport/mpi.hpp"
#include "mpi_group.hpp"
#endif

namespace {

struct settings {
  std::string schedule = "dualpipe";
  int ranks = 4;
  int microbatches = 20;
  int hidden = 64;
  int microbatch_size = 8;
  std::uint64_t seed = 233;
  std::string dtype = "f64";
  std::string transport = "threads";
  int steps = 0;
  int fail_rank = -1;
  int timeout_ms = 60000;
  int spin_us = 0;
  dualpipe::schedule_request request;  // ranks, micro-batches and schedule parameters
};

// The schedule the settings name; throws std::invalid_argument if there is none.
dualpipe::schedule_table make_table(const settings& cfg) {
  dualpipe::schedule_table table = dualpipe::make_schedule(cfg.schedule, cfg.request);
  if (cfg.fail_rank >= table.info().ranks)
    throw std::invalid_argument("--fail-rank " + std::to_string(cfg.fail_rank) +
                                " names no rank of the " + std::to_string(table.info().ranks));
  return table;
}

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
bool report(const settings& cfg, const dualpipe::schedule_table& table,
            const std::vector<train_mlp::layer<Real>>& model, const train_mlp::batch<Real>& data,
            const train_mlp::step_record<Real>& pipelined) {
  const auto reference = train_mlp::reference_step(model, data);
  const train_mlp::comparison c = train_mlp::compare(reference, pipelined);
  const auto verdict = [](bool ok) { return ok ? "ok  " : "FAIL"; };
  std::printf("%s training losses of %d micro-batches bitwise equal to the un-pipelined model",
              verdict(c.train_losses_equal), cfg.microbatches);
  if (c.first_loss_mismatch >= 0)
    std::printf(" (first mismatch: micro-batch %d)", c.first_loss_mismatch);
  std::printf("\n");
  std::printf("%s inference losses bitwise equal\n", verdict(c.infer_losses_equal));
  std::printf("%s inference outputs bitwise equal", verdict(c.outputs_equal));
  if (c.first_output_mismatch >= 0)
    std::printf(" (first mismatch: micro-batch %d)", c.first_output_mismatch);
  std::printf("\n");
  std::printf("%s weight gradients of %d stages agree: max 1 - cos = %.3g (tolerance %.0e)\n",
              verdict(c.gradients_agree()), table.info().stages, c.worst_gradient_difference,
              c.gradient_tolerance);
  if (table.info().where == dualpipe::placement::mirrored)
    std::printf("%s mirrored copies (rank r and rank P-1-r) hold identical summed gradients\n",
                verdict(c.copies_identical));
  std::printf("     overlapped forward-backward hook calls: %d\n", pipelined.overlapped_calls);
  std::printf("%s\n", c.ok() ? "PASS" : "FAIL");
  return c.ok();
}

// `steps` training steps, each timed from the barrier before it to its end on
// the last rank; the times in ms, on rank 0. steady_clock is CLOCK_MONOTONIC
// on Linux, one clock for every process of a node, so the ranks' readings
// compare (ranks on several nodes would need their clock offsets first).
template <class Group, class Rank>
std::vector<double> timed_steps(Group& group, Rank& rank, int steps) {
  using clock = std::chrono::steady_clock;
  const auto ns = [](clock::time_point t) -> std::int64_t {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
  };
  std::vector<double> ms;
  ms.reserve(static_cast<std::size_t>(steps));
  for (int k = 0; k < steps; ++k) {
    group.barrier();
    const clock::time_point t0 = clock::now();
    rank.train();
    const clock::time_point t1 = clock::now();
    // One reduction for both ends: the maximum of -t0 is minus the earliest start.
    const std::int64_t ends[] = {-ns(t0), ns(t1)};
    const std::vector<std::int64_t> latest = group.reduce_max(std::span<const std::int64_t>(ends));
    if (!latest.empty()) ms.push_back(static_cast<double>(latest[1] + latest[0]) * 1e-6);
  }
  return ms;
}

// The step times as the last line of stdout, one JSON object.
void print_step_times(const settings& cfg, const dualpipe::schedule_info& info,
                      std::vector<double> ms) {
  std::sort(ms.begin(), ms.end());
  const std::size_t n = ms.size();
  const double median = n % 2 == 1 ? ms[n / 2] : 0.5 * (ms[n / 2 - 1] + ms[n / 2]);
  std::printf("step time over %zu steps: median %.3f ms, min %.3f ms, max %.3f ms\n", n, median,
              ms.front(), ms.back());
  std::printf(
      "{\"schedule\": \"%s\", \"ranks\": %d, \"microbatches\": %d, \"hidden\": %d, "
      "\"microbatch_size\": %d, \"dtype\": \"%s\", \"transport\": \"%s\", \"steps\": %zu, "
      "\"step_ms_median\": %.4f, \"step_ms_min\": %.4f, \"step_ms_max\": %.4f, "
      "\"blas_threads\": %d}\n",
      cfg.schedule.c_str(), info.ranks, info.microbatches, cfg.hidden, cfg.microbatch_size,
      cfg.dtype.c_str(), cfg.transport.c_str(), n, median, ms.front(), ms.back(),
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
    if (!group.broadcast(record && report(cfg, table, model, data, *record))) return 1;
    if (cfg.steps == 0) return 0;
    rank.train();  // warm-up, untimed
    const std::vector<double> ms = timed_steps(group, rank, cfg.steps);
    if (group.rank() == 0) print_step_times(cfg, table.info(), ms);
    return 0;
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
  {
    std::vector<std::jthread> threads;
    for (int r = 0; r < P; ++r)
      threads.emplace_back([&, r] {
        train_mlp::thread_group::member me = group.at(r);
        exit_codes[static_cast<std::size_t>(r)] =
            run_rank<Real>(me, network.endpoint(r), cfg, table, model, data);
      });
  }
  return *std::max_element(exit_codes.begin(), exit_codes.end());
}

int on_threads(const settings& cfg) {
  dualpipe::schedule_table table;
  try {
    table = make_table(cfg);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "train-mlp: %s\n", e.what());
    return 2;
  }
  print_header(cfg, table);
  return cfg.dtype == "f32" ? run_on_threads<float>(cfg, table)
                            : run_on_threads<double>(cfg, table);
}

#if DUALPIPE_EXAMPLE_HAVE_MPI
// MPI_Init and MPI_Finalize around everything a process does (the library
// never calls them); whatever holds MPI resources lives inside.
class mpi_session {
 public:
  mpi_session(int& argc, char**& argv) { DUALPIPE_MPI_CHECK(MPI_Init(&argc, &argv)); }
  mpi_session(const mpi_session&) = delete;
  mpi_session& operator=(const mpi_session&) = delete;
  ~mpi_session() { (void)MPI_Finalize(); }
};

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
  const mpi_session session(argc, argv);
  int rank = 0, size = 0;
  DUALPIPE_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
  DUALPIPE_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &size));
  if (size != cfg.ranks) {
    if (rank == 0)
      std::fprintf(stderr,
                   "train-mlp: the MPI job has %d process%s but --ranks is %d (start it "
                   "with mpirun -np %d)\n",
                   size, size == 1 ? "" : "es", cfg.ranks, cfg.ranks);
    return 2;
  }
  dualpipe::schedule_table table;
  try {
    table = make_table(cfg);
  } catch (const std::exception& e) {
    if (rank == 0) std::fprintf(stderr, "train-mlp: %s\n", e.what());
    return 2;
  }
  if (rank == 0) print_header(cfg, table);
  const int code =
      cfg.dtype == "f32" ? run_on_process<float>(cfg, table) : run_on_process<double>(cfg, table);
  std::fflush(stdout);  // before MPI_Finalize, so mpirun has all of it when the job ends
  return code;
}
#endif

}  // namespace

int main(int argc, char** argv) {
  train_mlp::use_one_blas_thread();
  settings cfg;
  CLI::App app{
      "Train a small MLP for one step through a pipeline schedule, on threads or MPI "
      "processes, and check it against the un-pipelined model"};
  app.add_option("--schedule", cfg.schedule, "schedule: " + dualpipe::schedule_names(", "))
      ->capture_default_str();
  app.add_option("--ranks", cfg.ranks, "pipeline ranks P (threads, or the MPI job's processes)")
      ->capture_default_str();
  app.add_option("--microbatches", cfg.microbatches, "micro-batches per step, N")
      ->capture_default_str();
  app.add_option("--hidden", cfg.hidden, "hidden size h of each stage (h -> 4h -> h)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--microbatch-size", cfg.microbatch_size, "samples per micro-batch, B")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--seed", cfg.seed, "seed of weights and data")->capture_default_str();
  app.add_option("--dtype", cfg.dtype, "f32 or f64")
      ->capture_default_str()
      ->check(CLI::IsMember({"f32", "f64"}));
  app.add_option("--transport", cfg.transport,
                 "threads (one process), or mpi (run under mpirun -np P, one rank per process)")
      ->capture_default_str()
      ->check(CLI::IsMember({"threads", "mpi"}));
  app.add_option("--steps", cfg.steps,
                 "after the checked step, one warm-up step and this many timed training steps; "
                 "the last line of output is then a JSON object of step times")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--fail-rank", cfg.fail_rank,
                 "this rank's stages throw at their first backward (the fault path; -1: none)")
      ->capture_default_str()
      ->check(CLI::Range(-1, INT_MAX));
  app.add_option("--timeout-ms", cfg.timeout_ms,
                 "how long a rank waits on another before it gives up")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--spin-us", cfg.spin_us,
                 "threads: how long a waiting rank polls before it sleeps (pays where the ranks "
                 "have the cores to themselves; see in_process_network::set_spin)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  // Parameters some schedules take beyond P and N (e.g. --virtual-stages).
  std::map<std::string, int> given;
  for (const dualpipe::schedule_entry& e : dualpipe::schedule_registry())
    for (const dualpipe::schedule_parameter& p : e.parameters) {
      const std::string name(p.name);
      if (given.count(name) != 0) continue;
      given[name] = p.default_value;
      app.add_option("--" + name, given[name],
                     std::string(p.description) + " (schedules that take it)")
          ->capture_default_str();
    }
  CLI11_PARSE(app, argc, argv);

  cfg.request.ranks = cfg.ranks;
  cfg.request.microbatches = cfg.microbatches;
  if (const dualpipe::schedule_entry* e = dualpipe::find_schedule(cfg.schedule))
    for (const dualpipe::schedule_parameter& p : e->parameters) {
      const std::string name(p.name);
      if (app.count("--" + name) > 0) cfg.request.parameters.emplace_back(name, given[name]);
    }

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
