// One rank of a table as PyTorch action text, for the schedule tests that
// compare orders written out by hand.
#pragma once

#include <string>

#include "dualpipe/schedule/action_syntax.hpp"
#include "dualpipe/schedule/table.hpp"

namespace dualpipe::test {

// "0F0 0F1 0B0 ..." for `rank`, actions separated by one space.
inline std::string actions(table_view t, int rank) {
  std::string out;
  for (const instruction& i : t.rank(rank)) {
    if (!out.empty()) out += ' ';
    out += format_action(i);
  }
  return out;
}

}  // namespace dualpipe::test
