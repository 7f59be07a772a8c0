// The MPI transport: one pipeline rank per process, on the user's own
// MPI_Comm, for CPU clusters and any launcher that starts MPI jobs (mpirun,
// srun). Each commit posts its batch as non-blocking sends and receives in the
// table's order and returns when all of them are done (the blocking protocol
// of transport.hpp). A tensor travels as a short header (its wire_shape, see
// wire.hpp) and then its bytes, so the receiver learns every message's shape
// from the message itself. A failed rank tells every other rank on a control
// communicator of its own, so their steps end with pipeline_aborted instead
// of waiting.
//
// The library never calls MPI_Init or MPI_Finalize: initialise MPI before
// making a transport, and destroy the transport before MPI_Finalize.
#pragma once

#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "dualpipe/transport/errors.hpp"
#include "dualpipe/schedule/action_syntax.hpp"
#include "dualpipe/schedule/instruction.hpp"
#include "dualpipe/transport/transport.hpp"
#include "dualpipe/transport/wire.hpp"

namespace dualpipe::mpi {

// An MPI call returned an error: what() names the call, where it was made
// and MPI's own description of the error.
class error : public std::runtime_error {
 public:
  error(int code, const std::string& what) : std::runtime_error(what), code_(code) {}
  [[nodiscard]] int code() const noexcept { return code_; }

 private:
  int code_;
};

namespace detail {

[[noreturn]] inline void throw_mpi_error(int code, const char* call, const char* file, int line) {
  char text[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) length = 0;
  throw error(code, std::string("dualpipe::mpi: ") + call + " failed (" + file + ":" +
                        std::to_string(line) + "): " +
                        (length > 0 ? std::string(text, static_cast<std::size_t>(length))
                                    : "error " + std::to_string(code)));
}

inline void check(int code, const char* call, const char* file, int line) {
  if (code != MPI_SUCCESS) throw_mpi_error(code, call, file, line);
}

}  // namespace detail
}  // namespace dualpipe::mpi

#define DUALPIPE_MPI_CHECK(call) ::dualpipe::mpi::detail::check((call), #call, __FILE__, __LINE__)

namespace dualpipe::mpi {

struct transport_options {
  // How long a commit waits for its batch, or finish_step() for the other
  // ranks, before it throws transport_timeout.
  std::chrono::milliseconds timeout = std::chrono::seconds(60);
  // abort() also calls MPI_Abort on the user's communicator, ending every
  // process of the job. Off by default: the healthy ranks throw
  // pipeline_aborted and the program decides.
  bool abort_job_on_failure = false;
};

// The pipeline rank of each communicator rank, from a mapping pipeline rank
// -> communicator rank; -1 where a communicator rank is not in the pipeline.
// Throws std::invalid_argument on an empty mapping, a rank outside the
// communicator's `comm_size` ranks, or a rank named twice.
[[nodiscard]] inline std::vector<int> invert_rank_mapping(std::span<const int> rank_mapping,
                                                          int comm_size) {
  if (rank_mapping.empty())
    throw std::invalid_argument(
        "dualpipe::mpi: the rank mapping is empty (a pipeline needs at "
        "least one rank)");
  std::vector<int> pipeline_rank(static_cast<std::size_t>(comm_size < 0 ? 0 : comm_size), -1);
  for (std::size_t p = 0; p < rank_mapping.size(); ++p) {
    const int c = rank_mapping[p];
    if (c < 0 || c >= comm_size)
      throw std::invalid_argument("dualpipe::mpi: the rank mapping sends pipeline rank " +
                                  std::to_string(p) + " to communicator rank " + std::to_string(c) +
                                  ", but the communicator has " + std::to_string(comm_size) +
                                  " ranks (0.." + std::to_string(comm_size - 1) + ")");
    if (pipeline_rank[static_cast<std::size_t>(c)] >= 0)
      throw std::invalid_argument("dualpipe::mpi: the rank mapping sends pipeline ranks " +
                                  std::to_string(pipeline_rank[static_cast<std::size_t>(c)]) +
                                  " and " + std::to_string(p) + " to the same communicator rank " +
                                  std::to_string(c));
    pipeline_rank[static_cast<std::size_t>(c)] = static_cast<int>(p);
  }
  return pipeline_rank;
}

namespace detail {

// What goes ahead of every payload: which instruction sent it (so the
// receiver can prove the match) and the payload's shape.
struct envelope {
  std::uint64_t epoch = 0;  // which transport sent it (see transport::epoch_)
  std::int32_t kind = -1;   // the sender's op
  std::int32_t stage = -1;
  std::int32_t microbatch = -1;
  std::int32_t sender = -1;  // pipeline rank
  wire_shape shape{};
};
static_assert(std::is_trivially_copyable_v<envelope>);

// What a failing rank sends every other rank on the control communicator.
struct abort_notice {
  std::uint64_t epoch = 0;
  std::int32_t origin = -1;
  std::int32_t length = 0;
  char why[2040] = {};
};
static_assert(std::is_trivially_copyable_v<abort_notice>);

inline constexpr int abort_tag = 7;

// A communicator this transport made, freed with it unless it was given up
// (or MPI has been finalised: then nothing may be called any more).
class owned_comm {
 public:
  owned_comm() noexcept = default;
  // Takes `made` (MPI_COMM_NULL for a process outside the pipeline).
  explicit owned_comm(MPI_Comm made) : comm_(made) {
    // Errors come back as codes, so they become exceptions, not a job abort.
    if (comm_ != MPI_COMM_NULL)
      DUALPIPE_MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
  }
  owned_comm(const owned_comm&) = delete;
  owned_comm& operator=(const owned_comm&) = delete;
  ~owned_comm() {
    int finalized = 0;
    if (comm_ != MPI_COMM_NULL && MPI_Finalized(&finalized) == MPI_SUCCESS && finalized == 0)
      (void)MPI_Comm_free(&comm_);
  }
  [[nodiscard]] MPI_Comm get() const noexcept { return comm_; }
  // Never free it: messages of a failed batch may still be in flight, and a
  // freed communicator's context may be reused by the next one, which would
  // then receive them.
  void give_up() noexcept { comm_ = MPI_COMM_NULL; }

 private:
  MPI_Comm comm_ = MPI_COMM_NULL;
};

// Transports made in this process so far: the next one's epoch is one more
// than the largest count over its communicator.
inline std::uint64_t& epochs_made() noexcept {
  static std::uint64_t count = 0;
  return count;
}

}  // namespace detail

// ---------------------------------------------------------------------------
// One pipeline rank's endpoint; models pipeline_transport. Tensor models
// wire_tensor. Use it from one thread at a time.
template <class Tensor>
class transport {
  static_assert(check_wire_tensor<Tensor>());

 public:
  using tensor_type = Tensor;

  // Collective over `comm`: every process of `comm` calls it (it splits off
  // the pipeline's own communicators, for data and for abort notices, so the
  // user's own traffic on `comm` can never match ours).
  // `rank_mapping[p]` is the communicator rank of pipeline rank p (as the
  // reference's rank_mapping); empty: pipeline rank p is communicator rank p,
  // over the whole communicator. Throws std::invalid_argument if MPI is not
  // initialised, the mapping is bad, or this process is not in it.
  explicit transport(MPI_Comm comm, std::span<const int> rank_mapping = {},
                     transport_options options = {})
      : options_(options) {
    int initialized = 0, finalized = 0;
    DUALPIPE_MPI_CHECK(MPI_Initialized(&initialized));
    DUALPIPE_MPI_CHECK(MPI_Finalized(&finalized));
    if (initialized == 0 || finalized != 0)
      throw std::invalid_argument(
          "dualpipe::mpi::transport: MPI is not initialised (call "
          "MPI_Init or MPI_Init_thread first; the library never does)");
    if (comm == MPI_COMM_NULL)
      throw std::invalid_argument("dualpipe::mpi::transport: the communicator is MPI_COMM_NULL");
    int comm_size = 0, comm_rank = 0;
    DUALPIPE_MPI_CHECK(MPI_Comm_size(comm, &comm_size));
    DUALPIPE_MPI_CHECK(MPI_Comm_rank(comm, &comm_rank));
    if (rank_mapping.empty()) {
      to_comm_.resize(static_cast<std::size_t>(comm_size));
      for (int p = 0; p < comm_size; ++p) to_comm_[static_cast<std::size_t>(p)] = p;
    } else {
      to_comm_.assign(rank_mapping.begin(), rank_mapping.end());
    }
    // Checked on every process alike before anything collective, so a bad
    // mapping fails everywhere the same way instead of leaving peers waiting.
    const std::vector<int> from_comm = invert_rank_mapping(to_comm_, comm_size);
    user_comm_ = comm;
    rank_ = from_comm[static_cast<std::size_t>(comm_rank)];
    // The pipeline's own communicator: exactly its ranks, numbered as
    // pipeline ranks, so that peers are addressed and the end-of-step
    // barrier is taken among them alone; a second one carries abort notices.
    MPI_Comm pipeline = MPI_COMM_NULL;
    DUALPIPE_MPI_CHECK(
        MPI_Comm_split(comm, rank_ >= 0 ? 0 : MPI_UNDEFINED, rank_ >= 0 ? rank_ : 0, &pipeline));
    data_ = std::make_unique<detail::owned_comm>(pipeline);
    if (rank_ < 0)
      throw std::invalid_argument("dualpipe::mpi::transport: communicator rank " +
                                  std::to_string(comm_rank) +
                                  " is not in the rank mapping; give the pipeline a communicator "
                                  "of its own (MPI_Comm_split) or map every process");
    MPI_Comm notices = MPI_COMM_NULL;
    DUALPIPE_MPI_CHECK(MPI_Comm_dup(pipeline, &notices));
    control_ = std::make_unique<detail::owned_comm>(notices);
    // One epoch for every endpoint of this pipeline, new in every process:
    // a message or notice stamped with another epoch is a stray of an
    // earlier transport and is never taken for one of ours.
    std::uint64_t next = detail::epochs_made() + 1;
    DUALPIPE_MPI_CHECK(MPI_Allreduce(&next, &epoch_, 1, MPI_UINT64_T, MPI_MAX, data_->get()));
    detail::epochs_made() = epoch_;
    int flag = 0;
    void* value = nullptr;
    DUALPIPE_MPI_CHECK(MPI_Comm_get_attr(data_->get(), MPI_TAG_UB, &value, &flag));
    tag_ub_ = flag != 0 && value != nullptr ? *static_cast<int*>(value) : 32767;
  }
  transport(MPI_Comm comm, transport_options options) : transport(comm, {}, options) {}

  transport(const transport&) = delete;
  transport& operator=(const transport&) = delete;
  transport(transport&&) = delete;  // MPI requests point into it
  transport& operator=(transport&&) = delete;
  ~transport() { release(); }

  [[nodiscard]] int rank() const noexcept { return rank_; }
  [[nodiscard]] int ranks() const noexcept { return static_cast<int>(to_comm_.size()); }
  // The communicator rank of pipeline rank p.
  [[nodiscard]] int comm_rank_of(int p) const { return to_comm_.at(static_cast<std::size_t>(p)); }
  [[nodiscard]] std::chrono::milliseconds timeout() const noexcept { return options_.timeout; }
  void set_timeout(std::chrono::milliseconds timeout) noexcept { options_.timeout = timeout; }
  // Whether a rank (this one or another) stopped the pipeline. An aborted
  // transport stays so: every later call throws pipeline_aborted.
  [[nodiscard]] bool aborted() const noexcept { return aborted_; }

  void post_send(const instruction& i, const Tensor& buffer) {
    detail_check(i, is_send(i.kind), "post_send takes a SEND_F or SEND_B instruction");
    sends_.push_back({i, &buffer});
  }
  void post_recv(const instruction& i, Tensor& buffer) {
    detail_check(i, is_recv(i.kind), "post_recv takes a RECV_F or RECV_B instruction");
    recvs_.push_back({i, &buffer});
  }

  // Posts every send (header, then bytes) and every receive (header; its
  // bytes once the header has said how many) since the last commit, and
  // returns when all are done. Throws transport_timeout, transport_error or
  // pipeline_aborted; the batch is dropped either way.
  void commit() {
    struct drop_batch {
      transport* self;
      ~drop_batch() {
        self->sends_.clear();
        self->recvs_.clear();
      }
    } drop{this};
    if (sends_.empty() && recvs_.empty()) return;
    const instruction& first = recvs_.empty() ? sends_.front().at : recvs_.front().at;
    if (aborted_) throw_aborted(waiting_on(first));
    poll_notices([&] { return waiting_on(first); });
    try {
      start_batch();
      finish_batch();
    } catch (...) {
      cancel_pending();
      throw;
    }
  }

  // This rank failed: every other rank's wait in this transport, now or
  // later, ends in pipeline_aborted naming this rank and `why`.
  void abort(std::string_view why) noexcept {
    if (aborted_) return;  // already stopped (by us or by a notice)
    aborted_ = true;
    abort_rank_ = rank_;
    try {
      abort_why_.assign(why.begin(), why.end());
    } catch (...) {
      abort_why_.clear();
    }
    notice_.epoch = epoch_;
    notice_.origin = rank_;
    notice_.length = static_cast<std::int32_t>(std::min(why.size(), sizeof(notice_.why)));
    std::memcpy(notice_.why, why.data(), static_cast<std::size_t>(notice_.length));
    for (int p = 0; p < ranks(); ++p) {
      if (p == rank_) continue;
      MPI_Request request = MPI_REQUEST_NULL;
      if (MPI_Isend(&notice_, static_cast<int>(sizeof(notice_)), MPI_BYTE, p, detail::abort_tag,
                    control_->get(), &request) == MPI_SUCCESS)
        notice_requests_.push_back(request);
    }
    if (options_.abort_job_on_failure) (void)MPI_Abort(user_comm_, 1);
  }

  // A barrier over the pipeline's ranks at the end of a step that also
  // watches for abort notices, so no rank's step() returns normally while
  // another's throws.
  void finish_step() {
    const std::string where = "the end of the step";
    if (aborted_) throw_aborted(where);
    MPI_Request barrier = MPI_REQUEST_NULL;
    DUALPIPE_MPI_CHECK(MPI_Ibarrier(data_->get(), &barrier));
    const auto deadline = clock::now() + options_.timeout;
    for (unsigned spins = 0;; ++spins) {
      int done = 0;
      DUALPIPE_MPI_CHECK(MPI_Test(&barrier, &done, MPI_STATUS_IGNORE));
      if (done != 0) return;
      // Left pending on purpose after an abort or a timeout: a non-blocking
      // barrier cannot be cancelled, and this transport is finished anyway.
      poll_notices([&] { return where; });
      if (clock::now() >= deadline) {
        unfinished_ = true;  // the barrier stays pending
        throw dualpipe::detail::timed_out(rank_, options_.timeout,
                                          "at the end of the step for the other ranks");
      }
      back_off(spins);
    }
  }

 private:
  using clock = std::chrono::steady_clock;

  using posted_send = dualpipe::detail::posted_operation<const Tensor>;
  using posted_recv = dualpipe::detail::posted_operation<Tensor>;
  // What request k of the batch is: a send's header or bytes, a receive's
  // header or bytes, and the index of its send or receive.
  enum class part : std::uint8_t { send_header, send_bytes, recv_header, recv_bytes };
  struct request_role {
    part what;
    std::size_t index;
  };

  void detail_check(const instruction& i, bool kind_ok, const char* what) const {
    if (aborted_) throw_aborted(format_action(i));
    dualpipe::detail::check_posted(i, kind_ok, what, rank_, ranks());
  }

  [[nodiscard]] static std::string waiting_on(const instruction& i) {
    return dualpipe::detail::waiting_on(i);
  }

  [[noreturn]] void throw_aborted(const std::string& where) const {
    throw dualpipe::detail::aborted_by(rank_, abort_rank_, abort_why_, where);
  }

  // One tag per (receiving stage, payload, micro-batch, header or bytes):
  // every such message crosses once per step, so a send can only ever match
  // the receive of the same instruction. Stage and micro-batch are
  // interleaved bit by bit, so small pipelines need small tags whichever of
  // the two is large (MPI promises only MPI_TAG_UB >= 32767).
  [[nodiscard]] int tag_of(const instruction& i, bool bytes) const {
    const bool forward = i.kind == op::send_forward || i.kind == op::recv_forward;
    const std::int64_t receiving_stage = is_recv(i.kind) ? i.stage : counterpart(i, rank_).stage;
    std::uint64_t interleaved = 0;
    if (receiving_stage >= 0 && i.microbatch >= 0)
      for (int bit = 0; bit < 31; ++bit) {
        interleaved |= ((static_cast<std::uint64_t>(receiving_stage) >> bit) & 1u) << (2 * bit + 1);
        interleaved |= ((static_cast<std::uint64_t>(i.microbatch) >> bit) & 1u) << (2 * bit);
      }
    const std::uint64_t tag = (interleaved * 2 + (forward ? 0u : 1u)) * 2 + (bytes ? 1u : 0u);
    if (receiving_stage < 0 || i.microbatch < 0 || tag > static_cast<std::uint64_t>(tag_ub_))
      throw transport_error(rank_, "dualpipe: rank " + std::to_string(rank_) + ": " +
                                       format_action(i) + " needs MPI tag " + std::to_string(tag) +
                                       ", beyond this MPI's MPI_TAG_UB of " +
                                       std::to_string(tag_ub_) +
                                       " (too many stages or micro-batches for its tag space)");
    return static_cast<int>(tag);
  }

  [[nodiscard]] static int byte_count(std::size_t bytes, const instruction& i, int rank) {
    if (bytes > static_cast<std::size_t>(INT_MAX))
      throw transport_error(rank, "dualpipe: rank " + std::to_string(rank) + ": " +
                                      format_action(i) + " moves " + std::to_string(bytes) +
                                      " bytes; one MPI message holds at most " +
                                      std::to_string(INT_MAX) + " (split the tensor)");
    return static_cast<int>(bytes);
  }

  void add_request(MPI_Request r, part what, std::size_t index) {
    requests_.push_back(r);
    roles_.push_back({what, index});
  }

  void start_batch() {
    requests_.clear();
    roles_.clear();
    send_envelopes_.resize(sends_.size());
    recv_envelopes_.resize(recvs_.size());
    const MPI_Comm comm = data_->get();
    for (std::size_t k = 0; k < sends_.size(); ++k) {
      const posted_send& s = sends_[k];
      detail::envelope& e = send_envelopes_[k];
      e = {epoch_, static_cast<std::int32_t>(s.at.kind), s.at.stage, s.at.microbatch,
           rank_,  wire_traits<Tensor>::shape(*s.buffer)};
      const std::span<const std::byte> bytes = wire_traits<Tensor>::bytes(*s.buffer);
      if (const std::string problem = wire_shape_error(e.shape); !problem.empty())
        throw transport_error(rank_, "dualpipe: rank " + std::to_string(rank_) + ": " +
                                         format_action(s.at) + ": the tensor's wire shape is " +
                                         problem);
      if (bytes.size() != e.shape.bytes)
        throw transport_error(rank_, "dualpipe: rank " + std::to_string(rank_) + ": " +
                                         format_action(s.at) + ": the tensor's wire shape " +
                                         describe(e.shape) + " says " +
                                         std::to_string(e.shape.bytes) + " bytes, its bytes() " +
                                         std::to_string(bytes.size()));
      const int dest = s.at.peer;  // pipeline ranks are ranks of data_
      MPI_Request r = MPI_REQUEST_NULL;
      DUALPIPE_MPI_CHECK(MPI_Isend(&e, static_cast<int>(sizeof(e)), MPI_BYTE, dest,
                                   tag_of(s.at, false), comm, &r));
      add_request(r, part::send_header, k);
      // MPI reads the buffer, never writes it; its C API still wants void*.
      DUALPIPE_MPI_CHECK(MPI_Isend(const_cast<std::byte*>(bytes.data()),
                                   byte_count(bytes.size(), s.at, rank_), MPI_BYTE, dest,
                                   tag_of(s.at, true), comm, &r));
      add_request(r, part::send_bytes, k);
    }
    for (std::size_t k = 0; k < recvs_.size(); ++k) {
      const posted_recv& x = recvs_[k];
      MPI_Request r = MPI_REQUEST_NULL;
      DUALPIPE_MPI_CHECK(MPI_Irecv(&recv_envelopes_[k], static_cast<int>(sizeof(detail::envelope)),
                                   MPI_BYTE, x.at.peer, tag_of(x.at, false), comm, &r));
      add_request(r, part::recv_header, k);
    }
  }

  // A receive's header has landed: prove it is the send this receive
  // expects, shape the buffer and post the receive of the bytes in slot k.
  void header_arrived(std::size_t slot, std::size_t k) {
    const posted_recv& x = recvs_[k];
    const detail::envelope& e = recv_envelopes_[k];
    const instruction expected = counterpart(x.at, rank_);
    const auto fail = [&](const std::string& why) {
      throw transport_error(rank_, "dualpipe: rank " + std::to_string(rank_) + " posted " +
                                       waiting_on(x.at) + ", but " + why);
    };
    if (e.epoch != epoch_)
      fail(
          "the matching message is a stray of an earlier transport on the same processes "
          "(epoch " +
          std::to_string(e.epoch) + ", this one is " + std::to_string(epoch_) + ")");
    if (e.kind != static_cast<std::int32_t>(expected.kind) || e.stage != expected.stage ||
        e.microbatch != x.at.microbatch || e.sender != x.at.peer)
      fail("the matching message came from " +
           (e.kind >= 0 && e.kind < op_count
                ? format_action(
                      make_communication(static_cast<op>(e.kind), e.stage, e.microbatch, rank_))
                : std::string("an unknown instruction")) +
           " on rank " + std::to_string(e.sender) + " (expected " + format_action(expected) + ")");
    if (const std::string problem = wire_shape_error(e.shape); !problem.empty())
      fail("the sender's header holds " + problem);
    std::span<std::byte> target;
    try {
      target = wire_traits<Tensor>::prepare(*x.buffer, e.shape);
    } catch (const std::exception& ex) {
      fail(std::string("the buffer cannot take the message: ") + ex.what());
    }
    if (target.size() != e.shape.bytes)
      fail("wire_traits::prepare for " + describe(e.shape) + " gave " +
           std::to_string(target.size()) + " bytes of storage, not " +
           std::to_string(e.shape.bytes));
    MPI_Request r = MPI_REQUEST_NULL;
    DUALPIPE_MPI_CHECK(MPI_Irecv(target.data(), byte_count(target.size(), x.at, rank_), MPI_BYTE,
                                 x.at.peer, tag_of(x.at, true), data_->get(), &r));
    requests_[slot] = r;
    roles_[slot] = {part::recv_bytes, k};
  }

  void finish_batch() {
    std::size_t pending = requests_.size();
    indices_.resize(requests_.size());
    statuses_.resize(requests_.size());
    const auto deadline = clock::now() + options_.timeout;
    for (unsigned spins = 0; pending > 0; ++spins) {
      int completed = 0;
      DUALPIPE_MPI_CHECK(MPI_Testsome(static_cast<int>(requests_.size()), requests_.data(),
                                      &completed, indices_.data(), statuses_.data()));
      if (completed == MPI_UNDEFINED) break;  // every request is done
      for (int c = 0; c < completed; ++c) {
        const auto slot = static_cast<std::size_t>(indices_[static_cast<std::size_t>(c)]);
        const request_role role = roles_[slot];
        if (role.what == part::recv_header) {
          header_arrived(slot, role.index);
          continue;  // the same slot now holds the receive of the bytes
        }
        if (role.what == part::recv_bytes) {
          int count = 0;
          DUALPIPE_MPI_CHECK(
              MPI_Get_count(&statuses_[static_cast<std::size_t>(c)], MPI_BYTE, &count));
          const detail::envelope& e = recv_envelopes_[role.index];
          if (static_cast<std::uint64_t>(count) != e.shape.bytes)
            throw transport_error(rank_, "dualpipe: rank " + std::to_string(rank_) + ": " +
                                             waiting_on(recvs_[role.index].at) + " received " +
                                             std::to_string(count) + " bytes, its header said " +
                                             std::to_string(e.shape.bytes));
        }
        --pending;
      }
      if (completed > 0) {
        spins = 0;
        continue;
      }
      poll_notices([&] { return waiting_on(first_pending()); });
      if (clock::now() >= deadline) {
        const instruction first = first_pending();
        throw dualpipe::detail::timed_out(
            rank_, options_.timeout,
            "on " + waiting_on(first) +
                (is_send(first.kind) ? ": the peer never posted the matching receive"
                                     : ": no matching send arrived"));
      }
      back_off(spins);
    }
  }

  // The instruction of the oldest request still pending, in posting order.
  [[nodiscard]] instruction first_pending() const {
    for (std::size_t k = 0; k < requests_.size(); ++k)
      if (requests_[k] != MPI_REQUEST_NULL) {
        const request_role& r = roles_[k];
        return r.what == part::send_header || r.what == part::send_bytes ? sends_[r.index].at
                                                                         : recvs_[r.index].at;
      }
    return make_commit();
  }

  // Has another rank stopped the pipeline? Then this rank stops too.
  template <class Where>
  void poll_notices(Where&& where) {
    detail::abort_notice notice;
    for (;;) {
      int flag = 0;
      MPI_Status status;
      DUALPIPE_MPI_CHECK(
          MPI_Iprobe(MPI_ANY_SOURCE, detail::abort_tag, control_->get(), &flag, &status));
      if (flag == 0) return;
      DUALPIPE_MPI_CHECK(MPI_Recv(&notice, static_cast<int>(sizeof(notice)), MPI_BYTE,
                                  status.MPI_SOURCE, detail::abort_tag, control_->get(),
                                  MPI_STATUS_IGNORE));
      if (notice.epoch == epoch_) break;  // else a stray of an earlier transport
    }
    aborted_ = true;
    abort_rank_ = notice.origin;
    abort_why_.assign(notice.why, static_cast<std::size_t>(std::clamp<std::int32_t>(
                                      notice.length, 0, sizeof(notice.why))));
    throw_aborted(where());
  }

  // After a failed batch: withdraw what can be withdrawn. Receives are
  // cancelled; a send MPI has not delivered is left to MPI (cancelling sends
  // is deprecated and unreliable), and the communicators are never freed, so
  // no later communicator can receive it.
  void cancel_pending() noexcept {
    unfinished_ = true;
    for (std::size_t k = 0; k < requests_.size(); ++k)
      if (requests_[k] != MPI_REQUEST_NULL &&
          (roles_[k].what == part::recv_header || roles_[k].what == part::recv_bytes))
        (void)MPI_Cancel(&requests_[k]);
    const auto deadline = clock::now() + std::chrono::milliseconds(100);
    for (;;) {
      int done = 0;
      if (requests_.empty() ||
          MPI_Testall(static_cast<int>(requests_.size()), requests_.data(), &done,
                      MPI_STATUSES_IGNORE) != MPI_SUCCESS ||
          done != 0 || clock::now() >= deadline)
        break;
      std::this_thread::yield();
    }
    for (MPI_Request& r : requests_)
      if (r != MPI_REQUEST_NULL) (void)MPI_Request_free(&r);
    requests_.clear();
    roles_.clear();
  }

  // At destruction. After an abort or a failed batch or barrier, messages of this
  // pipeline may still be in flight: the communicators are kept (a few
  // bytes each) rather than freed for reuse by a later one.
  void release() noexcept {
    int finalized = 0;
    if (MPI_Finalized(&finalized) != MPI_SUCCESS || finalized != 0) {
      if (data_) data_->give_up();
      if (control_) control_->give_up();
      return;
    }
    for (MPI_Request& r : notice_requests_)
      if (r != MPI_REQUEST_NULL) (void)MPI_Request_free(&r);
    notice_requests_.clear();
    if (aborted_ || unfinished_) {
      if (data_) data_->give_up();
      if (control_) control_->give_up();
    }
  }

  // Waiting: poll at full speed briefly, then yield the core to the other
  // processes (ranks are often oversubscribed on a CPU node).
  static void back_off(unsigned spins) {
    if (spins > 64) std::this_thread::yield();
  }

  transport_options options_;
  std::vector<int> to_comm_;  // pipeline rank -> communicator rank
  std::unique_ptr<detail::owned_comm> data_, control_;
  MPI_Comm user_comm_ = MPI_COMM_NULL;
  int rank_ = -1;
  int tag_ub_ = 32767;

  std::vector<posted_send> sends_;
  std::vector<posted_recv> recvs_;
  std::vector<detail::envelope> send_envelopes_, recv_envelopes_;
  std::vector<MPI_Request> requests_;
  std::vector<request_role> roles_;
  std::vector<int> indices_;
  std::vector<MPI_Status> statuses_;

  std::uint64_t epoch_ = 0;
  bool unfinished_ = false;  // a failed batch or barrier may have left requests pending
  bool aborted_ = false;
  int abort_rank_ = -1;
  std::string abort_why_;
  detail::abort_notice notice_{};
  std::vector<MPI_Request> notice_requests_;
};

}  // namespace dualpipe::mpi
