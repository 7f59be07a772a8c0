// The executor's tensor pool: buffers are named by index, handed out and
// taken back through a free list, and never move (a deque), so a transport
// may hold a reference to one while the pool grows.
#pragma once

#include <cstddef>
#include <deque>
#include <vector>

namespace dualpipe::detail {

template <class Tensor>
class buffer_pool {
 public:
  static constexpr int none = -1;

  // A free buffer's index; a new buffer only when none is free (the
  // executor sizes the pool before the first step, so steps reuse).
  int acquire() {
    if (free_.empty()) {
      buffers_.emplace_back();
      free_.reserve(buffers_.size());
      return static_cast<int>(buffers_.size()) - 1;
    }
    const int b = free_.back();
    free_.pop_back();
    return b;
  }

  // Gives buffer `b` back and sets it to none; none is ignored.
  void release(int& b) {
    if (b == none) return;
    free_.push_back(b);
    b = none;
  }

  Tensor& operator[](int b) { return buffers_[static_cast<std::size_t>(b)]; }
  [[nodiscard]] std::size_t size() const noexcept { return buffers_.size(); }

 private:
  std::deque<Tensor> buffers_;
  std::vector<int> free_;
};

}  // namespace dualpipe::detail
