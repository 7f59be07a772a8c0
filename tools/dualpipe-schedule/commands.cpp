// The list of subcommands. Each entry's attach function lives in its own file.
#include "commands.hpp"

#include <vector>

namespace dualpipe::cli {

std::span<const command> subcommands() {
  static const std::vector<command> list = {
      {"simulate", "simulate a schedule under a cost model: makespan, bubbles, activations",
       attach_simulate},
      {"validate", "check a schedule and print ok or its first violation", attach_validate},
  };
  return list;
}

}  // namespace dualpipe::cli
