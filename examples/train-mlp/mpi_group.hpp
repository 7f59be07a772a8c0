// The examples' collectives (see thread_group.hpp for what each does) for
// ranks that are MPI processes: one rank per process of a communicator, rank
// 0 of the communicator being rank 0 of the group. Also the frame of an
// example's MPI job (MPI_Init and MPI_Finalize, the job's size against
// --ranks).
#pragma once

#include <mpi.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <span>
#include <type_traits>
#include <vector>

#include "command_line.hpp"
#include "dualpipe/transport/mpi.hpp"

namespace train_mlp {

class mpi_group {
 public:
  // `comm` must outlive the group. The pipeline's transport makes its
  // own communicators, so this traffic never meets the pipeline's.
  explicit mpi_group(MPI_Comm comm) : comm_(comm) {
    DUALPIPE_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
    DUALPIPE_MPI_CHECK(MPI_Comm_size(comm_, &size_));
  }

  [[nodiscard]] int rank() const noexcept { return rank_; }
  [[nodiscard]] int size() const noexcept { return size_; }

  void barrier() { DUALPIPE_MPI_CHECK(MPI_Barrier(comm_)); }

  template <class T>
  std::vector<std::vector<T>> gather(std::span<const T> mine) {
    const int count = static_cast<int>(mine.size());
    std::vector<int> counts(rank_ == 0 ? static_cast<std::size_t>(size_) : 0);
    DUALPIPE_MPI_CHECK(MPI_Gather(&count, 1, MPI_INT, counts.data(), 1, MPI_INT, 0, comm_));
    std::vector<int> offsets(counts.size());
    int total = 0;
    for (std::size_t r = 0; r < counts.size(); ++r) {
      offsets[r] = total;
      total += counts[r];
    }
    std::vector<T> flat(static_cast<std::size_t>(total));
    DUALPIPE_MPI_CHECK(MPI_Gatherv(mine.data(), count, datatype<T>(), flat.data(), counts.data(),
                                   offsets.data(), datatype<T>(), 0, comm_));
    std::vector<std::vector<T>> all(counts.size());
    for (std::size_t r = 0; r < counts.size(); ++r)
      all[r].assign(flat.begin() + offsets[r], flat.begin() + offsets[r] + counts[r]);
    return all;
  }

  template <class T>
  void exchange(int peer, std::span<const T> send, std::span<T> receive) {
    if (peer < 0) return;
    // Equal sizes on both sides, so MPI's truncation check is the size check.
    DUALPIPE_MPI_CHECK(MPI_Sendrecv(send.data(), static_cast<int>(send.size()), datatype<T>(), peer,
                                    0, receive.data(), static_cast<int>(receive.size()),
                                    datatype<T>(), peer, 0, comm_, MPI_STATUS_IGNORE));
  }

  template <class T>
  std::vector<T> reduce_max(std::span<const T> mine) {
    std::vector<T> out(rank_ == 0 ? mine.size() : 0);
    DUALPIPE_MPI_CHECK(MPI_Reduce(mine.data(), out.data(), static_cast<int>(mine.size()),
                                  datatype<T>(), MPI_MAX, 0, comm_));
    return out;
  }

  template <class T>
    requires std::is_trivially_copyable_v<T>
  T broadcast(T value) {
    DUALPIPE_MPI_CHECK(MPI_Bcast(&value, static_cast<int>(sizeof(T)), MPI_BYTE, 0, comm_));
    return value;
  }

 private:
  template <class T>
  static MPI_Datatype datatype() {
    if constexpr (std::is_same_v<T, int>)
      return MPI_INT;
    else if constexpr (std::is_same_v<T, std::int64_t>)
      return MPI_INT64_T;
    else if constexpr (std::is_same_v<T, float>)
      return MPI_FLOAT;
    else {
      static_assert(std::is_same_v<T, double>, "train_mlp::mpi_group: T is int, int64, f32 or f64");
      return MPI_DOUBLE;
    }
  }

  MPI_Comm comm_;
  int rank_ = 0;
  int size_ = 0;
};

// MPI_Init and MPI_Finalize around everything a process does (the library
// never calls them); whatever holds MPI resources lives inside.
class mpi_session {
 public:
  mpi_session(int& argc, char**& argv) { DUALPIPE_MPI_CHECK(MPI_Init(&argc, &argv)); }
  mpi_session(const mpi_session&) = delete;
  mpi_session& operator=(const mpi_session&) = delete;
  ~mpi_session() { (void)MPI_Finalize(); }
};

// An example's MPI job: inside an mpi_session, the job's size checked
// against --ranks, then run_job (the header printed by rank 0). 2 when the
// job has the wrong size or the settings name no table.
template <class Header, class Run>
int run_mpi_job(int& argc, char**& argv, const run_settings& cfg, const char* program,
                Header&& header, Run&& run) {
  const mpi_session session(argc, argv);
  int rank = 0, size = 0;
  DUALPIPE_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
  DUALPIPE_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &size));
  if (size != cfg.ranks) {
    if (rank == 0)
      std::fprintf(stderr,
                   "%s: the MPI job has %d process%s but --ranks is %d (start it with mpirun "
                   "-np %d)\n",
                   program, size, size == 1 ? "" : "es", cfg.ranks, cfg.ranks);
    return 2;
  }
  const int code = run_job(cfg, program, rank == 0, header, run);
  std::fflush(stdout);  // before MPI_Finalize, so mpirun has all of it when the job ends
  return code;
}

}  // namespace train_mlp
