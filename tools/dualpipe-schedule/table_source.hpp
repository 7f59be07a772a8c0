// Where the tool's table comes from: the options naming a schedule and its
// sizes (--schedule, --ranks, --microbatches, --forward-only, --with-comm and
// every parameter a registered schedule declares, e.g. --virtual-stages).
// The top-level command and any subcommand attach the same options with
// add_table_source_options and turn them into a table with build_table.
// --input FILE.csv reads a PyTorch CSV instead (compute-only or with
// communication), in place of --schedule and its sizes.
//
// A new source of tables (say --input FILE.csv) belongs here: add its field
// and option, and let build_table prefer it.
#pragma once

#include <map>
#include <string>

#include <CLI/CLI.hpp>

#include "dualpipe/schedule/table.hpp"

namespace dualpipe::cli {

struct table_source {
  std::string schedule;
  int ranks = 0;
  int microbatches = 0;
  bool forward_only = false;
  bool with_communication = false;
  // Registered schedule parameters by name, and the options that set them.
  std::map<std::string, int, std::less<>> parameters;
  std::map<std::string, CLI::Option*, std::less<>> parameter_options;
  std::string input;  // --input FILE.csv
  CLI::Option* input_option = nullptr;
  CLI::Option* schedule_option = nullptr;
  CLI::Option* ranks_option = nullptr;
  CLI::Option* microbatches_option = nullptr;
};

// Registers the options on `app`; `source` must outlive the parse.
void add_table_source_options(CLI::App& app, table_source& source);

// Builds the table the options describe. Throws usage_error for missing or
// inconsistent options and std::invalid_argument for sizes the schedule
// rejects; an --input file that is not valid CSV is a csv_error (line, column).
[[nodiscard]] schedule_table build_table(const table_source& source);

// The whole text of an input file named by `option` ("--input"), whose
// content is `kind` ("CSV"): usage_error when it is a directory or cannot be
// read. Serves every option that reads a file.
[[nodiscard]] std::string read_input_file(const std::string& option, const std::string& path,
                                          const std::string& kind);

}  // namespace dualpipe::cli
