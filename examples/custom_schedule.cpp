// A new schedule in one file: GPipe with its backwards newest first.
#include <cstdint>
#include <cstdio>
#include <string_view>

#include "dualpipe/analysis/validate.hpp"
#include "dualpipe/schedule/build.hpp"
#include "dualpipe/schedule/registry.hpp"

struct gpipe_lifo_generator {
  std::int32_t ranks = 0;
  std::int32_t microbatches = 0;
  dualpipe::generator_options options{};

  // Registry name, the name sentences use, and where stage s runs.
  static constexpr dualpipe::schedule_kind kind{"gpipe-lifo", "GPipe-LIFO",
                                                dualpipe::placement::linear};
  static constexpr std::string_view summary = "GPipe, backwards newest first; N >= 1";

  // The first rule the sizes break, as a sentence; empty if none. This one
  // has no rule beyond the limits every table respects.
  constexpr std::string_view violation() const {
    return dualpipe::size_limit_violation(ranks, microbatches);
  }
  constexpr int stages() const { return ranks; }

  // The compute order of one rank: the library places the communication.
  template <class Emit>
  constexpr void emit_compute_rank(int rank, Emit emit) const {
    for (int m = 0; m < microbatches; ++m) emit(dualpipe::make_forward(rank, m));
    if (options.forward_only) return;
    for (int m = microbatches - 1; m >= 0; --m) emit(dualpipe::make_backward(rank, m));
  }
};

// Compile time: the table, its communication, and the checks.
constexpr auto table = dualpipe::make_checked_static_table<gpipe_lifo_generator{4, 8}>();
static_assert(dualpipe::validate(table).ok);

// Run time: the registry entry (one line in registry.hpp's list) and a table.
constexpr dualpipe::schedule_entry entry = dualpipe::registry_entry<gpipe_lifo_generator>();

int main() {
  const dualpipe::schedule_table t = entry.build({4, 8});
  std::printf("%.*s: %zu instructions, valid: %d\n", static_cast<int>(entry.name.size()),
              entry.name.data(), t.size(), dualpipe::validate(t).ok ? 1 : 0);
}
