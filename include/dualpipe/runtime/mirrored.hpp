// DualPipe's mirrored parameters: every model stage s has two copies, one on
// rank s (used by the micro-batches that enter at rank 0) and one on rank
// P-1-s (used by those entering at rank P-1). After a step each copy holds
// the weight gradient of its half of the micro-batches; summing the two into
// both keeps the copies identical, bit for bit, for the optimizer step.
#pragma once

#include <cstddef>
#include <iterator>
#include <ranges>
#include <stdexcept>
#include <string>

#include "dualpipe/schedule/table.hpp"

namespace dualpipe {

// The rank holding the other copy of rank r's stages under DualPipe's
// mirrored placement (P-1-r); -1 for any other placement, which keeps one copy.
[[nodiscard]] constexpr int mirror_rank(const schedule_info& info, int rank) noexcept {
  if (info.where != placement::mirrored || rank < 0 || rank >= info.ranks) return -1;
  return info.ranks - 1 - rank;
}

// Sums two copies' gradients element by element into both: afterwards
// on_rank[i] == on_mirror[i] == old on_rank[i] + old on_mirror[i]. Both copies
// compute the same sum (addition commutes exactly), so they stay identical.
// For ranks in one process (threads) pass both ranks' buffers; across
// processes, exchange the buffers first (e.g. an all-gather) and call it with
// the local one and the received one, on both ranks.
template <std::ranges::random_access_range A, std::ranges::random_access_range B>
  requires std::ranges::output_range<A, std::ranges::range_value_t<A>> &&
           std::ranges::output_range<B, std::ranges::range_value_t<B>>
void sum_mirrored_gradients(A&& on_rank, B&& on_mirror) {
  const auto n = std::ranges::size(on_rank);
  if (n != std::ranges::size(on_mirror))
    throw std::invalid_argument("dualpipe::sum_mirrored_gradients: the two copies differ in size (" +
                                std::to_string(n) + " and " +
                                std::to_string(std::ranges::size(on_mirror)) + " elements)");
  auto a = std::ranges::begin(on_rank);
  auto b = std::ranges::begin(on_mirror);
  for (std::size_t i = 0; i < static_cast<std::size_t>(n); ++i, ++a, ++b) {
    const auto sum = *a + *b;
    *a = sum;
    *b = sum;
  }
}

}  // namespace dualpipe
