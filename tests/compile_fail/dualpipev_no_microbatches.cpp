// Compile-fail case: DualPipeV with no micro-batch (P=4, N=0) must not compile. Built with
// -DPOSITIVE_TWIN it instantiates dualpipev_table<4, 3> instead (below 2P, padded), which must
// compile and validate: the arguments alone decide.
#include "dualpipe/analysis/validate.hpp"
#include "dualpipe/schedule/dualpipe.hpp"

#ifdef POSITIVE_TWIN
constexpr auto table = dualpipe::schedules::dualpipev_table<4, 3>();
static_assert(dualpipe::validate(table).ok);
#else
constexpr auto table = dualpipe::schedules::dualpipev_table<4, 0>();
#endif
