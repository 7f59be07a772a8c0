// dualpipe-schedule: prints a pipeline schedule as PyTorch CSV, a text grid or
// JSON. Errors in the command line are one line on stderr,
// "dualpipe-schedule: error: ...", and exit status 2; --help exits 0.
#include <exception>
#include <functional>
#include <iostream>
#include <string>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>

#include "commands.hpp"
#include "dualpipe/io/csv.hpp"
#include "dualpipe/schedule/registry.hpp"
#include "formats.hpp"
#include "table_source.hpp"
#include "usage_error.hpp"

namespace {

constexpr int exit_usage = 2;
constexpr int exit_failure = 1;

// Exactly one line, whatever the message holds.
int report(const std::string& message, int status) {
  std::string line = message;
  for (char& c : line)
    if (c == '\n' || c == '\r') c = ' ';
  std::cerr << "dualpipe-schedule: error: " << line << '\n';
  return status;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace dualpipe::cli;
  CLI::App app{
      "Prints a pipeline-parallel schedule (DualPipe, DualPipeV, ...) as PyTorch CSV, "
      "a text grid or JSON.",
      "dualpipe-schedule"};
  app.get_formatter()->column_width(32);
  app.footer(
      "Example: dualpipe-schedule --schedule dualpipe --ranks 8 --microbatches 20 "
      "--format grid\nErrors: one line on stderr; exit status 2 for bad usage, 1 for a "
      "table that does not validate where it must (simulate, chrome-trace, svg).");

  table_source source;
  add_table_source_options(app, source);
  output_options output;
  add_output_options(app, output);

  std::vector<std::pair<CLI::App*, std::function<int()>>> chosen;
  for (const command& c : subcommands()) {
    CLI::App* sub = app.add_subcommand(std::string(c.name), std::string(c.summary));
    chosen.emplace_back(sub, c.attach(*sub));
  }
  app.require_subcommand(0, 1);

  try {
    app.parse(argc, argv);
    for (auto& [sub, run] : chosen)
      if (sub->parsed()) return run();
    const output_format& format = chosen_format(output);
    const dualpipe::schedule_table table = build_table(source);
    format.write(std::cout, table, output);
    std::cout.flush();
    if (!std::cout) return report("cannot write to standard output", exit_failure);
    return 0;
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) return app.exit(e);
    return report(e.what(), exit_usage);
  } catch (const usage_error& e) {
    return report(e.what(), exit_usage);
  } catch (const std::invalid_argument& e) {
    return report(e.what(), exit_usage);
  } catch (const dualpipe::csv_error& e) {
    return report(e.what(), exit_usage);
  } catch (const std::exception& e) {
    return report(e.what(), exit_failure);
  }
}
