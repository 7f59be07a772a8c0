// What the two lane backends (cpu_lanes.hpp, cuda_lanes.hpp) share: the
// check an order must pass to run on lanes, the exception that names a failed
// sub-op, and the measured timeline (lane_record), which converts to
// timeline.hpp's timed_sub_op so that totals_of() sums measured runs as it
// sums simulated ones. Standard library only.
#pragma once

#include <cstdint>
#include <exception>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "dualpipe/overlap/issue_order.hpp"
#include "dualpipe/overlap/program.hpp"
#include "dualpipe/overlap/timeline.hpp"
#include "dualpipe/transport/errors.hpp"

namespace dualpipe::overlap {

// ---------------------------------------------------------------------------
// Which orders can run on lanes
//
// A lane backend runs a whole pair, a pass alone, or the chain or the leaves
// of a backward (I, W): any order that check_order accepts as a part. A
// dependency outside the order counts as finished already (as simulate_order
// treats it). The rule that every dependency in the order comes before its
// dependent is what rules out a hang: a lane is first-in first-out, so a
// sub-op issued before its dependency would wait for something queued behind
// it (on CUDA: for an event not recorded yet, which does not wait at all).
// ---------------------------------------------------------------------------

// The first reason `order` cannot run on lanes, as a sentence; empty when it
// can: check_order for a part (order_coverage::part).
[[nodiscard]] constexpr std::string lane_order_problem(const stage_programs& p,
                                                       std::span<const sub_op_ref> order) {
  return describe(p, check_order(p, order, order_coverage::part));
}

namespace detail {

// lane_order_problem for a backend that runs the same programs again and
// again: program_problem builds its sentences as it goes, so the programs
// last found usable are remembered, and a run of them allocates nothing
// unless its order is refused.
class lane_order_check {
 public:
  [[nodiscard]] std::string problem(const stage_programs& p, std::span<const sub_op_ref> order) {
    if (!(usable_ && programs_ == p)) {
      if (!program_problem(p).empty()) return lane_order_problem(p, order);
      programs_ = p;
      usable_ = true;
    }
    const order_verdict v = check_usable_order(p, order, order_coverage::part);
    return v.ok() ? std::string{} : describe(p, v);
  }

 private:
  stage_programs programs_{};
  bool usable_ = false;
};

}  // namespace detail

// What a lane backend's run() throws when a sub-op fails: the message names
// the sub-op and its lane ("dualpipe::overlap: dispatch(F) of layer 0 failed
// on the communication lane: <what>"), and the sub-op's own exception is
// nested in it (std::rethrow_if_nested).
class sub_op_error : public std::runtime_error {
 public:
  sub_op_error(const std::string& what, sub_op_ref op, lane where)
      : std::runtime_error(what), op_(op), where_(where) {}
  [[nodiscard]] sub_op_ref op() const noexcept { return op_; }
  [[nodiscard]] lane where() const noexcept { return where_; }

 private:
  sub_op_ref op_;
  lane where_;
};

namespace detail {

// Called inside a catch handler: the handled exception wrapped in a
// sub_op_error that names `r`, and the sentence (for the abort callback). If
// even that fails (out of memory), the handled exception itself.
inline std::exception_ptr name_failed_sub_op(const stage_programs& p, sub_op_ref r,
                                             std::string& why) noexcept {
  const std::exception_ptr original = std::current_exception();
  try {
    const lane where = sub_op_of(p, r).where;
    why = "dualpipe::overlap: " + describe(p, r) + " failed on the " +
          std::string(lane_name(where)) +
          " lane: " + handled_exception_text("an exception that is not a std::exception");
    try {
      std::throw_with_nested(sub_op_error(why, r, where));
    } catch (...) {
      return std::current_exception();
    }
  } catch (...) {
    return original;
  }
}

// Lanes that never abort anything.
struct no_abort {
  void operator()(std::string_view) const noexcept {}
};

}  // namespace detail

// ---------------------------------------------------------------------------
// Measured timelines
// ---------------------------------------------------------------------------

// One finished sub-op as a lane backend recorded it. Times are microseconds
// since the lanes' epoch (their construction) under the steady clock, or the
// cost model's units under the virtual clock. Sub-ops that failed or were
// skipped leave no record.
struct lane_record {
  sub_op_ref op{};
  lane where = lane::compute;
  double start = 0.0;
  double end = 0.0;
  int tag = 0;  // the lanes' tag when it ran (set_tag): a micro-batch, a pair number
  friend constexpr bool operator==(const lane_record&, const lane_record&) = default;
};

// Records as a timeline (timeline.hpp), for totals_of().
[[nodiscard]] inline std::vector<timed_sub_op> to_timeline(std::span<const lane_record> records) {
  std::vector<timed_sub_op> out;
  out.reserve(records.size());
  for (const lane_record& x : records) out.push_back({x.op, x.where, x.start, x.end});
  return out;
}

// The records of one tag only (one run, when each run gets its own tag).
[[nodiscard]] inline std::vector<timed_sub_op> to_timeline(std::span<const lane_record> records,
                                                           int tag) {
  std::vector<timed_sub_op> out;
  for (const lane_record& x : records)
    if (x.tag == tag) out.push_back({x.op, x.where, x.start, x.end});
  return out;
}

// What the records' times measure.
enum class lane_clock : std::uint8_t {
  steady,       // wall time (std::chrono::steady_clock), microseconds
  virtual_time  // the cost model's time, carried by the tokens (see use_virtual_clock)
};

}  // namespace dualpipe::overlap
