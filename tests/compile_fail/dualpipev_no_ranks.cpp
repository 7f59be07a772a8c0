// Compile-fail case: DualPipeV on no rank (P=0, N=4) must not compile. Built with -DPOSITIVE_TWIN
// it instantiates dualpipev_table<1, 1> instead (both stages on rank 0, one micro-batch), which
// must compile and validate: the arguments alone decide.
#include "dualpipe/analysis/validate.hpp"
#include "dualpipe/schedule/dualpipe.hpp"

#ifdef POSITIVE_TWIN
constexpr auto table = dualpipe::schedules::dualpipev_table<1, 1>();
static_assert(dualpipe::validate(table).ok);
#else
constexpr auto table = dualpipe::schedules::dualpipev_table<0, 4>();
#endif
