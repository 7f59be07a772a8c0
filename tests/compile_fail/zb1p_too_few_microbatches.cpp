// Compile-fail case: ZB1P with fewer micro-batches than ranks (P=8, N=7) must not compile. Built
// with -DPOSITIVE_TWIN it instantiates zb1p_table<8, 8> instead, which must compile.
#include "dualpipe/analysis/validate.hpp"
#include "dualpipe/schedule/zb1p.hpp"

#ifdef POSITIVE_TWIN
constexpr auto table = dualpipe::schedules::zb1p_table<8, 8>();
static_assert(dualpipe::validate(table).ok);
#else
constexpr auto table = dualpipe::schedules::zb1p_table<8, 7>();
#endif
