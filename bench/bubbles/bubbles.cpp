// bubbles: the DualPipe paper's comparison table (bubble, parameters and
// activations per device, devices) for 1F1B, ZB1P, DualPipe and DualPipeV,
// side by side with what the cost-model simulator finds on the generated
// tables, for PP = 4, 8, 16, 32 pipeline stages and several cost settings;
// then every schedule of the library on the same devices and model. Prints
// markdown (docs/benchmarks.md holds its output). Not a timing benchmark:
// every number is a count of cost units, identical on every machine.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "dualpipe/analysis/simulate.hpp"
#include "dualpipe/schedule/dualpipe.hpp"
#include "dualpipe/schedule/gpipe.hpp"
#include "dualpipe/schedule/interleaved_1f1b.hpp"
#include "dualpipe/schedule/one_f_one_b.hpp"
#include "dualpipe/schedule/zb1p.hpp"
#include "dualpipe/schedule/zbv.hpp"

namespace {

using namespace dualpipe;

const generator_options compute_only{.forward_only = false, .with_communication = false};

struct setting {
  const char* title;
  cost_model costs;
};

// Shortest readable number: 4.5, 21, 0.375.
std::string number(double v) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.4g", v);
  return buffer;
}

std::string costs_text(const cost_model& c) {
  return "F=" + number(c.forward) + ", B=" + number(c.backward) + ", W=" + number(c.weight) +
         ", F&B=" + number(c.overlapped) + ", comm=" + number(c.comm);
}

// Which assumptions of the published formulas a setting meets.
bool zb1p_exact(const cost_model& c) {
  return c.comm == 0.0 && c.weight <= std::min(c.forward, c.backward - c.weight);
}
bool dualpipe_exact(const cost_model& c) {
  return c.comm == 0.0 && c.forward == c.backward - c.weight && c.weight <= c.forward &&
         c.backward <= c.overlapped && c.overlapped <= c.forward + c.backward;
}

struct published_row {
  const char* name;
  int devices;
  double bubble;
  const char* bubble_formula;
  int params;  // in copies of one PP-th of the model
  int activations;
  const char* activations_formula;
  bool exact;
};

void published_table(const setting& s) {
  const cost_model& c = s.costs;
  const double F = c.forward, B = c.backward, W = c.weight, FB = c.overlapped;
  std::printf("### %s\n\nCosts per stage and micro-batch: %s.\n\n", s.title, costs_text(c).c_str());
  std::printf(
      "| PP | schedule | devices | bubble, published | bubble, simulated (max over ranks) | "
      "params/device, published / simulated | activations/device, published / simulated | "
      "makespan |\n");
  std::printf("|---:|---|---:|---|---:|---|---|---:|\n");
  for (const int PP : {4, 8, 16, 32}) {
    const int N = 2 * PP;  // micro-batches per step, the same for every schedule
    const published_row rows[] = {
        {"1F1B", PP, (PP - 1) * (F + B), "(PP-1)(F+B)", 1, PP, "PP", c.comm == 0.0},
        {"ZB1P", PP, (PP - 1) * (F + B - 2 * W), "(PP-1)(F+B-2W)", 1, PP, "PP", zb1p_exact(c)},
        {"DualPipe", PP, (PP / 2 - 1) * (FB + B - 3 * W), "(PP/2-1)(F&B+B-3W)", 2, PP + 1, "PP+1",
         dualpipe_exact(c)},
        {"DualPipeV", PP / 2, (PP / 2 - 1) * (FB + B - 3 * W), "(PP/2-1)(F&B+B-3W)", 2, PP + 1,
         "PP+1", dualpipe_exact(c)},
    };
    const schedule_table tables[] = {
        schedules::one_f_one_b(PP, N, compute_only),
        schedules::zb1p(PP, N, compute_only),
        schedules::dualpipe(PP, N, compute_only),
        schedules::dualpipev(PP / 2, N, compute_only),
    };
    for (std::size_t i = 0; i < 4; ++i) {
      const published_row& p = rows[i];
      const simulation sim = simulate(tables[i], c);
      int params = 0, activations = 0;
      for (const rank_summary& r : sim.ranks) {
        params = std::max(params, r.parameter_copies);
        activations = std::max(activations, r.peak_activations);
      }
      const bool same = std::abs(sim.bubble_max - p.bubble) < 1e-9;
      std::printf(
          "| %d | %s | %d | %s = %s | %s%s | %dx / %dx | %s = %d / %d | %s |\n", PP, p.name,
          p.devices, p.bubble_formula, number(p.bubble).c_str(), number(sim.bubble_max).c_str(),
          same ? "" : (p.exact ? " (differs!)" : " (differs: assumptions not met)"), p.params,
          params, p.activations_formula, p.activations, activations, number(sim.makespan).c_str());
    }
  }
  std::printf("\n");
}

// Every schedule on D devices training the same model: a schedule with more
// stages than devices cuts the model finer, so each stage costs its share
// (stage_scale = D / stages).
void same_devices_table(const cost_model& model) {
  std::printf(
      "### Every schedule on the same devices\n\n"
      "One model whose D-stage split costs %s per stage and micro-batch; schedules with 2D or "
      "V·D stages scale each stage's cost by D / stages. N = 4D micro-batches. Bubble is the "
      "largest rank's idle time; its share is bubble / makespan. Activations and parameters are "
      "in units of one D-th of the model (so a V·D-stage schedule holding V stages holds 1x).\n\n",
      costs_text(model).c_str());
  std::printf(
      "| D | schedule | stages | makespan | bubble (max) | bubble share | params/device | "
      "activations/device |\n|---:|---|---:|---:|---:|---:|---:|---:|\n");
  for (const int D : {4, 8, 16, 32}) {
    const int N = 4 * D;
    struct entry {
      const char* name;
      schedule_table table;
    };
    const entry entries[] = {
        {"GPipe", schedules::gpipe(D, N, compute_only)},
        {"1F1B", schedules::one_f_one_b(D, N, compute_only)},
        {"ZB1P", schedules::zb1p(D, N, compute_only)},
        {"interleaved 1F1B (V=2)", schedules::interleaved_1f1b(D, N, 2, compute_only)},
        {"ZB-V", schedules::zbv(D, N, compute_only)},
        {"DualPipe", schedules::dualpipe(D, N, compute_only)},
        {"DualPipeV", schedules::dualpipev(D, N, compute_only)},
    };
    for (const entry& e : entries) {
      const int stages = e.table.info().stages;
      // Mirrored DualPipe holds two copies of D stages; every other schedule
      // splits the model into `stages` pieces.
      const bool mirrored = e.table.info().where == placement::mirrored;
      const double share = mirrored ? 1.0 : static_cast<double>(D) / stages;
      const std::vector<double> scale(static_cast<std::size_t>(stages), share);
      cost_model c = model;
      c.stage_scale = scale;
      const simulation sim = simulate(e.table, c);
      int copies = 0, activations = 0;
      for (const rank_summary& r : sim.ranks) {
        copies = std::max(copies, r.parameter_copies);
        activations = std::max(activations, r.peak_activations);
      }
      std::printf("| %d | %s | %d | %s | %s | %s%% | %sx | %s |\n", D, e.name, stages,
                  number(sim.makespan).c_str(), number(sim.bubble_max).c_str(),
                  number(100.0 * sim.bubble_max / sim.makespan).c_str(),
                  number(copies * share).c_str(), number(activations * share).c_str());
    }
  }
  std::printf("\n");
}

}  // namespace

int main() {
  const setting settings[] = {
      {"F = I, W <= F, B <= F&B <= F+B: every published formula is exact",
       {.forward = 1, .backward = 2, .weight = 1, .overlapped = 2.5, .comm = 0}},
      {"Perfect overlap (F&B = B): still exact",
       {.forward = 1, .backward = 2, .weight = 1, .overlapped = 2, .comm = 0}},
      {"A heavier backward-input (I = 2F): ZB1P exact, DualPipe not",
       {.forward = 1, .backward = 3, .weight = 1, .overlapped = 3.5, .comm = 0}},
      {"A heavy weight gradient (W > I): neither ZB1P nor DualPipe exact",
       {.forward = 1, .backward = 2, .weight = 1.5, .overlapped = 2.5, .comm = 0}},
      {"No overlap gain (F&B = F+B) and a latency of 0.1 per hand-off between devices: no "
       "formula is exact, every bubble grows",
       {.forward = 1, .backward = 2, .weight = 1, .overlapped = 3, .comm = 0.1}},
  };
  std::printf(
      "## Bubbles: the published table against the simulator\n\n"
      "Generated by `bench/bubbles` (`build/bench/bubbles/bubbles`); every number is in cost "
      "units, so the output is the same on every machine.\n\n"
      "PP is the number of pipeline stages the model is cut into. 1F1B, ZB1P and DualPipe run on "
      "PP devices, DualPipeV on PP/2 (two stages per device). Every schedule gets N = 2PP "
      "micro-batches. The published bubble of DualPipe and DualPipeV is the largest per-device "
      "bubble (makespan minus busy time); the other devices of DualPipe idle less. "
      "Parameters and activations are in units of one stage (one PP-th of the model).\n\n");
  for (const setting& s : settings) published_table(s);
  same_devices_table({.forward = 1, .backward = 2, .weight = 1, .overlapped = 2.5, .comm = 0});
  return 0;
}
