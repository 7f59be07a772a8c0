// Turning a generator into a table, at compile time (make_static_table: a
// counting pass sizes the std::array, a second pass fills it) and at run time
// (make_table), from one body.
//
// A generator is a value that says what it makes and in which order:
//
//  - its info: either an info() member, or what info is derived from: a
//    static `kind` (schedule_kind: registry name, title, placement), the
//    members ranks, microbatches and options (generator_options), stages()
//    and violation() (the first rule its sizes break, as a sentence, or an
//    empty view);
//  - its order: either emit_compute_rank(rank, emit), the compute order of
//    one rank, which the builders lower (lower.hpp) whenever the options ask
//    for communication, or emit_rank(rank, emit), every instruction of the
//    rank with its communication already placed (DualPipe, whose
//    communication order is the reference's own).
//
// Everything else (checking, emission, lowering, the registry entry) is
// derived here and in registry.hpp.
#pragma once

#include <algorithm>
#include <array>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "dualpipe/schedule/instruction.hpp"
#include "dualpipe/schedule/lower.hpp"
#include "dualpipe/schedule/options.hpp"
#include "dualpipe/schedule/table.hpp"

namespace dualpipe {

// One size a generator was given, for its error messages: {"P", 8}.
struct given_size {
  std::string_view name;
  std::int64_t value = 0;
};

namespace detail {

template <class G>
concept generator_with_info = requires(const G& g) {
  { g.info() } -> std::same_as<schedule_info>;
};

template <class G>
concept generator_with_description = requires(const G& g) {
  { G::kind } -> std::convertible_to<schedule_kind>;
  { g.violation() } -> std::convertible_to<std::string_view>;
  { g.stages() } -> std::convertible_to<int>;
  { g.ranks } -> std::convertible_to<int>;
  { g.microbatches } -> std::convertible_to<int>;
  { g.options } -> std::convertible_to<generator_options>;
};

template <class G>
concept compute_order_generator =
    requires(const G& g, int rank, void (*emit)(const instruction&)) {
      g.emit_compute_rank(rank, emit);
    };

template <class G>
concept full_order_generator = requires(const G& g, int rank, void (*emit)(const instruction&)) {
  g.emit_rank(rank, emit);
};

}  // namespace detail

template <class G>
concept schedule_generator =
    (detail::generator_with_info<G> || detail::generator_with_description<G>) &&
    (detail::compute_order_generator<G> || detail::full_order_generator<G>);

// The limits every table respects (table.hpp) as the first sentence (P, N)
// break, or an empty view: at least one rank and one micro-batch, at most
// max_ranks ranks and max_microbatches micro-batches. Generators check these
// first, then their own rules.
[[nodiscard]] constexpr std::string_view size_limit_violation(std::int64_t ranks,
                                                              std::int64_t microbatches) noexcept {
  if (ranks < 1) return "needs at least 1 rank (P >= 1)";
  if (ranks > max_ranks) return "supports at most 16384 ranks (P <= 16384)";
  if (microbatches < 1) return "needs at least 1 micro-batch (N >= 1)";
  if (microbatches > max_microbatches)
    return "supports at most 4194304 micro-batches (N <= 4194304)";
  return {};
}

// The sizes a generator reports in its error messages: its given() member if
// it has one (e.g. with V for interleaved 1F1B), else P and N.
template <class G>
[[nodiscard]] constexpr auto given_sizes(const G& g) {
  if constexpr (requires { g.given(); })
    return g.given();
  else
    return std::array<given_size, 2>{{{"P", g.ranks}, {"N", g.microbatches}}};
}

// "DualPipe needs an even number of micro-batches (N even): half enter at
// each end": a generator's title and the first rule it breaks, the one
// sentence both the run-time error and the compile-time error show. Empty
// when nothing is broken.
template <class G>
  requires detail::generator_with_description<G>
[[nodiscard]] constexpr std::string broken_rule(const G& g) {
  const std::string_view why = g.violation();
  if (why.empty()) return {};
  return std::string(G::kind.title) + " " + std::string(why);
}

// The info of a generator; throws std::invalid_argument with broken_rule(g)
// and the sizes given, "(got P=8, N=7)", if its sizes break a rule.
template <schedule_generator G>
[[nodiscard]] constexpr schedule_info generator_info(const G& g) {
  if constexpr (detail::generator_with_info<G>) {
    return g.info();
  } else {
    std::string message = broken_rule(g);
    if (!message.empty()) {
      message += " (got ";
      bool first = true;
      for (const given_size& s : given_sizes(g)) {
        if (!first) message += ", ";
        first = false;
        message += std::string(s.name) + "=" + std::to_string(s.value);
      }
      throw std::invalid_argument(message + ")");
    }
    return {G::kind,    g.ranks,
            g.stages(), g.microbatches,
            G::kind.where, g.options.forward_only,
            g.options.with_communication};
  }
}

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

// A generator's compute-only table, as flat storage a table_view can see.
struct compute_table {
  schedule_info info;
  std::vector<instruction> instructions;
  std::vector<std::uint32_t> offsets{0};

  [[nodiscard]] constexpr table_view view() const { return {info, instructions, offsets, {}}; }
};

template <class G>
[[nodiscard]] constexpr compute_table compute_table_of(const G& g, schedule_info info) {
  info.with_communication = false;
  compute_table t{info, {}, {}};
  // Count, then fill in place: far cheaper than growing vectors in constexpr.
  t.offsets.assign(static_cast<std::size_t>(info.ranks) + 1, 0);
  std::uint64_t total = 0;
  for (int r = 0; r < info.ranks; ++r) {
    g.emit_compute_rank(r, counting_emit{&total});
    t.offsets[static_cast<std::size_t>(r) + 1] = static_cast<std::uint32_t>(total);
  }
  t.instructions.resize(static_cast<std::size_t>(total));
  std::size_t next = 0;
  for (int r = 0; r < info.ranks; ++r)
    g.emit_compute_rank(r, storing_emit<std::vector<instruction>>{&t.instructions, &next});
  return t;
}

// Every instruction of the table, rank by rank, calling end_rank() after
// each rank. A compute order that needs communication is lowered once for
// all ranks (placing one rank's communication simulates them all).
template <class G, class Emit, class EndRank>
constexpr void emit_table(const G& g, const schedule_info& info, Emit emit, EndRank end_rank) {
  if constexpr (compute_order_generator<G>) {
    if (info.with_communication) {
      const compute_table compute = compute_table_of(g, info);
      lower_ranks(compute.view(), 0, info.ranks, emit, end_rank);
      return;
    }
    for (int r = 0; r < info.ranks; ++r) {
      g.emit_compute_rank(r, emit);
      end_rank();
    }
  } else {
    for (int r = 0; r < info.ranks; ++r) {
      g.emit_rank(r, emit);
      end_rank();
    }
  }
}

template <auto Generator>
constexpr auto static_offsets() {
  constexpr schedule_info info = generator_info(Generator);
  std::array<std::uint32_t, static_cast<std::size_t>(info.ranks) + 1> offsets{};
  std::uint64_t total = 0;
  std::size_t ended = 0;
  emit_table(Generator, info, counting_emit{&total}, [&] {
    if (total > max_instructions)
      throw std::length_error("dualpipe: table exceeds the 2^32-1 instruction limit");
    offsets[++ended] = static_cast<std::uint32_t>(total);
  });
  return offsets;
}

// A sentence as a structural value, so that a compile error can spell it in
// a template argument (C++20's static_assert takes only a literal).
template <std::size_t Length>
struct sentence {
  char text[Length + 1]{};
};

// The text a constant callable returns (a captureless lambda), as a
// sentence: how a compile error spells a run-time sentence.
template <auto Text>
constexpr auto sentence_of() {
  constexpr std::size_t length = Text().size();
  sentence<length> out{};
  const std::string text = Text();
  std::copy_n(text.data(), length, out.text);
  return out;
}

template <auto Generator>
constexpr auto broken_rule_sentence() {
  return sentence_of<[] { return broken_rule(Generator); }>();
}

// Instantiated only for sizes that break a rule: the compile error names the
// rule in the template argument, in the words of the run-time error.
template <auto Rule>
struct schedule_rule_broken {
  static_assert(Rule.text[0] == '\0',
                "dualpipe: the sizes of this compile-time table break the rule spelled out in the "
                "template argument of schedule_rule_broken above");
};

}  // namespace detail

// Compile-time table of a generator given as a structural constant.
template <auto Generator>
  requires schedule_generator<decltype(Generator)>
[[nodiscard]] constexpr auto make_static_table() {
  constexpr schedule_info info = generator_info(Generator);
  constexpr auto offsets = detail::static_offsets<Generator>();
  static_table<static_cast<std::size_t>(info.ranks), offsets.back()> table{};
  table.header = info;
  table.offsets = offsets;
  std::size_t next = 0;
  detail::emit_table(Generator, info,
                     detail::storing_emit<decltype(table.instructions)>{&table.instructions, &next},
                     [] {});
  return table;
}

// The same for a generator whose sizes may break one of its rules: then the
// compile error is "static assertion failed" in schedule_rule_broken<"DualPipe
// needs ...">, the sentence the run-time builder throws, and no table is built.
template <auto Generator>
  requires detail::generator_with_description<decltype(Generator)>
[[nodiscard]] constexpr auto make_checked_static_table() {
  if constexpr (!Generator.violation().empty()) {
    (void)detail::schedule_rule_broken<detail::broken_rule_sentence<Generator>()>{};
    return static_table<0, 0>{};
  } else {
    return make_static_table<Generator>();
  }
}

// Run-time table of any generator.
template <schedule_generator G>
[[nodiscard]] schedule_table make_table(const G& generator) {
  const schedule_info info = generator_info(generator);
  schedule_table table(info);
  const auto push = [&table](const instruction& i) { table.push(i); };
  const auto end_rank = [&table] { table.end_rank(); };
  if constexpr (detail::compute_order_generator<G>) {
    if (info.with_communication) {
      detail::emit_table(generator, info, push, end_rank);
      return table;
    }
  }
  // Emitting twice (count, then fill) is cheaper than growing the vector.
  std::uint64_t total = 0;
  detail::emit_table(generator, info, detail::counting_emit{&total}, [] {});
  if (total > max_instructions)
    throw std::length_error("dualpipe: table exceeds the 2^32-1 instruction limit");
  table.reserve(static_cast<std::size_t>(total));
  detail::emit_table(generator, info, push, end_rank);
  return table;
}

}  // namespace dualpipe
