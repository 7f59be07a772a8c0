// One stage's queue of deferred weight-gradient work, as the reference's
// WeightGradStore: while a backward-for-input (I) of micro-batch m runs,
// layers that can split their backward (deferred_linear) put their weight
// gradient's work here instead of doing it; the W of m later runs that work
// and nothing else. Groups leave first in, first out, each labelled with its
// micro-batch, so a W that names another micro-batch than the oldest
// deferred one is an error, not a silent swap of gradients: the store checks
// the same order the executor keeps (schedule/deferred_weights.hpp).
//
// Needs only the standard library. One store per stage object, used from
// that stage's thread only (CPU autograd runs the backward on the calling
// thread).
#pragma once

#include <cstddef>
#include <deque>
#include <functional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace dualpipe::libtorch {

class weight_grad_store {
 public:
  using work = std::function<void()>;

  // While a deferral is open, put() queues; otherwise it runs the work now
  // (a full backward, B, or a backward outside any pipeline).
  [[nodiscard]] bool deferring() const noexcept { return open_ >= 0; }

  void put(work w) {
    if (!deferring()) {
      w();
      return;
    }
    cache_.push_back(std::move(w));
  }

  // Opens micro-batch mb's group: put() queues into it until close(mb)
  // moves it to the back of the queue (even when empty: its W then does
  // nothing, but keeps its place). discard() drops an unfinished group, as
  // after a backward that threw.
  void open(int mb) {
    if (deferring())
      throw std::logic_error("dualpipe::libtorch::weight_grad_store: micro-batch " +
                             std::to_string(mb) +
                             "'s backward-for-input starts while micro-batch " +
                             std::to_string(open_) + "'s has not finished");
    open_ = mb;
  }
  void close(int mb) {
    if (open_ != mb)
      throw std::logic_error("dualpipe::libtorch::weight_grad_store: closing micro-batch " +
                             std::to_string(mb) + ", but " +
                             (deferring() ? "micro-batch " + std::to_string(open_) + " is open"
                                          : std::string("none is open")));
    queue_.push_back({mb, std::move(cache_)});
    cache_.clear();
    open_ = -1;
  }
  void discard() noexcept {
    cache_.clear();
    open_ = -1;
  }

  // W of micro-batch mb: runs the oldest group, which must be mb's. If the
  // work throws, the group is gone (its gradients are then partial; the
  // step has failed anyway).
  void run(int mb) {
    if (queue_.empty())
      throw std::logic_error("dualpipe::libtorch::weight_grad_store: W of micro-batch " +
                             std::to_string(mb) +
                             ", but no weight gradient is deferred (no backward-for-input of it "
                             "ran on this stage)");
    if (queue_.front().microbatch != mb)
      throw std::logic_error("dualpipe::libtorch::weight_grad_store: W of micro-batch " +
                             std::to_string(mb) +
                             ", but the oldest deferred weight gradient is "
                             "micro-batch " +
                             std::to_string(queue_.front().microbatch) +
                             "'s: weight gradients run first in, first out");
    group g = std::move(queue_.front());
    queue_.pop_front();
    for (work& w : g.works) w();
  }

  // Groups waiting for their W (the memory they hold: each keeps its
  // layers' inputs and output gradients).
  [[nodiscard]] std::size_t pending() const noexcept { return queue_.size(); }
  // Their micro-batches, oldest first.
  [[nodiscard]] std::vector<int> pending_microbatches() const {
    std::vector<int> out;
    out.reserve(queue_.size());
    for (const group& g : queue_) out.push_back(g.microbatch);
    return out;
  }

  // Drops everything (after a failed step, before the next).
  void clear() noexcept {
    discard();
    queue_.clear();
  }

 private:
  struct group {
    int microbatch;
    std::vector<work> works;
  };
  int open_ = -1;
  std::vector<work> cache_;
  std::deque<group> queue_;
};

}  // namespace dualpipe::libtorch
