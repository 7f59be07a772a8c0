// Compile-fail case: DualPipe on a single rank (P=1, N=2) must not compile. Built with
// -DPOSITIVE_TWIN it instantiates dualpipe_table<2, 4> instead, which must compile: the arguments
// alone decide.
#include "dualpipe/analysis/validate.hpp"
#include "dualpipe/schedule/dualpipe.hpp"

#ifdef POSITIVE_TWIN
constexpr auto table = dualpipe::schedules::dualpipe_table<2, 4>();
static_assert(dualpipe::validate(table).ok);
#else
constexpr auto table = dualpipe::schedules::dualpipe_table<1, 2>();
#endif
