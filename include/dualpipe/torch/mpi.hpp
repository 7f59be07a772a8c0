// DualPipe's mirrored gradients of torch modules across MPI processes: rank
// r and its mirror P-1-r swap their copies' gradients over the
// communicator and both add them, so the copies stay identical bit for bit
// (addition of two numbers commutes exactly). Call it on both ranks of the
// pair after the step, with the parameters of the stages the rank holds, in
// ascending stage order (both ranks hold the same two stages, so the lists
// line up; a shape list that differs is an error on both ranks, before any
// gradient changes). A rank that is its own mirror (the middle rank for odd
// P, or a placement without mirrors: pass mirror < 0) returns at once.
//
// Needs MPI (mpi.h; the caller initialises MPI) and libtorch.
#pragma once

#include <mpi.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "dualpipe/torch/mirrored.hpp"
#include "dualpipe/torch/tensor.hpp"
#include "dualpipe/transport/errors.hpp"
#include "dualpipe/transport/mpi.hpp"

namespace dualpipe::libtorch {

namespace detail {

// What the two ranks compare before they touch a gradient: the count of
// parameters, then per parameter its element type, dimensions and sizes.
inline std::vector<std::int64_t> mirror_signature(const std::vector<at::Tensor>& parameters) {
  std::vector<std::int64_t> out{static_cast<std::int64_t>(parameters.size())};
  for (const at::Tensor& p : parameters) {
    out.push_back(static_cast<std::int64_t>(p.scalar_type()));
    out.push_back(p.dim());
    for (const std::int64_t d : p.sizes()) out.push_back(d);
  }
  return out;
}

// Posts both requests and polls them until done, or throws
// transport_timeout after `timeout`.
inline void exchange_bytes(const void* send, void* recv, std::size_t bytes, int peer, int tag,
                           MPI_Comm comm, int rank, std::chrono::milliseconds timeout,
                           const char* what) {
  const auto* out = static_cast<const char*>(send);
  auto* in = static_cast<char*>(recv);
  constexpr std::size_t chunk = std::size_t{1} << 30;  // MPI counts are ints
  std::size_t offset = 0;
  do {
    const int n = static_cast<int>(std::min(chunk, bytes - offset));
    MPI_Request requests[2];
    DUALPIPE_MPI_CHECK(MPI_Irecv(in + offset, n, MPI_BYTE, peer, tag, comm, &requests[0]));
    DUALPIPE_MPI_CHECK(MPI_Isend(out + offset, n, MPI_BYTE, peer, tag, comm, &requests[1]));
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (int done = 0;;) {
      DUALPIPE_MPI_CHECK(MPI_Testall(2, requests, &done, MPI_STATUSES_IGNORE));
      if (done != 0) break;
      if (std::chrono::steady_clock::now() >= deadline) {
        (void)MPI_Cancel(&requests[0]);
        throw dualpipe::detail::timed_out(rank, timeout,
                                          std::string("for mirror rank ") + std::to_string(peer) +
                                              " in sum_mirrored_gradients (" + what + ")");
      }
    }
    offset += static_cast<std::size_t>(n);
  } while (offset < bytes);
}

}  // namespace detail

struct mirror_exchange_options {
  // How long a rank waits for its mirror before it throws transport_timeout.
  std::chrono::milliseconds timeout = std::chrono::seconds(60);
  // The MPI tag of both messages (pick one your program uses for nothing else).
  int tag = 7101;
};

// Sums this rank's parameters' gradients with those of the same parameters
// on `mirror` (a rank of `comm`), into both.
inline void sum_mirrored_gradients(std::vector<at::Tensor> parameters, MPI_Comm comm, int mirror,
                                   mirror_exchange_options options = {}) {
  int rank = 0;
  DUALPIPE_MPI_CHECK(MPI_Comm_rank(comm, &rank));
  if (mirror < 0 || mirror == rank) return;

  const std::vector<std::int64_t> mine = detail::mirror_signature(parameters);
  std::int64_t lengths[2] = {static_cast<std::int64_t>(mine.size()), 0};
  detail::exchange_bytes(&lengths[0], &lengths[1], sizeof(std::int64_t), mirror, options.tag, comm,
                         rank, options.timeout, "the parameter list's length");
  std::vector<std::int64_t> theirs(static_cast<std::size_t>(lengths[1] < 0 ? 0 : lengths[1]));
  if (lengths[0] == lengths[1])
    detail::exchange_bytes(mine.data(), theirs.data(), mine.size() * sizeof(std::int64_t), mirror,
                           options.tag, comm, rank, options.timeout, "the parameters' shapes");
  if (lengths[0] != lengths[1] || mine != theirs)
    throw std::invalid_argument(
        "dualpipe::libtorch::sum_mirrored_gradients: rank " + std::to_string(rank) +
        "'s parameters and those of its mirror rank " + std::to_string(mirror) +
        " differ in count, shape or element type (pass the held stages' parameters in "
        "ascending stage order on both ranks)");

  const torch::NoGradGuard no_grad;
  std::size_t total = 0;
  for (at::Tensor& p : parameters) total += detail::defined_grad(p).nbytes();
  std::vector<std::byte> out(total), in(total);
  std::size_t offset = 0;
  for (at::Tensor& p : parameters) {
    const at::Tensor g = p.grad().contiguous();
    std::memcpy(out.data() + offset, g.data_ptr(), g.nbytes());
    offset += g.nbytes();
  }
  detail::exchange_bytes(out.data(), in.data(), total, mirror, options.tag, comm, rank,
                         options.timeout, "the gradients");
  offset = 0;
  for (at::Tensor& p : parameters) {
    at::Tensor& g = p.mutable_grad();
    const at::Tensor other =
        at::from_blob(in.data() + offset, g.sizes(), at::TensorOptions().dtype(g.scalar_type()));
    g.add_(other);
    offset += g.nbytes();
  }
}

}  // namespace dualpipe::libtorch
