// The CUDA backend on a real GPU: RAII handles, the event-recycled buffer
// pool, the device-local transport's ordering (a receive waits for the
// sender's compute, a ticket completes only after the receiver copied), and
// per-message sizes (message_sizes.hpp) on both transports.
// Streams are held back with host functions that wait on a gate, so the
// ordering is observed without timing and without kernels.
#include <catch2/catch.hpp>

#include <cuda_runtime.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <future>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "dualpipe/cuda/buffer_pool.hpp"
#include "dualpipe/cuda/device.hpp"
#include "dualpipe/cuda/device_buffer.hpp"
#include "dualpipe/cuda/event.hpp"
#include "dualpipe/cuda/stream.hpp"
#include "dualpipe/runtime/executor.hpp"
#include "dualpipe/schedule/instruction.hpp"
#include "dualpipe/schedule/registry.hpp"
#include "dualpipe/transport/device_local.hpp"
#include "dualpipe/transport/message_sizes.hpp"
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

// Packed sequences: micro-batch m is 8 + 3m elements long, its activations
// and gradients alike (identity stages keep the length).
std::size_t sequence_length(const dualpipe::message_key& k) {
  return 8 + 3 * static_cast<std::size_t>(k.microbatch);
}

// What micro-batch m carries: distinct per micro-batch and position.
std::vector<float> pattern(int m, std::size_t n) {
  std::vector<float> v(n);
  for (std::size_t j = 0; j < n; ++j) v[j] = static_cast<float>(1000 * m) + static_cast<float>(j);
  return v;
}

void device_copy(tensor& to, const tensor& from, cudaStream_t stream) {
  to.resize(from.size());
  DUALPIPE_CUDA_CHECK(
      cudaMemcpyAsync(to.data(), from.data(), from.bytes(), cudaMemcpyDeviceToDevice, stream));
}

// An identity stage: forward copies its input, backward its output gradient,
// so whatever length a micro-batch has travels unchanged; stage 0 keeps the
// input gradients it computes (nobody else reads them).
struct identity_stage {
  int stage = 0;
  cudaStream_t stream = nullptr;
  std::vector<tensor>* first_grads = nullptr;

  void forward(int, const tensor& in, tensor& out) { device_copy(out, in, stream); }
  void backward(int mb, const tensor& grad, tensor& grad_in) { backward_input(mb, grad, grad_in); }
  void backward_input(int mb, const tensor& grad, tensor& grad_in) {
    device_copy(grad_in, grad, stream);
    if (stage == 0) device_copy((*first_grads)[static_cast<std::size_t>(mb)], grad, stream);
  }
  void backward_weight(int) {}
};

// The loss seeds the backward with the output itself and keeps a copy of it;
// its value is the output's length, known on the host.
struct identity_loss {
  using label_type = int;  // the micro-batch
  cudaStream_t stream = nullptr;
  std::vector<tensor>* outputs = nullptr;

  std::size_t operator()(const tensor& out, int mb) {
    device_copy((*outputs)[static_cast<std::size_t>(mb)], out, stream);
    return out.size();
  }
  void gradient(const tensor& out, int, tensor& seed) { device_copy(seed, out, stream); }
};

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
  CHECK(t.capacity() == 9);
  const float* grown = t.data();
  t.resize(3);  // within the capacity: the allocation stays
  CHECK(t.size() == 3);
  CHECK(t.data() == grown);
  t.resize(9);
  CHECK(t.data() == grown);
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

TEST_CASE("device_local: message sizes per micro-batch, resized receives, both ends checked") {
  cuda::set_device(0);
  using dualpipe::make_communication;
  using dualpipe::op;
  // Activations of micro-batch m are 3 + 2m long, gradients 1 + m.
  const dualpipe::message_sizes sizes([](const dualpipe::message_key& k) -> std::size_t {
    const auto m = static_cast<std::size_t>(k.microbatch);
    return k.payload == dualpipe::message_payload::activation ? 3 + 2 * m : 1 + m;
  });
  dualpipe::device_local_network<tensor> network(2, std::chrono::seconds(20));
  cuda::stream compute0, compute1;
  auto& t0 = network.attach(0, compute0.get(), sizes);
  auto& t1 = network.attach(1, compute1.get(), sizes);
  REQUIRE(t1.sizes().has_value());
  constexpr int microbatches = 4;
  std::vector<tensor> activations, gradients, received_activations, received_gradients;
  for (int m = 0; m < microbatches; ++m) {
    const auto mb = static_cast<std::size_t>(m);
    activations.emplace_back(3 + 2 * mb);
    activations.back().copy_from_host(pattern(m, 3 + 2 * mb), compute0.get());
    gradients.emplace_back(1 + mb);
    gradients.back().copy_from_host(pattern(-m - 1, 1 + mb), compute1.get());
    received_activations.emplace_back(1);  // the wrong size: the receive resizes it
    received_gradients.emplace_back(1);
  }
  compute0.synchronize();
  compute1.synchronize();

  // Stage 0 on rank 0 sends every micro-batch forward in one commit; rank 1
  // receives them in another order, as a schedule may.
  for (int m = 0; m < microbatches; ++m)
    t0.post_send(make_communication(op::send_forward, 0, m, 1),
                 activations[static_cast<std::size_t>(m)]);
  const auto sent_forward = t0.commit();
  for (int m = microbatches - 1; m >= 0; --m)
    t1.post_recv(make_communication(op::recv_forward, 1, m, 0),
                 received_activations[static_cast<std::size_t>(m)]);
  (void)t1.commit();
  // And the gradients back.
  for (int m = 0; m < microbatches; ++m)
    t1.post_send(make_communication(op::send_backward, 1, m, 0),
                 gradients[static_cast<std::size_t>(m)]);
  const auto sent_backward = t1.commit();
  for (int m = 0; m < microbatches; ++m)
    t0.post_recv(make_communication(op::recv_backward, 0, m, 1),
                 received_gradients[static_cast<std::size_t>(m)]);
  (void)t0.commit();
  t0.wait(sent_forward);
  t1.wait(sent_backward);
  for (int m = 0; m < microbatches; ++m) {
    const auto mb = static_cast<std::size_t>(m);
    INFO("micro-batch " << m);
    CHECK(received_activations[mb].size() == 3 + 2 * mb);
    CHECK(download(received_activations[mb], compute1.get()) == pattern(m, 3 + 2 * mb));
    CHECK(received_gradients[mb].size() == 1 + mb);
    CHECK(download(received_gradients[mb], compute0.get()) == pattern(-m - 1, 1 + mb));
  }

  // The sender's buffer is checked against the rule at post_send.
  CHECK_THROWS_WITH(t0.post_send(make_communication(op::send_forward, 0, 2, 1), activations[1]),
                    "rank 0: 0SEND_F2 sends 5 elements; the message size rule gives 7 for the "
                    "activation of micro-batch 2 from stage 0 to stage 1");
  auto other = std::async(std::launch::async, [&] { t1.finish_step(); });
  t0.finish_step();
  other.get();
}

TEST_CASE("device_local: a carried count the receiver's rule disagrees with is an error") {
  cuda::set_device(0);
  using dualpipe::make_communication;
  using dualpipe::op;
  dualpipe::device_local_network<tensor> network(2, std::chrono::seconds(20));
  cuda::stream compute0, compute1;
  // Rank 0 has no rule, so nothing stops its send; rank 1's rule says 9.
  auto& t0 = network.attach(0, compute0.get());
  auto& t1 = network.attach(1, compute1.get(), dualpipe::message_sizes(std::size_t{9}));
  CHECK_FALSE(t0.sizes().has_value());
  tensor sent(4), received(9);
  sent.fill_zero(compute0.get());
  const auto send = make_communication(op::send_forward, 0, 1, 1);
  t0.post_send(send, sent);
  (void)t0.commit();
  t1.post_recv(make_communication(op::recv_forward, 1, 1, 0), received);
  try {
    (void)t1.commit();
    FAIL("the receive took a message of the wrong size");
  } catch (const dualpipe::transport_error& e) {
    CHECK(e.rank() == 1);
    CHECK(std::string(e.what()) ==
          "rank 1: 1RECV_F1 met 0SEND_F1 from rank 0 carrying 4 elements; every message holds 9 "
          "(give every rank the same rule)");
    t1.abort(e.what());  // as the executor does, so rank 0 stops waiting for the copy
  }
  CHECK(received.size() == 9);  // untouched: no short copy
}

TEST_CASE("device_local: the executor runs schedules whose micro-batches differ in length") {
  // Every registered schedule that takes P = 2, N = 4, two steps each (the
  // second reuses the pool's buffers at other sizes).
  constexpr int P = 2, N = 4;
  const dualpipe::message_sizes sizes(sequence_length);
  int schedules = 0;
  for (const dualpipe::schedule_entry& entry : dualpipe::schedule_registry()) {
    dualpipe::schedule_table table;
    try {
      table = dualpipe::make_schedule(entry.name, {P, N, {}, {}});
    } catch (const std::invalid_argument&) {
      continue;
    }
    ++schedules;
    INFO(entry.name);
    cuda::set_device(0);
    dualpipe::device_local_network<tensor> network(P, std::chrono::seconds(30));
    std::vector<tensor> outputs(N), first_grads(N);
    std::vector<std::vector<std::size_t>> losses(P);
    auto run_rank = [&](int r) {
      cuda::set_device(0);
      cuda::stream compute;
      auto& transport = network.attach(r, compute.get(), sizes);
      std::vector<identity_stage> stages(static_cast<std::size_t>(table.info().stages));
      for (std::size_t s = 0; s < stages.size(); ++s)
        stages[s] = {static_cast<int>(s), compute.get(), &first_grads};
      using exec_type = dualpipe::executor<identity_stage, dualpipe::device_local_transport<tensor>,
                                           identity_loss>;
      exec_type exec(table, transport,
                     [&](int s) -> identity_stage& { return stages[static_cast<std::size_t>(s)]; });
      std::vector<tensor> inputs;
      for (const int m : exec.entering_microbatches()) {
        const std::size_t n = sequence_length({-1, 0, m, dualpipe::message_payload::activation});
        inputs.emplace_back(n);
        inputs.back().copy_from_host(pattern(m, n), compute.get());
      }
      const std::vector<int> labels(exec.leaving_microbatches().begin(),
                                    exec.leaving_microbatches().end());
      identity_loss loss{compute.get(), &outputs};
      for (int step = 0; step < 2; ++step) {
        const auto& result = exec.step(inputs, labels, loss);
        if (step == 1)
          losses[static_cast<std::size_t>(r)].assign(result.losses.begin(), result.losses.end());
      }
      compute.synchronize();
      return std::vector<int>(labels);
    };
    std::vector<std::future<std::vector<int>>> ranks;
    for (int r = 0; r < P; ++r) ranks.push_back(std::async(std::launch::async, run_rank, r));
    std::vector<std::vector<int>> leaving;
    for (auto& f : ranks) leaving.push_back(f.get());
    cuda::stream check;
    for (int r = 0; r < P; ++r)
      for (std::size_t i = 0; i < leaving[static_cast<std::size_t>(r)].size(); ++i) {
        const int m = leaving[static_cast<std::size_t>(r)][i];
        CHECK(losses[static_cast<std::size_t>(r)][i] ==
              sequence_length({-1, 0, m, dualpipe::message_payload::activation}));
      }
    for (int m = 0; m < N; ++m) {
      INFO("micro-batch " << m);
      const std::size_t n = sequence_length({-1, 0, m, dualpipe::message_payload::activation});
      CHECK(download(outputs[static_cast<std::size_t>(m)], check.get()) == pattern(m, n));
      CHECK(download(first_grads[static_cast<std::size_t>(m)], check.get()) == pattern(m, n));
    }
  }
  CHECK(schedules >= 3);
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
  CHECK(t.sizes().fixed());
  CHECK(t.commit().slot == transport::ticket{}.slot);  // nothing posted: nothing launched
  t.finish_step();
  // With a size per message instead of one for all.
  transport varying(comm, 0, 1, compute.get(), dualpipe::message_sizes(sequence_length));
  CHECK_FALSE(varying.sizes().fixed());
  CHECK(varying.sizes().elements_of(
            dualpipe::make_communication(dualpipe::op::recv_forward, 1, 2, 1), 0) == 14);
  CHECK_THROWS_WITH(transport(comm, 0, 2, compute.get(), dualpipe::message_sizes(sequence_length)),
                    Catch::Contains("2 pipeline ranks do not fit a communicator of 1 ranks"));
  (void)ncclCommDestroy(comm);
}

TEST_CASE("nccl_transport: message sizes per micro-batch between two GPUs") {
  if (cuda::cuda_device_count() < 2) {
    WARN("needs two GPUs (NCCL refuses two ranks of one communicator on one GPU): skipped");
    return;
  }
  using dualpipe::make_communication;
  using dualpipe::op;
  constexpr int microbatches = 4;
  const std::vector<int> devices{0, 1};
  std::vector<ncclComm_t> comms(2, nullptr);
  DUALPIPE_NCCL_CHECK(ncclCommInitAll(comms.data(), 2, devices.data()));
  struct destroy_comms {
    std::vector<ncclComm_t>& c;
    ~destroy_comms() {
      for (ncclComm_t x : c) (void)ncclCommDestroy(x);
    }
  } cleanup{comms};
  // Rank 0 sends micro-batch m's activation (stage 0 to 1); rank 1 returns
  // the gradient; both received into one-element buffers the rule resizes.
  auto run_rank = [&](int r) {
    cuda::set_device(r);
    cuda::stream compute;
    dualpipe::nccl_transport<tensor> t(comms[static_cast<std::size_t>(r)], r, 2, compute.get(),
                                       dualpipe::message_sizes(sequence_length));
    std::vector<tensor> sent, received;
    for (int m = 0; m < microbatches; ++m) {
      const std::size_t n = sequence_length({-1, 0, m, dualpipe::message_payload::activation});
      sent.emplace_back(n);
      sent.back().copy_from_host(pattern(r == 0 ? m : -m - 1, n), compute.get());
      received.emplace_back(1);
    }
    for (int m = 0; m < microbatches; ++m) {
      const auto mb = static_cast<std::size_t>(m);
      if (r == 0) {
        t.post_send(make_communication(op::send_forward, 0, m, 1), sent[mb]);
        t.post_recv(make_communication(op::recv_backward, 0, m, 1), received[mb]);
      } else {
        t.post_recv(make_communication(op::recv_forward, 1, m, 0), received[mb]);
        t.post_send(make_communication(op::send_backward, 1, m, 0), sent[mb]);
      }
    }
    t.wait(t.commit());
    std::vector<std::vector<float>> got;
    for (const tensor& x : received) got.push_back(download(x, compute.get()));
    t.finish_step();
    return got;
  };
  auto rank1 = std::async(std::launch::async, run_rank, 1);
  const auto got0 = run_rank(0);
  const auto got1 = rank1.get();
  for (int m = 0; m < microbatches; ++m) {
    const std::size_t n = sequence_length({-1, 0, m, dualpipe::message_payload::activation});
    CHECK(got1[static_cast<std::size_t>(m)] == pattern(m, n));
    CHECK(got0[static_cast<std::size_t>(m)] == pattern(-m - 1, n));
  }
}
#endif
