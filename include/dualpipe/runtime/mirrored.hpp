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
  return mirror_of(info.where, info.ranks, rank);
}

// What sum_mirrored_gradients takes: two sized random-access ranges (a
// std::vector, a std::span, a slice of one) whose elements add, with the sum
// assignable back into the elements of both.
template <class A, class B>
concept mirrored_gradient_ranges =
    std::ranges::random_access_range<A> && std::ranges::random_access_range<B> &&
    std::ranges::sized_range<A> && std::ranges::sized_range<B> &&
    requires(std::ranges::range_reference_t<A> a, std::ranges::range_reference_t<B> b) {
      a + b;
      a = a + b;
      b = a + b;
    };

// The same requirements, each failing as a sentence (the conditions sit in
// named constants so that the compiler prints the sentence, not the
// concept's requirements). Checked by sum_mirrored_gradients; users can too:
// static_assert(dualpipe::check_mirrored_gradient_ranges<A&, B&>()).
template <class A, class B>
consteval bool check_mirrored_gradient_ranges() {
  constexpr bool random_access_a = std::ranges::random_access_range<A>;
  constexpr bool random_access_b = std::ranges::random_access_range<B>;
  static_assert(random_access_a,
                "dualpipe::sum_mirrored_gradients: the first argument (this rank's gradients) "
                "must be a random-access range, e.g. a std::vector or std::span of them, not a "
                "single value or a list");
  static_assert(random_access_b,
                "dualpipe::sum_mirrored_gradients: the second argument (the mirror rank's "
                "gradients) must be a random-access range, e.g. a std::vector or std::span of "
                "them, not a single value or a list");
  if constexpr (random_access_a && random_access_b) {
    constexpr bool sized = std::ranges::sized_range<A> && std::ranges::sized_range<B>;
    static_assert(sized,
                  "dualpipe::sum_mirrored_gradients: both ranges must know their size "
                  "(std::ranges::size): the two copies must hold equally many gradients");
    using ref_a = std::ranges::range_reference_t<A>;
    using ref_b = std::ranges::range_reference_t<B>;
    constexpr bool addable = requires(ref_a a, ref_b b) { a + b; };
    static_assert(addable,
                  "dualpipe::sum_mirrored_gradients: the elements of the two ranges must add "
                  "(on_rank[i] + on_mirror[i])");
    constexpr bool assignable = requires(ref_a a, ref_b b) {
      a = a + b;
      b = a + b;
    };
    static_assert(!addable || assignable,
                  "dualpipe::sum_mirrored_gradients: the sum must be assignable to the elements "
                  "of both ranges (ranges of non-const elements)");
  }
  return mirrored_gradient_ranges<A, B>;
}

// Sums two copies' gradients element by element into both: afterwards
// on_rank[i] == on_mirror[i] == old on_rank[i] + old on_mirror[i]. Both copies
// compute the same sum (addition commutes exactly), so they stay identical.
// For ranks in one process (threads) pass both ranks' buffers; across
// processes, exchange the buffers first (e.g. an all-gather) and call it with
// the local one and the received one, on both ranks. Unconstrained so that a
// wrong argument fails with the sentence of check_mirrored_gradient_ranges
// rather than a list of candidates; throws std::invalid_argument when the two
// sizes differ.
template <class A, class B>
void sum_mirrored_gradients(A&& on_rank, B&& on_mirror) {
  // Not static_assert(check...()): its own "static assertion failed" would
  // follow the sentence.
  constexpr bool takes_them = check_mirrored_gradient_ranges<A, B>();
  if constexpr (takes_them) {
    const auto n = std::ranges::size(on_rank);
    if (n != std::ranges::size(on_mirror))
      throw std::invalid_argument(
          "dualpipe::sum_mirrored_gradients: the two copies differ in size (" + std::to_string(n) +
          " and " + std::to_string(std::ranges::size(on_mirror)) + " elements)");
    auto a = std::ranges::begin(on_rank);
    auto b = std::ranges::begin(on_mirror);
    for (std::size_t i = 0; i < static_cast<std::size_t>(n); ++i, ++a, ++b) {
      const auto sum = *a + *b;
      *a = sum;
      *b = sum;
    }
  }
}

}  // namespace dualpipe
