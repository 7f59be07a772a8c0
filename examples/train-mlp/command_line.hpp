// The command line the examples share (train-mlp, train-torch): the options
// that choose the schedule, the sizes, the transport and the runs; parsing
// with the examples' exit codes (2 on bad settings, where CLI11 would exit
// 105 or 106; --help stays 0); and the step from settings to a schedule
// table.
#pragma once

#include <CLI/CLI.hpp>

#include <climits>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>

#include "dualpipe/schedule/registry.hpp"

namespace train_mlp {

struct run_settings {
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
  dualpipe::schedule_request request;              // ranks, micro-batches and schedule parameters
  std::map<std::string, int> schedule_parameters;  // every schedule's extra options
};

// The options of run_settings. `seed_note` ends the --seed description
// (where the numbers come from).
inline void add_run_options(CLI::App& app, run_settings& cfg, const std::string& seed_note = "") {
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
  app.add_option("--seed", cfg.seed, "seed of weights and data" + seed_note)->capture_default_str();
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
  for (const dualpipe::schedule_entry& e : dualpipe::schedule_registry())
    for (const dualpipe::schedule_parameter& p : e.parameters) {
      const std::string name(p.name);
      if (cfg.schedule_parameters.count(name) != 0) continue;
      cfg.schedule_parameters[name] = p.default_value;
      app.add_option("--" + name, cfg.schedule_parameters[name],
                     std::string(p.description) + " (schedules that take it)")
          ->capture_default_str();
    }
}

// Parses; nullopt when the arguments parsed (and cfg.request is then filled
// in), otherwise the exit code, after CLI11 printed the help or the error.
[[nodiscard]] inline std::optional<int> parse_command_line(CLI::App& app, run_settings& cfg,
                                                           int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  cfg.request.ranks = cfg.ranks;
  cfg.request.microbatches = cfg.microbatches;
  if (const dualpipe::schedule_entry* e = dualpipe::find_schedule(cfg.schedule))
    for (const dualpipe::schedule_parameter& p : e->parameters) {
      const std::string name(p.name);
      if (app.count("--" + name) > 0)
        cfg.request.parameters.emplace_back(name, cfg.schedule_parameters[name]);
    }
  return std::nullopt;
}

// The schedule the settings name; throws std::invalid_argument if there is none.
[[nodiscard]] inline dualpipe::schedule_table make_table(const run_settings& cfg) {
  dualpipe::schedule_table table = dualpipe::make_schedule(cfg.schedule, cfg.request);
  if (cfg.fail_rank >= table.info().ranks)
    throw std::invalid_argument("--fail-rank " + std::to_string(cfg.fail_rank) +
                                " names no rank of the " + std::to_string(table.info().ranks));
  return table;
}

// The table, then `header(table)` if `print`, then `run(table)`'s exit
// code; 2, with the reason on stderr (if `print`), when the settings name no
// table.
template <class Header, class Run>
int run_job(const run_settings& cfg, const char* program, bool print, Header&& header, Run&& run) {
  dualpipe::schedule_table table;
  try {
    table = make_table(cfg);
  } catch (const std::exception& e) {
    if (print) std::fprintf(stderr, "%s: %s\n", program, e.what());
    return 2;
  }
  if (print) header(table);
  return run(table);
}

}  // namespace train_mlp
