// The CUDA backend on a real GPU: RAII handles, the event-recycled buffer
// pool, and the device-local transport's ordering (a receive waits for the
// sender's compute, a ticket completes only after the receiver copied).
// Streams are held back with host functions that wait on a gate, so the
// ordering is observed without timing and without kernels.
#include <catch2/catch.hpp>

#include <cuda_runtime.h>

#include <atomic>
#include <chrono>
#include <future>
#include <thread>
#include <vector>

#include "dualpipe/cuda/buffer_pool.hpp"
#include "dualpipe/cuda/device.hpp"
#include "dualpipe/cuda/device_buffer.hpp"
#include "dualpipe/cuda/event.hpp"
#include "dualpipe/cuda/stream.hpp"
#include "dualpipe/schedule/instruction.hpp"
#include "dualpipe/transport/device_local.hpp"
#if DUALPIPE_HAVE_NCCL
#include "dualpipe/transport/nccl.hpp"
#endif

namespace cuda = dualpipe::cuda;
using tensor = cuda::device_buffer<float>;

namespace {

// Holds a stream at a point until open() is called.
class gate {
 public:
  void hold(cudaStream_t stream) {
    DUALPIPE_CUDA_CHECK(cudaLaunchHostFunc(stream, &gate::wait, this));
  }
  void open() { open_.store(true); }
  ~gate() { open(); }

 private:
  static void wait(void* self) {
    auto* g = static_cast<gate*>(self);
    while (!g->open_.load()) std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  std::atomic<bool> open_{false};
};

std::vector<float> download(const tensor& t, cudaStream_t s) {
  std::vector<float> host(t.size());
  t.copy_to_host(host, s);
  DUALPIPE_CUDA_CHECK(cudaStreamSynchronize(s));
  return host;
}

}  // namespace

TEST_CASE("stream and event: record, wait, query, elapsed time, moves") {
  cuda::set_device(0);
  cuda::stream a, b;
  cuda::event e(cuda::event_timing::enabled), f(cuda::event_timing::enabled);
  gate g;
  g.hold(a.get());
  e.record(a.get());
  CHECK_FALSE(e.query());  // held behind the gate
  b.wait(e);               // b now waits for a, the host does not
  f.record(b.get());
  CHECK_FALSE(f.query());
  g.open();
  f.synchronize();
  CHECK(e.query());
  CHECK(f.query());
  CHECK(cuda::elapsed_ms(e, f) >= 0.0f);

  cuda::stream moved = std::move(a);
  CHECK(moved.get() != nullptr);
  CHECK(a.get() == nullptr);  // NOLINT(bugprone-use-after-move): the moved-from state is the test
  cuda::event moved_event = std::move(e);
  CHECK(e.get() == nullptr);  // NOLINT(bugprone-use-after-move)
  CHECK(moved_event.query());
}

TEST_CASE("device_buffer: copies both ways, resize, size checks") {
  cuda::set_device(0);
  cuda::stream s;
  const std::vector<float> host{1.0f, 2.5f, -3.0f, 4.0f};
  tensor t(host.size());
  t.copy_from_host(host, s.get());
  CHECK(download(t, s.get()) == host);
  tensor u(host.size());
  u.copy_from(t, s.get());
  CHECK(download(u, s.get()) == host);
  u.fill_zero(s.get());
  CHECK(download(u, s.get()) == std::vector<float>(4, 0.0f));
  const float* before = t.data();
  t.resize(4);
  CHECK(t.data() == before);  // same size: no reallocation
  t.resize(9);
  CHECK(t.size() == 9);
  CHECK(t.bytes() == 9 * sizeof(float));
  CHECK_THROWS_WITH(t.copy_from_host(host, s.get()),
                    Catch::Contains("copy_from_host: 4 elements given, the buffer holds 9"));
  tensor empty;
  CHECK(empty.data() == nullptr);
  CHECK(empty.empty());
}

TEST_CASE("buffer_pool: reuse in stream order at once, across streams only after the events") {
  cuda::set_device(0);
  cuda::stream a, b;
  cuda::buffer_pool<float> pool;
  float* first = nullptr;
  {
    auto x = pool.acquire(256, a.get());
    first = x.data();
    CHECK(pool.in_use() == 1);
  }
  CHECK(pool.in_use() == 0);
  CHECK(pool.allocations() == 1);
  {
    // Same stream: stream order protects the memory, so it is lent again.
    auto y = pool.acquire(256, a.get());
    CHECK(y.data() == first);
    // A different size is a different buffer.
    auto z = pool.acquire(128, a.get());
    CHECK(z.data() != first);
    CHECK(pool.allocations() == 2);
  }
  gate g;
  {
    // A second buffer of the size, so that nothing is allocated while stream
    // a is held below: the first is lent out, so this one is new.
    auto x = pool.acquire(256, a.get());
    auto spare = pool.acquire(256, b.get());
    CHECK(spare.data() != x.data());
    CHECK(pool.allocations() == 3);
  }
  a.synchronize();
  b.synchronize();
  {
    auto x = pool.acquire(256, a.get());
    CHECK(x.data() == first);
    g.hold(a.get());  // work "using" x is pending on a
  }
  {
    // On b the last use on a has not completed: the pool must not lend it,
    // and lends the spare instead.
    auto y = pool.acquire(256, b.get());
    CHECK(y.data() != first);
    CHECK(pool.allocations() == 3);
    y.use_on(a.get());  // used on both streams from now on
  }
  g.open();
  a.synchronize();
  b.synchronize();
  {
    auto x = pool.acquire(256, b.get());
    auto y = pool.acquire(256, b.get());
    CHECK(pool.allocations() == 3);  // both recycled after their events completed
    CHECK(x.data() != y.data());
  }
}

TEST_CASE("device_local: the copy waits for the sender's compute; the ticket for the copy") {
  cuda::set_device(0);
  dualpipe::device_local_network<tensor> network(2, std::chrono::seconds(20));
  cuda::stream compute0, compute1;
  auto& t0 = network.attach(0, compute0.get());
  auto& t1 = network.attach(1, compute1.get());
  CHECK(t0.rank() == 0);
  CHECK(t1.ranks() == 2);

  const std::vector<float> payload{3.0f, 1.0f, 4.0f, 1.0f, 5.0f};
  // Everything that could block the host (allocation, pageable copies) is
  // done before the gate closes.
  tensor source(payload.size()), sent(payload.size()), received(payload.size());
  source.copy_from_host(payload, compute0.get());
  sent.fill_zero(compute0.get());
  received.fill_zero(compute1.get());
  compute0.synchronize();
  compute1.synchronize();
  gate g;
  g.hold(compute0.get());
  // Written after the gate (a device copy: never blocks the host): the
  // receiver must see these values, not zeros.
  sent.copy_from(source, compute0.get());

  const auto send = dualpipe::make_communication(dualpipe::op::send_forward, 0, 0, 1);
  const auto recv = dualpipe::make_communication(dualpipe::op::recv_forward, 1, 0, 0);
  t0.post_send(send, sent);
  const auto ticket = t0.commit();
  t1.post_recv(recv, received);
  const auto ticket1 = t1.commit();  // enqueues the copy; the host does not wait for the GPU
  CHECK(t1.complete(ticket1));       // nothing sent by rank 1
  CHECK(received.size() == payload.size());
  CHECK_FALSE(t0.complete(ticket));  // the copy cannot have run: rank 0's compute is held
  g.open();
  t0.wait(ticket);
  CHECK(t0.complete(ticket));
  CHECK(download(received, compute1.get()) == payload);

  // The end-of-step barrier is a host barrier over both ranks.
  auto other = std::async(std::launch::async, [&] { t1.finish_step(); });
  t0.finish_step();
  other.get();
}

TEST_CASE(
    "device_local: a receive with no sender times out naming the action; abort wakes waiters") {
  cuda::set_device(0);
  dualpipe::device_local_network<tensor> network(2, std::chrono::milliseconds(100));
  cuda::stream compute0, compute1;
  auto& t0 = network.attach(0, compute0.get());
  auto& t1 = network.attach(1, compute1.get());
  tensor buffer;
  t1.post_recv(dualpipe::make_communication(dualpipe::op::recv_backward, 0, 3, 0), buffer);
  // A receive of stage 0's output gradient comes from rank 0 here only to
  // exercise the message; what matters is that nobody sends it.
  CHECK_THROWS_WITH(t1.commit(), Catch::Contains("rank 1 waited 100 ms") &&
                                     Catch::Contains("0RECV_B3") &&
                                     Catch::Contains("no matching SEND_B"));
  CHECK_THROWS_AS(network.attach(0, compute0.get()), std::logic_error);
  CHECK_THROWS_WITH(
      t0.post_send(dualpipe::make_communication(dualpipe::op::send_forward, 0, 0, 0), buffer),
      Catch::Contains("names peer rank 0, which is not another rank of 0..1"));

  dualpipe::device_local_network<tensor> slow(2, std::chrono::seconds(30));
  auto& s0 = slow.attach(0, compute0.get());
  auto& s1 = slow.attach(1, compute1.get());
  s1.post_recv(dualpipe::make_communication(dualpipe::op::recv_forward, 1, 0, 0), buffer);
  auto waiting = std::async(std::launch::async, [&] { (void)s1.commit(); });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  s0.abort("rank 0 failed in forward of 0F0: test");
  try {
    waiting.get();
    FAIL("the waiting receive did not throw");
  } catch (const dualpipe::pipeline_aborted& e) {
    CHECK(e.origin_rank() == 0);
    CHECK(e.rank() == 1);
    CHECK(e.origin_what() == "rank 0 failed in forward of 0F0: test");
  }
  CHECK(slow.aborted());
}

#if DUALPIPE_HAVE_NCCL
TEST_CASE("nccl_transport: the rank mapping and sizes are checked against the communicator") {
  cuda::set_device(0);
  ncclComm_t comm = nullptr;
  const int device = 0;
  DUALPIPE_NCCL_CHECK(ncclCommInitAll(&comm, 1, &device));
  auto owned = dualpipe::nccl::communicator::borrow(comm);
  CHECK(owned.size() == 1);
  CHECK(owned.rank() == 0);
  cuda::stream compute;
  using transport = dualpipe::nccl_transport<tensor>;
  CHECK_THROWS_WITH(transport(comm, 0, 2, compute.get(), 16),
                    Catch::Contains("2 pipeline ranks do not fit a communicator of 1 ranks"));
  CHECK_THROWS_WITH(transport(comm, 0, 2, compute.get(), 16, {0, 3}),
                    Catch::Contains("pipeline rank 1 maps to communicator rank 3, outside 0..0"));
  CHECK_THROWS_WITH(transport(comm, 1, 2, compute.get(), 16, {0, 0}),
                    Catch::Contains("pipeline ranks 0 and 1 both map to communicator rank 0"));
  CHECK_THROWS_WITH(transport(comm, 0, 1, compute.get(), 0), Catch::Contains("message_elements"));
  transport t(comm, 0, 1, compute.get(), 16);
  CHECK(t.commit().slot == transport::ticket{}.slot);  // nothing posted: nothing launched
  t.finish_step();
  (void)ncclCommDestroy(comm);
}
#endif
