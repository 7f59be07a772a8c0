// Compile-fail cases for the runtime concepts. Built as is, archetypes with
// exactly the minimal interface (a stage, a loss, a transport) instantiate the
// executor and must compile cleanly. Built with one -DMISSING_... macro, one
// member is left out and the build must fail with the sentence naming it;
// with -DSTAGE_OF_BY_VALUE the executor is given a stage_of that returns the
// stage by value (a lambda without '-> Stage&').
#include <string_view>

#include "dualpipe/runtime/executor.hpp"
#include "dualpipe/runtime/stage.hpp"
#include "dualpipe/transport/transport.hpp"

namespace archetype {

struct tensor {};  // default-constructible and movable: all the executor asks

struct stage {
#ifndef MISSING_FORWARD
  void forward(int, const tensor&, tensor&) {}
#endif
#ifndef MISSING_BACKWARD
  void backward(int, const tensor&, tensor&) {}
#endif
#ifndef MISSING_BACKWARD_INPUT
  void backward_input(int, const tensor&, tensor&) {}
#endif
#ifndef MISSING_BACKWARD_WEIGHT
  void backward_weight(int) {}
#endif
};

struct loss {
#ifndef MISSING_LOSS_VALUE
  double operator()(const tensor&, const tensor&) { return 0; }
#endif
#ifndef MISSING_LOSS_GRADIENT
  void gradient(const tensor&, const tensor&, tensor&) {}
#endif
};

struct transport {
  using tensor_type = tensor;
  int rank() const { return 0; }
  int ranks() const { return 1; }
  void post_send(const dualpipe::instruction&, const tensor&) {}
  void post_recv(const dualpipe::instruction&, tensor&) {}
#ifdef TICKET_WITHOUT_COMPLETE
  int commit() { return 0; }
#elif !defined(MISSING_COMMIT)
  void commit() {}
#endif
  void abort(std::string_view) noexcept {}
};

}  // namespace archetype

static_assert(dualpipe::check_pipeline_stage<archetype::stage, archetype::tensor>());
static_assert(dualpipe::check_loss_function<archetype::loss, archetype::tensor>());
static_assert(dualpipe::check_pipeline_transport<archetype::transport>());

using executor_type = dualpipe::executor<archetype::stage, archetype::transport, archetype::loss>;
static_assert(!executor_type::overlaps_forward_backward);

// Instantiates the constructor and both step() overloads.
[[maybe_unused]] void use(dualpipe::table_view table, archetype::transport& t, archetype::stage& s,
                          archetype::loss& l) {
#ifdef STAGE_OF_BY_VALUE
  executor_type ex(table, t, [&s](int) { return s; });
#else
  executor_type ex(table, t, [&s](int) -> archetype::stage& { return s; });
#endif
  ex.step({}, {}, l);
  ex.step({}, {.forward_only = true});
}
