// Compile-fail case: 1F1B with fewer micro-batches than ranks (P=4, N=3) must not compile. Built
// with -DPOSITIVE_TWIN it instantiates one_f_one_b_table<4, 4> instead, which must compile.
#include "dualpipe/analysis/validate.hpp"
#include "dualpipe/schedule/one_f_one_b.hpp"

#ifdef POSITIVE_TWIN
constexpr auto table = dualpipe::schedules::one_f_one_b_table<4, 4>();
static_assert(dualpipe::validate(table).ok);
#else
constexpr auto table = dualpipe::schedules::one_f_one_b_table<4, 3>();
#endif
