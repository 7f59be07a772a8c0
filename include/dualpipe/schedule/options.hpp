// Options every schedule generator takes.
#pragma once

namespace dualpipe {

// A structural type, so it can be a template argument of compile-time tables:
// dualpipe_table<8, 20, generator_options{.forward_only = true}>().
struct generator_options {
  // Inference: only forwards (and their communication) are emitted.
  bool forward_only = false;
  // Emit SEND_*/RECV_* instructions and commit boundaries. A compute-only
  // table is what PyTorch's compute-only CSV holds.
  bool with_communication = true;
};

}  // namespace dualpipe
