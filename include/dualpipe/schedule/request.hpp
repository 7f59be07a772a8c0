// What the registry (registry.hpp) asks a generator for: sizes, options and
// the values of the integer parameters a schedule declares beyond (P, N).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "dualpipe/schedule/options.hpp"

namespace dualpipe {

// An integer a schedule takes beyond ranks and micro-batches, e.g.
// {"virtual-stages", "model stages per rank (V >= 2)", 2}: the tool turns it
// into a --virtual-stages option.
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
  // of those left out, so a generator finds every one it declares.
  std::vector<std::pair<std::string, std::int32_t>> parameters{};

  [[nodiscard]] std::int32_t parameter(std::string_view name) const {
    for (const auto& [key, value] : parameters)
      if (key == name) return value;
    throw std::logic_error("dualpipe: schedule parameter '" + std::string(name) +
                           "' was not declared by the schedule");
  }
};

}  // namespace dualpipe
