// Output formats that draw a simulated timeline of the table under the
// --cost model: chrome-trace (Chrome trace JSON for Perfetto) and svg.
#pragma once

#include <ostream>

#include "dualpipe/analysis/simulate.hpp"
#include "dualpipe/schedule/table.hpp"
#include "formats.hpp"

namespace dualpipe::cli {

// The simulation of a table that must be able to run: one that validate()
// rejects (the simulator times dataflow only, so a send without its receive
// or a W out of order could still get a makespan) is refused with validate's
// sentence, and so is anything the simulator then refuses: std::runtime_error
// either way, bad input rather than bad usage (exit 1, as `validate`).
[[nodiscard]] simulation simulate_valid(const schedule_table& table, const cost_model& costs);

void write_chrome_trace(std::ostream& out, const schedule_table& table,
                        const output_options& options);
void write_svg(std::ostream& out, const schedule_table& table, const output_options& options);

// The same from a finished simulation (the simulate subcommand has one).
void write_chrome_trace(std::ostream& out, const simulation& sim);
void write_svg(std::ostream& out, const schedule_table& table, const simulation& sim,
               const cost_model& costs);

}  // namespace dualpipe::cli
