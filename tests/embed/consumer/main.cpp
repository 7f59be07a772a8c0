// A program built against dualpipe-cpp as a Meson subproject
// (tests/embed): prints the version macros, the language standard it was
// compiled as, and the size of a DualPipe table from the registry, for
// embed_test.py to check.
#include <cstdio>

#include "dualpipe/schedule/registry.hpp"
#include "dualpipe/version.hpp"

int main() {
  const dualpipe::schedule_table table =
      dualpipe::make_schedule("dualpipe", {.ranks = 4, .microbatches = 8});
  std::printf("version %d.%d.%d (%d)\n", DUALPIPE_VERSION_MAJOR, DUALPIPE_VERSION_MINOR,
              DUALPIPE_VERSION_PATCH, DUALPIPE_VERSION);
  std::printf("__cplusplus %ld\n", __cplusplus);
  std::printf("dualpipe ranks %d instructions %zu\n", table.info().ranks, table.size());
}
