// train-mlp: one training step and one inference step of a small MLP through
// a pipeline schedule on P threads (the executor with the in-process
// transport), checked against the same model run without a pipeline, as the
// DualPipe reference's examples/example_dualpipe.py checks DualPipe.
//
//   train-mlp [--schedule dualpipe] [--ranks 4] [--microbatches 20]
//             [--hidden 64] [--microbatch-size 8] [--seed 233] [--dtype f64]
//
// Exits 0 only if every per-micro-batch loss (training and inference) and
// every inference output is bitwise equal to the reference, and every weight
// gradient agrees (1 - cosine similarity below 1e-13 in f64, 1e-6 in f32).
#include <CLI/CLI.hpp>

#include <cstdint>
#include <cstdio>
#include <exception>
#include <map>
#include <string>

#include "dualpipe/io/grid.hpp"
#include "dualpipe/schedule/registry.hpp"
#include "mlp.hpp"

namespace {

struct settings {
  std::string schedule = "dualpipe";
  int ranks = 4;
  int microbatches = 20;
  int hidden = 64;
  int microbatch_size = 8;
  std::uint64_t seed = 233;
  std::string dtype = "f64";
  std::map<std::string, int> parameters;  // schedule parameters given on the command line
};

template <class Real>
int run(const settings& cfg, const dualpipe::schedule_table& table) {
  const int S = table.info().stages;
  const auto model = train_mlp::make_model<Real>(S, cfg.hidden, cfg.seed);
  const auto data =
      train_mlp::make_batch<Real>(cfg.microbatches, cfg.microbatch_size, cfg.hidden, cfg.seed);

  const auto reference = train_mlp::reference_step(model, data);
  const auto pipelined = train_mlp::pipeline_step(table.view(), model, data);
  const train_mlp::comparison c = train_mlp::compare(reference, pipelined);

  const auto verdict = [](bool ok) { return ok ? "ok  " : "FAIL"; };
  std::printf("%s training losses of %d micro-batches bitwise equal to the un-pipelined model",
              verdict(c.train_losses_equal), cfg.microbatches);
  if (c.first_loss_mismatch >= 0) std::printf(" (first mismatch: micro-batch %d)", c.first_loss_mismatch);
  std::printf("\n");
  std::printf("%s inference losses bitwise equal\n", verdict(c.infer_losses_equal));
  std::printf("%s inference outputs bitwise equal", verdict(c.outputs_equal));
  if (c.first_output_mismatch >= 0) std::printf(" (first mismatch: micro-batch %d)", c.first_output_mismatch);
  std::printf("\n");
  std::printf("%s weight gradients of %d stages agree: max 1 - cos = %.3g (tolerance %.0e)\n",
              verdict(c.gradients_agree()), S, c.worst_gradient_difference, c.gradient_tolerance);
  if (table.info().where == dualpipe::placement::mirrored)
    std::printf("%s mirrored copies (rank r and rank P-1-r) hold identical summed gradients\n",
                verdict(c.copies_identical));
  std::printf("     overlapped forward-backward hook calls: %d\n", pipelined.overlapped_calls);
  std::printf("%s\n", c.ok() ? "PASS" : "FAIL");
  return c.ok() ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  settings cfg;
  CLI::App app{"Train a small MLP for one step through a pipeline schedule on CPU threads and "
               "check it against the un-pipelined model"};
  app.add_option("--schedule", cfg.schedule, "schedule: " + dualpipe::schedule_names(", "))
      ->capture_default_str();
  app.add_option("--ranks", cfg.ranks, "pipeline ranks (threads), P")->capture_default_str();
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

  try {
    dualpipe::schedule_request request;
    request.ranks = cfg.ranks;
    request.microbatches = cfg.microbatches;
    if (const dualpipe::schedule_entry* e = dualpipe::find_schedule(cfg.schedule))
      for (const dualpipe::schedule_parameter& p : e->parameters) {
        const std::string name(p.name);
        if (app.count("--" + name) > 0) request.parameters.emplace_back(name, given[name]);
      }
    const dualpipe::schedule_table table = dualpipe::make_schedule(cfg.schedule, request);
    const dualpipe::schedule_info info = table.info();
    std::printf("%s: %d ranks, %d stages, %d micro-batches of %d x %d (%s), hidden %d -> %d -> %d\n\n",
                cfg.schedule.c_str(), info.ranks, info.stages, info.microbatches,
                cfg.microbatch_size, cfg.hidden, cfg.dtype.c_str(), cfg.hidden, 4 * cfg.hidden,
                cfg.hidden);
    std::printf("%s\n", dualpipe::format_grid(table.view()).c_str());
    return cfg.dtype == "f32" ? run<float>(cfg, table) : run<double>(cfg, table);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "train-mlp: %s\n", e.what());
    return 2;
  }
}
