// bubbles: the DualPipe paper's comparison table (bubble, parameters and
// activations per device, devices) for 1F1B, ZB1P, DualPipe and DualPipeV,
// side by side with what the cost-model simulator finds on the generated
// tables, for PP = 4, 8, 16, 32 pipeline stages and several cost settings;
// then every schedule of the library on the same devices and model. Prints
// markdown (docs/benchmarks.md holds its output). Not a timing benchmark:
// every number is a count of cost units, identical on every machine.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "dualpipe/analysis/simulate.hpp"
#include "dualpipe/analysis/validate.hpp"
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

// DualPipe (V = false) or DualPipeV whose padding micro-batches are the last
// chunks of each direction instead of the first: the alternative that the
// few-micro-batch table compares against (the library drops the first).
template <bool V>
struct drop_last_generator {
  std::int32_t ranks = 0;
  std::int32_t microbatches = 0;
  generator_options options{};

  static constexpr schedule_kind kind = V ? dualpipev_generator::kind : dualpipe_generator::kind;
  static constexpr std::string_view summary = "DualPipe(V), padding dropped from the end";
  [[nodiscard]] constexpr std::string_view violation() const noexcept {
    return detail::dualpipe_violation(ranks, microbatches, V);
  }
  [[nodiscard]] constexpr int stages() const noexcept { return V ? 2 * ranks : ranks; }
  template <class Emit>
  constexpr void emit_rank(int rank, Emit emit) const {
    detail::dualpipe_rank_walk<Emit>(ranks, microbatches, V, options, rank, emit,
                                     detail::padding_chunks::last)
        .run();
  }
};

// The simulation of a table on D devices training one model, each stage
// costing its share as in same_devices_table.
simulation on_devices(const schedule_table& t, int D, const cost_model& model) {
  const int stages = t.info().stages;
  const double share =
      t.info().where == placement::mirrored ? 1.0 : static_cast<double>(D) / stages;
  const std::vector<double> scale(static_cast<std::size_t>(stages), share);
  cost_model c = model;
  c.stage_scale = scale;
  return simulate(t, c);
}

// "makespan (largest bubble)" on D devices, for a table that validates.
std::string cell(const schedule_table& t, int D, const cost_model& model) {
  if (!validate(t)) return "invalid!";
  const simulation sim = on_devices(t, D, model);
  return number(sim.makespan) + " (" + number(sim.bubble_max) + ")";
}

template <class Make>
std::string if_accepted(Make make, int D, const cost_model& model) {
  try {
    return cell(make(), D, model);
  } catch (const std::invalid_argument&) {
    return "refused";
  }
}

// DualPipe and DualPipeV below the reference's limits (N < 2P, odd N) against
// 1F1B and ZB1P at the same N (GPipe where those refuse N < P), and the
// padding dropped first (the library's choice) against dropped last.
void few_microbatches_table(const setting& s) {
  const cost_model& model = s.costs;
  std::printf(
      "### %s\n\nCosts per stage and micro-batch of a D-stage split: %s. Each cell is "
      "makespan (largest rank bubble); DualPipeV's 2D stages cost half.\n\n",
      s.title, costs_text(model).c_str());
  std::printf(
      "| D | N | GPipe | 1F1B | ZB1P | DualPipe | DualPipe, drop last | DualPipeV | "
      "DualPipeV, drop last |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (const int D : {4, 8, 16}) {
    std::vector<int> counts;
    for (int N = 1; N < 2 * D; ++N)
      if (D <= 8 || N <= 4 || N % 2 == 1 || N == D) counts.push_back(N);
    counts.push_back(2 * D);
    counts.push_back(2 * D + 1);
    counts.push_back(4 * D + 1);
    for (const int N : counts) {
      std::printf(
          "| %d | %d | %s | %s | %s | %s | %s | %s | %s |\n", D, N,
          if_accepted([&] { return schedules::gpipe(D, N, compute_only); }, D, model).c_str(),
          if_accepted([&] { return schedules::one_f_one_b(D, N, compute_only); }, D, model).c_str(),
          if_accepted([&] { return schedules::zb1p(D, N, compute_only); }, D, model).c_str(),
          cell(schedules::dualpipe(D, N, compute_only), D, model).c_str(),
          cell(make_table(drop_last_generator<false>{D, N, compute_only}), D, model).c_str(),
          cell(schedules::dualpipev(D, N, compute_only), D, model).c_str(),
          cell(make_table(drop_last_generator<true>{D, N, compute_only}), D, model).c_str());
    }
  }
  std::printf("\n");
}

// The padded table with only the chunks in `keep[dir]` (bit c: the c-th
// micro-batch of direction dir in the padded walk) left, renumbered in order,
// a pair that lost a half replaced by its other half, and empty commits gone.
schedule_table keep_chunks(const schedule_table& padded, int walked, bool v, const unsigned keep[2],
                           int microbatches) {
  schedule_info info = padded.info();
  info.microbatches = microbatches;
  const int held0 = std::popcount(keep[0]);
  auto real = [&](int mb) {
    const int dir = !v && mb >= walked ? 1 : 0;
    const int chunk = dir == 1 ? mb - walked : mb;
    if (((keep[dir] >> chunk) & 1u) == 0) return -1;
    const int index = std::popcount(keep[dir] & ((1u << chunk) - 1u));
    return dir == 1 ? held0 + index : index;
  };
  schedule_table out(info);
  for (int r = 0; r < padded.info().ranks; ++r) {
    bool posted = false;
    for (const instruction& x : padded.rank(r)) {
      if (x.kind == op::commit) {
        if (posted) out.push(x);
        posted = false;
      } else if (x.kind == op::overlapped_forward_backward) {
        const int f = real(x.microbatch), b = real(x.microbatch_b);
        if (f >= 0 && b >= 0)
          out.push(make_overlapped(x.stage, f, x.stage_b, b));
        else if (f >= 0)
          out.push(make_forward(x.stage, f));
        else if (b >= 0)
          out.push(make_backward(x.stage_b, b));
      } else if (const int m = real(x.microbatch); m >= 0) {
        instruction kept = x;
        kept.microbatch = m;
        out.push(kept);
        posted = posted || is_communication(x.kind);
      }
    }
    out.end_rank();
  }
  return out;
}

// For every N below the reference's limit on D devices: the makespan of the
// library's table (padding dropped first) against the best of every way to
// choose which chunks of the padded walk stay (all subsets of the right
// sizes, each table validated), under the first setting's costs.
void padding_search_table(const setting& s) {
  const cost_model& model = s.costs;
  std::printf(
      "### Which micro-batches to drop, every choice tried: %s\n\n"
      "The padded walk has M chunks per direction; any n of them (n = N/2 and N - N/2 for "
      "DualPipe, N for DualPipeV) can hold the real micro-batches. This tries every choice, "
      "validates each table and keeps the shortest makespan on D devices (DualPipeV's 2D stages "
      "cost half), with the costs %s.\n\n"
      "| schedule | D | N | choices tried | makespan, padding dropped first | best of all choices "
      "|\n"
      "|---|---:|---:|---:|---:|---:|\n",
      s.title, costs_text(model).c_str());
  for (const bool v : {false, true})
    for (const int D : {4, 8}) {
      const int walked = v ? 2 * D : D;  // the reference's fewest per direction
      for (int N = 1; N < 2 * D; ++N) {
        const int held[2] = {v ? N : N / 2, v ? N : N - N / 2};
        const schedule_table padded = v ? schedules::dualpipev(D, walked, compute_only)
                                        : schedules::dualpipe(D, 2 * walked, compute_only);
        const double ours = on_devices(v ? schedules::dualpipev(D, N, compute_only)
                                         : schedules::dualpipe(D, N, compute_only),
                                       D, model)
                                .makespan;
        double best = ours;
        long tried = 0;
        const unsigned all = 1u << walked;
        for (unsigned a = 0; a < all; ++a) {
          if (std::popcount(a) != held[0]) continue;
          for (unsigned b = 0; b < all; ++b) {
            if (v ? b != a : std::popcount(b) != held[1]) continue;
            const unsigned keep[2] = {a, b};
            const schedule_table t = keep_chunks(padded, walked, v, keep, N);
            ++tried;
            if (!validate(t)) continue;
            best = std::min(best, on_devices(t, D, model).makespan);
          }
        }
        std::printf("| %s | %d | %d | %ld | %s | %s%s |\n", v ? "DualPipeV" : "DualPipe", D, N,
                    tried, number(ours).c_str(), number(best).c_str(),
                    best < ours - 1e-9 ? " (shorter)" : "");
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
  std::printf(
      "## Few micro-batches: DualPipe and DualPipeV for N < 2P and odd N\n\n"
      "The reference refuses these sizes; the library walks the smallest count it accepts and "
      "drops the padding micro-batches (docs/schedules.md). D devices train one model: 1F1B, "
      "ZB1P, GPipe and DualPipe cut it into D stages, DualPipeV into 2D. Every table here "
      "validates.\n\n");
  few_microbatches_table(settings[0]);
  few_microbatches_table(settings[4]);
  padding_search_table(settings[0]);
  padding_search_table(settings[4]);
  return 0;
}
