// Turning a generator into a table. A generator is a value with info() and
// emit_rank(rank, emit): it calls emit(instruction) once per instruction of
// that rank, in order. The same body fills a static_table at compile time (a
// counting pass sizes the std::array, a second pass fills it) and a
// schedule_table at run time.
#pragma once

#include <array>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <stdexcept>

#include "dualpipe/schedule/instruction.hpp"
#include "dualpipe/schedule/table.hpp"

namespace dualpipe {

template <class G>
concept schedule_generator = requires(const G& g, int rank, void (*emit)(const instruction&)) {
  { g.info() } -> std::same_as<schedule_info>;
  g.emit_rank(rank, emit);
};

namespace detail {

struct counting_emit {
  std::uint64_t* count;
  constexpr void operator()(const instruction&) const noexcept { ++*count; }
};

template <class Out>
struct storing_emit {
  Out* out;
  std::size_t* next;
  constexpr void operator()(const instruction& i) const { (*out)[(*next)++] = i; }
};

template <auto Generator>
constexpr auto static_offsets() {
  constexpr schedule_info info = Generator.info();
  std::array<std::uint32_t, static_cast<std::size_t>(info.ranks) + 1> offsets{};
  std::uint64_t total = 0;
  for (int r = 0; r < info.ranks; ++r) {
    Generator.emit_rank(r, counting_emit{&total});
    if (total > max_instructions)
      throw std::length_error("dualpipe: table exceeds the 2^32-1 instruction limit");
    offsets[static_cast<std::size_t>(r) + 1] = static_cast<std::uint32_t>(total);
  }
  return offsets;
}

}  // namespace detail

// Compile-time table of a generator given as a structural constant.
template <auto Generator>
  requires schedule_generator<decltype(Generator)>
[[nodiscard]] constexpr auto make_static_table() {
  constexpr schedule_info info = Generator.info();
  constexpr auto offsets = detail::static_offsets<Generator>();
  static_table<static_cast<std::size_t>(info.ranks), offsets.back()> table{};
  table.info = info;
  table.offsets = offsets;
  std::size_t next = 0;
  for (int r = 0; r < info.ranks; ++r)
    Generator.emit_rank(r, detail::storing_emit<decltype(table.instructions)>{&table.instructions,
                                                                              &next});
  return table;
}

// Run-time table of any generator.
template <schedule_generator G>
[[nodiscard]] schedule_table make_table(const G& generator) {
  const schedule_info info = generator.info();
  std::uint64_t total = 0;
  for (int r = 0; r < info.ranks; ++r) generator.emit_rank(r, detail::counting_emit{&total});
  if (total > max_instructions)
    throw std::length_error("dualpipe: table exceeds the 2^32-1 instruction limit");
  schedule_table table(info);
  table.reserve(static_cast<std::size_t>(total));
  for (int r = 0; r < info.ranks; ++r) {
    generator.emit_rank(r, [&table](const instruction& i) { table.push(i); });
    table.end_rank();
  }
  return table;
}

}  // namespace dualpipe
