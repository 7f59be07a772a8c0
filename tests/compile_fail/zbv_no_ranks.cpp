// Compile-fail case: ZB-V on no ranks (P=0, N=4) must not compile. Built with -DPOSITIVE_TWIN it
// instantiates zbv_table<1, 4> instead, which must compile.
#include "dualpipe/analysis/validate.hpp"
#include "dualpipe/schedule/zbv.hpp"

#ifdef POSITIVE_TWIN
constexpr auto table = dualpipe::schedules::zbv_table<1, 4>();
static_assert(dualpipe::validate(table).ok);
#else
constexpr auto table = dualpipe::schedules::zbv_table<0, 4>();
#endif
