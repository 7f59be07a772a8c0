// Compile-fail case: DualPipe with an odd number of micro-batches (P=8, N=7) must not compile.
// Built with -DPOSITIVE_TWIN it instantiates dualpipe_table<8, 16> instead, which must compile: the
// arguments alone decide.
#include "dualpipe/analysis/validate.hpp"
#include "dualpipe/schedule/dualpipe.hpp"

#ifdef POSITIVE_TWIN
constexpr auto table = dualpipe::schedules::dualpipe_table<8, 16>();
static_assert(dualpipe::validate(table).ok);
#else
constexpr auto table = dualpipe::schedules::dualpipe_table<8, 7>();
#endif
