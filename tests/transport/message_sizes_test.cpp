// message_sizes.hpp: a send and the receive it is matched with name the same
// message in every registered schedule, and the size rule's checks (fixed
// count and per-message rule) say which rank, instruction and sizes.
#include <catch2/catch.hpp>

#include <cstddef>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "dualpipe/schedule/instruction.hpp"
#include "dualpipe/schedule/registry.hpp"
#include "dualpipe/transport/errors.hpp"
#include "dualpipe/transport/message_sizes.hpp"

using namespace dualpipe;

namespace {

// The what() of the transport_error that f() throws, or "no exception".
template <class F>
std::string transport_error_of(F&& f) {
  try {
    f();
  } catch (const transport_error& e) {
    return e.what();
  }
  return "no exception";
}

// A rule that every field of the key changes, so that two ends computing it
// from keys that differ in any field would disagree.
std::size_t packed_rule(const message_key& k) {
  return 1 + static_cast<std::size_t>(k.microbatch) * 7 +
         static_cast<std::size_t>(k.from_stage) * 3 + static_cast<std::size_t>(k.to_stage) * 5 +
         (k.payload == message_payload::gradient ? 1000 : 0);
}

struct matched_pair {
  int send_rank;
  instruction send;
  int recv_rank;
  instruction recv;
};

// Pairs the k-th send from rank a to rank b with the k-th receive on b from
// a, as the transports (and validate) match them. Every send and receive
// must find its partner.
std::vector<matched_pair> matched_pairs(const schedule_table& t) {
  std::map<std::pair<int, int>, std::vector<instruction>> sends, recvs;
  for (int r = 0; r < t.info().ranks; ++r)
    for (const instruction& i : t.rank(r)) {
      if (is_send(i.kind)) sends[{r, i.peer}].push_back(i);
      if (is_recv(i.kind)) recvs[{i.peer, r}].push_back(i);
    }
  std::vector<matched_pair> pairs;
  for (const auto& [link, list] : sends) {
    const auto& other = recvs[link];
    INFO("link " << link.first << " -> " << link.second);
    REQUIRE(other.size() == list.size());
    for (std::size_t k = 0; k < list.size(); ++k)
      pairs.push_back({link.first, list[k], link.second, other[k]});
  }
  for (const auto& [link, list] : recvs)
    if (!list.empty()) REQUIRE(sends.count(link) == 1);  // no receive without sends
  return pairs;
}

}  // namespace

// The four kinds, worked out by hand from the stage arithmetic (activations
// go to the next stage, gradients to the previous one).
static_assert(message_key_of(make_communication(op::send_forward, 1, 3, 2)) ==
              message_key{1, 2, 3, message_payload::activation});
static_assert(message_key_of(make_communication(op::recv_forward, 2, 3, 1)) ==
              message_key{1, 2, 3, message_payload::activation});
static_assert(message_key_of(make_communication(op::send_backward, 2, 5, 0)) ==
              message_key{2, 1, 5, message_payload::gradient});
static_assert(message_key_of(make_communication(op::recv_backward, 1, 5, 3)) ==
              message_key{2, 1, 5, message_payload::gradient});
// The peer is no part of the key: the same message read on either rank.
static_assert(message_key_of(make_communication(op::send_forward, 1, 3, 2)) ==
              message_key_of(make_communication(op::send_forward, 1, 3, 7)));
static_assert(!(message_key{1, 2, 3, message_payload::activation} ==
                message_key{1, 2, 3, message_payload::gradient}));

TEST_CASE("message_key_of: only communication instructions have a key", "[message_sizes]") {
  CHECK_THROWS_WITH(message_key_of(make_forward(0, 4)),
                    "dualpipe::message_key_of: 0F4 is not a SEND_F, SEND_B, RECV_F or RECV_B "
                    "instruction");
  CHECK_THROWS_AS(message_key_of(make_commit()), std::invalid_argument);
  CHECK(describe(message_key{1, 2, 3, message_payload::activation}) ==
        "the activation of micro-batch 3 from stage 1 to stage 2");
  CHECK(describe(message_key{2, 1, 0, message_payload::gradient}) ==
        "the gradient of micro-batch 0 from stage 2 to stage 1");
}

TEST_CASE("every registered schedule: a receive's key is its matched send's key",
          "[message_sizes]") {
  const message_sizes rule(packed_rule);
  for (const schedule_entry& e : schedule_registry()) {
    int built = 0;
    for (const auto& [P, N] : std::vector<std::pair<int, int>>{{2, 4}, {4, 8}, {4, 16}, {6, 12}})
      for (const bool forward_only : {false, true}) {
        INFO(e.name << " P=" << P << " N=" << N << " forward_only=" << forward_only);
        schedule_table t;
        try {
          t = make_schedule(e.name, {P, N, {forward_only, true}, {}});
        } catch (const std::invalid_argument&) {
          continue;  // sizes this schedule does not take
        }
        ++built;
        const std::vector<matched_pair> pairs = matched_pairs(t);
        // Every stage boundary that crosses ranks carries messages.
        CHECK_FALSE(pairs.empty());
        std::set<std::tuple<int, int, int, message_payload>> seen;
        for (const matched_pair& m : pairs) {
          INFO("rank " << m.send_rank << " " << format_action(m.send) << " -> rank " << m.recv_rank
                       << " " << format_action(m.recv));
          const message_key sent = message_key_of(m.send);
          const message_key received = message_key_of(m.recv);
          CHECK(sent == received);
          // The key says what the table says, independently of counterpart():
          // the send names the sending stage, the receive the receiving one,
          // and the table places them on the two ranks.
          CHECK(sent.from_stage == m.send.stage);
          CHECK(received.to_stage == m.recv.stage);
          CHECK(sent.microbatch == m.send.microbatch);
          CHECK(received.microbatch == m.recv.microbatch);
          CHECK(sent.payload == (m.send.kind == op::send_forward ? message_payload::activation
                                                                 : message_payload::gradient));
          CHECK(t.view().rank_of(sent.from_stage, sent.microbatch) == m.send_rank);
          CHECK(t.view().rank_of(sent.to_stage, sent.microbatch) == m.recv_rank);
          CHECK(seen.insert({sent.from_stage, sent.to_stage, sent.microbatch, sent.payload})
                    .second);  // no two messages of a step share a key
          // Both ends evaluate the rule alike: the receiver's size is the one
          // the sender's check accepts.
          const std::size_t n = rule.elements_of(m.recv, m.recv_rank);
          CHECK(n == rule.elements_of(m.send, m.send_rank));
          CHECK_NOTHROW(rule.check_send(m.send, n, m.send_rank));
          CHECK_THROWS_AS(rule.check_send(m.send, n + 1, m.send_rank), transport_error);
        }
        if (forward_only)
          for (const matched_pair& m : pairs) CHECK(m.send.kind == op::send_forward);
      }
    INFO(e.name);
    CHECK(built >= 2);  // the test saw this schedule at several sizes
  }
}

TEST_CASE("a fixed size: every message holds it, as the NCCL transport always did",
          "[message_sizes]") {
  const message_sizes fixed(8);
  CHECK(fixed.fixed());
  const auto send = make_communication(op::send_forward, 1, 3, 2);
  const auto recv = make_communication(op::recv_backward, 0, 9, 1);
  CHECK(fixed.elements_of(send, 1) == 8);
  CHECK(fixed.elements_of(recv, 0) == 8);
  CHECK_NOTHROW(fixed.check_send(send, 8, 1));
  CHECK(transport_error_of([&] { fixed.check_send(send, 5, 1); }) ==
        "rank 1: 1SEND_F3 sends 5 elements; every message holds 8");
  try {
    fixed.check_send(send, 9, 4);
    FAIL("no exception");
  } catch (const transport_error& e) {
    CHECK(e.rank() == 4);
  }
  CHECK_NOTHROW(
      fixed.check_received(recv, make_communication(op::send_backward, 1, 9, 0), 8, 8, 0));
  CHECK(transport_error_of([&] {
          fixed.check_received(recv, make_communication(op::send_backward, 1, 9, 0), 6, 8, 0);
        }) ==
        "rank 0: 0RECV_B9 met 1SEND_B9 from rank 1 carrying 6 elements; every message "
        "holds 8 (give every rank the same rule)");
  CHECK_THROWS_WITH(message_sizes(std::size_t{0}),
                    "dualpipe::message_sizes: a fixed message size must be at least one element");
}

TEST_CASE("a per-message rule: sizes per key, checked sends, receive sizes", "[message_sizes]") {
  std::vector<message_key> asked;
  const message_sizes sizes([&](const message_key& k) -> std::size_t {
    asked.push_back(k);
    return k.payload == message_payload::activation
               ? 16 + 4 * static_cast<std::size_t>(k.microbatch)
               : 2 + static_cast<std::size_t>(k.microbatch);
  });
  CHECK_FALSE(sizes.fixed());
  const auto send_f = make_communication(op::send_forward, 0, 2, 1);
  const auto recv_f = make_communication(op::recv_forward, 1, 2, 0);
  const auto send_b = make_communication(op::send_backward, 1, 5, 0);
  const auto recv_b = make_communication(op::recv_backward, 0, 5, 1);
  CHECK(sizes.elements_of(send_f, 0) == 24);
  CHECK(sizes.elements_of(recv_f, 1) == 24);
  CHECK(sizes.elements_of(send_b, 1) == 7);
  CHECK(sizes.elements_of(recv_b, 0) == 7);
  // The rule saw the key and nothing else: the same one on both ends.
  REQUIRE(asked.size() == 4);
  CHECK(asked[0] == message_key{0, 1, 2, message_payload::activation});
  CHECK(asked[1] == asked[0]);
  CHECK(asked[2] == message_key{1, 0, 5, message_payload::gradient});
  CHECK(asked[3] == asked[2]);

  CHECK_NOTHROW(sizes.check_send(send_f, 24, 0));
  CHECK_NOTHROW(sizes.check_send(send_b, 7, 1));
  CHECK(transport_error_of([&] { sizes.check_send(send_f, 16, 0); }) ==
        "rank 0: 0SEND_F2 sends 16 elements; the message size rule gives 24 for the activation "
        "of micro-batch 2 from stage 0 to stage 1");
  CHECK(transport_error_of([&] { sizes.check_send(send_b, 24, 1); }) ==
        "rank 1: 1SEND_B5 sends 24 elements; the message size rule gives 7 for the gradient of "
        "micro-batch 5 from stage 1 to stage 0");

  // The receiving side of a transport that carries the count (device-local).
  CHECK_NOTHROW(sizes.check_received(recv_f, send_f, 24, 24, 1));
  CHECK(transport_error_of([&] { sizes.check_received(recv_f, send_f, 20, 24, 1); }) ==
        "rank 1: 1RECV_F2 met 0SEND_F2 from rank 0 carrying 20 elements; the message size rule "
        "gives 24 for the activation of micro-batch 2 from stage 0 to stage 1 (give every rank "
        "the same rule)");

  // A copy (what a transport keeps) holds the same rule.
  const message_sizes copy = sizes;
  CHECK(copy.elements_of(recv_b, 0) == 7);
}

TEST_CASE("a rule that gives zero, throws or is empty is an error", "[message_sizes]") {
  const message_sizes zero_for_odd(
      [](const message_key& k) -> std::size_t { return k.microbatch % 2 == 0 ? 4 : 0; });
  const auto even = make_communication(op::recv_forward, 3, 2, 2);
  const auto odd = make_communication(op::recv_forward, 3, 1, 2);
  CHECK(zero_for_odd.elements_of(even, 3) == 4);
  CHECK(transport_error_of([&] { (void)zero_for_odd.elements_of(odd, 3); }) ==
        "rank 3: the message size rule gives 0 elements for 3RECV_F1 (the activation of "
        "micro-batch 1 from stage 2 to stage 3); every message needs at least one element");
  // A zero-size buffer does not slip through the send check either.
  CHECK(transport_error_of([&] {
          zero_for_odd.check_send(make_communication(op::send_forward, 2, 1, 3), 0, 2);
        }) ==
        "rank 2: the message size rule gives 0 elements for 2SEND_F1 (the activation of "
        "micro-batch 1 from stage 2 to stage 3); every message needs at least one element");

  const std::vector<std::size_t> per_microbatch{5, 6};
  const message_sizes lookup([&](const message_key& k) {
    return per_microbatch.at(static_cast<std::size_t>(k.microbatch));
  });
  const auto third = make_communication(op::send_backward, 1, 2, 0);
  try {
    (void)lookup.elements_of(third, 1);
    FAIL("no exception");
  } catch (const transport_error& e) {
    CHECK(e.rank() == 1);
    CHECK_THAT(e.what(), Catch::StartsWith("rank 1: the message size rule failed for 1SEND_B2 "
                                           "(the gradient of micro-batch 2 from stage 1 to "
                                           "stage 0): "));
    // The rule's own exception is nested.
    CHECK_THROWS_AS(std::rethrow_if_nested(e), std::out_of_range);
  }
  CHECK_THROWS_WITH(message_sizes(message_sizes::rule{}),
                    "dualpipe::message_sizes: the per-message rule is empty (an empty "
                    "std::function)");
}
