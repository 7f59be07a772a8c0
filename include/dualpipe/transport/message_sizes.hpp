// Per-message sizes for the transports that must know a receive's size before
// the data arrives (NCCL) or that check it (device-local). A message_key names
// one message the same way on its sending and its receiving rank, and
// message_sizes holds the rule that gives its element count: one count for
// every message (the reference's fixed P2P shape) or a function of the key
// (packed or variable-length sequences). Both ends evaluate the rule, so
// nothing about the size crosses the wire.
//
// The contract of a rule: its result depends on the key alone, and is the same
// on every rank and at every call (in every step). The sender checks its
// buffer against the rule; the receiver sizes its buffer from it, and NCCL
// cannot tell a receiver that the sender's rule said otherwise. It runs on the
// posting rank's host thread, at post_send/post_recv, and must not call into
// the transport.
#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <stdexcept>
#include <string>
#include <utility>

#include "dualpipe/schedule/action_syntax.hpp"
#include "dualpipe/schedule/instruction.hpp"
#include "dualpipe/transport/errors.hpp"

namespace dualpipe {

// What a message carries: a stage's output going forward (SEND_F/RECV_F) or
// a stage's input gradient going backward (SEND_B/RECV_B).
enum class message_payload : std::uint8_t { activation, gradient };

// One message of a step: no two messages of a table share a key, since each
// (stage, micro-batch) runs one forward and one backward per step.
struct message_key {
  std::int32_t from_stage = -1;  // the sending stage
  std::int32_t to_stage = -1;    // the receiving stage
  std::int32_t microbatch = -1;
  message_payload payload = message_payload::activation;

  friend constexpr bool operator==(const message_key&, const message_key&) = default;
};

// The key of the message a SEND_* or RECV_* instruction posts. The stage at
// the other end comes from counterpart(), the one rule for which stage meets
// which, so a send and the receive it is matched with give equal keys.
// Throws std::invalid_argument for any other instruction.
[[nodiscard]] constexpr message_key message_key_of(const instruction& i) {
  if (!is_communication(i.kind))
    throw std::invalid_argument("dualpipe::message_key_of: " + format_action(i) +
                                " is not a SEND_F, SEND_B, RECV_F or RECV_B instruction");
  // counterpart() ignores the rank except to name it as the peer.
  const instruction other = counterpart(i, i.peer);
  const bool sends = is_send(i.kind);
  const bool forward = i.kind == op::send_forward || i.kind == op::recv_forward;
  return {sends ? i.stage : other.stage, sends ? other.stage : i.stage, i.microbatch,
          forward ? message_payload::activation : message_payload::gradient};
}

// "the activation of micro-batch 3 from stage 1 to stage 2": for messages.
[[nodiscard]] inline std::string describe(const message_key& k) {
  return std::string(k.payload == message_payload::activation ? "the activation" : "the gradient") +
         " of micro-batch " + std::to_string(k.microbatch) + " from stage " +
         std::to_string(k.from_stage) + " to stage " + std::to_string(k.to_stage);
}

// The size rule of a transport endpoint, in elements of its tensor type.
// A count of zero is refused, from a fixed size or from a rule: the fixed
// NCCL constructor always refused it, a zero from a rule is most likely a
// message the rule does not know (a table lookup that missed), and a
// zero-count receive would leave the buffer empty without anyone noticing.
class message_sizes {
 public:
  using rule = std::function<std::size_t(const message_key&)>;

  // Every message holds `elements` elements.
  explicit message_sizes(std::size_t elements) : fixed_(elements) {
    if (elements == 0)
      throw std::invalid_argument(
          "dualpipe::message_sizes: a fixed message size must be at least one element");
  }
  // Each message holds per_message(key) elements (see the contract above).
  explicit message_sizes(rule per_message) : rule_(std::move(per_message)) {
    if (!rule_)
      throw std::invalid_argument(
          "dualpipe::message_sizes: the per-message rule is empty (an empty std::function)");
  }

  [[nodiscard]] bool fixed() const noexcept { return !rule_; }

  // The element count of the message that `i` (a SEND_* or RECV_*) posts on
  // rank `rank`: the size its send must have and its receive gets. Throws
  // transport_error naming the rank and the instruction when the rule gives
  // zero or throws (the rule's exception is nested).
  [[nodiscard]] std::size_t elements_of(const instruction& i, int rank) const {
    if (fixed()) return fixed_;
    const message_key key = message_key_of(i);
    std::size_t n = 0;
    try {
      n = rule_(key);
    } catch (...) {
      const std::string original = handled_exception_text("an exception of unknown type");
      std::throw_with_nested(transport_error(
          rank, "rank " + std::to_string(rank) + ": the message size rule failed for " +
                    format_action(i) + " (" + describe(key) + "): " + original));
    }
    if (n == 0)
      throw transport_error(rank, "rank " + std::to_string(rank) +
                                      ": the message size rule gives 0 elements for " +
                                      format_action(i) + " (" + describe(key) +
                                      "); every message needs at least one element");
    return n;
  }

  // Throws transport_error unless the buffer a SEND_* instruction sends holds
  // the rule's count for its message.
  void check_send(const instruction& send, std::size_t elements, int rank) const {
    const std::size_t expected = elements_of(send, rank);
    if (elements == expected) return;
    const std::string head = "rank " + std::to_string(rank) + ": " + format_action(send) +
                             " sends " + std::to_string(elements) + " elements; ";
    if (fixed())
      throw transport_error(rank, head + "every message holds " + std::to_string(expected));
    throw transport_error(rank, head + "the message size rule gives " + std::to_string(expected) +
                                    " for " + describe(message_key_of(send)));
  }

  // For a transport that carries the sender's count (device-local): throws
  // transport_error unless the `carried` elements that `send` brought to the
  // receive `recv` on rank `rank` are `expected`, which is
  // elements_of(recv, rank) evaluated at post time (so that the rule never
  // runs under the transport's lock). A mismatch means the ranks' rules
  // differ, or the sender had none.
  void check_received(const instruction& recv, const instruction& send, std::size_t carried,
                      std::size_t expected, int rank) const {
    if (carried == expected) return;
    const std::string head = "rank " + std::to_string(rank) + ": " + format_action(recv) + " met " +
                             format_action(send) + " from rank " + std::to_string(recv.peer) +
                             " carrying " + std::to_string(carried) + " elements; ";
    const std::string rule_says = fixed()
                                      ? "every message holds " + std::to_string(expected)
                                      : "the message size rule gives " + std::to_string(expected) +
                                            " for " + describe(message_key_of(recv));
    throw transport_error(rank, head + rule_says + " (give every rank the same rule)");
  }

 private:
  std::size_t fixed_ = 0;
  rule rule_;
};

}  // namespace dualpipe
