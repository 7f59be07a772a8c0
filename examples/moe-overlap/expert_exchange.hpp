// The all-to-all of expert parallelism among the E threads of one pipeline
// rank (one per replica): each member sends a block of rows to every member
// and receives one from every member, the blocks arriving in member order.
// The data really moves: every receiver copies its blocks out of the
// senders' buffers, between two barriers (all posted; all copied, so a
// sender may reuse its buffer). abort() wakes every member, which then
// throws; so does a member that waits past the timeout, after stopping the
// group. moe_layer.hpp's dispatch and combine, forward and backward, are
// these exchanges; the un-pipelined model calls receive_blocks directly.
//
// An emulated wire. On one machine with shared memory the copy takes next
// to nothing, so there would be no communication to hide. A wire_emulation
// makes each exchange last at least latency + (KiB this member moves to or
// from other members) x us_per_kib, counted from the moment every member
// had posted (when a real transfer could start): the member sleeps for
// whatever the copy left of that time. That is emulation, not a network
// model: it reproduces neither bandwidth sharing nor contention, only "this
// exchange takes this long on the communication lane and leaves the compute
// lane free meanwhile".
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "abortable_barrier.hpp"
#include "mlp.hpp"

namespace moe_overlap {

using train_mlp::tensor;

struct wire_emulation {
  double latency_us = 0.0;  // per exchange
  double us_per_kib = 0.0;  // per KiB moved to or from other members
};

// Which exchange a member is in: all members of a group must name the same
// one (a mismatch is a bug in the caller, reported as such).
struct exchange_tag {
  int stage = 0;
  int microbatch = 0;
  int layer = 0;
  bool backward = false;
  int index = 0;  // the sub-op's index in its layer program
  std::string_view name;

  friend bool operator==(const exchange_tag& a, const exchange_tag& b) {
    return a.stage == b.stage && a.microbatch == b.microbatch && a.layer == b.layer &&
           a.backward == b.backward && a.index == b.index;
  }
};

[[nodiscard]] inline std::string describe(const exchange_tag& t) {
  return std::string(t.name) + (t.backward ? "(B)" : "(F)") + " of stage " +
         std::to_string(t.stage) + ", layer " + std::to_string(t.layer) + ", micro-batch " +
         std::to_string(t.microbatch);
}

// One member's outgoing rows: `rows` holds the blocks back to back, block j
// (for member j) being rows [offsets[j], offsets[j+1]).
template <class Real>
struct send_blocks {
  const tensor<Real>* rows = nullptr;
  std::span<const int> offsets;  // members + 1 entries
};

// Member `me`'s side of an all-to-all: the blocks every member addressed to
// it, in member order, into `recv` (resized), and where each starts in
// `recv_offsets` (members + 1 entries). Returns the bytes that came from
// other members. Pure copying: the pipelined and the un-pipelined model
// both move rows with this.
template <class Real>
std::size_t receive_blocks(int me, std::span<const send_blocks<Real>> senders, int cols,
                           tensor<Real>& recv, std::vector<int>& recv_offsets) {
  const auto members = static_cast<int>(senders.size());
  recv_offsets.assign(static_cast<std::size_t>(members) + 1, 0);
  for (int i = 0; i < members; ++i) {
    const std::span<const int> off = senders[static_cast<std::size_t>(i)].offsets;
    recv_offsets[static_cast<std::size_t>(i) + 1] = recv_offsets[static_cast<std::size_t>(i)] +
                                                    off[static_cast<std::size_t>(me) + 1] -
                                                    off[static_cast<std::size_t>(me)];
  }
  recv.resize(recv_offsets.back(), cols);
  std::size_t from_others = 0;
  const auto width = static_cast<std::size_t>(cols);
  for (int i = 0; i < members; ++i) {
    const send_blocks<Real>& s = senders[static_cast<std::size_t>(i)];
    const auto first = static_cast<std::size_t>(s.offsets[static_cast<std::size_t>(me)]);
    const auto rows = static_cast<std::size_t>(s.offsets[static_cast<std::size_t>(me) + 1]) - first;
    if (rows == 0) continue;
    if (s.rows->cols != cols)
      throw std::logic_error("receive_blocks: member " + std::to_string(i) + " sent rows of " +
                             std::to_string(s.rows->cols) + " columns, expected " +
                             std::to_string(cols));
    std::copy_n(
        s.rows->values.begin() + static_cast<std::ptrdiff_t>(first * width), rows * width,
        recv.values.begin() +
            static_cast<std::ptrdiff_t>(
                static_cast<std::size_t>(recv_offsets[static_cast<std::size_t>(i)]) * width));
    if (i != me) from_others += rows * width * sizeof(Real);
  }
  return from_others;
}

// The expert-parallel group of one pipeline rank.
template <class Real>
class expert_exchange {
 public:
  using clock = std::chrono::steady_clock;

  expert_exchange(int pipeline_rank, int members, std::chrono::nanoseconds timeout,
                  wire_emulation wire)
      : barrier_("the expert group of pipeline rank " + std::to_string(pipeline_rank), members,
                 timeout),
        wire_(wire),
        board_(static_cast<std::size_t>(members)),
        tags_(static_cast<std::size_t>(members)) {}
  expert_exchange(const expert_exchange&) = delete;
  expert_exchange& operator=(const expert_exchange&) = delete;

  [[nodiscard]] int members() const noexcept { return barrier_.members(); }

  // Member `me` sends `send` and receives its blocks into `recv`, as
  // receive_blocks. Collective: every member calls it with the same tag.
  // Throws group_aborted (the group was stopped), group_timeout (a member
  // never came; the group is then stopped), or std::logic_error (members in
  // different exchanges; the group is then stopped).
  void all_to_all(int me, const exchange_tag& tag, send_blocks<Real> send, int cols,
                  tensor<Real>& recv, std::vector<int>& recv_offsets) {
    const std::string where = describe(tag);
    std::unique_lock lock(barrier_.mutex());
    try {
      board_[static_cast<std::size_t>(me)] = send;
      tags_[static_cast<std::size_t>(me)] = tag;
      // Once all have posted, every member reads the others' buffers: count
      // the readers, so that no member leaves (on an abort, too) while its
      // buffer may still be read.
      barrier_.arrive_and_wait(lock, me, where, [this] { readers_ = members(); });
      const clock::time_point ready = clock::now();
      std::size_t received = 0;
      {
        const reading guard{this, &lock};
        for (int i = 0; i < members(); ++i)
          if (!(tags_[static_cast<std::size_t>(i)] == tag))
            throw std::logic_error("expert exchange: member " + std::to_string(me) + " is in " +
                                   where + " but member " + std::to_string(i) + " is in " +
                                   describe(tags_[static_cast<std::size_t>(i)]));
        // The board does not change while anyone reads, so it is read
        // without the lock.
        lock.unlock();
        received = receive_blocks<Real>(me, board_, cols, recv, recv_offsets);
      }
      std::size_t sent = 0;
      for (int j = 0; j < members(); ++j)
        if (j != me)
          sent += static_cast<std::size_t>(send.offsets[static_cast<std::size_t>(j) + 1] -
                                           send.offsets[static_cast<std::size_t>(j)]) *
                  static_cast<std::size_t>(cols) * sizeof(Real);
      barrier_.arrive_and_wait(lock, me, where, [] {});
      lock.unlock();
      const double us = wire_.latency_us +
                        static_cast<double>(std::max(sent, received)) / 1024.0 * wire_.us_per_kib;
      if (us > 0.0)
        barrier_.sleep_until(me,
                             ready + std::chrono::duration_cast<clock::duration>(
                                         std::chrono::duration<double, std::micro>(us)),
                             where);
    } catch (const std::exception& e) {
      if (!lock.owns_lock()) lock.lock();
      if (dynamic_cast<const group_aborted*>(&e) == nullptr) {
        lock.unlock();
        barrier_.abort(e.what());
        lock.lock();
      }
      // Others may still be copying out of this member's buffer.
      barrier_.wait(lock, [this] { return readers_ == 0; });
      throw;
    }
  }

  // Member `me` stays away from the exchange `tag` until the group is
  // aborted (its peers time out waiting for it), then throws group_aborted:
  // how the example shows that a hung member ends every thread too.
  [[noreturn]] void stall(int me, const exchange_tag& tag) {
    barrier_.wait_for_abort(me, describe(tag) + " (stalled, as --fail-lane stall told it to)");
  }

  // Wakes every member, now and later (each then throws). Any thread.
  void abort(std::string_view why) noexcept { barrier_.abort(why); }
  [[nodiscard]] bool aborted() const { return barrier_.aborted(); }

 private:
  // Counts down the readers of the current round's board; leaves the lock
  // held, as it found it after the copy.
  struct reading {
    expert_exchange* exchange;
    std::unique_lock<std::mutex>* lock;
    ~reading() {
      if (!lock->owns_lock()) lock->lock();
      --exchange->readers_;
      exchange->barrier_.notify_all();
    }
  };

  abortable_barrier barrier_;
  int readers_ = 0;  // members still reading the board (under the barrier's mutex)
  wire_emulation wire_;
  std::vector<send_blocks<Real>> board_;
  std::vector<exchange_tag> tags_;
};

}  // namespace moe_overlap
