// The in-process transport on its own: sends meet receives per (peer,
// payload, micro-batch) in posting order, a commit is a rendezvous, waits time
// out naming the instruction, an abort wakes every waiting rank with the
// origin's rank and message, and the end-of-step barrier.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <exception>
#include <functional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "dualpipe/schedule/instruction.hpp"
#include "dualpipe/transport/in_process.hpp"
#include "rank_threads.hpp"

namespace {

using dualpipe::make_communication;
using dualpipe::op;
using buffer = std::vector<int>;
using network = dualpipe::in_process_network<buffer>;

using dualpipe::test::on_ranks;
using dualpipe::test::rethrow_any;
using dualpipe::test::what_of;

}  // namespace

TEST_CASE("the endpoint models the transport concept", "[transport]") {
  STATIC_REQUIRE(dualpipe::pipeline_transport<dualpipe::in_process_transport<buffer>>);
  STATIC_REQUIRE(dualpipe::check_pipeline_transport<dualpipe::in_process_transport<buffer>>());
  STATIC_REQUIRE(dualpipe::transport_with_finish_step<dualpipe::in_process_transport<buffer>>);
  STATIC_REQUIRE_FALSE(
      dualpipe::transport_with_deferred_completion<dualpipe::in_process_transport<buffer>>);
  network net(3);
  REQUIRE(net.ranks() == 3);
  REQUIRE(net.endpoint(2).rank() == 2);
  REQUIRE(net.endpoint(2).ranks() == 3);
  REQUIRE_THROWS_WITH(net.endpoint(3), Catch::Contains("rank 3 is outside 0..2"));
  REQUIRE_THROWS_WITH(network(0), Catch::Contains("at least one rank"));
}

TEST_CASE("receives match sends by payload and micro-batch, whatever the posting order",
          "[transport]") {
  network net(2);
  buffer got_f0, got_f1, got_b1;
  const auto errors = on_ranks(2, [&](int r) {
    auto& t = net.endpoint(r);
    if (r == 0) {
      const buffer f1{11}, f0{10}, b1{21};
      // Posted as: activation 1, gradient 1, activation 0.
      t.post_send(make_communication(op::send_forward, 0, 1, 1), f1);
      t.post_send(make_communication(op::send_backward, 2, 1, 1), b1);
      t.post_send(make_communication(op::send_forward, 0, 0, 1), f0);
      t.commit();
    } else {
      // Received as: activation 0, activation 1, gradient 1.
      t.post_recv(make_communication(op::recv_forward, 1, 0, 0), got_f0);
      t.post_recv(make_communication(op::recv_forward, 1, 1, 0), got_f1);
      t.post_recv(make_communication(op::recv_backward, 1, 1, 0), got_b1);
      t.commit();
    }
  });
  rethrow_any(errors);
  REQUIRE(got_f0 == buffer{10});
  REQUIRE(got_f1 == buffer{11});
  REQUIRE(got_b1 == buffer{21});
}

TEST_CASE("two sends of one payload and micro-batch meet the receives in posting order",
          "[transport]") {
  // Interleaved stages on two ranks: rank 0 sends micro-batch 3 from stage 0
  // (to stage 1) and from stage 2 (to stage 3), in two batches.
  network net(2);
  buffer first, second;
  const auto errors = on_ranks(2, [&](int r) {
    auto& t = net.endpoint(r);
    if (r == 0) {
      const buffer a{100}, b{200};
      t.post_send(make_communication(op::send_forward, 0, 3, 1), a);
      t.commit();
      t.post_send(make_communication(op::send_forward, 2, 3, 1), b);
      t.commit();
    } else {
      t.post_recv(make_communication(op::recv_forward, 1, 3, 0), first);
      t.commit();
      t.post_recv(make_communication(op::recv_forward, 3, 3, 0), second);
      t.commit();
    }
  });
  rethrow_any(errors);
  REQUIRE(first == buffer{100});
  REQUIRE(second == buffer{200});
}

TEST_CASE("a matched send from an unexpected stage is an error that names both",
          "[transport][errors]") {
  network net(2, std::chrono::seconds(20));
  const auto errors = on_ranks(2, [&](int r) {
    auto& t = net.endpoint(r);
    if (r == 0) {
      const buffer b{1};
      t.post_send(make_communication(op::send_forward, 2, 0, 1), b);  // stage 2's output
      t.commit();
    } else {
      buffer b;
      t.post_recv(make_communication(op::recv_forward, 1, 0, 0), b);  // stage 1 wants stage 0's
      try {
        t.commit();
      } catch (const std::exception& e) {
        t.abort(e.what());  // as the executor does
        throw;
      }
    }
  });
  REQUIRE(errors[1]);
  REQUIRE_THROWS_AS(std::rethrow_exception(errors[1]), dualpipe::transport_error);
  REQUIRE_THAT(what_of(errors[1]),
               Catch::Contains("rank 1 posted 1RECV_F0 from rank 0, but the matching send there "
                               "is 2SEND_F0 (expected the sending stage 0)"));
  // The sender is not left waiting for a receive that will never come.
  REQUIRE(errors[0]);
  REQUIRE_THROWS_AS(std::rethrow_exception(errors[0]), dualpipe::pipeline_aborted);
}

TEST_CASE("a rendezvous in both directions completes", "[transport]") {
  network net(2);
  buffer got0, got1;
  const auto errors = on_ranks(2, [&](int r) {
    auto& t = net.endpoint(r);
    if (r == 0) {
      const buffer act{7};
      t.post_send(make_communication(op::send_forward, 0, 4, 1), act);    // stage 0 -> 1
      t.post_recv(make_communication(op::recv_backward, 0, 2, 1), got0);  // grad from stage 1
      t.commit();
    } else {
      const buffer grad{9};
      t.post_send(make_communication(op::send_backward, 1, 2, 0), grad);
      t.post_recv(make_communication(op::recv_forward, 1, 4, 0), got1);
      t.commit();
    }
  });
  rethrow_any(errors);
  REQUIRE(got0 == buffer{9});
  REQUIRE(got1 == buffer{7});
}

TEST_CASE("waits time out naming the instruction", "[transport][errors]") {
  // Sleeping at once and polling first (set_spin) keep the same deadline,
  // even with a spin longer than the timeout.
  const auto spin = std::chrono::microseconds(GENERATE(0, 50, 200000));
  CAPTURE(spin.count());
  network net(2, std::chrono::milliseconds(50), spin);
  SECTION("a receive nobody sends") {
    buffer b;
    auto& t = net.endpoint(1);
    t.post_recv(make_communication(op::recv_forward, 1, 5, 0), b);
    try {
      t.commit();
      FAIL("commit returned");
    } catch (const dualpipe::transport_timeout& e) {
      REQUIRE(e.rank() == 1);
      REQUIRE_THAT(e.what(), Catch::Contains("rank 1 timed out after 50 ms waiting on 1RECV_F5 "
                                             "from rank 0"));
    }
  }
  SECTION("a send nobody receives") {
    const buffer b{1};
    auto& t = net.endpoint(0);
    t.post_send(make_communication(op::send_backward, 1, 2, 1), b);
    REQUIRE_THROWS_AS(t.commit(), dualpipe::transport_timeout);
    t.post_send(make_communication(op::send_backward, 1, 2, 1), b);
    REQUIRE_THROWS_WITH(t.commit(), Catch::Contains("waiting on 1SEND_B2 to rank 1") &&
                                        Catch::Contains("never posted the matching receive"));
  }
}

TEST_CASE("an abort wakes every waiting rank, naming the origin", "[transport][errors]") {
  const auto spin = std::chrono::microseconds(GENERATE(0, 50));
  CAPTURE(spin.count());
  network net(4, std::chrono::seconds(20), spin);
  std::atomic<int> waiting{0};
  const auto errors = on_ranks(4, [&](int r) {
    auto& t = net.endpoint(r);
    if (r == 2) {
      // Let the others block first (no timing assertion: they throw either way).
      while (waiting.load() < 3) std::this_thread::yield();
      t.abort("rank 2 failed: boom");
      return;
    }
    buffer b;
    t.post_recv(make_communication(op::recv_forward, r, 0, r == 3 ? 2 : r + 1), b);
    ++waiting;
    t.commit();
  });
  REQUIRE_FALSE(errors[2]);
  for (const int r : {0, 1, 3}) {
    CAPTURE(r);
    REQUIRE(errors[static_cast<std::size_t>(r)]);
    try {
      std::rethrow_exception(errors[static_cast<std::size_t>(r)]);
    } catch (const dualpipe::pipeline_aborted& e) {
      REQUIRE(e.rank() == r);
      REQUIRE(e.origin_rank() == 2);
      REQUIRE(e.origin_what() == "rank 2 failed: boom");
      REQUIRE_THAT(e.what(),
                   Catch::Contains("rank " + std::to_string(r) + " stopped while waiting on") &&
                       Catch::Contains("aborted by rank 2") && Catch::Contains("boom"));
    }
  }
  REQUIRE(net.aborted());
  // Later commits and barriers fail at once; reset() makes the network usable again.
  buffer b;
  net.endpoint(0).post_recv(make_communication(op::recv_forward, 1, 0, 1), b);
  REQUIRE_THROWS_AS(net.endpoint(0).commit(), dualpipe::pipeline_aborted);
  REQUIRE_THROWS_AS(net.endpoint(0).finish_step(), dualpipe::pipeline_aborted);
  net.reset();
  REQUIRE_FALSE(net.aborted());
  rethrow_any(on_ranks(4, [&](int r) { net.endpoint(r).finish_step(); }));
}

TEST_CASE("a sender waiting for its receiver is woken by an abort too", "[transport][errors]") {
  network net(2, std::chrono::seconds(20));
  std::atomic<bool> posted{false};
  const auto errors = on_ranks(2, [&](int r) {
    auto& t = net.endpoint(r);
    if (r == 0) {
      const buffer b{1};
      t.post_send(make_communication(op::send_forward, 0, 0, 1), b);
      posted = true;
      t.commit();
    } else {
      while (!posted.load()) std::this_thread::yield();
      t.abort("rank 1 gave up");
    }
  });
  REQUIRE(errors[0]);
  REQUIRE_THAT(what_of(errors[0]), Catch::Contains("waiting on 0SEND_F0 to rank 1") &&
                                       Catch::Contains("rank 1 gave up"));
}

TEST_CASE("instructions of the wrong kind or peer are refused", "[transport][errors]") {
  network net(2);
  buffer b;
  auto& t = net.endpoint(0);
  REQUIRE_THROWS_AS(t.post_send(make_communication(op::recv_forward, 0, 0, 1), b),
                    dualpipe::transport_error);
  REQUIRE_THROWS_WITH(t.post_recv(make_communication(op::send_forward, 0, 0, 1), b),
                      Catch::Contains("post_recv takes a RECV_F or RECV_B instruction"));
  REQUIRE_THROWS_WITH(t.post_send(make_communication(op::send_forward, 0, 0, 0), b),
                      Catch::Contains("names peer rank 0, which is not another rank"));
  REQUIRE_THROWS_WITH(t.post_send(make_communication(op::send_forward, 0, 0, 2), b),
                      Catch::Contains("names peer rank 2"));
}

TEST_CASE("the end-of-step barrier holds every rank until all arrive, step after step",
          "[transport]") {
  const int P = 4;
  const auto spin = std::chrono::microseconds(GENERATE(0, 50));
  CAPTURE(spin.count());
  network net(P, std::chrono::seconds(60), spin);
  REQUIRE(net.spin() == spin);
  std::atomic<int> arrived{0};
  std::vector<int> seen(P * 50, -1);
  rethrow_any(on_ranks(P, [&](int r) {
    for (int step = 0; step < 50; ++step) {
      ++arrived;
      net.endpoint(r).finish_step();
      // Nobody passes the barrier of step s before all P arrived at it.
      seen[static_cast<std::size_t>(step * P + r)] = arrived.load();
    }
  }));
  for (int step = 0; step < 50; ++step)
    for (int r = 0; r < P; ++r)
      REQUIRE(seen[static_cast<std::size_t>(step * P + r)] >= (step + 1) * P);
}

TEST_CASE("a ring of ranks exchanges many batches", "[transport]") {
  // Each rank sends to the next and receives from the previous, 200 times;
  // the values prove every receive got its own send.
  const int P = 5, rounds = 200;
  const auto spin = std::chrono::microseconds(GENERATE(0, 50));
  CAPTURE(spin.count());
  network net(P);
  net.set_spin(spin);
  std::vector<long> sums(P, 0);
  rethrow_any(on_ranks(P, [&](int r) {
    auto& t = net.endpoint(r);
    buffer out(3), in;
    for (int k = 0; k < rounds; ++k) {
      out.assign(3, r * 1000 + k);
      t.post_send(make_communication(op::send_forward, r, k, (r + 1) % P), out);
      // Rank r sends as stage r; the receiver names the stage after the
      // sender's (rank 0 receives rank P-1's output as stage P).
      t.post_recv(make_communication(op::recv_forward, r == 0 ? P : r, k, (r + P - 1) % P), in);
      t.commit();
      sums[static_cast<std::size_t>(r)] += in.at(0);
    }
  }));
  for (int r = 0; r < P; ++r) {
    const int from = (r + P - 1) % P;
    long expected = 0;
    for (int k = 0; k < rounds; ++k) expected += from * 1000 + k;
    REQUIRE(sums[static_cast<std::size_t>(r)] == expected);
  }
}
