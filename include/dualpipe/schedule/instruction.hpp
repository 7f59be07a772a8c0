// The unit of every schedule: one instruction a rank executes, small and
// trivially copyable so that whole tables are literal types.
#pragma once

#include <cstdint>
#include <string_view>
#include <type_traits>

namespace dualpipe {

// What an instruction does. Compute kinds act on (stage, micro-batch);
// communication kinds move one stage's output (forward) or input gradient
// (backward) to or from a peer rank.
enum class op : std::uint8_t {
  forward,                      // F: forward of one stage for one micro-batch
  backward,                     // B: full backward (input and weight gradients)
  backward_input,               // I: backward for inputs; weight gradient deferred
  backward_weight,              // W: oldest deferred weight gradient (FIFO)
  overlapped_forward_backward,  // F of (stage, mb) overlapped with B of (stage_b, mb_b)
  send_forward,                 // post a send of stage's output for mb to peer
  recv_forward,                 // post a receive of stage's input for mb from peer
  send_backward,                // post a send of stage's input gradient for mb to peer
  recv_backward,                // post a receive of stage's output gradient for mb from peer
  commit,                       // launch every posted send/receive together and wait for all
};

inline constexpr int op_count = 10;

[[nodiscard]] constexpr bool is_compute(op k) noexcept {
  return k <= op::overlapped_forward_backward;
}
[[nodiscard]] constexpr bool is_communication(op k) noexcept {
  return k >= op::send_forward && k <= op::recv_backward;
}
[[nodiscard]] constexpr bool is_send(op k) noexcept {
  return k == op::send_forward || k == op::send_backward;
}
[[nodiscard]] constexpr bool is_recv(op k) noexcept {
  return k == op::recv_forward || k == op::recv_backward;
}

// The name PyTorch's action syntax uses for each kind ("F", "SEND_F", ...).
[[nodiscard]] constexpr std::string_view op_name(op k) noexcept {
  switch (k) {
    case op::forward: return "F";
    case op::backward: return "B";
    case op::backward_input: return "I";
    case op::backward_weight: return "W";
    case op::overlapped_forward_backward: return "OVERLAP_F_B";
    case op::send_forward: return "SEND_F";
    case op::recv_forward: return "RECV_F";
    case op::send_backward: return "SEND_B";
    case op::recv_backward: return "RECV_B";
    case op::commit: return "COMMIT";
  }
  return "?";
}

struct instruction {
  op kind = op::forward;
  // Compute: the stage and micro-batch acted on (the forward half of an
  // overlapped pair). Communication: the sending stage for SEND_*, the
  // receiving stage for RECV_* (as PyTorch names them). Commit: unused (-1).
  std::int32_t stage = -1;
  std::int32_t microbatch = -1;
  // The backward half of an overlapped pair (always a full backward).
  std::int32_t stage_b = -1;
  std::int32_t microbatch_b = -1;
  // Communication: the peer rank. Otherwise -1.
  std::int32_t peer = -1;

  friend constexpr bool operator==(const instruction&, const instruction&) = default;
};

static_assert(std::is_trivially_copyable_v<instruction>);
static_assert(sizeof(instruction) <= 24);

[[nodiscard]] constexpr instruction make_forward(int stage, int mb) noexcept {
  return {op::forward, stage, mb, -1, -1, -1};
}
[[nodiscard]] constexpr instruction make_backward(int stage, int mb) noexcept {
  return {op::backward, stage, mb, -1, -1, -1};
}
[[nodiscard]] constexpr instruction make_backward_input(int stage, int mb) noexcept {
  return {op::backward_input, stage, mb, -1, -1, -1};
}
// W names the (stage, micro-batch) whose deferred weight gradient it runs; the
// executor checks that this is the oldest one deferred on the rank.
[[nodiscard]] constexpr instruction make_backward_weight(int stage, int mb) noexcept {
  return {op::backward_weight, stage, mb, -1, -1, -1};
}
[[nodiscard]] constexpr instruction make_overlapped(int f_stage, int f_mb, int b_stage,
                                                    int b_mb) noexcept {
  return {op::overlapped_forward_backward, f_stage, f_mb, b_stage, b_mb, -1};
}
[[nodiscard]] constexpr instruction make_communication(op kind, int stage, int mb,
                                                       int peer) noexcept {
  return {kind, stage, mb, -1, -1, peer};
}
[[nodiscard]] constexpr instruction make_commit() noexcept {
  return {op::commit, -1, -1, -1, -1, -1};
}

// The instruction at the other end of a communication instruction `x` that
// rank `rank` posts: activations go forward (SEND_F of stage s meets RECV_F
// of stage s + 1), gradients backward (SEND_B of stage s meets RECV_B of
// stage s - 1), and the reverse for a receive; same micro-batch, and its peer
// is `rank`. x must be a SEND_* or RECV_*.
[[nodiscard]] constexpr instruction counterpart(const instruction& x, int rank) noexcept {
  switch (x.kind) {
    case op::send_forward:
      return make_communication(op::recv_forward, x.stage + 1, x.microbatch, rank);
    case op::recv_forward:
      return make_communication(op::send_forward, x.stage - 1, x.microbatch, rank);
    case op::send_backward:
      return make_communication(op::recv_backward, x.stage - 1, x.microbatch, rank);
    case op::recv_backward:
      return make_communication(op::send_backward, x.stage + 1, x.microbatch, rank);
    default: return x;
  }
}

}  // namespace dualpipe
