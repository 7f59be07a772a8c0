// The MPI transport, one rank per process (run under mpirun -np 4): messages
// match by instruction whatever the posting order, shapes travel with every
// message, rank mappings are honoured and checked, an abort or a silent peer
// ends every rank's wait with a precise error, and the executor runs whole
// schedules over it with results equal to the in-process transport's.
#include <mpi.h>

#include <catch2/catch.hpp>

#include <chrono>
#include <cstdint>
#include <numeric>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "dualpipe/runtime/executor.hpp"
#include "dualpipe/schedule/registry.hpp"
#include "dualpipe/transport/in_process.hpp"
#include "dualpipe/transport/mpi.hpp"
#include "rank_threads.hpp"

namespace {

using dualpipe::instruction;
using dualpipe::make_communication;
using dualpipe::op;
using namespace std::chrono_literals;

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int world_size() {
  int n = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

// A 2-D tensor whose shape travels in the header, as a user's own type would.
struct matrix {
  std::int64_t rows = 0, cols = 0;
  std::vector<float> values;
};

// A buffer that cannot grow past its capacity: prepare() refuses bigger
// messages, as a user's pre-sized device buffer would.
struct fixed_buffer {
  std::vector<std::int32_t> values = std::vector<std::int32_t>(4);
  std::size_t used = 0;
};

}  // namespace

template <>
struct dualpipe::wire_traits<matrix> {
  static wire_shape shape(const matrix& m) {
    const std::int64_t dims[] = {m.rows, m.cols};
    return make_wire_shape<float>(dims);
  }
  static std::span<const std::byte> bytes(const matrix& m) {
    return std::as_bytes(std::span<const float>(m.values));
  }
  static std::span<std::byte> prepare(matrix& m, const wire_shape& s) {
    check_wire_element<float>(s, "matrix");
    if (s.dims_used != 2) throw std::invalid_argument("matrix: needs two dimensions");
    m.rows = s.dims[0];
    m.cols = s.dims[1];
    m.values.resize(static_cast<std::size_t>(m.rows * m.cols));
    return std::as_writable_bytes(std::span<float>(m.values));
  }
};

template <>
struct dualpipe::wire_traits<fixed_buffer> {
  static wire_shape shape(const fixed_buffer& b) {
    const std::int64_t n = static_cast<std::int64_t>(b.used);
    return make_wire_shape<std::int32_t>(std::span<const std::int64_t>(&n, 1));
  }
  static std::span<const std::byte> bytes(const fixed_buffer& b) {
    return std::as_bytes(std::span<const std::int32_t>(b.values.data(), b.used));
  }
  static std::span<std::byte> prepare(fixed_buffer& b, const wire_shape& s) {
    check_wire_element<std::int32_t>(s, "fixed_buffer");
    if (static_cast<std::size_t>(s.dims[0]) > b.values.size())
      throw std::length_error("fixed_buffer holds " + std::to_string(b.values.size()) +
                              " values, the message has " + std::to_string(s.dims[0]));
    b.used = static_cast<std::size_t>(s.dims[0]);
    return std::as_writable_bytes(std::span<std::int32_t>(b.values.data(), b.used));
  }
};

namespace {

std::vector<double> values_for(int stage, int mb, int n) {
  std::vector<double> v(static_cast<std::size_t>(n));
  std::iota(v.begin(), v.end(), 1000.0 * stage + mb);
  return v;
}

}  // namespace

TEST_CASE("a batch matches each receive to its own send, whatever the posting order") {
  const int P = world_size();
  REQUIRE(P >= 2);
  dualpipe::mpi::transport<std::vector<double>> t(MPI_COMM_WORLD,
                                                  dualpipe::mpi::transport_options{.timeout = 20s});
  const int r = t.rank();
  REQUIRE(t.ranks() == P);
  // Rank r holds stage r; it sends activations of micro-batches 0..3 forward
  // and gradients of 0..3 backward, each of a different length, posting the
  // receives in the opposite order to the sends.
  std::vector<std::vector<double>> out, in(8);
  out.reserve(8);
  for (int m = 0; m < 4; ++m) {
    if (r + 1 < P) {
      out.push_back(values_for(r, m, 1 + m + r));
      t.post_send(make_communication(op::send_forward, r, m, r + 1), out.back());
    }
    if (r > 0) {
      out.push_back(values_for(-r, m, 7 - m));
      t.post_send(make_communication(op::send_backward, r, m, r - 1), out.back());
    }
  }
  for (int m = 3; m >= 0; --m) {
    if (r > 0)
      t.post_recv(make_communication(op::recv_forward, r, m, r - 1),
                  in[static_cast<std::size_t>(m)]);
    if (r + 1 < P)
      t.post_recv(make_communication(op::recv_backward, r, m, r + 1),
                  in[static_cast<std::size_t>(4 + m)]);
  }
  t.commit();
  for (int m = 0; m < 4; ++m) {
    if (r > 0) CHECK(in[static_cast<std::size_t>(m)] == values_for(r - 1, m, 1 + m + r - 1));
    if (r + 1 < P) CHECK(in[static_cast<std::size_t>(4 + m)] == values_for(-(r + 1), m, 7 - m));
  }
  t.finish_step();
}

TEST_CASE("shapes travel with every message and may change from micro-batch to micro-batch") {
  const int P = world_size();
  dualpipe::mpi::transport<matrix> t(MPI_COMM_WORLD,
                                     dualpipe::mpi::transport_options{.timeout = 20s});
  const int r = t.rank();
  for (int m = 0; m < 3; ++m) {
    matrix sent{m + 1, 3 + r, {}}, received{99, 99, std::vector<float>(5, -1.0f)};
    sent.values.resize(static_cast<std::size_t>(sent.rows * sent.cols));
    std::iota(sent.values.begin(), sent.values.end(), static_cast<float>(10 * r + m));
    if (r + 1 < P) t.post_send(make_communication(op::send_forward, r, m, r + 1), sent);
    if (r > 0) t.post_recv(make_communication(op::recv_forward, r, m, r - 1), received);
    t.commit();
    if (r > 0) {
      CHECK(received.rows == m + 1);
      CHECK(received.cols == 3 + r - 1);
      std::vector<float> expected(static_cast<std::size_t>(received.rows * received.cols));
      std::iota(expected.begin(), expected.end(), static_cast<float>(10 * (r - 1) + m));
      CHECK(received.values == expected);
    }
  }
  // An empty tensor is a message too.
  matrix none{0, 4, {}}, got{2, 2, std::vector<float>(4)};
  if (r + 1 < P) t.post_send(make_communication(op::send_forward, r, 7, r + 1), none);
  if (r > 0) t.post_recv(make_communication(op::recv_forward, r, 7, r - 1), got);
  t.commit();
  if (r > 0) {
    CHECK(got.rows == 0);
    CHECK(got.values.empty());
  }
  t.finish_step();
}

TEST_CASE("a rank mapping places pipeline ranks on other communicator ranks") {
  const int P = world_size();
  std::vector<int> reversed(static_cast<std::size_t>(P));
  for (int p = 0; p < P; ++p) reversed[static_cast<std::size_t>(p)] = P - 1 - p;
  dualpipe::mpi::transport<std::vector<double>> t(MPI_COMM_WORLD, reversed,
                                                  dualpipe::mpi::transport_options{.timeout = 20s});
  CHECK(t.rank() == P - 1 - world_rank());
  CHECK(t.comm_rank_of(0) == P - 1);
  const int r = t.rank();
  std::vector<double> out = values_for(r, 0, 3), in;
  if (r + 1 < P) t.post_send(make_communication(op::send_forward, r, 0, r + 1), out);
  if (r > 0) t.post_recv(make_communication(op::recv_forward, r, 0, r - 1), in);
  t.commit();
  if (r > 0) CHECK(in == values_for(r - 1, 0, 3));
  t.finish_step();
}

TEST_CASE("a bad rank mapping is refused on every rank before anything is sent") {
  const int P = world_size();
  using transport = dualpipe::mpi::transport<std::vector<double>>;
  std::vector<int> duplicate(static_cast<std::size_t>(P), 0);
  for (int p = 0; p < P; ++p) duplicate[static_cast<std::size_t>(p)] = p;
  duplicate.back() = 0;
  CHECK_THROWS_WITH(transport(MPI_COMM_WORLD, duplicate),
                    "dualpipe::mpi: the rank mapping sends pipeline ranks 0 and " +
                        std::to_string(P - 1) + " to the same communicator rank 0");
  std::vector<int> too_many(static_cast<std::size_t>(P) + 1);
  std::iota(too_many.begin(), too_many.end(), 0);
  CHECK_THROWS_WITH(transport(MPI_COMM_WORLD, too_many),
                    "dualpipe::mpi: the rank mapping sends pipeline rank " + std::to_string(P) +
                        " to communicator rank " + std::to_string(P) +
                        ", but the communicator has " + std::to_string(P) + " ranks (0.." +
                        std::to_string(P - 1) + ")");
  // A process left out of the mapping is told so (the others are fine).
  const std::vector<int> first_only{0};
  if (world_rank() == 0) {
    transport t(MPI_COMM_WORLD, first_only);
    CHECK(t.ranks() == 1);
  } else {
    CHECK_THROWS_WITH(transport(MPI_COMM_WORLD, first_only),
                      Catch::Contains("communicator rank " + std::to_string(world_rank()) +
                                      " is not in the rank mapping"));
  }
}

TEST_CASE("a table for another number of ranks is refused before the first instruction") {
  const int P = world_size();
  dualpipe::mpi::transport<std::vector<double>> t(MPI_COMM_WORLD,
                                                  dualpipe::mpi::transport_options{.timeout = 20s});
  dualpipe::schedule_request request;
  request.ranks = 2 * P;
  request.microbatches = 4 * P;
  const auto table = dualpipe::make_schedule("dualpipe", request);
  struct stage {
    void forward(int, const std::vector<double>&, std::vector<double>&) {}
    void backward(int, const std::vector<double>&, std::vector<double>&) {}
    void backward_input(int, const std::vector<double>&, std::vector<double>&) {}
    void backward_weight(int) {}
  } s;
  using executor = dualpipe::executor<stage, dualpipe::mpi::transport<std::vector<double>>>;
  CHECK_THROWS_WITH(executor(table.view(), t, [&](int) -> stage& { return s; }),
                    "dualpipe::executor: the table is for " + std::to_string(2 * P) +
                        " ranks but the transport connects " + std::to_string(P));
}

TEST_CASE("an abort on one rank ends every other rank's wait with pipeline_aborted") {
  dualpipe::mpi::transport<std::vector<double>> t(MPI_COMM_WORLD,
                                                  dualpipe::mpi::transport_options{.timeout = 30s});
  const int r = t.rank();
  const auto started = std::chrono::steady_clock::now();
  if (r == 1) {
    t.abort("rank 1 ran out of memory");
    CHECK(t.aborted());
    // Its own later calls refuse at once.
    std::vector<double> in;
    CHECK_THROWS_AS(t.post_recv(make_communication(op::recv_forward, 1, 0, 0), in),
                    dualpipe::pipeline_aborted);
  } else {
    // Everyone else waits on rank 1, which will never send.
    std::vector<double> in;
    t.post_recv(make_communication(op::recv_backward, r, 0, 1), in);
    try {
      t.commit();
      FAIL("commit returned although rank 1 aborted");
    } catch (const dualpipe::pipeline_aborted& e) {
      CHECK(e.rank() == r);
      CHECK(e.origin_rank() == 1);
      CHECK(e.origin_what() == "rank 1 ran out of memory");
      CHECK(std::string(e.what()) ==
            "dualpipe: rank " + std::to_string(r) + " stopped while waiting on " +
                std::to_string(r) +
                "RECV_B0 from rank 1: the pipeline was aborted by rank 1 (rank 1 "
                "ran out of memory)");
    }
    CHECK(t.aborted());
    CHECK_THROWS_AS(t.finish_step(), dualpipe::pipeline_aborted);
  }
  CHECK(std::chrono::steady_clock::now() - started < 20s);
}

TEST_CASE("a peer that never sends ends in transport_timeout naming the instruction") {
  dualpipe::mpi::transport<std::vector<double>> t(
      MPI_COMM_WORLD, dualpipe::mpi::transport_options{.timeout = 300ms});
  const int r = t.rank();
  if (r == 0) {
    std::vector<double> in;
    t.post_recv(make_communication(op::recv_backward, 0, 5, 1), in);
    CHECK_THROWS_WITH(t.commit(),
                      "dualpipe: rank 0 timed out after 300 ms waiting on 0RECV_B5 "
                      "from rank 1: no matching send arrived");
    // The executor would now abort; do the same so the others stop waiting.
    t.abort("rank 0 timed out");
  } else {
    // The others are waiting at the end of the step (with a longer limit of
    // their own) and are released by rank 0's abort.
    t.set_timeout(30s);
    try {
      t.finish_step();
      FAIL("finish_step returned although rank 0 never arrived");
    } catch (const dualpipe::pipeline_aborted& e) {
      CHECK(e.origin_rank() == 0);
      CHECK(e.origin_what() == "rank 0 timed out");
    }
  }
}

TEST_CASE("a send nobody receives ends in transport_timeout naming it") {
  dualpipe::mpi::transport<std::vector<double>> t(
      MPI_COMM_WORLD, dualpipe::mpi::transport_options{.timeout = 300ms});
  if (t.rank() == 0) {
    // Large enough that no MPI delivers it eagerly.
    const std::vector<double> out(1 << 20, 1.0);
    t.post_send(make_communication(op::send_forward, 0, 2, 1), out);
    CHECK_THROWS_WITH(t.commit(),
                      "dualpipe: rank 0 timed out after 300 ms waiting on 0SEND_F2 "
                      "to rank 1: the peer never posted the matching receive");
    t.abort("rank 0 timed out");
  } else {
    t.set_timeout(30s);
    CHECK_THROWS_AS(t.finish_step(), dualpipe::pipeline_aborted);
  }
}

TEST_CASE("a message the receiving buffer cannot hold is a transport_error naming the receive") {
  dualpipe::mpi::transport<fixed_buffer> t(MPI_COMM_WORLD,
                                           dualpipe::mpi::transport_options{.timeout = 20s});
  const int r = t.rank();
  if (r == 0) {
    fixed_buffer big;
    big.values.assign(6, 7);
    big.used = 6;
    t.post_send(make_communication(op::send_forward, 0, 1, 1), big);
    t.commit();
  } else if (r == 1) {
    fixed_buffer small;
    t.post_recv(make_communication(op::recv_forward, 1, 1, 0), small);
    CHECK_THROWS_WITH(t.commit(),
                      "dualpipe: rank 1 posted 1RECV_F1 from rank 0, but the buffer cannot take "
                      "the message: fixed_buffer holds 4 values, the message has 6");
  }
  // No finish_step: rank 1's batch failed; this transport is done.
}

TEST_CASE("posting the wrong kind or a peer outside the pipeline is refused") {
  dualpipe::mpi::transport<std::vector<double>> t(MPI_COMM_WORLD);
  std::vector<double> v;
  const int P = t.ranks();
  CHECK_THROWS_WITH(t.post_send(make_communication(op::recv_forward, 0, 0, 1), v),
                    Catch::Contains("post_send takes a SEND_F or SEND_B instruction"));
  CHECK_THROWS_WITH(t.post_recv(make_communication(op::recv_forward, 0, 0, P), v),
                    Catch::Contains("names peer rank " + std::to_string(P) +
                                    ", which is not another rank of 0.." + std::to_string(P - 1)));
}

namespace {

// A stage with real arithmetic: forward y = 2x + (stage + 1), backward
// gx = 3 gy; it records the weight gradient as the sum of its inputs times
// output gradients, so a wrong routing shows in the numbers.
struct affine_stage {
  int stage = 0;
  int fail_at_backward = -1;  // micro-batch whose backward throws, or -1
  std::vector<std::vector<double>> inputs;
  double weight_grad = 0;

  void forward(int mb, const std::vector<double>& x, std::vector<double>& y) {
    inputs.resize(std::max(inputs.size(), static_cast<std::size_t>(mb) + 1));
    inputs[static_cast<std::size_t>(mb)] = x;
    y.resize(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) y[i] = 2 * x[i] + stage + 1;
  }
  void backward(int mb, const std::vector<double>& gy, std::vector<double>& gx) {
    backward_input(mb, gy, gx);
    backward_weight(mb);
  }
  void backward_input(int mb, const std::vector<double>& gy, std::vector<double>& gx) {
    if (mb == fail_at_backward)
      throw std::runtime_error("stage " + std::to_string(stage) + " broke");
    gx.resize(gy.size());
    for (std::size_t i = 0; i < gy.size(); ++i) gx[i] = 3 * gy[i];
    pending.push_back({mb, gy});
  }
  void backward_weight(int) {
    const auto [mb, gy] = pending.front();
    pending.erase(pending.begin());
    const auto& x = inputs[static_cast<std::size_t>(mb)];
    for (std::size_t i = 0; i < x.size(); ++i) weight_grad += x[i] * gy[i];
  }
  std::vector<std::pair<int, std::vector<double>>> pending;
};

struct sum_loss {
  using label_type = double;
  double operator()(const std::vector<double>& y, double label) const {
    double s = 0;
    for (const double v : y) s += v * label;
    return s;
  }
  void gradient(const std::vector<double>& y, double label, std::vector<double>& g) const {
    g.assign(y.size(), label);
  }
};

struct step_outcome {
  std::vector<double> losses;        // per micro-batch
  std::vector<double> weight_grads;  // per stage, summed over copies
};

template <class Transport>
void run_rank(const dualpipe::schedule_table& table, Transport& t, int fail_rank,
              step_outcome& out) {
  const int S = table.info().stages;
  const int N = table.info().microbatches;
  std::vector<affine_stage> stages(static_cast<std::size_t>(S));
  for (int s = 0; s < S; ++s) stages[static_cast<std::size_t>(s)].stage = s;
  dualpipe::executor<affine_stage, Transport, sum_loss> ex(
      table.view(), t, [&](int s) -> affine_stage& {
        if (t.rank() == fail_rank) stages[static_cast<std::size_t>(s)].fail_at_backward = 0;
        return stages[static_cast<std::size_t>(s)];
      });
  std::vector<std::vector<double>> inputs;
  std::vector<double> labels;
  for (const int m : ex.entering_microbatches()) inputs.push_back(values_for(0, m, 1 + m % 3));
  for (const int m : ex.leaving_microbatches()) labels.push_back(0.5 + m);
  sum_loss loss;
  const auto& result = ex.step(inputs, labels, loss);
  out.losses.assign(static_cast<std::size_t>(N), 0.0);
  for (std::size_t i = 0; i < result.microbatches.size(); ++i)
    out.losses[static_cast<std::size_t>(result.microbatches[i])] = result.losses[i];
  out.weight_grads.assign(static_cast<std::size_t>(S), 0.0);
  for (const int s : ex.local_stages())
    out.weight_grads[static_cast<std::size_t>(s)] = stages[static_cast<std::size_t>(s)].weight_grad;
}

}  // namespace

TEST_CASE("the executor runs whole schedules over MPI with the in-process transport's results") {
  const int P = world_size();
  for (const char* name : {"dualpipe", "dualpipev", "zb1p", "interleaved-1f1b"}) {
    if (std::string(name) == "dualpipe" && P % 2 != 0) continue;
    dualpipe::schedule_request request;
    request.ranks = P;
    request.microbatches = 4 * P;
    const dualpipe::schedule_table table = dualpipe::make_schedule(name, request);
    {
      INFO("schedule " << name);
      dualpipe::mpi::transport<std::vector<double>> t(
          MPI_COMM_WORLD, dualpipe::mpi::transport_options{.timeout = 30s});
      step_outcome mine;
      run_rank(table, t, -1, mine);
      // Every rank's share, summed over the job (zeros where it had none).
      std::vector<double> losses(mine.losses.size()), grads(mine.weight_grads.size());
      MPI_Allreduce(mine.losses.data(), losses.data(), static_cast<int>(losses.size()), MPI_DOUBLE,
                    MPI_SUM, MPI_COMM_WORLD);
      MPI_Allreduce(mine.weight_grads.data(), grads.data(), static_cast<int>(grads.size()),
                    MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);

      dualpipe::in_process_network<std::vector<double>> network(P, 30s);
      std::vector<step_outcome> threads(static_cast<std::size_t>(P));
      dualpipe::test::rethrow_any(dualpipe::test::on_ranks(P, [&](int r) {
        run_rank(table, network.endpoint(r), -1, threads[static_cast<std::size_t>(r)]);
      }));
      std::vector<double> expected_losses(losses.size()), expected_grads(grads.size());
      for (const step_outcome& o : threads)
        for (std::size_t i = 0; i < o.losses.size(); ++i) {
          expected_losses[i] += o.losses[i];
          if (i < o.weight_grads.size()) expected_grads[i] += o.weight_grads[i];
        }
      CHECK(losses == expected_losses);
      CHECK(grads == expected_grads);
    }
  }
}

TEST_CASE("a stage that throws ends the step on every rank, naming the failed rank") {
  const int P = world_size();
  dualpipe::schedule_request request;
  request.ranks = P;
  request.microbatches = 2 * P;
  const dualpipe::schedule_table table = dualpipe::make_schedule("dualpipev", request);
  dualpipe::mpi::transport<std::vector<double>> t(MPI_COMM_WORLD,
                                                  dualpipe::mpi::transport_options{.timeout = 30s});
  const int failing = P - 1;
  step_outcome out;
  const auto started = std::chrono::steady_clock::now();
  try {
    run_rank(table, t, failing, out);
    FAIL("the step returned normally");
  } catch (const dualpipe::stage_error& e) {
    CHECK(t.rank() == failing);
    CHECK_THAT(e.what(), Catch::Contains("rank " + std::to_string(failing) + " failed in "));
    CHECK_THAT(e.what(), Catch::Contains("broke"));
  } catch (const dualpipe::pipeline_aborted& e) {
    CHECK(t.rank() != failing);
    CHECK(e.origin_rank() == failing);
    CHECK_THAT(e.origin_what(), Catch::Contains("broke"));
  }
  CHECK(std::chrono::steady_clock::now() - started < 20s);
}
