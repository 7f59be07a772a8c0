// Compile-fail case: interleaved 1F1B with one stage per rank (P=4, N=8, V=1) must not compile.
// Built with -DPOSITIVE_TWIN it instantiates interleaved_1f1b_table<4, 8, 2> instead, which must
// compile.
#include "dualpipe/analysis/validate.hpp"
#include "dualpipe/schedule/interleaved_1f1b.hpp"

#ifdef POSITIVE_TWIN
constexpr auto table = dualpipe::schedules::interleaved_1f1b_table<4, 8, 2>();
static_assert(dualpipe::validate(table).ok);
#else
constexpr auto table = dualpipe::schedules::interleaved_1f1b_table<4, 8, 1>();
#endif
