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
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "dualpipe/cuda/error.hpp"

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
  if (rank < 0) throw std::invalid_argument("dualpipe::nccl: rank must be >= 0, got " +
                                            std::to_string(rank));
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
      const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      try {
        return unique_id_from_hex(text);
      } catch (const std::invalid_argument& e) {
        throw std::invalid_argument(std::string(e.what()) + " (in " + path.string() + ")");
      }
    }
    if (std::chrono::steady_clock::now() >= deadline)
      throw std::runtime_error(
          "dualpipe::nccl: rank " + std::to_string(rank) + " waited " +
          std::to_string(timeout.count()) + " ms for the NCCL unique id at " + path.string() +
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

}  // namespace dualpipe::nccl
