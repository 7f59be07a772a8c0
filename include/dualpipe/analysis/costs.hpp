// The cost model the simulator takes: the time of each compute kind per
// stage (uniform, per stage, or scaled per stage), the latency of a
// dependency that crosses ranks, and the checks that reject costs no
// simulation can use (negative, infinite, NaN, W above B, wrong sizes).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>

#include "dualpipe/schedule/action_syntax.hpp"

namespace dualpipe {

// The time one stage spends on one micro-batch, in any unit.
struct stage_costs {
  double forward = 1.0;     // F
  double backward = 2.0;    // B: full backward (input and weight gradients)
  double weight = 1.0;      // W: the weight part of B; backward-input I costs B - W
  double overlapped = 3.0;  // F&B: a forward overlapped with a full backward

  friend constexpr bool operator==(const stage_costs&, const stage_costs&) = default;
};

// Costs for a whole table. The five numbers apply to every stage; per_stage
// (one entry per stage) replaces them stage by stage, and stage_scale (one
// factor per stage) multiplies whichever applies, e.g. for a last stage that
// also computes the loss. An overlapped pair acts on two stages and costs the
// mean of the two stages' `overlapped`.
struct cost_model {
  double forward = 1.0;
  double backward = 2.0;
  double weight = 1.0;
  double overlapped = 3.0;
  // Latency added to every dependency whose producer ran on another rank (an
  // activation or gradient that travels); none between stages of one rank.
  double comm = 0.0;
  std::span<const stage_costs> per_stage{};
  std::span<const double> stage_scale{};

  // The costs that apply to `stage`.
  [[nodiscard]] constexpr stage_costs of_stage(int stage) const {
    stage_costs c{forward, backward, weight, overlapped};
    const auto s = static_cast<std::size_t>(stage);
    if (!per_stage.empty()) c = per_stage[s];
    if (!stage_scale.empty()) {
      const double k = stage_scale[s];
      c = {c.forward * k, c.backward * k, c.weight * k, c.overlapped * k};
    }
    return c;
  }
};

namespace detail {

[[nodiscard]] constexpr bool is_finite_nonnegative(double x) noexcept {
  return x >= 0.0 && x <= 1.0e300;  // false for NaN, negatives and infinities
}

constexpr void check_stage_costs(const stage_costs& c, std::string_view where) {
  if (!is_finite_nonnegative(c.forward) || !is_finite_nonnegative(c.backward) ||
      !is_finite_nonnegative(c.weight) || !is_finite_nonnegative(c.overlapped))
    throw std::invalid_argument("dualpipe::simulate: " + std::string(where) +
                                ": costs must be finite and non-negative");
  if (c.weight > c.backward)
    throw std::invalid_argument("dualpipe::simulate: " + std::string(where) +
                                ": the weight part W exceeds the full backward B (I = B - W "
                                "would be negative)");
}

constexpr void check_costs(const cost_model& costs, int stages) {
  check_stage_costs({costs.forward, costs.backward, costs.weight, costs.overlapped}, "cost model");
  if (!is_finite_nonnegative(costs.comm))
    throw std::invalid_argument(
        "dualpipe::simulate: the communication latency must be finite and non-negative");
  if (!costs.per_stage.empty() && costs.per_stage.size() != static_cast<std::size_t>(stages)) {
    std::string m = "dualpipe::simulate: per_stage has ";
    append_int(m, static_cast<std::int64_t>(costs.per_stage.size()));
    m += " entries, the table has ";
    append_int(m, stages);
    m += " stages";
    throw std::invalid_argument(m);
  }
  if (!costs.stage_scale.empty() && costs.stage_scale.size() != static_cast<std::size_t>(stages)) {
    std::string m = "dualpipe::simulate: stage_scale has ";
    append_int(m, static_cast<std::int64_t>(costs.stage_scale.size()));
    m += " entries, the table has ";
    append_int(m, stages);
    m += " stages";
    throw std::invalid_argument(m);
  }
  for (int s = 0; s < stages; ++s) {
    if (!costs.per_stage.empty()) {
      std::string where = "per_stage[";
      append_int(where, s);
      where += "]";
      check_stage_costs(costs.per_stage[static_cast<std::size_t>(s)], where);
    }
    if (!costs.stage_scale.empty() &&
        !is_finite_nonnegative(costs.stage_scale[static_cast<std::size_t>(s)])) {
      std::string m = "dualpipe::simulate: stage_scale[";
      append_int(m, s);
      m += "] must be finite and non-negative";
      throw std::invalid_argument(m);
    }
  }
}

}  // namespace detail
}  // namespace dualpipe
