// Compile-fail case: GPipe with no micro-batches (P=4, N=0) must not compile. Built with
// -DPOSITIVE_TWIN it instantiates gpipe_table<4, 1> instead, which must compile.
#include "dualpipe/analysis/validate.hpp"
#include "dualpipe/schedule/gpipe.hpp"

#ifdef POSITIVE_TWIN
constexpr auto table = dualpipe::schedules::gpipe_table<4, 1>();
static_assert(dualpipe::validate(table).ok);
#else
constexpr auto table = dualpipe::schedules::gpipe_table<4, 0>();
#endif
