// The transport concept: how the executor moves activations and gradients
// between ranks. A transport is one rank's endpoint; the executor posts sends
// and receives as the table's SEND_*/RECV_* instructions say and launches
// them together at each COMMIT, as the reference's batch_isend_irecv.
#pragma once

#include <chrono>
#include <concepts>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "dualpipe/transport/errors.hpp"
#include "dualpipe/schedule/action_syntax.hpp"
#include "dualpipe/schedule/instruction.hpp"

namespace dualpipe {

// ---------------------------------------------------------------------------
// Required members of a transport T (one rank's endpoint):
//
//   typename T::tensor_type    the buffers it moves (the stages' tensor type)
//   t.rank(), t.ranks()        this endpoint's rank and the number of ranks;
//                              the executor checks them against the table
//   t.post_send(i, buffer)     i is a SEND_F/SEND_B instruction (i.stage: the
//                              sending stage, i.microbatch, i.peer); buffer
//                              is a const tensor_type&
//   t.post_recv(i, buffer)     i is a RECV_F/RECV_B instruction (i.stage: the
//                              receiving stage); buffer is a tensor_type& the
//                              transport fills (resizing it if it must)
//   t.commit()                 launches everything posted since the last
//                              commit as one batch
//   t.abort(why) noexcept      this rank failed (why names the rank and the
//                              error): every rank waiting in the transport,
//                              now or later, throws pipeline_aborted naming
//                              this rank and `why` instead of waiting
//
// Matching: the k-th send from rank a to rank b of a given payload
// (activation or gradient) and micro-batch meets the k-th receive on b from a
// of the same payload and micro-batch, as NCCL matches in posting order.
//
// Completion. A blocking transport (in-process threads, MPI) returns from
// commit() when the batch is complete: every received buffer is filled and
// every sent buffer has been read. A stream-ordered transport (CUDA/NCCL) may
// return at once; it must then
//   - order the batch after all compute enqueued before commit(), and all
//     compute enqueued after commit() after the batch (events between the
//     compute and communication streams), so a received buffer may be handed
//     to a stage as soon as commit() returns, and
//   - return a ticket from commit() (any non-void type) with members
//       t.complete(ticket) -> bool   (non-blocking: has the batch finished?)
//       t.wait(ticket)               (block until it has)
//     The executor then keeps every buffer sent in that batch untouched and
//     alive until complete() says true (polled at later commits) or wait()
//     returns (at the executor's destruction), so the transport may read it
//     asynchronously without copying.
//
// Optional members, called when present:
//   t.begin_step()    before the first instruction of a step
//   t.finish_step()   after the last one: a transport may synchronise here
//                     and must throw pipeline_aborted if another rank failed
//                     during the step, so that every rank's step() throws
//
// Errors: a transport throws transport_timeout (naming the instruction it was
// waiting on, via format_action), transport_error (a matched send and receive
// disagree) or pipeline_aborted. The executor then calls abort() with the
// error, so the other ranks stop too.
// ---------------------------------------------------------------------------

template <class T>
concept pipeline_transport =
    requires(T& t, const T& ct, const instruction& i, const typename T::tensor_type& out,
             typename T::tensor_type& in, std::string_view why) {
      typename T::tensor_type;
      { ct.rank() } -> std::convertible_to<int>;
      { ct.ranks() } -> std::convertible_to<int>;
      t.post_send(i, out);
      t.post_recv(i, in);
      t.commit();
      { t.abort(why) } noexcept;
    };

// commit() returns a ticket: the batch may still be running when it returns.
template <class T>
concept transport_with_deferred_completion =
    pipeline_transport<T> && !std::is_void_v<decltype(std::declval<T&>().commit())> &&
    requires(T& t, const decltype(std::declval<T&>().commit())& ticket) {
      { t.complete(ticket) } -> std::convertible_to<bool>;
      t.wait(ticket);
    };

template <class T>
concept transport_with_begin_step = requires(T& t) { t.begin_step(); };

template <class T>
concept transport_with_finish_step = requires(T& t) { t.finish_step(); };

// The same requirements, each failing as a sentence.
template <class T>
consteval bool check_pipeline_transport() {
  static_assert(requires { typename T::tensor_type; },
                "dualpipe: the transport type needs a member type tensor_type (the buffers it "
                "moves)");
  if constexpr (requires { typename T::tensor_type; }) {
    static_assert(requires(const T& t) {
                    { t.rank() } -> std::convertible_to<int>;
                    { t.ranks() } -> std::convertible_to<int>;
                  },
                  "dualpipe: the transport type needs const members rank() and ranks()");
    static_assert(requires(T& t, const instruction& i, const typename T::tensor_type& out) {
                    t.post_send(i, out);
                  },
                  "dualpipe: the transport type needs a member post_send(const instruction&, "
                  "const tensor_type&)");
    static_assert(requires(T& t, const instruction& i, typename T::tensor_type& in) {
                    t.post_recv(i, in);
                  },
                  "dualpipe: the transport type needs a member post_recv(const instruction&, "
                  "tensor_type&)");
    static_assert(requires(T& t) { t.commit(); },
                  "dualpipe: the transport type needs a member commit()");
    static_assert(requires(T& t, std::string_view why) {
                    { t.abort(why) } noexcept;
                  },
                  "dualpipe: the transport type needs a noexcept member abort(std::string_view)");
    if constexpr (requires(T& t) { t.commit(); }) {
      if constexpr (!std::is_void_v<decltype(std::declval<T&>().commit())>)
        static_assert(transport_with_deferred_completion<T>,
                      "dualpipe: a transport whose commit() returns a ticket needs members "
                      "complete(ticket) -> bool and wait(ticket)");
    }
  }
  return pipeline_transport<T>;
}

namespace detail {

// What every transport checks of an instruction handed to post_send or
// post_recv before it queues anything: the kind (`kind_ok`, else the sentence
// `what`) and a peer that is another of the `ranks` ranks. Throws
// transport_error naming `rank` and the instruction.
inline void check_posted(const instruction& i, bool kind_ok, const char* what, int rank,
                         int ranks) {
  if (!kind_ok)
    throw transport_error(rank, "dualpipe: rank " + std::to_string(rank) + ": " + what +
                                    ", got " + format_action(i));
  if (i.peer < 0 || i.peer >= ranks || i.peer == rank)
    throw transport_error(rank, "dualpipe: rank " + std::to_string(rank) + ": " +
                                    format_action(i) + " names peer rank " +
                                    std::to_string(i.peer) + ", which is not another rank of 0.." +
                                    std::to_string(ranks - 1));
}

// A send or receive posted since the last commit: the instruction and the
// buffer it reads (Buffer = const Tensor) or fills (Buffer = Tensor).
template <class Buffer>
struct posted_operation {
  instruction at;
  Buffer* buffer;
};

// "1RECV_F2 from rank 0", "0SEND_B3 to rank 1": what a waiting rank waits on.
[[nodiscard]] inline std::string waiting_on(const instruction& i) {
  return format_action(i) + (is_send(i.kind) ? " to rank " : " from rank ") +
         std::to_string(i.peer);
}

// What a transport throws on `rank` after waiting `timeout` in vain; `what`
// continues "waiting ...", e.g. "on 1RECV_F2 from rank 0: no matching send
// arrived".
[[nodiscard]] inline transport_timeout timed_out(int rank, std::chrono::nanoseconds timeout,
                                                 const std::string& what) {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(timeout).count();
  return transport_timeout(rank, "dualpipe: rank " + std::to_string(rank) + " timed out after " +
                                     std::to_string(ms) + " ms waiting " + what);
}

// What every transport throws on `rank` once `origin` has stopped the
// pipeline with the error `why`, while the rank was waiting on `where`.
[[nodiscard]] inline pipeline_aborted aborted_by(int rank, int origin, const std::string& why,
                                                 const std::string& where) {
  return pipeline_aborted(rank, origin, why,
                          "dualpipe: rank " + std::to_string(rank) + " stopped while waiting on " +
                              where + ": the pipeline was aborted by rank " +
                              std::to_string(origin) + " (" + why + ")");
}

}  // namespace detail
}  // namespace dualpipe
