// dualpipe-schedule with the baseline schedules (gpipe, 1f1b, zb1p,
// interleaved-1f1b with --virtual-stages, zbv): the printed CSV is the order
// written out by hand, the lowered tables read back and validate, and sizes a
// schedule rejects are a one-line usage error. Runs the built binary
// ($DUALPIPE_SCHEDULE, set by meson).
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "dualpipe/analysis/validate.hpp"
#include "dualpipe/io/csv.hpp"
#include "run_tool.hpp"

namespace {

using tool_test::run_tool;
using tool_test::tool_run;

tool_run csv_of(const std::string& schedule, int P, int N, std::vector<std::string> extra = {}) {
  std::vector<std::string> args{"--schedule",     schedule,         "--ranks",
                                std::to_string(P), "--microbatches", std::to_string(N)};
  args.insert(args.end(), extra.begin(), extra.end());
  return run_tool(args);
}

// The lowered table the tool prints reads back and validates, under the name.
void check_lowered(const std::string& schedule, int P, int N, std::vector<std::string> extra = {}) {
  extra.push_back("--with-comm");
  const tool_run r = csv_of(schedule, P, N, extra);
  INFO(schedule << " P=" << P << " N=" << N << ": " << r.err);
  REQUIRE(r.status == 0);
  CHECK(r.out.find("COMMIT") != std::string::npos);
  const dualpipe::schedule_table t = dualpipe::read_csv(r.out);
  const dualpipe::validation v = dualpipe::validate(t);
  INFO(dualpipe::describe(v));
  CHECK(v.ok);
  std::vector<std::string> args{"validate", "--schedule",     schedule,         "--ranks",
                                std::to_string(P), "--microbatches", std::to_string(N)};
  args.insert(args.end(), extra.begin(), extra.end());
  const tool_run validated = run_tool(args);
  CHECK(validated.status == 0);
  CHECK(validated.out == "ok\n");
}

void check_usage_error(const tool_run& r, const std::string& message) {
  CHECK(r.status == 2);
  CHECK(r.out.empty());
  CHECK(r.err == "dualpipe-schedule: error: " + message + "\n");
}

}  // namespace

TEST_CASE("gpipe prints every forward, then every backward", "[tools][baselines]") {
  const tool_run r = csv_of("gpipe", 2, 3);
  CHECK(r.status == 0);
  CHECK(r.out == "0F0,0F1,0F2,0B0,0B1,0B2\n1F0,1F1,1F2,1B0,1B1,1B2\n");
  check_lowered("gpipe", 4, 6);
  check_usage_error(csv_of("gpipe", 2, 0),
                    "GPipe needs at least 1 micro-batch (N >= 1) (got P=2, N=0)");
}

TEST_CASE("1f1b prints PyTorch's Schedule1F1B order", "[tools][baselines]") {
  const tool_run r = csv_of("1f1b", 2, 3);
  CHECK(r.status == 0);
  CHECK(r.out == "0F0,0F1,0B0,0F2,0B1,0B2\n1F0,1B0,1F1,1B1,1F2,1B2\n");
  check_lowered("1f1b", 4, 8);
  check_usage_error(csv_of("1f1b", 4, 3),
                    "1F1B needs at least as many micro-batches as ranks (N >= P), as PyTorch's "
                    "Schedule1F1B: rank 0 runs P-1 warm-up forwards before its first backward "
                    "(got P=4, N=3)");
}

TEST_CASE("zb1p prints 1F1B with delayed weight gradients", "[tools][baselines]") {
  const tool_run r = csv_of("zb1p", 2, 2);
  CHECK(r.status == 0);
  CHECK(r.out == "0F0,0F1,0I0,0W0,0I1,0W1\n1F0,1I0,1F1,1I1,1W0,1W1\n");
  check_lowered("zb1p", 4, 8);
  check_lowered("zb1p", 3, 5, {"--forward-only"});
}

TEST_CASE("interleaved-1f1b takes --virtual-stages", "[tools][baselines]") {
  const std::string expected =
      "0F0,0F1,2F0,2F1,0F2,2B0,0F3,2B1,2F2,0B0,2F3,0B1,2B2,2B3,0B2,0B3\n"
      "1F0,1F1,3F0,3B0,3F1,3B1,1F2,1B0,1F3,1B1,3F2,3B2,3F3,3B3,1B2,1B3\n";
  const tool_run r = csv_of("interleaved-1f1b", 2, 4, {"--virtual-stages", "2"});
  CHECK(r.status == 0);
  CHECK(r.out == expected);
  // V = 2 is the default.
  CHECK(csv_of("interleaved-1f1b", 2, 4).out == expected);
  // V = 3: six stages, two ranks.
  const tool_run three = csv_of("interleaved-1f1b", 2, 4, {"--virtual-stages", "3"});
  REQUIRE(three.status == 0);
  CHECK(dualpipe::read_csv(three.out).info().stages == 6);
  check_lowered("interleaved-1f1b", 4, 8, {"--virtual-stages", "3"});
  check_usage_error(csv_of("interleaved-1f1b", 4, 8, {"--virtual-stages", "1"}),
                    "interleaved 1F1B needs at least 2 stages per rank (V >= 2); with one stage "
                    "per rank use 1F1B (got P=4, N=8, V=1)");
  check_usage_error(csv_of("interleaved-1f1b", 4, 6),
                    "interleaved 1F1B needs the number of micro-batches to be a multiple of the "
                    "number of ranks (N % P == 0), as Megatron-LM requires: micro-batches enter "
                    "in rounds of P (got P=4, N=6, V=2)");
  check_usage_error(csv_of("1f1b", 4, 8, {"--virtual-stages", "2"}),
                    "--virtual-stages does not apply to schedule '1f1b'");
}

TEST_CASE("zbv prints the V-shaped zero-bubble order", "[tools][baselines]") {
  const tool_run r = csv_of("zbv", 2, 4);
  CHECK(r.status == 0);
  CHECK(r.out ==
        "0F0,0F1,0F2,3F0,3I0,3W0,3F1,3I1,3W1,0F3,0I0,0W0,3F2,3I2,3W2,0I1,0W1,3F3,3I3,3W3,"
        "0I2,0W2,0I3,0W3\n"
        "1F0,2F0,1F1,2F1,2I0,2W0,1F2,1I0,1W0,2F2,2I1,2W1,1F3,1I1,1W1,2F3,2I2,2W2,1I2,2I3,"
        "1I3,1W2,2W3,1W3\n");
  check_lowered("zbv", 4, 8);
  check_lowered("zbv", 3, 2);
  check_usage_error(csv_of("zbv", 0, 4), "ZB-V needs at least 1 rank (P >= 1) (got P=0, N=4)");
}
