// Compile-fail cases for the wire customisation point (wire.hpp). Built as
// is, an archetype tensor whose wire_traits has exactly the three members
// models wire_tensor and must compile cleanly. Built with NO_TRAITS or one
// -DMISSING_... macro, the build must fail with the sentence naming it.
#include <cstddef>
#include <span>

#include "dualpipe/transport/wire.hpp"

namespace archetype {
struct tensor {};
}  // namespace archetype

#ifndef NO_TRAITS
template <>
struct dualpipe::wire_traits<archetype::tensor> {
#ifndef MISSING_SHAPE
  static wire_shape shape(const archetype::tensor&) {
    return {};
  }
#endif
#ifndef MISSING_BYTES
  static std::span<const std::byte> bytes(const archetype::tensor&) {
    return {};
  }
#endif
#ifndef MISSING_PREPARE
  static std::span<std::byte> prepare(archetype::tensor&, const wire_shape&) {
    return {};
  }
#endif
};
#endif

static_assert(dualpipe::check_wire_tensor<archetype::tensor>());
static_assert(dualpipe::check_wire_tensor<std::vector<float>>());

int main() {}
