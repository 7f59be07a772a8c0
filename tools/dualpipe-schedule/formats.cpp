// grid, csv and json output of a table.
#include "formats.hpp"

#include <string>

#include "cost_option.hpp"
#include "dualpipe/io/csv.hpp"
#include "dualpipe/io/grid.hpp"
#include "dualpipe/io/json.hpp"
#include "timeline_formats.hpp"
#include "usage_error.hpp"

namespace dualpipe::cli {

namespace {

void write_grid(std::ostream& out, const schedule_table& table, const output_options&) {
  out << format_grid(table, {.communication = table.info().with_communication});
}

// A compute-only table gives PyTorch's compute-only CSV; a table with
// communication keeps its COMMIT boundaries so that nothing is lost.
void write_csv_text(std::ostream& out, const schedule_table& table, const output_options&) {
  out << write_csv(table, table.info().with_communication ? csv_content::with_commit
                                                          : csv_content::compute_only);
}

void write_json(std::ostream& out, const schedule_table& table, const output_options&) {
  out << format_json(table);
}

constexpr output_format formats[] = {
    {"csv", "PyTorch pipelining CSV: one line per rank, actions comma-separated", write_csv_text},
    {"grid", "text grid: one column per rank, one row per step (F3, B12, I4, W4, F3|B12)",
     write_grid},
    {"json", "schedule info and per-rank action strings", write_json},
    {"chrome-trace",
     "simulated timeline (--cost) as Chrome trace JSON for Perfetto: one track per rank",
     write_chrome_trace},
    {"svg", "simulated timeline (--cost) as an SVG picture: one row per rank", write_svg},
};

}  // namespace

std::span<const output_format> output_formats() {
  return formats;
}

void add_output_options(CLI::App& app, output_options& options) {
  std::string help = "Output format (default csv), one of:";
  for (const output_format& f : output_formats())
    help += "\n  " + std::string(f.name) + ": " + std::string(f.summary);
  options.format_option = app.add_option("--format", options.format, help)->type_name("FORMAT");
  add_cost_option(app, options.cost);
}

const output_format& chosen_format(const output_options& options) {
  std::string known;
  for (const output_format& f : output_formats()) {
    if (f.name == options.format) return f;
    known += (known.empty() ? "" : ", ") + std::string(f.name);
  }
  throw usage_error("unknown format '" + options.format + "' (known: " + known + ")");
}

void write_output(std::ostream& out, const schedule_table& table, const output_options& options) {
  chosen_format(options).write(out, table, options);
}

}  // namespace dualpipe::cli
