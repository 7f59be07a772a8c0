// Batches a deferred-completion transport (the CUDA ones) still reads from:
// the ticket of each committed batch and the sent buffers it holds, oldest
// first, so the executor recycles a buffer only when its batch is complete.
#pragma once

#include <cstddef>
#include <span>
#include <utility>
#include <vector>

namespace dualpipe::detail {

template <class Ticket>
class in_flight_batches {
 public:
  void reserve(std::size_t batches) {
    batches_.reserve(batches);
    buffers_.reserve(batches);
  }

  // A batch was committed: its ticket and the buffers it sends.
  void push(Ticket ticket, std::span<const int> sent) {
    batches_.push_back({std::move(ticket), sent.size()});
    buffers_.insert(buffers_.end(), sent.begin(), sent.end());
  }

  // Releases the buffers of every leading batch complete(ticket) says is
  // done, oldest first; release(int&) takes each buffer back.
  template <class Complete, class Release>
  void retire(Complete&& complete, Release&& release) {
    while (head_ < batches_.size() && complete(batches_[head_].ticket)) {
      for (std::size_t k = 0; k < batches_[head_].buffers; ++k) release(buffers_[buffer_head_ + k]);
      buffer_head_ += batches_[head_].buffers;
      ++head_;
    }
    if (head_ == batches_.size()) {
      batches_.clear();
      buffers_.clear();
      head_ = buffer_head_ = 0;
    }
  }

  // Waits for every batch still in flight (wait(ticket)), ignoring failures:
  // after a failed batch nothing reads the buffers any more.
  template <class Wait>
  void drain(Wait&& wait) noexcept {
    for (std::size_t k = head_; k < batches_.size(); ++k) {
      try {
        wait(batches_[k].ticket);
      } catch (...) {
      }
    }
  }

 private:
  struct batch {
    Ticket ticket;
    std::size_t buffers;  // how many entries of buffers_ it holds
  };
  std::vector<batch> batches_;
  std::vector<int> buffers_;
  std::size_t head_ = 0, buffer_head_ = 0;
};

}  // namespace dualpipe::detail
