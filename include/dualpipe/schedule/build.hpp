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
#include <string>
#include <string_view>

#include "dualpipe/schedule/instruction.hpp"
#include "dualpipe/schedule/table.hpp"

namespace dualpipe {

template <class G>
concept schedule_generator = requires(const G& g, int rank, void (*emit)(const instruction&)) {
  { g.info() } -> std::same_as<schedule_info>;
  g.emit_rank(rank, emit);
};

// Optional: a generator whose ranks are computed together (the baselines
// lowered by lower.hpp simulate all ranks to place any one rank's
// communication) may also provide emit_ranks(emit, end_rank): every rank's
// instructions in rank order, calling end_rank() after each rank. The
// builders below then make one pass over it instead of one per rank, which
// keeps compile-time tables within the constexpr limits.
template <class G>
concept whole_table_generator =
    schedule_generator<G> &&
    requires(const G& g, void (*emit)(const instruction&), void (*end_rank)()) {
      g.emit_ranks(emit, end_rank);
    };

namespace detail {

// The one form of a generator's run-time error: "<schedule> <why> (got P=..,
// N=..[, <extra_name>=..])", thrown only when `why` (the first constraint the
// generator's parameters break, from its *_violation function) is not empty.
// Tests compare this text exactly.
constexpr void throw_if_violated(std::string_view schedule, std::string_view why,
                                 std::int64_t ranks, std::int64_t microbatches,
                                 std::string_view extra_name = {}, std::int64_t extra_value = 0) {
  if (why.empty()) return;
  std::string message = std::string(schedule) + " " + std::string(why) +
                        " (got P=" + std::to_string(ranks) + ", N=" + std::to_string(microbatches);
  if (!extra_name.empty())
    message += ", " + std::string(extra_name) + "=" + std::to_string(extra_value);
  throw std::invalid_argument(message + ")");
}

// A generator's info with communication off: the header of its compute-only
// table, before lowering.
[[nodiscard]] constexpr schedule_info without_communication(schedule_info info) noexcept {
  info.with_communication = false;
  return info;
}

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
  std::size_t ended = 0;
  const auto end_rank = [&] {
    if (total > max_instructions)
      throw std::length_error("dualpipe: table exceeds the 2^32-1 instruction limit");
    offsets[++ended] = static_cast<std::uint32_t>(total);
  };
  if constexpr (whole_table_generator<decltype(Generator)>) {
    Generator.emit_ranks(counting_emit{&total}, end_rank);
  } else {
    for (int r = 0; r < info.ranks; ++r) {
      Generator.emit_rank(r, counting_emit{&total});
      end_rank();
    }
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
  const detail::storing_emit<decltype(table.instructions)> store{&table.instructions, &next};
  if constexpr (whole_table_generator<decltype(Generator)>) {
    Generator.emit_ranks(store, [] {});
  } else {
    for (int r = 0; r < info.ranks; ++r) Generator.emit_rank(r, store);
  }
  return table;
}

// Run-time table of any generator.
template <schedule_generator G>
[[nodiscard]] schedule_table make_table(const G& generator) {
  const schedule_info info = generator.info();
  std::uint64_t total = 0;
  if constexpr (whole_table_generator<G>) {
    generator.emit_ranks(detail::counting_emit{&total}, [] {});
  } else {
    for (int r = 0; r < info.ranks; ++r) generator.emit_rank(r, detail::counting_emit{&total});
  }
  if (total > max_instructions)
    throw std::length_error("dualpipe: table exceeds the 2^32-1 instruction limit");
  schedule_table table(info);
  table.reserve(static_cast<std::size_t>(total));
  const auto push = [&table](const instruction& i) { table.push(i); };
  if constexpr (whole_table_generator<G>) {
    generator.emit_ranks(push, [&table] { table.end_rank(); });
  } else {
    for (int r = 0; r < info.ranks; ++r) {
      generator.emit_rank(r, push);
      table.end_rank();
    }
  }
  return table;
}

}  // namespace dualpipe
