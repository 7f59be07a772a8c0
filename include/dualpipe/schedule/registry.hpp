// The schedules this library builds at run time, by name ("dualpipe",
// "dualpipev", ...): one list shared by the command-line tool, the examples
// and the tests, so that a name means the same table everywhere.
//
// Adding a schedule: include its header below and add one schedule_entry to
// detail::schedule_entries (name, one-line summary, its extra integer
// parameters if any, and a build function). Parameters beyond (P, N) are
// declared as schedule_parameter values, e.g. {"virtual-stages", "model
// stages per rank (V)", 2}; the tool turns each into a --virtual-stages
// option and passes its value in schedule_request::parameters.
#pragma once

#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "dualpipe/schedule/dualpipe.hpp"
#include "dualpipe/schedule/gpipe.hpp"
#include "dualpipe/schedule/interleaved_1f1b.hpp"
#include "dualpipe/schedule/one_f_one_b.hpp"
#include "dualpipe/schedule/zb1p.hpp"
#include "dualpipe/schedule/zbv.hpp"
#include "dualpipe/schedule/options.hpp"
#include "dualpipe/schedule/table.hpp"

namespace dualpipe {

// An integer a schedule takes beyond ranks and micro-batches.
struct schedule_parameter {
  std::string_view name;         // lower case, hyphenated: the tool's --name option
  std::string_view description;  // one line for --help
  std::int32_t default_value = 0;
};

// What to build: sizes, options and named parameter values.
struct schedule_request {
  std::int32_t ranks = 0;
  std::int32_t microbatches = 0;
  generator_options options{};
  // Values of the schedule's parameters. make_schedule fills in the defaults
  // of those left out, so a build function finds every one it declares.
  std::vector<std::pair<std::string, std::int32_t>> parameters{};

  [[nodiscard]] std::int32_t parameter(std::string_view name) const {
    for (const auto& [key, value] : parameters)
      if (key == name) return value;
    throw std::logic_error("dualpipe: schedule parameter '" + std::string(name) +
                           "' was not declared by the schedule");
  }
};

struct schedule_entry {
  std::string_view name;
  std::string_view summary;
  std::span<const schedule_parameter> parameters{};
  // Throws std::invalid_argument naming the constraint (P, N, ...) broken.
  schedule_table (*build)(const schedule_request&) = nullptr;
};

namespace detail {

inline constexpr schedule_parameter interleaved_1f1b_parameters[] = {
    {"virtual-stages", "model stages per rank (V >= 2), for interleaved-1f1b", 2},
};

inline constexpr schedule_entry schedule_entries[] = {
    {"dualpipe",
     "DualPipe: rank r holds stages r and P-1-r; P even, N even, N >= 2P",
     {},
     [](const schedule_request& q) {
       return schedules::dualpipe(q.ranks, q.microbatches, q.options);
     }},
    {"dualpipev",
     "DualPipeV: 2P stages in a V, rank r holds r and 2P-1-r; N >= 2P",
     {},
     [](const schedule_request& q) {
       return schedules::dualpipev(q.ranks, q.microbatches, q.options);
     }},
    {"gpipe",
     "GPipe: stage s on rank s; every forward, then every backward; N >= 1",
     {},
     [](const schedule_request& q) {
       return schedules::gpipe(q.ranks, q.microbatches, q.options);
     }},
    {"1f1b",
     "1F1B (PyTorch's Schedule1F1B): stage s on rank s; P-1-r warm-up forwards; N >= P",
     {},
     [](const schedule_request& q) {
       return schedules::one_f_one_b(q.ranks, q.microbatches, q.options);
     }},
    {"zb1p",
     "ZB1P / ZB-H1 (zero bubble): 1F1B with I/W split, W's delayed into the cool-down; N >= P",
     {},
     [](const schedule_request& q) {
       return schedules::zb1p(q.ranks, q.microbatches, q.options);
     }},
    {"interleaved-1f1b",
     "interleaved 1F1B (Megatron virtual pipeline): V stages per rank, stage s on rank s % P; "
     "N a multiple of P",
     interleaved_1f1b_parameters,
     [](const schedule_request& q) {
       return schedules::interleaved_1f1b(q.ranks, q.microbatches,
                                          q.parameter("virtual-stages"), q.options);
     }},
    {"zbv",
     "ZB-V (zero bubble): 2P stages in a V, rank r holds r and 2P-1-r; N >= 1",
     {},
     [](const schedule_request& q) {
       return schedules::zbv(q.ranks, q.microbatches, q.options);
     }},
};

}  // namespace detail

// Every registered schedule, in the order --help lists them.
[[nodiscard]] constexpr std::span<const schedule_entry> schedule_registry() noexcept {
  return detail::schedule_entries;
}

// The entry called `name`, or nullptr.
[[nodiscard]] constexpr const schedule_entry* find_schedule(std::string_view name) noexcept {
  for (const schedule_entry& e : schedule_registry())
    if (e.name == name) return &e;
  return nullptr;
}

// "dualpipe, dualpipev, ...": for messages.
[[nodiscard]] inline std::string schedule_names(std::string_view separator = ", ") {
  std::string out;
  for (const schedule_entry& e : schedule_registry()) {
    if (!out.empty()) out += separator;
    out += e.name;
  }
  return out;
}

// Builds schedule `name`. Throws std::invalid_argument for an unknown name, a
// parameter the schedule does not take, or sizes the schedule rejects.
[[nodiscard]] inline schedule_table make_schedule(std::string_view name,
                                                  schedule_request request) {
  const schedule_entry* entry = find_schedule(name);
  if (entry == nullptr)
    throw std::invalid_argument("unknown schedule '" + std::string(name) +
                                "' (known: " + schedule_names() + ")");
  for (const auto& given : request.parameters) {
    bool declared = false;
    for (const schedule_parameter& p : entry->parameters) declared = declared || p.name == given.first;
    if (!declared)
      throw std::invalid_argument("schedule '" + std::string(name) + "' takes no parameter '" +
                                  given.first + "'");
  }
  for (const schedule_parameter& p : entry->parameters) {
    bool present = false;
    for (const auto& given : request.parameters) present = present || given.first == p.name;
    if (!present) request.parameters.emplace_back(std::string(p.name), p.default_value);
  }
  return entry->build(request);
}

}  // namespace dualpipe
