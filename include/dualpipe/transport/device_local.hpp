// The device-local transport: several virtual pipeline ranks on one GPU, each
// driven by its own host thread with its own compute and communication
// streams. This is how a single-GPU machine runs a real multi-rank pipeline
// (the same executor, tables and stream/event ordering as one rank per GPU).
//
// Protocol, per commit of a rank:
//   sends     an event is recorded on the rank's compute stream (after the
//             compute that produced the sent buffers) and each send is
//             published to its peer's mailbox; the host does not wait.
//   receives  the rank's communication stream waits for its own compute
//             (the receive buffers may have been used before), then for
//             each receive, in posting order, waits for the matching send to
//             be published (a host-to-host rendezvous, never a GPU sync),
//             waits on the sender's event and copies with cudaMemcpyAsync;
//             the compute stream then waits on an event recorded after the
//             copies.
//   ticket    commit() returns a ticket for the batch's sends: complete()
//             becomes true once every receiver has copied them (events the
//             receivers record on their streams), so the executor keeps the
//             sent buffers untouched until then without a copy.
//
// A send carries its element count on the host, and the receive buffer takes
// that size. An endpoint attached with a message_sizes rule (message_sizes.hpp)
// also checks both ends against it: its sends' buffers, and the count each of
// its receives carries, so a disagreement is a transport_error, never a copy
// of the wrong length.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "dualpipe/cuda/device.hpp"
#include "dualpipe/cuda/device_tensor.hpp"
#include "dualpipe/cuda/error.hpp"
#include "dualpipe/cuda/event.hpp"
#include "dualpipe/cuda/stream.hpp"
#include "dualpipe/transport/errors.hpp"
#include "dualpipe/schedule/action_syntax.hpp"
#include "dualpipe/schedule/instruction.hpp"
#include "dualpipe/transport/message_sizes.hpp"
#include "dualpipe/transport/transport.hpp"

namespace dualpipe {

template <cuda::device_tensor Tensor>
class device_local_network;

// One virtual rank's endpoint; models pipeline_transport with deferred
// completion. Use it from its rank's host thread only.
template <cuda::device_tensor Tensor>
class device_local_transport {
 public:
  using tensor_type = Tensor;
  using value_type = typename Tensor::value_type;

  // Names one commit's sends; complete() says when their buffers may change.
  struct ticket {
    std::size_t batch = std::numeric_limits<std::size_t>::max();  // none: no sends
    std::uint64_t generation = 0;
  };

  // Made only by device_local_network::attach (the key is private to it).
  class key {
    friend class device_local_network<Tensor>;
    key() = default;
  };
  device_local_transport(key, device_local_network<Tensor>& network, int rank, cudaStream_t compute,
                         int priority, std::optional<message_sizes> sizes)
      : network_(&network),
        rank_(rank),
        compute_(compute),
        comm_(priority),
        sizes_(std::move(sizes)) {}

  device_local_transport(const device_local_transport&) = delete;
  device_local_transport& operator=(const device_local_transport&) = delete;
  device_local_transport(device_local_transport&&) = delete;
  device_local_transport& operator=(device_local_transport&&) = delete;
  ~device_local_transport();

  [[nodiscard]] int rank() const noexcept { return rank_; }
  [[nodiscard]] int ranks() const noexcept;
  [[nodiscard]] cudaStream_t compute_stream() const noexcept { return compute_; }
  [[nodiscard]] cudaStream_t communication_stream() const noexcept { return comm_.get(); }
  // The size rule given at attach, if any.
  [[nodiscard]] const std::optional<message_sizes>& sizes() const noexcept { return sizes_; }

  void post_send(const instruction& i, const Tensor& buffer) {
    detail::check_posted(i, is_send(i.kind), "post_send takes a SEND_F or SEND_B instruction",
                         rank_, ranks());
    const auto count = static_cast<std::size_t>(buffer.size());
    if (sizes_) sizes_->check_send(i, count, rank_);
    sends_.push_back({i, buffer.data(), count, nullptr});
  }
  // With a size rule, the count the receive must carry is the rule's (and
  // the rule runs here, outside the network's lock); without one, 0: any.
  void post_recv(const instruction& i, Tensor& buffer) {
    detail::check_posted(i, is_recv(i.kind), "post_recv takes a RECV_F or RECV_B instruction",
                         rank_, ranks());
    recvs_.push_back({i, nullptr, sizes_ ? sizes_->elements_of(i, rank_) : 0, &buffer});
  }

  // Enqueues the batch (see the protocol above) and returns without waiting
  // for the GPU. Waits on the host only for peers to publish the sends this
  // rank receives. Throws transport_timeout, transport_error or
  // pipeline_aborted; the posted batch is dropped either way.
  [[nodiscard]] ticket commit();
  [[nodiscard]] bool complete(const ticket& t);
  void wait(const ticket& t);
  void abort(std::string_view why) noexcept;
  // A host barrier over all ranks (no GPU synchronisation): throws
  // pipeline_aborted if any rank failed during the step.
  void finish_step();

 private:
  friend class device_local_network<Tensor>;

  struct posted {
    instruction at;
    const value_type* source;  // sends
    std::size_t count;         // sends: the buffer's; receives: the rule's, or 0 without one
    Tensor* target;            // receives
  };

  device_local_network<Tensor>* network_;
  int rank_;
  cudaStream_t compute_;
  cuda::stream comm_;
  cuda::event compute_reached_;  // compute progress at commit, for this rank's copies
  cuda::event copies_done_;      // after this rank's copies, for its compute
  std::optional<message_sizes> sizes_;
  std::vector<posted> sends_;
  std::vector<posted> recvs_;
};

// P virtual ranks on the current device. Create it on any thread, then from
// each rank's thread (with that device current) attach(rank, compute_stream)
// once. The network must outlive its endpoints.
template <cuda::device_tensor Tensor>
class device_local_network {
 public:
  using clock = std::chrono::steady_clock;

  explicit device_local_network(int ranks,
                                std::chrono::milliseconds timeout = std::chrono::seconds(60))
      : ranks_(ranks), timeout_(timeout) {
    if (ranks < 1)
      throw std::invalid_argument("dualpipe::device_local_network: needs at least one rank (got " +
                                  std::to_string(ranks) + ")");
    device_ = cuda::current_device();
    const auto n = static_cast<std::size_t>(ranks);
    mailboxes_.resize(n * n);
    batches_.resize(n);
    endpoints_.resize(n);
  }
  device_local_network(const device_local_network&) = delete;
  device_local_network& operator=(const device_local_network&) = delete;
  device_local_network(device_local_network&&) = delete;
  device_local_network& operator=(device_local_network&&) = delete;
  ~device_local_network() = default;

  [[nodiscard]] int ranks() const noexcept { return ranks_; }
  [[nodiscard]] int device() const noexcept { return device_; }
  [[nodiscard]] std::chrono::milliseconds timeout() const noexcept { return timeout_; }

  // Makes rank `rank`'s endpoint, whose work joins `compute` (the stream
  // the rank's stages enqueue on). Call from the rank's thread with the
  // network's device current; its communication stream gets the device's
  // greatest priority so that transfers peers wait for are not queued behind
  // compute.
  device_local_transport<Tensor>& attach(int rank, cudaStream_t compute) {
    return make_endpoint(rank, compute, std::nullopt);
  }
  // The same with a size rule: the endpoint checks its sends' buffers and its
  // receives' carried counts against `sizes` (transport_error on a mismatch).
  // Give every rank the same rule; a rank attached without one checks
  // nothing, and its receives take whatever count the sender carried.
  device_local_transport<Tensor>& attach(int rank, cudaStream_t compute, message_sizes sizes) {
    return make_endpoint(rank, compute, std::move(sizes));
  }

  [[nodiscard]] bool aborted() const {
    const std::lock_guard lock(mutex_);
    return aborted_;
  }

 private:
  friend class device_local_transport<Tensor>;
  using value_type = typename Tensor::value_type;

  device_local_transport<Tensor>& make_endpoint(int rank, cudaStream_t compute,
                                                std::optional<message_sizes> sizes) {
    if (rank < 0 || rank >= ranks_)
      throw std::out_of_range("dualpipe::device_local_network: rank " + std::to_string(rank) +
                              " is outside 0.." + std::to_string(ranks_ - 1));
    const int here = cuda::current_device();
    if (here != device_)
      throw std::logic_error("dualpipe::device_local_network: rank " + std::to_string(rank) +
                             " attached with device " + std::to_string(here) +
                             " current, the network lives on device " + std::to_string(device_) +
                             " (call cudaSetDevice on each rank's thread first)");
    const std::lock_guard lock(mutex_);
    auto& slot = endpoints_[static_cast<std::size_t>(rank)];
    if (slot)
      throw std::logic_error("dualpipe::device_local_network: rank " + std::to_string(rank) +
                             " is already attached");
    const int greatest = cuda::stream::priority_range().second;
    slot = std::make_unique<device_local_transport<Tensor>>(
        typename device_local_transport<Tensor>::key{}, *this, rank, compute, greatest,
        std::move(sizes));
    return *slot;
  }

  // One commit's sends, owned here (not by the endpoint) so that a peer
  // acknowledging it never touches freed memory.
  struct batch {
    cuda::event ready;              // on the sender's compute stream at commit
    std::vector<cuda::event> acks;  // one per send, recorded by its receiver after copying
    std::size_t sends = 0;
    std::atomic<std::size_t> acked{0};
    std::uint64_t generation = 0;
    bool busy = false;
  };

  struct message {
    instruction at;  // the SEND_* instruction
    const value_type* source;
    std::size_t count;
    batch* from;
    std::size_t ack;  // which of from->acks the receiver records
    bool taken;
  };

  // Sends from one rank to another, oldest first; taken ones are skipped
  // and the vector is cleared (keeping its capacity) once all are taken.
  struct mailbox {
    std::vector<message> messages;
    std::size_t head = 0;
  };

  [[nodiscard]] mailbox& box(int from, int to) {
    return mailboxes_[static_cast<std::size_t>(from) * static_cast<std::size_t>(ranks_) +
                      static_cast<std::size_t>(to)];
  }

  [[noreturn]] void throw_aborted(int rank, const std::string& doing) const {
    throw pipeline_aborted(rank, abort_rank_, abort_why_,
                           "rank " + std::to_string(rank) + " stopped " + doing + ": rank " +
                               std::to_string(abort_rank_) + " failed: " + abort_why_);
  }

  int ranks_;
  int device_ = 0;
  std::chrono::milliseconds timeout_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<mailbox> mailboxes_;
  std::vector<std::vector<std::unique_ptr<batch>>> batches_;  // per sending rank
  std::vector<std::unique_ptr<device_local_transport<Tensor>>> endpoints_;
  bool aborted_ = false;
  int abort_rank_ = -1;
  std::string abort_why_;
  int barrier_waiting_ = 0;
  std::uint64_t barrier_generation_ = 0;
};

// --- device_local_transport ------------------------------------------------

template <cuda::device_tensor Tensor>
int device_local_transport<Tensor>::ranks() const noexcept {
  return network_->ranks();
}

template <cuda::device_tensor Tensor>
typename device_local_transport<Tensor>::ticket device_local_transport<Tensor>::commit() {
  auto& net = *network_;
  // Drop the batch on every way out, as the in-process transport does.
  struct clear_posted {
    std::vector<posted>& a;
    std::vector<posted>& b;
    ~clear_posted() {
      a.clear();
      b.clear();
    }
  } clear{sends_, recvs_};

  ticket result{};
  if (!sends_.empty()) {
    std::unique_lock lock(net.mutex_);
    if (net.aborted_) net.throw_aborted(rank_, "at a commit");
    // A finished batch record is reused: its receivers have all recorded
    // their acknowledgements and those have completed.
    auto& mine = net.batches_[static_cast<std::size_t>(rank_)];
    typename device_local_network<Tensor>::batch* b = nullptr;
    std::size_t index = 0;
    for (std::size_t k = 0; k < mine.size(); ++k) {
      auto& candidate = *mine[k];
      if (candidate.busy) {
        if (candidate.acked.load(std::memory_order_acquire) != candidate.sends) continue;
        bool done = true;
        for (std::size_t a = 0; a < candidate.sends && done; ++a) done = candidate.acks[a].query();
        if (!done) continue;
        candidate.busy = false;
        ++candidate.generation;
      }
      b = &candidate;
      index = k;
      break;
    }
    if (b == nullptr) {
      mine.push_back(std::make_unique<typename device_local_network<Tensor>::batch>());
      b = mine.back().get();
      index = mine.size() - 1;
    }
    while (b->acks.size() < sends_.size()) b->acks.emplace_back();
    b->sends = sends_.size();
    b->acked.store(0, std::memory_order_relaxed);
    b->busy = true;
    // The sent buffers are complete once the compute enqueued so far is.
    b->ready.record(compute_);
    for (std::size_t k = 0; k < sends_.size(); ++k) {
      const posted& s = sends_[k];
      net.box(rank_, s.at.peer).messages.push_back({s.at, s.source, s.count, b, k, false});
    }
    result = {index, b->generation};
    lock.unlock();
    net.changed_.notify_all();
  }

  if (!recvs_.empty()) {
    // The receive buffers may have been read or written by compute enqueued
    // before this commit: copies into them start after it.
    compute_reached_.record(compute_);
    comm_.wait(compute_reached_);
    for (const posted& r : recvs_) {
      const instruction sent = counterpart(r.at, rank_);
      const op sent_kind = sent.kind;
      const int sent_stage = sent.stage;
      std::unique_lock lock(net.mutex_);
      auto& box = net.box(r.at.peer, rank_);
      const auto deadline = device_local_network<Tensor>::clock::now() + net.timeout_;
      typename device_local_network<Tensor>::message* found = nullptr;
      for (;;) {
        if (net.aborted_) net.throw_aborted(rank_, "waiting for " + format_action(r.at));
        for (std::size_t k = box.head; k < box.messages.size(); ++k) {
          auto& m = box.messages[k];
          if (!m.taken && m.at.kind == sent_kind && m.at.microbatch == r.at.microbatch) {
            found = &m;
            break;
          }
        }
        if (found != nullptr) break;
        if (net.changed_.wait_until(lock, deadline) == std::cv_status::timeout) {
          bool again = false;
          for (std::size_t k = box.head; k < box.messages.size() && !again; ++k) {
            const auto& m = box.messages[k];
            again = !m.taken && m.at.kind == sent_kind && m.at.microbatch == r.at.microbatch;
          }
          if (!again)
            throw transport_timeout(
                rank_, "rank " + std::to_string(rank_) + " waited " +
                           std::to_string(net.timeout_.count()) + " ms at COMMIT for " +
                           format_action(r.at) + " from rank " + std::to_string(r.at.peer) +
                           " (no matching " + std::string(op_name(sent_kind)) + " posted)");
        }
      }
      if (found->at.stage != sent_stage)
        throw transport_error(
            rank_, "rank " + std::to_string(rank_) + ": " + format_action(r.at) + " met " +
                       format_action(found->at) + " from rank " + std::to_string(r.at.peer) +
                       ": expected the sending stage " + std::to_string(sent_stage));
      if (sizes_) sizes_->check_received(r.at, found->at, found->count, r.count, rank_);
      const value_type* source = found->source;
      const std::size_t count = found->count;
      auto* from = found->from;
      const std::size_t ack = found->ack;
      found->taken = true;
      while (box.head < box.messages.size() && box.messages[box.head].taken) ++box.head;
      if (box.head == box.messages.size()) {
        box.messages.clear();
        box.head = 0;
      }
      lock.unlock();

      Tensor& target = *r.target;
      if (static_cast<std::size_t>(target.size()) != count) target.resize(count);
      comm_.wait(from->ready);
      DUALPIPE_CUDA_CHECK(cudaMemcpyAsync(target.data(), source, count * sizeof(value_type),
                                          cudaMemcpyDeviceToDevice, comm_.get()));
      from->acks[ack].record(comm_.get());
      from->acked.fetch_add(1, std::memory_order_release);
      net.changed_.notify_all();
    }
    copies_done_.record(comm_.get());
    DUALPIPE_CUDA_CHECK(cudaStreamWaitEvent(compute_, copies_done_.get(), 0));
  }
  return result;
}

template <cuda::device_tensor Tensor>
bool device_local_transport<Tensor>::complete(const ticket& t) {
  if (t.batch == std::numeric_limits<std::size_t>::max()) return true;
  auto& net = *network_;
  const std::lock_guard lock(net.mutex_);
  auto& b = *net.batches_[static_cast<std::size_t>(rank_)][t.batch];
  if (b.generation != t.generation || !b.busy) return true;  // seen complete and reused since
  if (b.acked.load(std::memory_order_acquire) != b.sends) return false;
  for (std::size_t a = 0; a < b.sends; ++a)
    if (!b.acks[a].query()) return false;
  return true;
}

template <cuda::device_tensor Tensor>
void device_local_transport<Tensor>::wait(const ticket& t) {
  if (t.batch == std::numeric_limits<std::size_t>::max()) return;
  auto& net = *network_;
  std::unique_lock lock(net.mutex_);
  auto& b = *net.batches_[static_cast<std::size_t>(rank_)][t.batch];
  if (b.generation != t.generation || !b.busy) return;
  const auto deadline = device_local_network<Tensor>::clock::now() + net.timeout_;
  while (b.acked.load(std::memory_order_acquire) != b.sends) {
    if (net.aborted_) net.throw_aborted(rank_, "waiting for its sends to be received");
    if (net.changed_.wait_until(lock, deadline) == std::cv_status::timeout &&
        b.acked.load(std::memory_order_acquire) != b.sends)
      throw transport_timeout(
          rank_, "rank " + std::to_string(rank_) + " waited " +
                     std::to_string(net.timeout_.count()) + " ms for its sends to be received (" +
                     std::to_string(b.acked.load()) + " of " + std::to_string(b.sends) + " taken)");
  }
  lock.unlock();
  for (std::size_t a = 0; a < b.sends; ++a) b.acks[a].synchronize();
}

template <cuda::device_tensor Tensor>
void device_local_transport<Tensor>::abort(std::string_view why) noexcept {
  auto& net = *network_;
  {
    const std::lock_guard lock(net.mutex_);
    if (!net.aborted_) {
      net.aborted_ = true;
      net.abort_rank_ = rank_;
      try {
        net.abort_why_ = std::string(why);
      } catch (...) {
        net.abort_why_.clear();  // out of memory: the rank is still named
      }
    }
  }
  net.changed_.notify_all();
  sends_.clear();
  recvs_.clear();
}

template <cuda::device_tensor Tensor>
void device_local_transport<Tensor>::finish_step() {
  auto& net = *network_;
  std::unique_lock lock(net.mutex_);
  if (net.aborted_) net.throw_aborted(rank_, "at the end of the step");
  const std::uint64_t generation = net.barrier_generation_;
  if (++net.barrier_waiting_ == net.ranks_) {
    net.barrier_waiting_ = 0;
    ++net.barrier_generation_;
    lock.unlock();
    net.changed_.notify_all();
    return;
  }
  const auto deadline = device_local_network<Tensor>::clock::now() + net.timeout_;
  while (net.barrier_generation_ == generation) {
    if (net.aborted_) {
      --net.barrier_waiting_;
      net.throw_aborted(rank_, "at the end of the step");
    }
    if (net.changed_.wait_until(lock, deadline) == std::cv_status::timeout &&
        net.barrier_generation_ == generation) {
      --net.barrier_waiting_;
      throw transport_timeout(rank_, "rank " + std::to_string(rank_) + " waited " +
                                         std::to_string(net.timeout_.count()) +
                                         " ms at the end of the step for the other ranks");
    }
  }
}

template <cuda::device_tensor Tensor>
device_local_transport<Tensor>::~device_local_transport() {
  // Peers may still be copying this rank's sent buffers, or be about to: wait
  // for every outstanding batch unless the pipeline was aborted, since the
  // buffers' owner frees them after this. Bounded by the network's timeout.
  auto& net = *network_;
  try {
    std::unique_lock lock(net.mutex_);
    const auto deadline = device_local_network<Tensor>::clock::now() + net.timeout_;
    for (auto& b : net.batches_[static_cast<std::size_t>(rank_)]) {
      while (b->busy && !net.aborted_ && b->acked.load(std::memory_order_acquire) != b->sends) {
        if (net.changed_.wait_until(lock, deadline) == std::cv_status::timeout) break;
      }
    }
    lock.unlock();
    comm_.synchronize();
  } catch (...) {
    // Nothing more can be done in a destructor.
  }
}

}  // namespace dualpipe
