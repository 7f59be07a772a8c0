// dualpipe/torch/mpi.hpp under mpirun -np 2: the two ranks of a mirror pair
// sum their modules' gradients over MPI and hold identical sums; lists that
// do not line up are refused on both ranks before any gradient changes.
// torch first: Debian's c10 includes glog, whose CHECK macro would replace
// Catch2's.
#include <torch/torch.h>
#undef CHECK
#include <catch2/catch.hpp>

#include <cstring>
#include <vector>

#include "dualpipe/torch/mpi.hpp"

namespace {

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

torch::nn::Sequential stage(int h) {
  torch::nn::Sequential s(torch::nn::Linear(h, 2 * h), torch::nn::GELU(),
                          torch::nn::Linear(2 * h, h));
  s->to(at::kDouble);
  return s;
}

}  // namespace

TEST_CASE("mirror ranks hold the summed gradients, bit for bit", "[torch][mpi]") {
  int size = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  REQUIRE(size == 2);
  const int rank = world_rank();
  torch::manual_seed(5);  // the same weights on both ranks
  torch::nn::Sequential m = stage(4);
  // Different data per rank: different gradients to sum.
  m->forward(at::full({3, 4}, 1.0 + rank, at::kDouble)).pow(2).sum().backward();
  std::vector<at::Tensor> mine;
  for (const at::Tensor& p : m->parameters()) mine.push_back(p.grad().clone());

  dualpipe::libtorch::sum_mirrored_gradients(m->parameters(), MPI_COMM_WORLD, 1 - rank);

  // Each rank's own gradients, then the other's, gathered to compare.
  std::vector<double> flat_mine, flat_sum;
  for (std::size_t i = 0; i < mine.size(); ++i) {
    const at::Tensor a = mine[i].contiguous(), s = m->parameters()[i].grad().contiguous();
    flat_mine.insert(flat_mine.end(), a.data_ptr<double>(), a.data_ptr<double>() + a.numel());
    flat_sum.insert(flat_sum.end(), s.data_ptr<double>(), s.data_ptr<double>() + s.numel());
  }
  std::vector<double> other_mine(flat_mine.size()), other_sum(flat_sum.size());
  MPI_Sendrecv(flat_mine.data(), static_cast<int>(flat_mine.size()), MPI_DOUBLE, 1 - rank, 1,
               other_mine.data(), static_cast<int>(other_mine.size()), MPI_DOUBLE, 1 - rank, 1,
               MPI_COMM_WORLD, MPI_STATUS_IGNORE);
  MPI_Sendrecv(flat_sum.data(), static_cast<int>(flat_sum.size()), MPI_DOUBLE, 1 - rank, 2,
               other_sum.data(), static_cast<int>(other_sum.size()), MPI_DOUBLE, 1 - rank, 2,
               MPI_COMM_WORLD, MPI_STATUS_IGNORE);
  REQUIRE(flat_mine != other_mine);
  REQUIRE(std::memcmp(flat_sum.data(), other_sum.data(), flat_sum.size() * sizeof(double)) == 0);
  for (std::size_t i = 0; i < flat_sum.size(); ++i)
    REQUIRE(flat_sum[i] == flat_mine[i] + other_mine[i]);

  // Its own mirror, or none: nothing to do.
  const at::Tensor before = m->parameters()[0].grad().clone();
  dualpipe::libtorch::sum_mirrored_gradients(m->parameters(), MPI_COMM_WORLD, rank);
  dualpipe::libtorch::sum_mirrored_gradients(m->parameters(), MPI_COMM_WORLD, -1);
  REQUIRE(torch::equal(before, m->parameters()[0].grad()));
}

TEST_CASE("mirror ranks whose parameters differ are refused on both", "[torch][mpi]") {
  const int rank = world_rank();
  torch::nn::Sequential m = stage(rank == 0 ? 4 : 5);
  m->forward(at::ones({2, rank == 0 ? 4 : 5}, at::kDouble)).sum().backward();
  const at::Tensor before = m->parameters()[0].grad().clone();
  REQUIRE_THROWS_WITH(
      dualpipe::libtorch::sum_mirrored_gradients(m->parameters(), MPI_COMM_WORLD, 1 - rank),
      Catch::Contains("differ in count, shape or element type"));
  REQUIRE(torch::equal(before, m->parameters()[0].grad()));
}

TEST_CASE("a mirror that never answers is a timeout, not a hang", "[torch][mpi]") {
  const int rank = world_rank();
  torch::nn::Sequential m = stage(4);
  if (rank == 0)
    REQUIRE_THROWS_AS(dualpipe::libtorch::sum_mirrored_gradients(
                          m->parameters(), MPI_COMM_WORLD, 1,
                          {.timeout = std::chrono::milliseconds(300), .tag = 7201}),
                      dualpipe::transport_timeout);
  MPI_Barrier(MPI_COMM_WORLD);
}
