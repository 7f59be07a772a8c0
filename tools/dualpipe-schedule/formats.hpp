// The tool's output formats (--format), as a list of named writers.
//
// Adding a format (say chrome-trace or svg): write a function
//   void write_x(std::ostream&, const schedule_table&, const output_options&)
// and add {"x", "one-line summary", write_x} to the list in formats.cpp. If it
// needs settings of its own (a --cost model, a width), add a field to
// output_options and register its flag in add_output_options: every command
// that writes tables then accepts it.
#pragma once

#include <ostream>
#include <span>
#include <string>
#include <string_view>

#include <CLI/CLI.hpp>

#include "dualpipe/schedule/table.hpp"

namespace dualpipe::cli {

struct output_options {
  std::string format = "csv";
  std::string cost;  // --cost, for the timeline formats (chrome-trace, svg)
  CLI::Option* format_option = nullptr;
};

struct output_format {
  std::string_view name;
  std::string_view summary;
  void (*write)(std::ostream& out, const schedule_table& table, const output_options& options);
};

// Every format, in the order --help lists them.
[[nodiscard]] std::span<const output_format> output_formats();

// Registers --format (and any format's own options) on `app`.
void add_output_options(CLI::App& app, output_options& options);

// The chosen format; usage_error for an unknown one. Commands call it before
// building a table so that a typo is reported at once.
const output_format& chosen_format(const output_options& options);

// Writes `table` in the chosen format; usage_error for an unknown one.
void write_output(std::ostream& out, const schedule_table& table, const output_options& options);

}  // namespace dualpipe::cli
