// The list of subcommands. Each entry's attach function lives in its own file.
#include "commands.hpp"

#include <vector>

namespace dualpipe::cli {

std::span<const command> subcommands() {
  static const std::vector<command> list = {
      {"pair", "one overlapped pair on its compute and communication lanes: order, times, picture",
       attach_pair},
      {"simulate", "simulate a schedule under a cost model: makespan, bubbles, activations",
       attach_simulate},
      {"validate", "check a schedule and print ok or its first violation", attach_validate},
  };
  return list;
}

}  // namespace dualpipe::cli
