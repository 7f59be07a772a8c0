// The Catch2 runner of the tests that run under mpirun: every process runs
// the whole session between MPI_Init and MPI_Finalize, each reporting its own
// failures, and every process exits with the worst result of all, so a
// failure on any rank fails the run whichever rank mpirun reports.
#include <mpi.h>

#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  const int result = Catch::Session().run(argc, argv);
  int worst = 0;
  MPI_Allreduce(&result, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return worst;
}
