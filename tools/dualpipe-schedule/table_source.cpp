// Options naming a registered schedule, and building its table.
#include "table_source.hpp"

#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <sstream>
#include <string>
#include <system_error>
#include <utility>

#include "dualpipe/io/csv.hpp"
#include "dualpipe/schedule/registry.hpp"
#include "usage_error.hpp"

namespace dualpipe::cli {

void add_table_source_options(CLI::App& app, table_source& source) {
  std::string schedules = "Schedule to build, one of:";
  for (const schedule_entry& e : schedule_registry())
    schedules += "\n  " + std::string(e.name) + ": " + std::string(e.summary);
  source.schedule_option =
      app.add_option("--schedule", source.schedule, schedules)->type_name("NAME");
  source.ranks_option =
      app.add_option("--ranks", source.ranks, "Number of pipeline ranks (P)")->type_name("P");
  source.microbatches_option =
      app.add_option("--microbatches", source.microbatches,
                     "Number of micro-batches in one step (N)")
          ->type_name("N");
  source.input_option =
      app.add_option("--input", source.input,
                     "Read the schedule from a PyTorch CSV file (one line per rank; compute-only "
                     "or with SEND/RECV) instead of --schedule")
          ->type_name("FILE.csv");
  app.add_flag("--forward-only", source.forward_only,
               "Inference: only forwards (and their communication)");
  app.add_flag("--with-comm", source.with_communication,
               "Also emit SEND_F/RECV_F/SEND_B/RECV_B and COMMIT batch boundaries "
               "(COMMIT is this library's token; PyTorch reads compute-only CSV)");

  // One option per distinct parameter name, shared by every schedule that
  // declares it.
  for (const schedule_entry& e : schedule_registry())
    for (const schedule_parameter& p : e.parameters) {
      const std::string name(p.name);
      if (source.parameter_options.contains(name)) continue;
      std::string users;
      for (const schedule_entry& u : schedule_registry())
        for (const schedule_parameter& q : u.parameters)
          if (q.name == p.name) users += (users.empty() ? "" : ", ") + std::string(u.name);
      source.parameters[name] = p.default_value;
      source.parameter_options[name] =
          app.add_option("--" + name, source.parameters[name],
                         std::string(p.description) + " (" + users + "; default " +
                             std::to_string(p.default_value) + ")")
              ->type_name("INT");
    }
}

namespace {

// The imported table: sizes, placement and options come from the file.
schedule_table read_input(const table_source& source) {
  const auto given = [](const CLI::Option* o) { return o != nullptr && o->count() > 0; };
  if (given(source.schedule_option))
    throw usage_error("give either --schedule or --input, not both");
  for (const auto& [name, option] :
       std::initializer_list<std::pair<const char*, const CLI::Option*>>{
           {"--ranks", source.ranks_option}, {"--microbatches", source.microbatches_option}})
    if (given(option))
      throw usage_error(std::string(name) +
                        " applies to --schedule; --input takes the sizes from the file");
  for (const auto& [name, option] : source.parameter_options)
    if (given(option)) throw usage_error("--" + name + " applies to --schedule, not to --input");
  if (source.forward_only || source.with_communication)
    throw usage_error(
        "--forward-only and --with-comm apply to --schedule; --input keeps the file's content");
  return read_csv(read_input_file("--input", source.input, "CSV"));
}

}  // namespace

std::string read_input_file(const std::string& option, const std::string& path,
                            const std::string& kind) {
  std::error_code ignored;
  if (std::filesystem::is_directory(path, ignored))
    throw usage_error(option + " '" + path + "' is a directory, not a " + kind + " file");
  std::ifstream file(path, std::ios::binary);
  if (!file) throw usage_error("cannot read " + option + " file '" + path + "'");
  std::ostringstream text;
  text << file.rdbuf();
  if (file.bad()) throw usage_error("cannot read " + option + " file '" + path + "'");
  return text.str();
}

schedule_table build_table(const table_source& source) {
  if (source.input_option != nullptr && source.input_option->count() > 0) return read_input(source);
  if (source.schedule_option->count() == 0)
    throw usage_error("missing --schedule NAME (one of: " + schedule_names() +
                      ") or --input FILE.csv");
  const schedule_entry* entry = find_schedule(source.schedule);
  if (entry == nullptr)
    throw usage_error("unknown schedule '" + source.schedule + "' (known: " + schedule_names() +
                      ")");
  if (source.ranks_option->count() == 0) throw usage_error("missing --ranks P");
  if (source.microbatches_option->count() == 0) throw usage_error("missing --microbatches N");

  schedule_request request;
  request.ranks = source.ranks;
  request.microbatches = source.microbatches;
  request.options.forward_only = source.forward_only;
  request.options.with_communication = source.with_communication;
  for (const auto& [name, option] : source.parameter_options) {
    if (option->count() == 0) continue;
    bool declared = false;
    for (const schedule_parameter& p : entry->parameters) declared = declared || p.name == name;
    if (!declared)
      throw usage_error("--" + name + " does not apply to schedule '" + source.schedule + "'");
    request.parameters.emplace_back(name, source.parameters.find(name)->second);
  }
  return make_schedule(entry->name, std::move(request));
}

}  // namespace dualpipe::cli
