// CPU lanes: the execution model of issue_order.hpp on threads. One
// cpu_lanes per rank: the rank's own thread is the compute lane, a worker
// thread the object owns is the communication lane, and completion tokens
// carry "finished" (and, under the virtual clock, "when") from one lane to the
// other. What it shares with the CUDA lanes (the order check, sub_op_error,
// the measured records) is in lanes.hpp. Standard library only.
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <concepts>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "dualpipe/overlap/issue_order.hpp"
#include "dualpipe/overlap/lanes.hpp"
#include "dualpipe/overlap/program.hpp"
#include "dualpipe/overlap/timeline.hpp"
#include "dualpipe/schedule/action_syntax.hpp"

namespace dualpipe::overlap {

// ---------------------------------------------------------------------------
// cpu_lanes
//
// run() follows the model: the whole communication subsequence of the order
// goes to the worker at once (each sub-op with its dependencies), then the
// calling thread runs the compute subsequence; each lane runs its sub-ops in
// issue order, and each sub-op first waits for the tokens of its dependencies
// that are in the order.
//
// Tokens: one slot per sub-op of the programs (pending, done, skipped; absent
// when not in this run's order, which reads as finished), guarded by one mutex
// and one condition variable shared by the two threads. Sub-ops are coarse (a
// layer's attention, an all-to-all), so a lock per sub-op costs nothing that
// matters, and one lock makes "fail, skip the rest, wake everyone" a single
// atomic step.
//
// Why run() cannot hang (given sub-ops that return): every dependency in the
// order comes before its dependent (lane_order_problem, checked first), and a
// lane's earlier sub-ops come before it too, so by induction over the order
// every sub-op's waits end. After a failure every wait ends at once: each
// waits for "dependencies done, or the run failed", and the failure is
// published under the lock with notify_all; later sub-ops are skipped without
// waiting. What remains is a sub-op that is running when another fails, e.g.
// one blocked in an all-to-all whose peers will never come: that is what the
// abort callback is for (it is called once, at the first failure, so the user
// can abort the collective). run() returns only when both lanes are at rest,
// so nothing of the run outlives it.
// ---------------------------------------------------------------------------

class cpu_lanes {
 public:
  // Starts the communication lane's thread.
  cpu_lanes() : worker_([this] { serve(); }) {}
  // Stops and joins it (never while a run is in progress: run() returns only
  // when both lanes are at rest).
  ~cpu_lanes() {
    {
      const std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    changed_.notify_all();
    worker_.join();
  }
  // The worker thread refers to the object: neither copied nor moved.
  cpu_lanes(const cpu_lanes&) = delete;
  cpu_lanes& operator=(const cpu_lanes&) = delete;
  cpu_lanes(cpu_lanes&&) = delete;
  cpu_lanes& operator=(cpu_lanes&&) = delete;

  // Runs `order` (lane_order_problem must be empty, else
  // std::invalid_argument and nothing runs): run_sub_op(sub_op_ref) is called
  // on the lane's thread, the compute sub-ops' on the calling thread, the
  // communication sub-ops' on the worker, so the two may run at once.
  // Dependencies that are not in the order count as finished. Returns when
  // every sub-op has finished on both lanes.
  //
  // If a sub-op throws, sub-ops not started yet are skipped, on_abort(why) is
  // called once (on the thread that failed, while the other lane may still be
  // running a sub-op: it should wake whatever that sub-op may be blocked in,
  // and not throw; its exceptions are ignored), both lanes come to rest, and
  // run() throws the first failure as a sub_op_error naming the sub-op, with
  // the sub-op's exception nested. The lanes can run again afterwards.
  //
  // One run at a time: run() from a sub-op, or from a second thread during a
  // run, throws std::logic_error.
  template <class Run, class OnAbort>
  void run(const stage_programs& p, std::span<const sub_op_ref> order, Run&& run_sub_op,
           OnAbort&& on_abort) {
    static_assert(std::invocable<Run&, sub_op_ref>,
                  "dualpipe::overlap::cpu_lanes::run: run_sub_op must be callable with a "
                  "sub_op_ref");
    static_assert(std::invocable<OnAbort&, std::string_view>,
                  "dualpipe::overlap::cpu_lanes::run: on_abort must be callable with the reason "
                  "(std::string_view)");
    begin_run(p, order);

    // Runs one sub-op on the calling lane; never throws (a failure is
    // published, and the abort callback called, here).
    const auto execute = [&](sub_op_ref r) noexcept {
      try {
        const lane where = sub_op_of(p, r).where;
        const auto starts = wait_for_dependencies(p, r, where);
        if (!starts.go) return;
        const double cost = clock_ == lane_clock::virtual_time ? cost_of(p, r) : 0.0;
        const double started = now();
        std::invoke(run_sub_op, r);
        const double ended = now();
        finish(p, r, where, starts.virtual_start, cost, started, ended);
      } catch (...) {
        std::string why;
        const std::exception_ptr error = detail::name_failed_sub_op(p, r, why);
        if (publish_failure(p, r, error)) {
          try {
            std::invoke(on_abort, std::string_view(why));
          } catch (...) {  // the first failure is what run() reports
          }
        }
      }
    };
    const auto communication = [&]() noexcept {
      for (const sub_op_ref r : order)
        if (sub_op_of(p, r).where == lane::communication) execute(r);
    };
    using communication_t = decltype(communication);
    bool any_communication = false;
    for (const sub_op_ref r : order)
      any_communication = any_communication || sub_op_of(p, r).where == lane::communication;
    if (any_communication)
      hand_over({&communication,
                 [](const void* c) noexcept { (*static_cast<const communication_t*>(c))(); }});
    for (const sub_op_ref r : order)
      if (sub_op_of(p, r).where == lane::compute) execute(r);
    if (const std::exception_ptr error = end_run(p, order)) std::rethrow_exception(error);
  }

  // The same without an abort callback.
  template <class Run>
  void run(const stage_programs& p, std::span<const sub_op_ref> order, Run&& run_sub_op) {
    run(p, order, std::forward<Run>(run_sub_op), detail::no_abort{});
  }

  // Recording (off by default): each finished sub-op appends a lane_record.
  // Set these, and read the records, only between runs.
  void record(bool on) noexcept { recording_ = on; }
  [[nodiscard]] bool recording() const noexcept { return recording_; }
  // The tag the records of the following runs carry.
  void set_tag(int tag) noexcept { tag_ = tag; }
  [[nodiscard]] int tag() const noexcept { return tag_; }
  // In finish order (per lane, that is issue order); valid until the next
  // run or clear_records().
  [[nodiscard]] std::span<const lane_record> records() const noexcept { return records_; }
  void clear_records() noexcept { records_.clear(); }

  // The virtual clock, for deterministic tests of the model: every run starts
  // at time 0; a sub-op starts at the later of its lane's virtual free time
  // and the virtual ends of its dependencies in the order (carried by their
  // tokens), and ends cost_of(ref) later. The sub-ops themselves still run,
  // on their threads, and the recorded timeline of any run equals
  // simulate_order(p, order, cost_of) exactly. Without an argument, each
  // sub-op costs its program's cost.
  void use_virtual_clock() {
    clock_ = lane_clock::virtual_time;
    cost_of_ = nullptr;
  }
  // cost_of is called from both lanes' threads, hence const.
  template <class CostOf>
  requires std::invocable<const CostOf&, sub_op_ref>
  void use_virtual_clock(CostOf cost_of) {
    clock_ = lane_clock::virtual_time;
    cost_of_ = [f = std::move(cost_of)](sub_op_ref r) {
      return static_cast<double>(std::invoke(f, r));
    };
  }
  // Wall time again (the default).
  void use_steady_clock() noexcept {
    clock_ = lane_clock::steady;
    cost_of_ = nullptr;
  }
  [[nodiscard]] lane_clock clock() const noexcept { return clock_; }

  // Microseconds since the lanes' epoch: the steady records' time base.
  [[nodiscard]] double elapsed_us() const noexcept {
    return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - epoch_)
        .count();
  }
  // The communication lane's thread (for tests and thread-local setup).
  [[nodiscard]] std::thread::id communication_thread() const noexcept { return worker_.get_id(); }

 private:
  enum class token : std::uint8_t { absent, pending, done, skipped };
  struct slot {
    token state = token::absent;
    double virtual_end = 0.0;
  };
  // The worker's job: a run's communication loop (a lambda on run()'s stack,
  // which outlives the job because run() waits for the worker to finish it).
  struct job {
    const void* loop = nullptr;
    void (*call)(const void*) noexcept = nullptr;
  };
  struct start {
    bool go = false;
    double virtual_start = 0.0;
  };

  [[nodiscard]] slot& slot_of(const stage_programs& p, sub_op_ref r) {
    return slots_[static_cast<std::size_t>(flat_index(p, r))];
  }
  [[nodiscard]] double now() const noexcept {
    return clock_ == lane_clock::steady ? elapsed_us() : 0.0;
  }
  [[nodiscard]] double cost_of(const stage_programs& p, sub_op_ref r) const {
    return cost_of_ ? cost_of_(r) : sub_op_of(p, r).cost;
  }

  void begin_run(const stage_programs& p, std::span<const sub_op_ref> order) {
    const std::lock_guard lock(mutex_);
    if (running_)
      throw std::logic_error(
          "dualpipe::overlap::cpu_lanes: run() was called during another run() of the same "
          "lanes (from a sub-op, or from a second thread); a rank's lanes run one order at a "
          "time, on the rank's thread");
    if (const std::string problem = order_check_.problem(p, order); !problem.empty())
      throw std::invalid_argument("dualpipe::overlap::cpu_lanes: cannot run this order: " +
                                  problem);
    running_ = true;
    failed_ = false;
    first_error_ = nullptr;
    lane_free_[0] = lane_free_[1] = 0.0;
    for (const sub_op_ref r : order) slot_of(p, r) = {token::pending, 0.0};
  }

  void hand_over(job j) {
    {
      const std::lock_guard lock(mutex_);
      job_ = j;
    }
    changed_.notify_all();
  }

  // Waits until r's dependencies in the order are done, or the run failed
  // (then r is skipped). Under the virtual clock, also r's start.
  start wait_for_dependencies(const stage_programs& p, sub_op_ref r, lane where) {
    const dependencies d = dependencies_of(p, r);
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] {
      if (failed_) return true;
      for (int k = 0; k < d.count; ++k)
        if (slot_of(p, d.on[k]).state == token::pending) return false;
      return true;
    });
    if (failed_) {
      slot_of(p, r).state = token::skipped;
      return {};
    }
    double at = lane_free_[where == lane::compute ? 0 : 1];
    for (int k = 0; k < d.count; ++k)
      if (const slot& s = slot_of(p, d.on[k]); s.state == token::done)
        at = std::max(at, s.virtual_end);
    return {true, at};
  }

  void finish(const stage_programs& p, sub_op_ref r, lane where, double virtual_start, double cost,
              double started, double ended) {
    {
      const std::lock_guard lock(mutex_);
      slot& s = slot_of(p, r);
      if (clock_ == lane_clock::virtual_time) {
        started = virtual_start;
        ended = virtual_start + cost;
        lane_free_[where == lane::compute ? 0 : 1] = ended;
      }
      if (recording_) records_.push_back({r, where, started, ended, tag_});
      s.virtual_end = ended;
      s.state = token::done;
    }
    changed_.notify_all();
  }

  // Whether this is the run's first failure (whose caller calls on_abort).
  bool publish_failure(const stage_programs& p, sub_op_ref r, std::exception_ptr error) noexcept {
    bool first = false;
    {
      const std::lock_guard lock(mutex_);
      first = !failed_;
      if (first) first_error_ = std::move(error);
      failed_ = true;
      slot_of(p, r).state = token::skipped;
    }
    changed_.notify_all();
    return first;
  }

  // Waits for the worker to finish the run's job; returns the first failure.
  std::exception_ptr end_run(const stage_programs& p, std::span<const sub_op_ref> order) {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return job_.call == nullptr; });
    for (const sub_op_ref r : order) slot_of(p, r) = {};
    running_ = false;
    failed_ = false;
    return std::exchange(first_error_, nullptr);
  }

  // The communication lane: one job at a time until the destructor.
  void serve() {
    std::unique_lock lock(mutex_);
    for (;;) {
      changed_.wait(lock, [&] { return job_.call != nullptr || stopping_; });
      if (job_.call == nullptr) return;
      const job j = job_;
      lock.unlock();
      j.call(j.loop);
      lock.lock();
      job_ = {};
      changed_.notify_all();
    }
  }

  const std::chrono::steady_clock::time_point epoch_ = std::chrono::steady_clock::now();
  std::mutex mutex_;
  std::condition_variable changed_;  // any token, the job, or stopping_ changed
  std::vector<slot> slots_ = std::vector<slot>(max_pair_sub_ops);
  detail::lane_order_check order_check_;
  job job_{};
  bool stopping_ = false;
  bool running_ = false;
  bool failed_ = false;
  std::exception_ptr first_error_;
  double lane_free_[2] = {0.0, 0.0};  // virtual clock: when each lane is free

  bool recording_ = false;
  int tag_ = 0;
  std::vector<lane_record> records_;
  lane_clock clock_ = lane_clock::steady;
  std::function<double(sub_op_ref)> cost_of_;

  std::thread worker_;  // last: started once everything above is initialised
};

}  // namespace dualpipe::overlap
