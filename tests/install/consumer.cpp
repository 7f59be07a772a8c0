// A program built against an installed dualpipe-cpp (tests/install), once
// through the CMake package and once through pkg-config: prints the version
// macros, the language standard it was compiled as, the size of a 4-rank
// DualPipe table and what validate() says of it, for install_test.py to check.
#include <cstdio>

#include "dualpipe/analysis/validate.hpp"
#include "dualpipe/schedule/dualpipe.hpp"
#include "dualpipe/version.hpp"

int main() {
  const dualpipe::schedule_table table = dualpipe::schedules::dualpipe(4, 8);
  std::printf("version %d.%d.%d (%d)\n", DUALPIPE_VERSION_MAJOR, DUALPIPE_VERSION_MINOR,
              DUALPIPE_VERSION_PATCH, DUALPIPE_VERSION);
  std::printf("__cplusplus %ld\n", __cplusplus);
  std::printf("dualpipe ranks %d instructions %zu\n", table.info().ranks, table.size());
  std::printf("validate %s\n", dualpipe::describe(dualpipe::validate(table)).c_str());
}
