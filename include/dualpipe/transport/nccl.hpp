// NCCL between GPUs: checked NCCL calls, a communicator handle that owns or
// borrows an ncclComm_t, a bootstrap helper that shares the unique id through
// a file or an environment variable, and the NCCL transport (below), which
// turns each commit batch of a table into one ncclGroupStart/End group.
#pragma once

#include <cuda_runtime.h>
#include <nccl.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "dualpipe/cuda/device_tensor.hpp"
#include "dualpipe/cuda/error.hpp"
#include "dualpipe/cuda/event.hpp"
#include "dualpipe/cuda/stream.hpp"
#include "dualpipe/transport/errors.hpp"
#include "dualpipe/schedule/action_syntax.hpp"
#include "dualpipe/schedule/instruction.hpp"
#include "dualpipe/transport/message_sizes.hpp"
#include "dualpipe/transport/transport.hpp"

namespace dualpipe::nccl {

namespace detail {

[[noreturn]] inline void throw_nccl_error(ncclResult_t status, const char* call, const char* file,
                                          int line) {
  const char* text = ncclGetErrorString(status);
  std::string message = text != nullptr ? text : "unknown NCCL error";
  // ncclGetLastError holds the detail NCCL logged for the failing call (which
  // peer, which transport): the part that tells a user what to fix.
  if (const char* last = ncclGetLastError(nullptr); last != nullptr && *last != '\0')
    message.append(": ").append(last);
  throw cuda::error("NCCL", static_cast<int>(status), message, call, file, line);
}

inline void check_nccl(ncclResult_t status, const char* call, const char* file, int line) {
  if (status != ncclSuccess) throw_nccl_error(status, call, file, line);
}

}  // namespace detail
}  // namespace dualpipe::nccl

#define DUALPIPE_NCCL_CHECK(call) \
  ::dualpipe::nccl::detail::check_nccl((call), #call, __FILE__, __LINE__)

namespace dualpipe::nccl {

// ---------------------------------------------------------------------------
// Bootstrap: every process of a job must hold the same ncclUniqueId before
// ncclCommInitRank. Rank 0 makes it; these helpers carry it to the others.

inline constexpr std::size_t unique_id_bytes = sizeof(ncclUniqueId);
inline constexpr const char* unique_id_variable = "DUALPIPE_NCCL_UNIQUE_ID";

[[nodiscard]] inline ncclUniqueId new_unique_id() {
  ncclUniqueId id{};
  DUALPIPE_NCCL_CHECK(ncclGetUniqueId(&id));
  return id;
}

// Two lower-case hex digits per byte: safe in an environment variable, a
// command line or a file.
[[nodiscard]] inline std::string unique_id_to_hex(const ncclUniqueId& id) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string s;
  s.reserve(2 * unique_id_bytes);
  for (std::size_t i = 0; i < unique_id_bytes; ++i) {
    const auto byte = static_cast<unsigned char>(id.internal[i]);
    s.push_back(digits[byte >> 4]);
    s.push_back(digits[byte & 0xF]);
  }
  return s;
}

// Throws std::invalid_argument saying what is wrong (length or which character).
[[nodiscard]] inline ncclUniqueId unique_id_from_hex(std::string_view hex) {
  // A trailing newline is what `echo` and most files add.
  while (!hex.empty() && (hex.back() == '\n' || hex.back() == '\r' || hex.back() == ' '))
    hex.remove_suffix(1);
  if (hex.size() != 2 * unique_id_bytes)
    throw std::invalid_argument("dualpipe::nccl: an NCCL unique id is " +
                                std::to_string(2 * unique_id_bytes) + " hex digits, got " +
                                std::to_string(hex.size()) + " characters");
  auto value = [&](std::size_t i) -> int {
    const char c = hex[i];
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    throw std::invalid_argument("dualpipe::nccl: NCCL unique id has a non-hex character '" +
                                std::string(1, c) + "' at position " + std::to_string(i));
  };
  ncclUniqueId id{};
  for (std::size_t i = 0; i < unique_id_bytes; ++i)
    id.internal[i] = static_cast<char>(value(2 * i) * 16 + value(2 * i + 1));
  return id;
}

// The id from an environment variable a launcher exported (for instance
// DUALPIPE_NCCL_UNIQUE_ID=$(program --print-nccl-id) on rank 0's host, then
// passed to every process). Throws if unset or malformed.
[[nodiscard]] inline ncclUniqueId unique_id_from_environment(
    const char* variable = unique_id_variable) {
  const char* value = std::getenv(variable);
  if (value == nullptr)
    throw std::runtime_error(std::string("dualpipe::nccl: environment variable ") + variable +
                             " is not set; export the hex NCCL unique id made on rank 0");
  try {
    return unique_id_from_hex(value);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(std::string(e.what()) + " (in environment variable " + variable +
                                ")");
  }
}

// Rank 0 makes a new id and publishes it at `path` (a file every process can
// read, e.g. on a shared file system); the other ranks wait for it, up to
// `timeout`, then throw rather than hang. Rank 0 writes a temporary file and
// renames it, so nobody reads half an id. Rank 0 refuses a path that already
// exists: a file left by an earlier run would hand the other ranks a stale id
// and they would wait in ncclCommInitRank for peers that never come.
[[nodiscard]] inline ncclUniqueId unique_id_through_file(
    const std::filesystem::path& path, int rank,
    std::chrono::milliseconds timeout = std::chrono::seconds(120)) {
  namespace fs = std::filesystem;
  if (rank < 0)
    throw std::invalid_argument("dualpipe::nccl: rank must be >= 0, got " + std::to_string(rank));
  if (rank == 0) {
    std::error_code ec;
    if (fs::exists(path, ec))
      throw std::runtime_error("dualpipe::nccl: rank 0 found " + path.string() +
                               " already there; remove it or give each run its own path "
                               "(the other ranks could read an earlier run's id)");
    const ncclUniqueId id = new_unique_id();
    fs::path temporary = path;
    temporary += ".tmp";
    {
      std::ofstream out(temporary, std::ios::trunc);
      out << unique_id_to_hex(id) << '\n';
      out.flush();
      if (!out)
        throw std::runtime_error("dualpipe::nccl: rank 0 could not write " + temporary.string());
    }
    fs::rename(temporary, path, ec);
    if (ec)
      throw std::runtime_error("dualpipe::nccl: rank 0 could not rename " + temporary.string() +
                               " to " + path.string() + ": " + ec.message());
    return id;
  }
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  auto pause = std::chrono::milliseconds(1);
  for (;;) {
    std::ifstream in(path);
    if (in) {
      const std::string text((std::istreambuf_iterator<char>(in)),
                             std::istreambuf_iterator<char>());
      try {
        return unique_id_from_hex(text);
      } catch (const std::invalid_argument& e) {
        throw std::invalid_argument(std::string(e.what()) + " (in " + path.string() + ")");
      }
    }
    if (std::chrono::steady_clock::now() >= deadline)
      throw std::runtime_error("dualpipe::nccl: rank " + std::to_string(rank) + " waited " +
                               std::to_string(timeout.count()) + " ms for the NCCL unique id at " +
                               path.string() +
                               "; did rank 0 start, and do all ranks see the same file system?");
    std::this_thread::sleep_for(pause);
    if (pause < std::chrono::milliseconds(100)) pause *= 2;
  }
}

// ---------------------------------------------------------------------------
// A communicator: owns an ncclComm_t it created (destroyed with it) or
// borrows the user's (left alone).

class communicator {
 public:
  communicator() noexcept = default;

  // Collective over `ranks` processes/threads: every rank calls it with the
  // same id. The calling thread's current device is the one NCCL binds.
  [[nodiscard]] static communicator create(int ranks, const ncclUniqueId& id, int rank) {
    if (ranks < 1 || rank < 0 || rank >= ranks)
      throw std::invalid_argument("dualpipe::nccl: rank " + std::to_string(rank) +
                                  " is outside a communicator of " + std::to_string(ranks) +
                                  " ranks");
    communicator c;
    DUALPIPE_NCCL_CHECK(ncclCommInitRank(&c.comm_, ranks, id, rank));
    c.owned_ = true;
    return c;
  }

  // The user's communicator, e.g. the one their data-parallel code already
  // made; its life stays theirs.
  [[nodiscard]] static communicator borrow(ncclComm_t comm) {
    if (comm == nullptr) throw std::invalid_argument("dualpipe::nccl: borrowed a null ncclComm_t");
    communicator c;
    c.comm_ = comm;
    c.owned_ = false;
    return c;
  }

  communicator(const communicator&) = delete;
  communicator& operator=(const communicator&) = delete;
  communicator(communicator&& other) noexcept
      : comm_(std::exchange(other.comm_, nullptr)), owned_(std::exchange(other.owned_, false)) {}
  communicator& operator=(communicator&& other) noexcept {
    if (this != &other) {
      destroy();
      comm_ = std::exchange(other.comm_, nullptr);
      owned_ = std::exchange(other.owned_, false);
    }
    return *this;
  }
  ~communicator() { destroy(); }

  [[nodiscard]] ncclComm_t get() const noexcept { return comm_; }
  [[nodiscard]] bool owned() const noexcept { return owned_; }
  [[nodiscard]] int size() const {
    int n = 0;
    DUALPIPE_NCCL_CHECK(ncclCommCount(comm_, &n));
    return n;
  }
  [[nodiscard]] int rank() const {
    int r = 0;
    DUALPIPE_NCCL_CHECK(ncclCommUserRank(comm_, &r));
    return r;
  }

 private:
  void destroy() noexcept {
    if (comm_ != nullptr && owned_) (void)ncclCommDestroy(comm_);
    comm_ = nullptr;
    owned_ = false;
  }

  ncclComm_t comm_ = nullptr;
  bool owned_ = false;
};

namespace detail {

// NCCL's element type for T; bytes for anything else (half, bfloat16, user
// structs): the count is then multiplied by sizeof(T).
template <class T>
struct nccl_type {
  static constexpr ncclDataType_t type = ncclUint8;
  static constexpr std::size_t scale = sizeof(T);
};
template <>
struct nccl_type<float> {
  static constexpr ncclDataType_t type = ncclFloat32;
  static constexpr std::size_t scale = 1;
};
template <>
struct nccl_type<double> {
  static constexpr ncclDataType_t type = ncclFloat64;
  static constexpr std::size_t scale = 1;
};
template <>
struct nccl_type<std::int32_t> {
  static constexpr ncclDataType_t type = ncclInt32;
  static constexpr std::size_t scale = 1;
};
template <>
struct nccl_type<std::int64_t> {
  static constexpr ncclDataType_t type = ncclInt64;
  static constexpr std::size_t scale = 1;
};

}  // namespace detail
}  // namespace dualpipe::nccl

namespace dualpipe {

// ---------------------------------------------------------------------------
// The NCCL transport: one pipeline rank's endpoint, one rank per GPU. Each
// commit becomes one ncclGroupStart/End group of ncclSend/ncclRecv, posted in
// the table's order (which validate() proved cannot deadlock under the
// blocking protocol), on the rank's communication stream:
//   - the communication stream first waits on an event recorded on the
//     compute stream, so sends read buffers the compute has finished;
//   - the compute stream then waits on an event recorded after the group, so
//     compute after the commit sees the received buffers: the reference's
//     batch_isend_irecv + wait, with the host never blocking;
//   - commit() returns a ticket (that event) which the executor polls before
//     it reuses the sent buffers.
// NCCL needs the receive size up front: every message holds
// `message_elements` elements (the activation of one micro-batch at a stage
// boundary, as the reference's fixed P2P tensor shape), or as many as a
// message_sizes rule gives for it (message_sizes.hpp: every rank must be given
// the same rule, since NCCL has no way to check that two ranks agree).
//
// NCCL does not allow two ranks of one communicator on one GPU: for several
// pipeline ranks on one GPU use device_local_transport.
template <cuda::device_tensor Tensor>
class nccl_transport {
 public:
  using tensor_type = Tensor;
  using value_type = typename Tensor::value_type;

  struct ticket {
    std::size_t slot = std::numeric_limits<std::size_t>::max();  // none: empty commit
    std::uint64_t generation = 0;
  };

  // `comm` is borrowed and must outlive the transport: the user's own
  // communicator or one made by nccl::communicator. `rank_mapping[p]` is the
  // communicator rank of pipeline rank p (as the reference's rank_mapping);
  // empty means pipeline rank p is communicator rank p. `compute` is the
  // stream this rank's stages enqueue on.
  nccl_transport(ncclComm_t comm, int pipeline_rank, int pipeline_ranks, cudaStream_t compute,
                 std::size_t message_elements, std::vector<int> rank_mapping = {})
      : nccl_transport(comm, pipeline_rank, pipeline_ranks, compute, fixed_sizes(message_elements),
                       std::move(rank_mapping)) {}

  // The same with a size per message: `sizes` gives the element count of
  // each message from its message_key, on the sender (which checks its buffer
  // against it) and on the receiver (which sizes its buffer from it).
  nccl_transport(ncclComm_t comm, int pipeline_rank, int pipeline_ranks, cudaStream_t compute,
                 message_sizes sizes, std::vector<int> rank_mapping = {})
      : comm_(comm),
        rank_(pipeline_rank),
        ranks_(pipeline_ranks),
        compute_(compute),
        sizes_(std::move(sizes)),
        mapping_(std::move(rank_mapping)),
        stream_(cuda::stream::priority_range().second) {
    if (comm == nullptr)
      throw std::invalid_argument("dualpipe::nccl_transport: the communicator is null");
    if (pipeline_ranks < 1 || pipeline_rank < 0 || pipeline_rank >= pipeline_ranks)
      throw std::invalid_argument("dualpipe::nccl_transport: pipeline rank " +
                                  std::to_string(pipeline_rank) + " is outside 0.." +
                                  std::to_string(pipeline_ranks - 1));
    int comm_size = 0;
    DUALPIPE_NCCL_CHECK(ncclCommCount(comm_, &comm_size));
    int comm_rank = 0;
    DUALPIPE_NCCL_CHECK(ncclCommUserRank(comm_, &comm_rank));
    if (mapping_.empty()) {
      if (comm_size < pipeline_ranks)
        throw std::invalid_argument("dualpipe::nccl_transport: " + std::to_string(pipeline_ranks) +
                                    " pipeline ranks do not fit a communicator of " +
                                    std::to_string(comm_size) + " ranks; pass a rank mapping");
      for (int p = 0; p < pipeline_ranks; ++p) mapping_.push_back(p);
    }
    if (static_cast<int>(mapping_.size()) != pipeline_ranks)
      throw std::invalid_argument("dualpipe::nccl_transport: the rank mapping has " +
                                  std::to_string(mapping_.size()) + " entries for " +
                                  std::to_string(pipeline_ranks) + " pipeline ranks");
    for (std::size_t p = 0; p < mapping_.size(); ++p)
      if (mapping_[p] < 0 || mapping_[p] >= comm_size)
        throw std::invalid_argument("dualpipe::nccl_transport: pipeline rank " + std::to_string(p) +
                                    " maps to communicator rank " + std::to_string(mapping_[p]) +
                                    ", outside 0.." + std::to_string(comm_size - 1));
    for (std::size_t p = 0; p < mapping_.size(); ++p)
      for (std::size_t q = 0; q < p; ++q)
        if (mapping_[p] == mapping_[q])
          throw std::invalid_argument(
              "dualpipe::nccl_transport: pipeline ranks " + std::to_string(q) + " and " +
              std::to_string(p) + " both map to communicator rank " + std::to_string(mapping_[p]));
    if (mapping_[static_cast<std::size_t>(pipeline_rank)] != comm_rank)
      throw std::invalid_argument(
          "dualpipe::nccl_transport: pipeline rank " + std::to_string(pipeline_rank) +
          " maps to communicator rank " +
          std::to_string(mapping_[static_cast<std::size_t>(pipeline_rank)]) +
          " but this process is communicator rank " + std::to_string(comm_rank));
  }

  nccl_transport(const nccl_transport&) = delete;
  nccl_transport& operator=(const nccl_transport&) = delete;
  nccl_transport(nccl_transport&&) = delete;
  nccl_transport& operator=(nccl_transport&&) = delete;
  ~nccl_transport() {
    try {
      stream_.synchronize();  // sent buffers are freed by their owner after this
    } catch (...) {
      // A failed device cannot be waited for; nothing more to do here.
    }
  }

  [[nodiscard]] int rank() const noexcept { return rank_; }
  [[nodiscard]] int ranks() const noexcept { return ranks_; }
  [[nodiscard]] cudaStream_t compute_stream() const noexcept { return compute_; }
  [[nodiscard]] cudaStream_t communication_stream() const noexcept { return stream_.get(); }
  [[nodiscard]] int communicator_rank(int pipeline_rank) const {
    return mapping_.at(static_cast<std::size_t>(pipeline_rank));
  }

  [[nodiscard]] const message_sizes& sizes() const noexcept { return sizes_; }

  void post_send(const instruction& i, const Tensor& buffer) {
    detail::check_posted(i, is_send(i.kind), "post_send takes a SEND_F or SEND_B instruction",
                         rank_, ranks_);
    const auto count = static_cast<std::size_t>(buffer.size());
    sizes_.check_send(i, count, rank_);
    posted_.push_back({i, buffer.data(), nullptr, count});
  }
  void post_recv(const instruction& i, Tensor& buffer) {
    detail::check_posted(i, is_recv(i.kind), "post_recv takes a RECV_F or RECV_B instruction",
                         rank_, ranks_);
    posted_.push_back({i, nullptr, &buffer, sizes_.elements_of(i, rank_)});
  }

  [[nodiscard]] ticket commit() {
    struct clear_posted {
      std::vector<posted>& p;
      ~clear_posted() { p.clear(); }
    } clear{posted_};
    if (aborted_)
      throw pipeline_aborted(rank_, rank_, why_,
                             "rank " + std::to_string(rank_) + " stopped at a commit: " + why_);
    if (posted_.empty()) return {};
    // Receive buffers get their size before the group: in the first step
    // only when every message has one size.
    for (posted& p : posted_)
      if (p.target != nullptr && static_cast<std::size_t>(p.target->size()) != p.count)
        p.target->resize(p.count);
    ready_.record(compute_);
    stream_.wait(ready_);
    using type = nccl::detail::nccl_type<value_type>;
    DUALPIPE_NCCL_CHECK(ncclGroupStart());
    try {
      for (const posted& p : posted_) {
        const int peer = mapping_[static_cast<std::size_t>(p.at.peer)];
        const std::size_t count = p.count * type::scale;
        if (p.target == nullptr)
          DUALPIPE_NCCL_CHECK(ncclSend(p.source, count, type::type, peer, comm_, stream_.get()));
        else
          DUALPIPE_NCCL_CHECK(
              ncclRecv(p.target->data(), count, type::type, peer, comm_, stream_.get()));
      }
    } catch (...) {
      (void)ncclGroupEnd();  // close the group before reporting
      throw;
    }
    DUALPIPE_NCCL_CHECK(ncclGroupEnd());
    const std::size_t slot = free_slot();
    slots_[slot]->done.record(stream_.get());
    DUALPIPE_CUDA_CHECK(cudaStreamWaitEvent(compute_, slots_[slot]->done.get(), 0));
    return {slot, slots_[slot]->generation};
  }

  [[nodiscard]] bool complete(const ticket& t) {
    if (t.slot == std::numeric_limits<std::size_t>::max()) return true;
    const auto& s = *slots_[t.slot];
    if (s.generation != t.generation || !s.busy) return true;  // seen complete and reused
    return s.done.query();
  }
  void wait(const ticket& t) {
    if (t.slot == std::numeric_limits<std::size_t>::max()) return;
    const auto& s = *slots_[t.slot];
    if (s.generation != t.generation || !s.busy) return;
    s.done.synchronize();
  }

  // NCCL has no way to tell peers: a multi-process job's launcher ends the
  // job as on any NCCL failure. This endpoint refuses further commits.
  void abort(std::string_view why) noexcept {
    aborted_ = true;
    try {
      why_ = std::string(why);
    } catch (...) {
      why_.clear();
    }
    posted_.clear();
  }

  // Reports an asynchronous NCCL failure (a peer died, a network error)
  // without synchronising.
  void finish_step() {
    ncclResult_t async = ncclSuccess;
    DUALPIPE_NCCL_CHECK(ncclCommGetAsyncError(comm_, &async));
    if (async != ncclSuccess && async != ncclInProgress)
      nccl::detail::throw_nccl_error(async, "ncclCommGetAsyncError(comm) after the step", __FILE__,
                                     __LINE__);
  }

 private:
  struct posted {
    instruction at;
    const value_type* source;  // sends
    Tensor* target;            // receives
    std::size_t count;         // elements, from the size rule
  };
  struct completion_slot {
    cuda::event done;
    std::uint64_t generation = 0;
    bool busy = false;
  };

  static message_sizes fixed_sizes(std::size_t message_elements) {
    if (message_elements == 0)
      throw std::invalid_argument(
          "dualpipe::nccl_transport: message_elements must be the element count of one message "
          "(NCCL needs the receive size before the data arrives)");
    return message_sizes(message_elements);
  }

  // A completion event whose previous batch has finished (or a new one:
  // warm-up only).
  std::size_t free_slot() {
    for (std::size_t k = 0; k < slots_.size(); ++k) {
      auto& s = *slots_[k];
      if (s.busy) {
        if (!s.done.query()) continue;
        s.busy = false;
        ++s.generation;
      }
      s.busy = true;
      return k;
    }
    slots_.push_back(std::make_unique<completion_slot>());
    slots_.back()->busy = true;
    return slots_.size() - 1;
  }

  ncclComm_t comm_;
  int rank_;
  int ranks_;
  cudaStream_t compute_;
  message_sizes sizes_;
  std::vector<int> mapping_;
  cuda::stream stream_;
  cuda::event ready_;
  std::vector<std::unique_ptr<completion_slot>> slots_;
  std::vector<posted> posted_;
  bool aborted_ = false;
  std::string why_;
};

}  // namespace dualpipe
