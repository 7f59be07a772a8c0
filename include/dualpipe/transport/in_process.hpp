// The in-process transport: every rank is a thread of one process. A network
// of P ranks hands out one endpoint per rank; endpoints exchange buffers by
// copying from the sender's buffer into the receiver's at commit, with the
// blocking rendezvous semantics of NCCL (a commit returns when all of its
// sends were read and all of its receives filled).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <vector>

#include "dualpipe/transport/errors.hpp"
#include "dualpipe/schedule/action_syntax.hpp"
#include "dualpipe/schedule/instruction.hpp"
#include "dualpipe/transport/transport.hpp"

namespace dualpipe {

template <class Tensor>
class in_process_network;

// One rank's endpoint of an in_process_network; models pipeline_transport.
// Use it from one thread at a time (its rank's thread).
template <class Tensor>
class in_process_transport {
 public:
  using tensor_type = Tensor;
  static_assert(std::is_copy_assignable_v<Tensor>,
                "dualpipe::in_process_transport: the tensor type must be copy-assignable: a "
                "receive copies the sender's buffer into the receiver's");

  // Made only by in_process_network (the key is private to it).
  class key {
    friend class in_process_network<Tensor>;
    key() = default;
  };
  in_process_transport(key, in_process_network<Tensor>& network, int rank)
      : network_(&network), rank_(rank) {}

  in_process_transport(const in_process_transport&) = delete;
  in_process_transport& operator=(const in_process_transport&) = delete;
  in_process_transport(in_process_transport&&) = delete;
  in_process_transport& operator=(in_process_transport&&) = delete;
  ~in_process_transport() = default;

  [[nodiscard]] int rank() const noexcept { return rank_; }
  [[nodiscard]] int ranks() const noexcept;

  void post_send(const instruction& i, const Tensor& buffer) {
    detail::check_posted(i, is_send(i.kind), "post_send takes a SEND_F or SEND_B instruction",
                         rank_, ranks());
    sends_.push_back({i, &buffer});
  }
  void post_recv(const instruction& i, Tensor& buffer) {
    detail::check_posted(i, is_recv(i.kind), "post_recv takes a RECV_F or RECV_B instruction",
                         rank_, ranks());
    recvs_.push_back({i, &buffer});
  }
  // Launches every send and receive posted since the last commit and waits
  // until all of them are done. Throws transport_timeout, transport_error or
  // pipeline_aborted; the posted batch is dropped either way.
  void commit();
  void abort(std::string_view why) noexcept;
  // A barrier over all ranks at the end of a step: it throws pipeline_aborted
  // if any rank failed during the step, so no rank's step() returns normally
  // while another's throws.
  void finish_step();

 private:
  friend class in_process_network<Tensor>;

  using posted_send = detail::posted_operation<const Tensor>;
  using posted_recv = detail::posted_operation<Tensor>;

  // The oldest of this rank's published sends nobody has finished reading.
  [[nodiscard]] instruction first_unread_send() const;

  in_process_network<Tensor>* network_;
  int rank_;
  std::vector<posted_send> sends_;
  std::vector<posted_recv> recvs_;
};

template <class Tensor>
class in_process_network {
 public:
  using clock = std::chrono::steady_clock;

  // `timeout`: how long a rank waits for one receive, for its sends to be
  // read, or at the end-of-step barrier, before it throws transport_timeout.
  // `spin`: how long a waiting rank first polls, yielding its core, before it
  // sleeps (see set_spin).
  explicit in_process_network(int ranks,
                              std::chrono::nanoseconds timeout = std::chrono::seconds(60),
                              std::chrono::nanoseconds spin = std::chrono::nanoseconds(0))
      : ranks_(ranks), timeout_(timeout), spin_(spin) {
    if (ranks < 1)
      throw std::invalid_argument("dualpipe::in_process_network: needs at least one rank (got " +
                                  std::to_string(ranks) + ")");
    mailboxes_.resize(static_cast<std::size_t>(ranks) * static_cast<std::size_t>(ranks));
    unread_sends_.assign(static_cast<std::size_t>(ranks), 0);
    reading_from_.assign(static_cast<std::size_t>(ranks), 0);
    endpoints_.reserve(static_cast<std::size_t>(ranks));
    for (int r = 0; r < ranks; ++r)
      endpoints_.push_back(std::make_unique<in_process_transport<Tensor>>(
          typename in_process_transport<Tensor>::key{}, *this, r));
  }
  in_process_network(const in_process_network&) = delete;
  in_process_network& operator=(const in_process_network&) = delete;
  in_process_network(in_process_network&&) = delete;
  in_process_network& operator=(in_process_network&&) = delete;
  ~in_process_network() = default;

  [[nodiscard]] int ranks() const noexcept { return ranks_; }
  [[nodiscard]] in_process_transport<Tensor>& endpoint(int rank) {
    if (rank < 0 || rank >= ranks_)
      throw std::out_of_range("dualpipe::in_process_network: rank " + std::to_string(rank) +
                              " is outside 0.." + std::to_string(ranks_ - 1));
    return *endpoints_[static_cast<std::size_t>(rank)];
  }

  void set_timeout(std::chrono::nanoseconds timeout) {
    const std::lock_guard lock(mutex_);
    timeout_ = timeout;
  }
  [[nodiscard]] std::chrono::nanoseconds timeout() const {
    const std::lock_guard lock(mutex_);
    return timeout_;
  }
  // A waiting rank polls for up to `spin` (yielding its core between polls)
  // before it sleeps until woken. Where the ranks have the cores to
  // themselves, even more ranks than cores, a partner usually answers within
  // microseconds and a sleeping thread takes far longer to be woken: with
  // tiny stages, 4 ranks on 2 idle cores, spin = 50 us makes a DualPipe step
  // 9x faster. Where other programs compete for the cores, every yield may
  // hand a whole time slice to them and the same step gets 10x slower: so
  // the default is 0, sleep at once. See docs/executor.md.
  void set_spin(std::chrono::nanoseconds spin) {
    const std::lock_guard lock(mutex_);
    spin_ = spin;
  }
  [[nodiscard]] std::chrono::nanoseconds spin() const {
    const std::lock_guard lock(mutex_);
    return spin_;
  }
  [[nodiscard]] bool aborted() const {
    const std::lock_guard lock(mutex_);
    return aborted_;
  }
  // Forgets an abort and anything left posted, so the network can run
  // another step. Call it only while no rank is inside the transport.
  void reset() {
    const std::lock_guard lock(mutex_);
    aborted_ = false;
    abort_rank_ = -1;
    abort_why_.clear();
    for (auto& box : mailboxes_) box.clear();
    unread_sends_.assign(unread_sends_.size(), 0);
    reading_from_.assign(reading_from_.size(), 0);
    arrived_ = 0;
    for (auto& e : endpoints_) {
      e->sends_.clear();
      e->recvs_.clear();
    }
  }

 private:
  friend class in_process_transport<Tensor>;

  // A send published by a commit, waiting in the (sender, receiver) mailbox.
  struct published_send {
    instruction at;
    const Tensor* buffer;
    std::uint64_t id;
    bool taken;  // a receiver is copying it now
  };

  std::vector<published_send>& mailbox(int from, int to) {
    return mailboxes_[static_cast<std::size_t>(from) * static_cast<std::size_t>(ranks_) +
                      static_cast<std::size_t>(to)];
  }

  // Matching is by payload and micro-batch; the stage is checked after.
  [[nodiscard]] static bool pairs_with(const instruction& send, const instruction& recv) noexcept {
    return send.kind == counterpart(recv, -1).kind && send.microbatch == recv.microbatch;
  }

  [[noreturn]] void throw_aborted(int rank, const std::string& where) const {
    throw detail::aborted_by(rank, abort_rank_, abort_why_, where);
  }

  // After a failed commit: withdraw this rank's unread sends and wait until no
  // receiver is still copying from its buffers, so the executor may reuse them.
  void withdraw(std::unique_lock<std::mutex>& lock, int rank) {
    for (int to = 0; to < ranks_; ++to) {
      auto& box = mailbox(rank, to);
      for (std::size_t k = 0; k < box.size();) {
        if (!box[k].taken) {
          box.erase(box.begin() + static_cast<std::ptrdiff_t>(k));
          --unread_sends_[static_cast<std::size_t>(rank)];
        } else {
          ++k;
        }
      }
    }
    changed_.wait(lock, [&] { return reading_from_[static_cast<std::size_t>(rank)] == 0; });
  }

  // Every change of the shared state is announced here, under mutex_.
  void notify_changed() {
    version_.store(version_.load(std::memory_order_relaxed) + 1, std::memory_order_release);
    changed_.notify_all();
  }

  // Waits, holding `lock` again on return, until the shared state may have
  // changed or `deadline` passed: first by watching the version with the
  // lock released, for at most spin_ of wall-clock time, then by sleeping
  // on the condition.
  std::cv_status wait_for_change(std::unique_lock<std::mutex>& lock, clock::time_point deadline) {
    if (spin_ > std::chrono::nanoseconds(0)) {
      const std::uint64_t seen = version_.load(std::memory_order_relaxed);
      const clock::time_point spin_until = std::min(deadline, clock::now() + spin_);
      lock.unlock();
      for (int round = 0; version_.load(std::memory_order_acquire) == seen; ++round) {
        if (round < 64) continue;  // a few polls at full speed first
        if (clock::now() >= spin_until) break;
        std::this_thread::yield();
      }
      lock.lock();
      // Checked under the lock: any later change notifies a thread that is
      // already waiting, so no wake-up is lost.
      if (version_.load(std::memory_order_relaxed) != seen) return std::cv_status::no_timeout;
    }
    return changed_.wait_until(lock, deadline);
  }

  int ranks_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::atomic<std::uint64_t> version_{0};  // bumped by every notify_changed
  std::chrono::nanoseconds timeout_;
  std::chrono::nanoseconds spin_;
  std::vector<std::vector<published_send>> mailboxes_;
  std::vector<int> unread_sends_;  // per sender: published, not yet fully read
  std::vector<int> reading_from_;  // per sender: receivers copying its buffers now
  std::uint64_t next_id_ = 0;
  bool aborted_ = false;
  int abort_rank_ = -1;
  std::string abort_why_;
  int arrived_ = 0;
  std::uint64_t generation_ = 0;
  std::vector<std::unique_ptr<in_process_transport<Tensor>>> endpoints_;
};

// ---------------------------------------------------------------------------

template <class Tensor>
int in_process_transport<Tensor>::ranks() const noexcept {
  return network_->ranks_;
}

template <class Tensor>
void in_process_transport<Tensor>::commit() {
  if (sends_.empty() && recvs_.empty()) return;
  auto& net = *network_;
  const auto me = static_cast<std::size_t>(rank_);
  std::unique_lock lock(net.mutex_);
  struct drop_batch {  // the batch is over, whether it completed or threw
    in_process_transport* self;
    ~drop_batch() {
      self->sends_.clear();
      self->recvs_.clear();
    }
  } drop{this};
  using detail::waiting_on;
  if (net.aborted_)
    net.throw_aborted(rank_, waiting_on(recvs_.empty() ? sends_.front().at : recvs_.front().at));

  for (const posted_send& s : sends_) {
    net.mailbox(rank_, s.at.peer).push_back({s.at, s.buffer, net.next_id_++, false});
    ++net.unread_sends_[me];
  }
  if (!sends_.empty()) net.notify_changed();

  const auto fail = [&](auto&& error) {
    net.withdraw(lock, rank_);
    throw error;
  };

  for (const posted_recv& r : recvs_) {
    const auto deadline = std::chrono::steady_clock::now() + net.timeout_;
    auto& box = net.mailbox(r.at.peer, rank_);
    for (;;) {
      if (net.aborted_) {
        net.withdraw(lock, rank_);
        net.throw_aborted(rank_, waiting_on(r.at));
      }
      std::size_t k = 0;
      while (k < box.size() &&
             (box[k].taken || !in_process_network<Tensor>::pairs_with(box[k].at, r.at)))
        ++k;
      if (k < box.size()) {
        if (const int sending_stage = counterpart(r.at, rank_).stage;
            box[k].at.stage != sending_stage)
          fail(transport_error(
              rank_, "dualpipe: rank " + std::to_string(rank_) + " posted " + format_action(r.at) +
                         " from rank " + std::to_string(r.at.peer) + ", but the matching send " +
                         "there is " + format_action(box[k].at) + " (expected the sending stage " +
                         std::to_string(sending_stage) + ")"));
        box[k].taken = true;
        const std::uint64_t id = box[k].id;
        const Tensor* source = box[k].buffer;
        const auto from = static_cast<std::size_t>(r.at.peer);
        ++net.reading_from_[from];
        lock.unlock();
        try {
          *r.buffer = *source;
        } catch (...) {
          lock.lock();
          --net.reading_from_[from];
          for (auto& p : box)
            if (p.id == id) p.taken = false;
          net.notify_changed();
          net.withdraw(lock, rank_);
          throw;
        }
        lock.lock();
        for (std::size_t j = 0; j < box.size(); ++j)
          if (box[j].id == id) {
            box.erase(box.begin() + static_cast<std::ptrdiff_t>(j));
            break;
          }
        --net.reading_from_[from];
        --net.unread_sends_[from];
        net.notify_changed();
        break;
      }
      if (net.wait_for_change(lock, deadline) == std::cv_status::timeout) {
        // One last look before giving up: the wake-up may have raced the deadline.
        std::size_t j = 0;
        while (j < box.size() &&
               (box[j].taken || !in_process_network<Tensor>::pairs_with(box[j].at, r.at)))
          ++j;
        if (j == box.size() && !net.aborted_)
          fail(detail::timed_out(rank_, net.timeout_,
                                 "on " + waiting_on(r.at) + ": no matching send was posted there"));
      }
    }
  }

  // Rendezvous: the batch is complete once every receiver has read our sends.
  if (net.unread_sends_[me] > 0) {
    const auto deadline = std::chrono::steady_clock::now() + net.timeout_;
    while (net.unread_sends_[me] > 0) {
      if (net.aborted_) {
        const instruction first = first_unread_send();
        net.withdraw(lock, rank_);
        net.throw_aborted(rank_, waiting_on(first));
      }
      if (net.wait_for_change(lock, deadline) == std::cv_status::timeout &&
          net.unread_sends_[me] > 0 && !net.aborted_) {
        const instruction first = first_unread_send();
        fail(detail::timed_out(
            rank_, net.timeout_,
            "on " + waiting_on(first) + ": the peer never posted the matching receive"));
      }
    }
  }
}

template <class Tensor>
instruction in_process_transport<Tensor>::first_unread_send() const {
  auto& net = *network_;
  const instruction* first = nullptr;
  std::uint64_t first_id = 0;
  for (int to = 0; to < net.ranks_; ++to)
    for (const auto& p : net.mailbox(rank_, to))
      if (first == nullptr || p.id < first_id) {
        first = &p.at;
        first_id = p.id;
      }
  return first != nullptr ? *first : make_commit();
}

template <class Tensor>
void in_process_transport<Tensor>::abort(std::string_view why) noexcept {
  auto& net = *network_;
  const std::lock_guard lock(net.mutex_);
  if (!net.aborted_) {
    // The flag is what wakes the other ranks: set it before the message copy,
    // the one step here that can fail (out of memory).
    net.aborted_ = true;
    net.abort_rank_ = rank_;
    try {
      net.abort_why_.assign(why.begin(), why.end());
    } catch (...) {
      net.abort_why_.clear();
    }
  }
  net.notify_changed();
}

template <class Tensor>
void in_process_transport<Tensor>::finish_step() {
  auto& net = *network_;
  std::unique_lock lock(net.mutex_);
  if (net.aborted_) net.throw_aborted(rank_, "the end of the step");
  const std::uint64_t generation = net.generation_;
  if (++net.arrived_ == net.ranks_) {
    net.arrived_ = 0;
    ++net.generation_;
    net.notify_changed();
    return;
  }
  const auto deadline = std::chrono::steady_clock::now() + net.timeout_;
  while (net.generation_ == generation) {
    if (net.aborted_) {
      --net.arrived_;
      net.throw_aborted(rank_, "the end of the step");
    }
    if (net.wait_for_change(lock, deadline) == std::cv_status::timeout &&
        net.generation_ == generation && !net.aborted_) {
      --net.arrived_;
      throw detail::timed_out(rank_, net.timeout_, "at the end of the step for the other ranks");
    }
  }
}

}  // namespace dualpipe
