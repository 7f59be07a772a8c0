// Compile-fail case: DualPipeV with fewer than 2P micro-batches (P=4, N=6) must not compile. Built
// with -DPOSITIVE_TWIN it instantiates dualpipev_table<4, 8> instead, which must compile: the
// arguments alone decide.
#include "dualpipe/analysis/validate.hpp"
#include "dualpipe/schedule/dualpipe.hpp"

#ifdef POSITIVE_TWIN
constexpr auto table = dualpipe::schedules::dualpipev_table<4, 8>();
static_assert(dualpipe::validate(table).ok);
#else
constexpr auto table = dualpipe::schedules::dualpipev_table<4, 6>();
#endif
