// CUDA lanes: the execution model of issue_order.hpp on two CUDA streams, a
// compute stream and a communication stream, with one event per sub-op as its
// completion token. run() only issues: each sub-op, in order, on its lane's
// stream, after a wait on the event of each dependency that was issued on the
// other stream in this run, and followed by a record of its own event; the
// host never waits. Needs CUDA (compiled only where the cuda option finds it).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <exception>
#include <functional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "dualpipe/cuda/error.hpp"
#include "dualpipe/cuda/event.hpp"
#include "dualpipe/cuda/stream.hpp"
#include "dualpipe/overlap/issue_order.hpp"
#include "dualpipe/overlap/lanes.hpp"
#include "dualpipe/overlap/program.hpp"

namespace dualpipe::overlap {

// One per rank, used from the rank's thread, whose current device must be the
// one the streams were made on (cuda::set_device before constructing).
//
// Between runs, the compute stream is the stream of record: a run's
// communication sub-ops wait for everything enqueued on the compute stream
// before run() (its inputs, the previous run), and the compute stream waits,
// at the end of run(), for the run's communication sub-ops. So work the caller
// enqueues on compute_stream() after run() sees the whole run, and a
// dependency outside the order (already finished, in the model) is ordered
// before the run on both streams.
class cuda_lanes {
 public:
  // Priorities as cuda::stream takes them (lower runs first); communication
  // usually gets the greatest, cuda::stream::priority_range().second, so that
  // a transfer peers wait for is not queued behind long compute.
  explicit cuda_lanes(int compute_priority = 0, int communication_priority = 0)
      : compute_(compute_priority), communication_(communication_priority) {}
  cuda_lanes(const cuda_lanes&) = delete;
  cuda_lanes& operator=(const cuda_lanes&) = delete;
  cuda_lanes(cuda_lanes&&) = default;
  cuda_lanes& operator=(cuda_lanes&&) = default;
  ~cuda_lanes() = default;

  [[nodiscard]] cudaStream_t compute_stream() const noexcept { return compute_.get(); }
  [[nodiscard]] cudaStream_t communication_stream() const noexcept { return communication_.get(); }
  [[nodiscard]] cudaStream_t stream_of(lane l) const noexcept {
    return l == lane::compute ? compute_stream() : communication_stream();
  }

  // Issues `order` (lane_order_problem must be empty, else
  // std::invalid_argument and nothing is issued): for each sub-op,
  // run_sub_op(sub_op_ref, cudaStream_t) enqueues its work on the given
  // stream. Returns once everything is issued, not finished.
  //
  // If run_sub_op or a CUDA call throws, nothing more is issued, on_abort(why)
  // is called once (its exceptions are ignored), the streams are joined as
  // after a full run (work already issued stays issued), and run() throws a
  // sub_op_error naming the sub-op, with the exception nested.
  template <class Run, class OnAbort>
  void run(const stage_programs& p, std::span<const sub_op_ref> order, Run&& run_sub_op,
           OnAbort&& on_abort) {
    static_assert(std::invocable<Run&, sub_op_ref, cudaStream_t>,
                  "dualpipe::overlap::cuda_lanes::run: run_sub_op must be callable with a "
                  "sub_op_ref and the lane's cudaStream_t");
    static_assert(std::invocable<OnAbort&, std::string_view>,
                  "dualpipe::overlap::cuda_lanes::run: on_abort must be callable with the reason "
                  "(std::string_view)");
    if (const std::string problem = order_check_.problem(p, order); !problem.empty())
      throw std::invalid_argument("dualpipe::overlap::cuda_lanes: cannot run this order: " +
                                  problem);
    reserve_events(p, order);
    // Which sub-ops this run has issued: a dependency outside the order is
    // not waited for (it is ordered before the run by the join below).
    std::vector<bool>& issued = issued_;
    issued.assign(max_pair_sub_ops, false);
    entry_.record(compute_.get());
    communication_.wait(entry_);
    for (const sub_op_ref r : order) {
      try {
        const lane where = sub_op_of(p, r).where;
        cuda::stream& s = where == lane::compute ? compute_ : communication_;
        const dependencies d = dependencies_of(p, r);
        for (int k = 0; k < d.count; ++k) {
          const auto j = static_cast<std::size_t>(flat_index(p, d.on[k]));
          // A dependency on the same lane is ordered by the stream itself.
          if (issued[j] && sub_op_of(p, d.on[k]).where != where) s.wait(events_[j]);
        }
        std::invoke(run_sub_op, r, s.get());
        const auto i = static_cast<std::size_t>(flat_index(p, r));
        s.record(events_[i]);
        issued[i] = true;
      } catch (...) {
        std::string why;
        const std::exception_ptr error = detail::name_failed_sub_op(p, r, why);
        try {
          std::invoke(on_abort, std::string_view(why));
        } catch (...) {  // the failure is what run() reports
        }
        join_after_failure();
        std::rethrow_exception(error);
      }
    }
    exit_.record(communication_.get());
    compute_.wait(exit_);
  }

  template <class Run>
  void run(const stage_programs& p, std::span<const sub_op_ref> order, Run&& run_sub_op) {
    run(p, order, std::forward<Run>(run_sub_op), detail::no_abort{});
  }

 private:
  // One event per sub-op of the programs, made on first use and reused by
  // every later run.
  void reserve_events(const stage_programs& p, std::span<const sub_op_ref> order) {
    std::size_t needed = 0;
    for (const sub_op_ref r : order)
      needed = std::max(needed, static_cast<std::size_t>(flat_index(p, r)) + 1);
    while (events_.size() < needed) events_.emplace_back(cuda::event_timing::disabled);
  }

  // The end-of-run join, best effort: after a CUDA failure the context may be
  // unusable, and the first error is the one to report.
  void join_after_failure() noexcept {
    if (cudaEventRecord(exit_.get(), communication_.get()) == cudaSuccess)
      (void)cudaStreamWaitEvent(compute_.get(), exit_.get(), 0);
    (void)cudaGetLastError();
  }

  cuda::stream compute_;
  cuda::stream communication_;
  std::vector<cuda::event> events_;
  cuda::event entry_{cuda::event_timing::disabled};
  cuda::event exit_{cuda::event_timing::disabled};
  std::vector<bool> issued_;
  detail::lane_order_check order_check_;
};

}  // namespace dualpipe::overlap
