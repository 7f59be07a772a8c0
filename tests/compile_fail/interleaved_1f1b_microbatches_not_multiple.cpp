// Compile-fail case: interleaved 1F1B with N not a multiple of P (P=4, N=6, V=2) must not
// compile. Built with -DPOSITIVE_TWIN it instantiates interleaved_1f1b_table<4, 8, 2> instead,
// which must compile.
#include "dualpipe/analysis/validate.hpp"
#include "dualpipe/schedule/interleaved_1f1b.hpp"

#ifdef POSITIVE_TWIN
constexpr auto table = dualpipe::schedules::interleaved_1f1b_table<4, 8, 2>();
static_assert(dualpipe::validate(table).ok);
#else
constexpr auto table = dualpipe::schedules::interleaved_1f1b_table<4, 6, 2>();
#endif
