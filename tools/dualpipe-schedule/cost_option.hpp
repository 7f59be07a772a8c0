// The --cost option: the simulator's cost model as text,
// "F=1,B=2,W=1,FB=2.5,comm=0" (any subset, any order). F forward, B full
// backward, W its weight part (backward-input costs B - W), FB an overlapped
// forward-and-backward pair, comm the latency of a hand-off between ranks.
// Unset keys keep the defaults F=1, B=2, W=1, comm=0; FB left out is F + B
// (overlap gains nothing).
#pragma once

#include <string>
#include <string_view>

#include <CLI/CLI.hpp>

#include "dualpipe/analysis/simulate.hpp"

namespace dualpipe::cli {

// Registers --cost on `app`, storing the text in `spec`.
void add_cost_option(CLI::App& app, std::string& spec);

// Parses the text; usage_error naming the bad key or value.
[[nodiscard]] cost_model parse_cost(std::string_view spec);

// "F=1 B=2 W=1 FB=2.5 comm=0": for headers of readable output.
[[nodiscard]] std::string describe_cost(const cost_model& costs);

}  // namespace dualpipe::cli
