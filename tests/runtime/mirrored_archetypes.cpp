// Compile-fail cases for sum_mirrored_gradients. Built as is, it is called on
// what it takes (vectors, spans, a slice of one, and an archetype element that
// only adds and assigns) and must compile cleanly. Built with one -D macro, it
// is called on one thing it does not take and the build must fail with the
// sentence naming that requirement.
#include <list>
#include <span>
#include <vector>

#include "dualpipe/runtime/mirrored.hpp"

namespace archetype {

// A gradient element with nothing but addition and (implicit) assignment.
struct gradient {
  double value = 0;
  friend gradient operator+(const gradient& a, const gradient& b) { return {a.value + b.value}; }
};

// Assignable but not addable.
struct opaque {};

}  // namespace archetype

static_assert(dualpipe::check_mirrored_gradient_ranges<std::vector<float>&, std::span<float>>());
static_assert(dualpipe::check_mirrored_gradient_ranges<std::vector<archetype::gradient>&,
                                                       std::vector<archetype::gradient>&>());

[[maybe_unused]] void use(std::vector<float>& mine, std::vector<float>& theirs,
                          std::vector<double>& flat, std::vector<archetype::gradient>& a,
                          std::vector<archetype::gradient>& b) {
  dualpipe::sum_mirrored_gradients(mine, theirs);
  dualpipe::sum_mirrored_gradients(mine, std::span<float>(theirs));
  dualpipe::sum_mirrored_gradients(std::span<double>(flat).subspan(0, 2),
                                   std::span<double>(flat).subspan(2, 2));
  dualpipe::sum_mirrored_gradients(a, b);
#ifdef SCALAR
  float x = 1, y = 2;
  dualpipe::sum_mirrored_gradients(x, y);
#endif
#ifdef SCALAR_MIRROR
  float y = 2;
  dualpipe::sum_mirrored_gradients(mine, y);
#endif
#ifdef LIST
  std::list<float> l(mine.size());
  dualpipe::sum_mirrored_gradients(mine, l);
#endif
#ifdef NOT_ADDABLE
  std::vector<archetype::opaque> p(2), q(2);
  dualpipe::sum_mirrored_gradients(p, q);
#endif
#ifdef CONST_RANGE
  const std::vector<float>& read_only = theirs;
  dualpipe::sum_mirrored_gradients(mine, read_only);
#endif
}
