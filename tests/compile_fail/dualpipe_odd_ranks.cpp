// Compile-fail case: DualPipe with an odd number of ranks (P=7, N=14) must not compile. Built with
// -DPOSITIVE_TWIN it instantiates dualpipe_table<6, 14> instead, which must compile: the arguments
// alone decide.
#include "dualpipe/analysis/validate.hpp"
#include "dualpipe/schedule/dualpipe.hpp"

#ifdef POSITIVE_TWIN
constexpr auto table = dualpipe::schedules::dualpipe_table<6, 14>();
static_assert(dualpipe::validate(table).ok);
#else
constexpr auto table = dualpipe::schedules::dualpipe_table<7, 14>();
#endif
