// The schedules this library builds at run time, by name ("dualpipe",
// "dualpipev", ...): one list shared by the command-line tool, the examples
// and the tests, so that a name means the same table everywhere.
//
// Adding a schedule: write its generator in a header of its own (build.hpp
// says what a generator provides; one_f_one_b.hpp is a short example), then
// include it below and add one line, registry_entry<your_generator>(), to
// detail::schedule_entries. Parameters beyond (P, N) are a static
// `parameters` array of schedule_parameter in the generator, with a static
// from_request(q) that reads them; the tool turns each into an option.
#pragma once

#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "dualpipe/schedule/build.hpp"
#include "dualpipe/schedule/dualpipe.hpp"
#include "dualpipe/schedule/gpipe.hpp"
#include "dualpipe/schedule/interleaved_1f1b.hpp"
#include "dualpipe/schedule/one_f_one_b.hpp"
#include "dualpipe/schedule/request.hpp"
#include "dualpipe/schedule/table.hpp"
#include "dualpipe/schedule/zb1p.hpp"
#include "dualpipe/schedule/zbv.hpp"

namespace dualpipe {

struct schedule_entry {
  std::string_view name;
  std::string_view summary;
  std::span<const schedule_parameter> parameters{};
  schedule_kind kind{};  // its tables' kind and placement
  // Throws std::invalid_argument naming the constraint (P, N, ...) broken.
  schedule_table (*build)(const schedule_request&) = nullptr;
};

namespace detail {

template <class G>
[[nodiscard]] G generator_for(const schedule_request& q) {
  if constexpr (requires { G::from_request(q); })
    return G::from_request(q);
  else
    return G{q.ranks, q.microbatches, q.options};
}

template <class G>
[[nodiscard]] schedule_table build_registered(const schedule_request& q) {
  return make_table(generator_for<G>(q));
}

}  // namespace detail

// The registry entry of generator G: its kind's name and placement, its
// `summary`, its `parameters` if it declares any, and a build function that
// makes G from the request (G::from_request(q) if it has one, else
// G{ranks, microbatches, options}).
template <class G>
  requires schedule_generator<G>
[[nodiscard]] constexpr schedule_entry registry_entry() {
  std::span<const schedule_parameter> parameters{};
  if constexpr (requires { G::parameters; }) parameters = G::parameters;
  return {G::kind.name, G::summary, parameters, G::kind, &detail::build_registered<G>};
}

namespace detail {

// Every registered schedule, one line each, in the order --help lists them.
inline constexpr schedule_entry schedule_entries[] = {
    registry_entry<dualpipe_generator>(),
    registry_entry<dualpipev_generator>(),
    registry_entry<gpipe_generator>(),
    registry_entry<one_f_one_b_generator>(),
    registry_entry<zb1p_generator>(),
    registry_entry<interleaved_1f1b_generator>(),
    registry_entry<zbv_generator>(),
};

}  // namespace detail

// Every registered schedule, in the order --help lists them.
[[nodiscard]] constexpr std::span<const schedule_entry> schedule_registry() noexcept {
  return detail::schedule_entries;
}

// The entry called `name`, or nullptr.
[[nodiscard]] constexpr const schedule_entry* find_schedule(std::string_view name) noexcept {
  for (const schedule_entry& e : schedule_registry())
    if (e.name == name) return &e;
  return nullptr;
}

// "dualpipe, dualpipev, ...": for messages.
[[nodiscard]] inline std::string schedule_names(std::string_view separator = ", ") {
  std::string out;
  for (const schedule_entry& e : schedule_registry()) {
    if (!out.empty()) out += separator;
    out += e.name;
  }
  return out;
}

// Builds schedule `name`. Throws std::invalid_argument for an unknown name, a
// parameter the schedule does not take, or sizes the schedule rejects.
[[nodiscard]] inline schedule_table make_schedule(std::string_view name,
                                                  schedule_request request) {
  const schedule_entry* entry = find_schedule(name);
  if (entry == nullptr)
    throw std::invalid_argument("unknown schedule '" + std::string(name) +
                                "' (known: " + schedule_names() + ")");
  for (const auto& given : request.parameters) {
    bool declared = false;
    for (const schedule_parameter& p : entry->parameters) declared = declared || p.name == given.first;
    if (!declared)
      throw std::invalid_argument("schedule '" + std::string(name) + "' takes no parameter '" +
                                  given.first + "'");
  }
  for (const schedule_parameter& p : entry->parameters) {
    bool present = false;
    for (const auto& given : request.parameters) present = present || given.first == p.name;
    if (!present) request.parameters.emplace_back(std::string(p.name), p.default_value);
  }
  return entry->build(request);
}

}  // namespace dualpipe
