// The rule of deferred weight gradients: a backward-input (I) defers its
// stage's weight gradient, and each W runs the oldest one deferred on its
// rank, first in, first out (as the reference's WeightGradStore queue). The
// generators, validate() and the executor all keep it with this one queue.
#pragma once

#include <cstddef>
#include <stdexcept>
#include <vector>

namespace dualpipe {

// One deferred weight gradient: the (stage, micro-batch) whose I deferred it.
struct deferred_weight {
  int stage = -1;
  int microbatch = -1;

  friend constexpr bool operator==(const deferred_weight&, const deferred_weight&) = default;
};

// The first-in first-out queue of one rank's deferred weight gradients.
// constexpr, so compile-time generators and validate() use it too. clear()
// keeps the storage: a queue reused step after step allocates only once.
class deferred_weights {
 public:
  constexpr void reserve(std::size_t n) { items_.reserve(n); }
  constexpr void clear() noexcept {
    items_.clear();
    head_ = 0;
  }

  // An I ran: its weight gradient waits for a W.
  constexpr void defer(int stage, int microbatch) { items_.push_back({stage, microbatch}); }

  [[nodiscard]] constexpr bool empty() const noexcept { return head_ == items_.size(); }
  [[nodiscard]] constexpr std::size_t size() const noexcept { return items_.size() - head_; }

  // The weight gradient the next W must run. Precondition: !empty().
  [[nodiscard]] constexpr deferred_weight oldest() const { return items_[head_]; }

  // Whether a W of (stage, micro-batch) may run now: it is the oldest.
  [[nodiscard]] constexpr bool admits(int stage, int microbatch) const noexcept {
    return !empty() && items_[head_] == deferred_weight{stage, microbatch};
  }

  // A W ran: removes and returns the oldest. Throws std::logic_error when
  // nothing is deferred (a generator that placed a W with no I before it).
  constexpr deferred_weight pop() {
    if (empty()) throw std::logic_error("dualpipe: a W with no deferred weight gradient");
    const deferred_weight w = items_[head_++];
    if (empty()) clear();
    return w;
  }

 private:
  std::vector<deferred_weight> items_;
  std::size_t head_ = 0;
};

}  // namespace dualpipe
