// What validate() returns: the rules a table can break, the first violation
// with the place it was found and what was expected there, and describe(),
// its sentence for logs and exceptions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "dualpipe/schedule/action_syntax.hpp"
#include "dualpipe/schedule/instruction.hpp"

namespace dualpipe {

// Which rule a table breaks.
enum class rule : std::uint8_t {
  none,
  shape,            // offsets or sizes inconsistent with the schedule info
  out_of_range,     // stage, micro-batch or peer outside the table's sizes
  wrong_rank,       // an instruction on a rank that does not own its stage
  wrong_peer,       // communication with a rank that is not the neighbouring stage's
  duplicate,        // a second F, B/I or W of one (stage, micro-batch)
  missing,          // an F, B/I or W that never runs
  backward_in_inference,  // B, I, W or an overlapped pair in a forward-only table
  causality,        // compute before its input, send before its data
  weight_order,     // W not naming the oldest deferred weight gradient
  unmatched,        // a send or receive with no partner
  mismatched,       // the k-th send and k-th receive between two ranks disagree
  uncommitted,      // sends/receives posted but never committed
  deadlock,         // the blocking protocol stops with work left
};

[[nodiscard]] constexpr std::string_view rule_name(rule r) noexcept {
  switch (r) {
    case rule::none: return "none";
    case rule::shape: return "shape";
    case rule::out_of_range: return "out-of-range";
    case rule::wrong_rank: return "wrong-rank";
    case rule::wrong_peer: return "wrong-peer";
    case rule::duplicate: return "duplicate";
    case rule::missing: return "missing";
    case rule::backward_in_inference: return "backward-in-inference";
    case rule::causality: return "causality";
    case rule::weight_order: return "weight-order";
    case rule::unmatched: return "unmatched";
    case rule::mismatched: return "mismatched";
    case rule::uncommitted: return "uncommitted";
    case rule::deadlock: return "deadlock";
  }
  return "?";
}

// A rank stopped by the blocking protocol: the instruction it stopped at and
// the instruction on another rank it waits for (at a commit, the partner of
// an operation it posted; at a compute, the producer of the compute's input).
struct rank_wait {
  int rank = -1;
  int index = -1;
  instruction at{};
  instruction awaited{};
  int awaited_rank = -1;
};

struct violation {
  rule broken = rule::none;
  int rank = -1;            // the rank whose list holds the offending place
  int index = -1;           // position in that rank's list (-1: none, e.g. missing)
  instruction at{};         // the instruction found there
  bool has_expected = false;
  instruction expected{};   // what the rule expected instead, where one applies
  int expected_rank = -1;   // where the expected instruction belongs
  std::string_view what{};  // the rule, as a sentence
  // A deadlock whose ranks wait in a cycle: each waits for the next, the last
  // for the first, starting at the lowest rank (the one named above). Empty
  // otherwise, so a validation without a cycle allocates nothing.
  std::vector<rank_wait> cycle{};
};

struct validation {
  bool ok = true;
  violation first{};
  [[nodiscard]] constexpr explicit operator bool() const noexcept { return ok; }
};

// "rank 3, instruction 17 (3B5): a backward runs before its own forward;
// expected 3F5 on rank 3" -- a whole sentence for logs and exceptions. A
// cycle of waits is named rank by rank: "...: the ranks wait in a cycle: rank
// 0 waits at instruction 1 (0B0) for 1B0 on rank 1; rank 1 waits at
// instruction 0 (1F1) for 0F1 on rank 0 [deadlock]".
[[nodiscard]] inline std::string describe(const validation& v) {
  if (v.ok) return "ok";
  const violation& f = v.first;
  std::string out = "invalid schedule: ";
  if (f.rank >= 0) {
    out += "rank " + std::to_string(f.rank);
    if (f.index >= 0) out += ", instruction " + std::to_string(f.index) + " (" + format_action(f.at) + ")";
    out += ": ";
  }
  out += f.what;
  if (!f.cycle.empty()) {
    // The first wait names what the cycle's first rank expects.
    for (std::size_t i = 0; i < f.cycle.size(); ++i) {
      const rank_wait& w = f.cycle[i];
      out += (i == 0 ? ": rank " : "; rank ") + std::to_string(w.rank) + " waits at instruction " +
             std::to_string(w.index) + " (" + format_action(w.at) + ") for " +
             format_action(w.awaited) + " on rank " + std::to_string(w.awaited_rank);
    }
  } else if (f.has_expected) {
    out += "; expected " + format_action(f.expected);
    if (is_communication(f.expected.kind)) out += " with peer " + std::to_string(f.expected.peer);
    if (f.expected_rank >= 0) out += " on rank " + std::to_string(f.expected_rank);
  }
  out += " [" + std::string(rule_name(f.broken)) + "]";
  return out;
}

}  // namespace dualpipe
