// chrome-trace and svg output of a simulated timeline.
#include "timeline_formats.hpp"

#include <stdexcept>
#include <string>

#include "cost_option.hpp"
#include "dualpipe/analysis/validate.hpp"
#include "dualpipe/io/chrome_trace.hpp"
#include "dualpipe/io/svg.hpp"

namespace dualpipe::cli {

void write_chrome_trace(std::ostream& out, const simulation& sim) {
  out << format_chrome_trace(sim);
}

void write_svg(std::ostream& out, const schedule_table& table, const simulation& sim,
               const cost_model& costs) {
  const schedule_info& info = table.info();
  std::string title = std::string(info.kind.name) + ", " + std::to_string(info.ranks) +
                      " ranks, " + std::to_string(info.stages) + " stages, " +
                      std::to_string(info.microbatches) + " micro-batches (" +
                      describe_cost(costs) + "): makespan ";
  // Short numbers for the title: at most 3 decimals, trailing zeros dropped.
  std::string makespan = std::to_string(sim.makespan);
  while (makespan.size() > 1 && makespan.back() == '0') makespan.pop_back();
  if (!makespan.empty() && makespan.back() == '.') makespan.pop_back();
  title += makespan;
  svg_options options;
  options.title = title;
  options.schedule = info;
  // Draw an overlapped pair split as its two halves would run alone.
  const double sum = costs.forward + costs.backward;
  options.forward_share = sum > 0.0 ? costs.forward / sum : 0.5;
  out << format_svg(sim, options);
}

simulation simulate_valid(const schedule_table& table, const cost_model& costs) {
  if (const validation v = validate(table); !v.ok) throw std::runtime_error(describe(v));
  try {
    return simulate(table, costs);
  } catch (const std::invalid_argument& e) {
    throw std::runtime_error(e.what());
  }
}

void write_chrome_trace(std::ostream& out, const schedule_table& table,
                        const output_options& options) {
  write_chrome_trace(out, simulate_valid(table, parse_cost(options.cost)));
}

void write_svg(std::ostream& out, const schedule_table& table, const output_options& options) {
  const cost_model costs = parse_cost(options.cost);
  write_svg(out, table, simulate_valid(table, costs), costs);
}

}  // namespace dualpipe::cli
