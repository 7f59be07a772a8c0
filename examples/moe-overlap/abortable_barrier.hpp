// A barrier for a fixed group of threads that never leaves one waiting
// forever: abort() wakes every thread in it (and every later arrival), which
// then throws group_aborted with the reason; a thread that waits past the
// timeout throws group_timeout naming the members that never came. The
// expert exchange is built on it, and so are the world's step boundaries,
// where a failure on any thread must end every thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace moe_overlap {

// The group was stopped by abort(); what() ends with the abort's reason.
class group_aborted : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A member waited longer than the group's timeout.
class group_timeout : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class abortable_barrier {
 public:
  using clock = std::chrono::steady_clock;

  // `name` says in messages which group this is ("the expert group of
  // pipeline rank 1").
  abortable_barrier(std::string name, int members, std::chrono::nanoseconds timeout)
      : name_(std::move(name)),
        members_(members),
        timeout_(timeout),
        waiting_(static_cast<std::size_t>(members), false) {
    if (members < 1)
      throw std::invalid_argument("abortable_barrier: " + name_ + " needs at least one member");
  }
  abortable_barrier(const abortable_barrier&) = delete;
  abortable_barrier& operator=(const abortable_barrier&) = delete;

  [[nodiscard]] int members() const noexcept { return members_; }

  // Member `me` arrives and waits for the others. `where` names what it
  // waits in, for the messages.
  void arrive_and_wait(int me, std::string_view where) {
    std::unique_lock lock(mutex_);
    arrive_and_wait(lock, me, where, [] {});
  }

  // The same, for callers that already hold mutex() (the exchange, which
  // keeps its board under the same mutex). The member that completes the
  // barrier calls on_complete() under the lock first, so what it sets is
  // there for every member that passes: one that is woken by an abort after
  // the barrier completed still passes, normally.
  template <class OnComplete>
  void arrive_and_wait(std::unique_lock<std::mutex>& lock, int me, std::string_view where,
                       OnComplete&& on_complete) {
    throw_if_aborted(me, where);
    const std::uint64_t generation = generation_;
    if (++arrived_ == members_) {
      on_complete();
      arrived_ = 0;
      ++generation_;
      changed_.notify_all();
      return;
    }
    waiting_[static_cast<std::size_t>(me)] = true;
    const clock::time_point deadline = clock::now() + timeout_;
    while (generation_ == generation) {
      if (aborted_) {
        --arrived_;
        waiting_[static_cast<std::size_t>(me)] = false;
        throw_if_aborted(me, where);
      }
      if (changed_.wait_until(lock, deadline) == std::cv_status::timeout &&
          generation_ == generation && !aborted_) {
        --arrived_;
        waiting_[static_cast<std::size_t>(me)] = false;
        throw group_timeout(
            name_ + ": member " + std::to_string(me) + " waited " +
            std::to_string(
                std::chrono::duration_cast<std::chrono::milliseconds>(timeout_).count()) +
            " ms in " + std::string(where) + " for member(s) " + absent(me) +
            ", which never arrived");
      }
    }
    waiting_[static_cast<std::size_t>(me)] = false;
  }

  // Sleeps until `until` unless the group is aborted first (then throws):
  // the emulated wire's wait, which an abort must cut short.
  void sleep_until(int me, clock::time_point until, std::string_view where) {
    std::unique_lock lock(mutex_);
    while (!aborted_ && clock::now() < until) changed_.wait_until(lock, until);
    throw_if_aborted(me, where);
  }

  // Waits for an abort, then throws it: a member that never arrives (the
  // example's stalled rank), until its peers give up.
  [[noreturn]] void wait_for_abort(int me, std::string_view where) {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [this] { return aborted_; });
    throw_if_aborted(me, where);
    throw group_aborted(name_);  // not reached: aborted_ is set
  }

  // Wakes every member, now and later; the first reason is kept. Safe from
  // any thread.
  void abort(std::string_view why) noexcept {
    const std::lock_guard lock(mutex_);
    if (!aborted_) {
      aborted_ = true;
      try {
        why_.assign(why.begin(), why.end());
      } catch (...) {
        why_.clear();
      }
    }
    changed_.notify_all();
  }

  [[nodiscard]] bool aborted() const {
    const std::lock_guard lock(mutex_);
    return aborted_;
  }

  // The barrier's mutex, for callers that keep more state under it, and
  // waiting on that state: until done() holds (no timeout, no abort: for
  // waits that end by themselves), and waking such waiters.
  [[nodiscard]] std::mutex& mutex() noexcept { return mutex_; }
  template <class Done>
  void wait(std::unique_lock<std::mutex>& lock, Done&& done) {
    changed_.wait(lock, done);
  }
  void notify_all() { changed_.notify_all(); }

 private:
  void throw_if_aborted(int me, std::string_view where) const {
    if (aborted_)
      throw group_aborted(name_ + ": member " + std::to_string(me) + " was stopped in " +
                          std::string(where) + " because " + why_);
  }

  [[nodiscard]] std::string absent(int me) const {
    std::string out;
    for (int m = 0; m < members_; ++m)
      if (m != me && !waiting_[static_cast<std::size_t>(m)])
        out += (out.empty() ? "" : ", ") + std::to_string(m);
    return out.empty() ? "(none: all arrived as it gave up)" : out;
  }

  std::string name_;
  int members_;
  std::chrono::nanoseconds timeout_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  int arrived_ = 0;
  std::uint64_t generation_ = 0;
  std::vector<bool> waiting_;
  bool aborted_ = false;
  std::string why_;
};

}  // namespace moe_overlap
