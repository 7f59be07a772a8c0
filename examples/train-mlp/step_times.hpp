// Timed training steps, shared by the examples (train-mlp, train-torch): each
// step is timed from a barrier before it to its end on the last rank, and the
// times summarised as median, min and max; and what a rank does between its
// checked step and its exit.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace train_mlp {

// `steps` calls of rank.train(), each timed from the barrier before it to
// its end on the last rank; the times in ms, on rank 0 (empty elsewhere).
// steady_clock is CLOCK_MONOTONIC on Linux, one clock for every process of a
// node, so the ranks' readings compare (ranks on several nodes would need
// their clock offsets first). Collective over `group`.
template <class Group, class Rank>
[[nodiscard]] std::vector<double> timed_steps(Group& group, Rank& rank, int steps) {
  using clock = std::chrono::steady_clock;
  const auto ns = [](clock::time_point t) -> std::int64_t {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
  };
  std::vector<double> ms;
  ms.reserve(static_cast<std::size_t>(steps));
  for (int k = 0; k < steps; ++k) {
    group.barrier();
    const clock::time_point t0 = clock::now();
    rank.train();
    const clock::time_point t1 = clock::now();
    // One reduction for both ends: the maximum of -t0 is minus the earliest start.
    const std::int64_t ends[] = {-ns(t0), ns(t1)};
    const std::vector<std::int64_t> latest = group.reduce_max(std::span<const std::int64_t>(ends));
    if (!latest.empty()) ms.push_back(static_cast<double>(latest[1] + latest[0]) * 1e-6);
  }
  return ms;
}

// What a rank does after its checked step: takes rank 0's verdict
// (`passed` there), then, if asked, one untimed warm-up step and `steps`
// timed ones, whose times rank 0 hands to print(times). The rank's exit
// code: 1 when the check failed. Collective over `group`.
template <class Group, class Rank, class Print>
[[nodiscard]] int verdict_then_timed_steps(Group& group, Rank& rank, bool passed, int steps,
                                           Print&& print) {
  if (!group.broadcast(passed)) return 1;
  if (steps == 0) return 0;
  rank.train();  // warm-up, untimed
  const std::vector<double> ms = timed_steps(group, rank, steps);
  if (group.rank() == 0) print(ms);
  return 0;
}

struct step_time_summary {
  std::size_t steps = 0;
  double median = 0, min = 0, max = 0;
};

// Of a non-empty list of step times.
[[nodiscard]] inline step_time_summary summarize(std::vector<double> ms) {
  std::sort(ms.begin(), ms.end());
  const std::size_t n = ms.size();
  if (n == 0) return {};
  return {n, n % 2 == 1 ? ms[n / 2] : 0.5 * (ms[n / 2 - 1] + ms[n / 2]), ms.front(), ms.back()};
}

}  // namespace train_mlp
