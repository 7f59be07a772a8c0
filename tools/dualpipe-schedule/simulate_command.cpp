// `dualpipe-schedule simulate`: runs the cost-model simulator on a schedule
// (--schedule ... or --input FILE.csv) and prints its makespan and per-rank
// busy time, bubble and peak activations as a table (text), as JSON, or draws
// the timeline (chrome-trace, svg). A table that does not validate is refused
// with validate's sentence (exit 1).
#include <iomanip>
#include <iostream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "cost_option.hpp"
#include "dualpipe/analysis/simulate.hpp"
#include "table_source.hpp"
#include "timeline_formats.hpp"
#include "usage_error.hpp"

namespace dualpipe::cli {

namespace {

struct simulate_options {
  table_source source;
  std::string cost;
  std::string format = "text";
};

// {"makespan": x, "bubble_max": y, "ranks": [{"rank": r, "busy": b, ...}]}
void write_simulation_json(std::ostream& out, const schedule_table& table, const simulation& sim,
                           const cost_model& costs) {
  nlohmann::ordered_json doc;
  doc["schedule"] = std::string(table.info().kind.name);
  doc["stages"] = table.info().stages;
  doc["microbatches"] = table.info().microbatches;
  doc["costs"] = {{"F", costs.forward},
                  {"B", costs.backward},
                  {"W", costs.weight},
                  {"FB", costs.overlapped},
                  {"comm", costs.comm}};
  doc["makespan"] = sim.makespan;
  doc["bubble_max"] = sim.bubble_max;
  doc["bubble_min"] = sim.bubble_min;
  nlohmann::ordered_json ranks = nlohmann::ordered_json::array();
  for (const rank_summary& r : sim.ranks)
    ranks.push_back({{"rank", r.rank},
                     {"busy", r.busy},
                     {"bubble", r.bubble},
                     {"peak_activations", r.peak_activations},
                     {"parameter_copies", r.parameter_copies}});
  doc["ranks"] = std::move(ranks);
  out << doc.dump(2) << '\n';
}

void write_simulation_text(std::ostream& out, const schedule_table& table, const simulation& sim,
                           const cost_model& costs) {
  const schedule_info& info = table.info();
  out << info.kind.name << ": " << info.ranks << " ranks, " << info.stages << " stages, "
      << info.microbatches << " micro-batches; costs " << describe_cost(costs) << '\n';
  out << "makespan " << sim.makespan << ", bubble max " << sim.bubble_max << ", min "
      << sim.bubble_min << '\n';
  out << std::setw(6) << "rank" << std::setw(12) << "busy" << std::setw(12) << "bubble"
      << std::setw(13) << "activations" << std::setw(12) << "parameters" << '\n';
  for (const rank_summary& r : sim.ranks)
    out << std::setw(6) << r.rank << std::setw(12) << r.busy << std::setw(12) << r.bubble
        << std::setw(13) << r.peak_activations << std::setw(12) << r.parameter_copies << '\n';
}

}  // namespace

std::function<int()> attach_simulate(CLI::App& sub) {
  auto options = std::make_shared<simulate_options>();
  add_table_source_options(sub, options->source);
  add_cost_option(sub, options->cost);
  sub.add_option("--format", options->format,
                 "Output (default text), one of:\n  text: a readable table\n  json: makespan, "
                 "bubble_max and per-rank busy, bubble, peak_activations\n  chrome-trace: the "
                 "timeline as Chrome trace JSON (Perfetto)\n  svg: the timeline as an SVG picture")
      ->type_name("FORMAT");
  sub.footer(
      "Activations are in units of one stage's activations for one micro-batch, "
      "parameters in stages held. Communication instructions are ignored: the model is "
      "dataflow plus a comm latency per hand-off between ranks.\nExit status: 0 simulated, 1 "
      "the table does not validate (validate's sentence on stderr), 2 bad usage or malformed "
      "CSV.");
  return [options]() {
    const std::string& format = options->format;
    if (format != "text" && format != "json" && format != "chrome-trace" && format != "svg")
      throw usage_error("unknown simulate format '" + format +
                        "' (known: text, json, chrome-trace, svg)");
    const cost_model costs = parse_cost(options->cost);
    const schedule_table table = build_table(options->source);
    const simulation sim = simulate_valid(table, costs);
    std::ostringstream out;
    if (format == "json")
      write_simulation_json(out, table, sim, costs);
    else if (format == "chrome-trace")
      write_chrome_trace(out, sim);
    else if (format == "svg")
      write_svg(out, table, sim, costs);
    else
      write_simulation_text(out, table, sim, costs);
    std::cout << out.str();
    std::cout.flush();
    return std::cout ? 0 : 1;
  };
}

}  // namespace dualpipe::cli
