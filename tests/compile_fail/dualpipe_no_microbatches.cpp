// Compile-fail case: DualPipe with no micro-batch (P=4, N=0) must not compile. Built with
// -DPOSITIVE_TWIN it instantiates dualpipe_table<4, 7> instead (odd and below 2P, which the
// reference refuses and this library pads), which must compile and validate: the arguments alone
// decide.
#include "dualpipe/analysis/validate.hpp"
#include "dualpipe/schedule/dualpipe.hpp"

#ifdef POSITIVE_TWIN
constexpr auto table = dualpipe::schedules::dualpipe_table<4, 7>();
static_assert(dualpipe::validate(table).ok);
#else
constexpr auto table = dualpipe::schedules::dualpipe_table<4, 0>();
#endif
