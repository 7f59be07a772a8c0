// Small tables written by hand, shared by the io tests that format or read them.
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

// Two ranks, two micro-batches, compute only: rank 0 runs F F B B, rank 1
// runs F, an overlapped pair (F of micro-batch 1 with B of micro-batch 0),
// then I and W of micro-batch 1. Every compute kind a timeline draws.
inline schedule_table two_ranks_with_overlap() {
  schedule_table t({schedule_kind::custom, 2, 2, 2, placement::linear, false, false});
  for (const instruction& x :
       {make_forward(0, 0), make_forward(0, 1), make_backward(0, 0), make_backward(0, 1)})
    t.push(x);
  t.end_rank();
  for (const instruction& x : {make_forward(1, 0), make_overlapped(1, 1, 1, 0),
                               make_backward_input(1, 1), make_backward_weight(1, 1)})
    t.push(x);
  t.end_rank();
  return t;
}

}  // namespace dualpipe::test
