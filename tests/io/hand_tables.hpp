// A small table written by hand, shared by the io tests that format or read it.
#pragma once

#include "dualpipe/schedule/instruction.hpp"
#include "dualpipe/schedule/table.hpp"

namespace dualpipe::test {

// A two-stage pipeline of one micro-batch, with its communication, by hand.
inline schedule_table two_stage_with_communication() {
  schedule_table t({schedule_kind::custom, 2, 2, 1, placement::linear, false, true});
  t.push(make_forward(0, 0));
  t.push(make_communication(op::send_forward, 0, 0, 1));
  t.push(make_commit());
  t.push(make_communication(op::recv_backward, 0, 0, 1));
  t.push(make_commit());
  t.push(make_backward(0, 0));
  t.end_rank();
  t.push(make_communication(op::recv_forward, 1, 0, 0));
  t.push(make_commit());
  t.push(make_forward(1, 0));
  t.push(make_backward_input(1, 0));
  t.push(make_communication(op::send_backward, 1, 0, 0));
  t.push(make_commit());
  t.push(make_backward_weight(1, 0));
  t.end_rank();
  return t;
}

}  // namespace dualpipe::test
