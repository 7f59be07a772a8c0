// The moe-overlap command line: train-mlp's shared settings (schedule, sizes,
// seed, dtype, steps, timeouts; examples/train-mlp/command_line.hpp) for what
// they cover, and the example's own: the expert group, the layers, the
// tokens, the emulated wire, the fault and the pair timeline. Exit codes as
// the other examples: 2 on bad settings.
#pragma once

#include <CLI/CLI.hpp>

#include <climits>
#include <optional>
#include <string>

#include "command_line.hpp"

namespace moe_overlap {

inline constexpr int most_layers = 4;  // --layers: each count is a stage type of its own

struct settings {
  train_mlp::run_settings run;  // schedule, ranks, microbatches, hidden, seed, dtype, steps, ...
  int experts = 2;              // E: replicas, expert-group members, experts per layer
  int layers = 1;               // MoE layers per stage
  int tokens = 32;              // rows per micro-batch per replica
  double link_us_per_kib = 1.0;
  double link_latency_us = 0.0;
  int exchange_timeout_ms = 0;  // 0: --timeout-ms
  int fail_rank = -1;           // a world rank
  std::string fail_lane = "compute";
  std::string pair_timeline;  // a file, or empty
};

inline void add_options(CLI::App& app, settings& cfg) {
  train_mlp::run_settings& r = cfg.run;
  r.schedule = "dualpipev";
  r.ranks = 2;
  r.microbatches = 8;
  r.hidden = 32;
  app.add_option("--schedule", r.schedule, "dualpipe or dualpipev")
      ->capture_default_str()
      ->check(CLI::IsMember({"dualpipe", "dualpipev"}));
  app.add_option("--ranks", r.ranks, "pipeline ranks P of each replica")->capture_default_str();
  app.add_option("--experts", cfg.experts,
                 "E: replicas of the pipeline, members of each expert group, experts per layer "
                 "(P x E threads in all)")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  app.add_option("--microbatches", r.microbatches, "micro-batches per step, N")
      ->capture_default_str();
  app.add_option("--layers", cfg.layers, "MoE layers per stage")
      ->capture_default_str()
      ->check(CLI::Range(1, most_layers));
  app.add_option("--tokens", cfg.tokens, "tokens (rows) of one micro-batch of one replica")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("--hidden", r.hidden, "hidden size h (experts: h -> 4h -> h)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 14));
  app.add_option("--seed", r.seed, "seed of weights and data")->capture_default_str();
  app.add_option("--dtype", r.dtype, "f32 or f64")
      ->capture_default_str()
      ->check(CLI::IsMember({"f32", "f64"}));
  app.add_option("--link-us-per-kib", cfg.link_us_per_kib,
                 "emulated wire: each all-to-all lasts at least this many microseconds per KiB a "
                 "member moves to or from the others (a sleep on the communication lane after "
                 "the copy; emulation, not a network model)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0e6));
  app.add_option("--link-latency-us", cfg.link_latency_us,
                 "emulated wire: plus this many microseconds per all-to-all")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0e6));
  app.add_option("--steps", r.steps,
                 "after the checks, per mode (overlapped, sequential) one warm-up step and this "
                 "many timed ones; the last line of output is then a JSON object")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--pair-timeline", cfg.pair_timeline,
                 "with --steps: write the median measured overlapped pair to this file (JSON, "
                 "the format of dualpipe/io/pair_timeline.hpp)");
  app.add_option("--fail-rank", cfg.fail_rank,
                 "world rank (replica x P + pipeline rank) whose first backward sub-op on "
                 "--fail-lane fails (the fault path; -1: none)")
      ->capture_default_str()
      ->check(CLI::Range(-1, INT_MAX));
  app.add_option("--fail-lane", cfg.fail_lane,
                 "compute (mlp(B) throws), communication (dispatch(B) throws) or stall "
                 "(dispatch(B) never joins its expert group: the peers time out after "
                 "--exchange-timeout-ms)")
      ->capture_default_str()
      ->check(CLI::IsMember({"compute", "communication", "stall"}));
  app.add_option("--timeout-ms", r.timeout_ms,
                 "how long a thread waits on another (pipeline or expert group) before it "
                 "gives up")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--exchange-timeout-ms", cfg.exchange_timeout_ms,
                 "how long an expert-group member waits for the others in an all-to-all (0: "
                 "--timeout-ms)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--spin-us", r.spin_us,
                 "pipeline transport: how long a waiting rank polls before it sleeps")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
}

// Parses; nullopt when the arguments parsed and agree, otherwise the exit
// code (0 for --help, 2 for anything wrong, with the reason on stderr).
[[nodiscard]] inline std::optional<int> parse(CLI::App& app, settings& cfg, int argc, char** argv) {
  if (const std::optional<int> code = train_mlp::parse_command_line(app, cfg.run, argc, argv))
    return code;
  const long long world = static_cast<long long>(cfg.run.ranks) * cfg.experts;
  if (cfg.run.ranks >= 1 && cfg.fail_rank >= world) {
    std::fprintf(stderr, "moe-overlap: --fail-rank %d names no thread of the %lld (P x E)\n",
                 cfg.fail_rank, world);
    return 2;
  }
  if (!cfg.pair_timeline.empty() && cfg.run.steps == 0) {
    std::fprintf(stderr,
                 "moe-overlap: --pair-timeline needs --steps (pairs are measured in "
                 "the timed steps)\n");
    return 2;
  }
  return std::nullopt;
}

}  // namespace moe_overlap
