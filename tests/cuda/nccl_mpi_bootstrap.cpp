// The NCCL unique id over MPI (run under mpirun): every rank gets the root's
// id, whichever rank is the root, and a bad root is refused on every rank.
// ncclGetUniqueId needs no GPU, so this runs on every machine with NCCL.
#include <mpi.h>
#include <nccl.h>

#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "dualpipe/transport/nccl_mpi.hpp"

namespace nccl = dualpipe::nccl;

namespace {

// Every rank's id as hex, gathered on every rank.
std::vector<std::string> gather_hex(const ncclUniqueId& id) {
  int size = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const std::string mine = nccl::unique_id_to_hex(id);
  std::vector<char> all(mine.size() * static_cast<std::size_t>(size));
  MPI_Allgather(mine.data(), static_cast<int>(mine.size()), MPI_CHAR, all.data(),
                static_cast<int>(mine.size()), MPI_CHAR, MPI_COMM_WORLD);
  std::vector<std::string> out;
  for (int r = 0; r < size; ++r)
    out.emplace_back(all.data() + static_cast<std::size_t>(r) * mine.size(), mine.size());
  return out;
}

}  // namespace

TEST_CASE("every rank receives the root's NCCL unique id") {
  int size = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  for (int root = 0; root < size; ++root) {
    const ncclUniqueId id = nccl::unique_id_through_mpi(MPI_COMM_WORLD, root);
    const std::vector<std::string> all = gather_hex(id);
    for (const std::string& h : all) CHECK(h == all.front());
    CHECK(all.front() != std::string(2 * nccl::unique_id_bytes, '0'));
  }
  // Two calls make two ids.
  const ncclUniqueId a = nccl::unique_id_through_mpi(MPI_COMM_WORLD);
  const ncclUniqueId b = nccl::unique_id_through_mpi(MPI_COMM_WORLD);
  CHECK(nccl::unique_id_to_hex(a) != nccl::unique_id_to_hex(b));
}

TEST_CASE("a root outside the communicator is refused on every rank") {
  int size = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  CHECK_THROWS_WITH(nccl::unique_id_through_mpi(MPI_COMM_WORLD, size),
                    "dualpipe::nccl::unique_id_through_mpi: root " + std::to_string(size) +
                        " is outside the communicator's 0.." + std::to_string(size - 1));
  CHECK_THROWS_WITH(nccl::unique_id_through_mpi(MPI_COMM_NULL),
                    "dualpipe::nccl::unique_id_through_mpi: the communicator is MPI_COMM_NULL");
}
