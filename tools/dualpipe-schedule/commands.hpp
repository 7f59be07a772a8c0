// Subcommands of the tool (`dualpipe-schedule NAME [options]`). Without one,
// the tool prints the table given by the table-source options in the chosen
// --format (see main.cpp).
//
// Adding a subcommand (say `validate` or `simulate`): write a function
//   std::function<int()> attach_x(CLI::App& sub)
// that registers the subcommand's options on `sub` (reuse
// add_table_source_options / add_output_options for the shared ones) and
// returns what to run when the subcommand is chosen, giving the exit status;
// then add {"x", "one-line summary", attach_x} to the list in commands.cpp.
// Throw usage_error for bad usage (exit 2, one line on stderr).
#pragma once

#include <functional>
#include <span>
#include <string_view>

#include <CLI/CLI.hpp>

namespace dualpipe::cli {

struct command {
  std::string_view name;
  std::string_view summary;
  std::function<int()> (*attach)(CLI::App& sub);
};

std::function<int()> attach_pair(CLI::App& sub);      // pair_command.cpp
std::function<int()> attach_simulate(CLI::App& sub);  // simulate_command.cpp
std::function<int()> attach_validate(CLI::App& sub);  // validate_command.cpp

// Every subcommand, in the order --help lists them.
[[nodiscard]] std::span<const command> subcommands();

}  // namespace dualpipe::cli
