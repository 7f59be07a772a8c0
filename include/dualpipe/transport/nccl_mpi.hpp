// NCCL's unique id carried over MPI, for jobs started by an MPI launcher:
// rank `root` of an MPI communicator makes the id and broadcasts it, as
// nccl-tests does. Beside the file and environment helpers of nccl.hpp.
#pragma once

#include <mpi.h>
#include <nccl.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>

#include "dualpipe/transport/mpi.hpp"
#include "dualpipe/transport/nccl.hpp"

namespace dualpipe::nccl {

// Collective over `comm`: every process calls it and gets the same id. If
// the root cannot make one (no NCCL, no network interface), every process
// throws std::runtime_error with the root's reason instead of waiting.
[[nodiscard]] inline ncclUniqueId unique_id_through_mpi(MPI_Comm comm, int root = 0) {
  if (comm == MPI_COMM_NULL)
    throw std::invalid_argument(
        "dualpipe::nccl::unique_id_through_mpi: the communicator is "
        "MPI_COMM_NULL");
  int size = 0, rank = 0;
  DUALPIPE_MPI_CHECK(MPI_Comm_size(comm, &size));
  DUALPIPE_MPI_CHECK(MPI_Comm_rank(comm, &rank));
  if (root < 0 || root >= size)
    throw std::invalid_argument("dualpipe::nccl::unique_id_through_mpi: root " +
                                std::to_string(root) + " is outside the communicator's 0.." +
                                std::to_string(size - 1));
  struct message {
    int ok = 0;
    ncclUniqueId id{};
    char error[512] = {};
  } m;
  if (rank == root) {
    try {
      m.id = new_unique_id();
      m.ok = 1;
    } catch (const std::exception& e) {
      const std::size_t length = std::min(std::strlen(e.what()), sizeof(m.error) - 1);
      std::memcpy(m.error, e.what(), length);
    }
  }
  DUALPIPE_MPI_CHECK(MPI_Bcast(&m, static_cast<int>(sizeof(m)), MPI_BYTE, root, comm));
  if (m.ok == 0)
    throw std::runtime_error("dualpipe::nccl: rank " + std::to_string(root) +
                             " could not make the NCCL unique id: " + m.error);
  return m.id;
}

}  // namespace dualpipe::nccl
