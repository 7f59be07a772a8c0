// Runs the built dualpipe-schedule binary (path in $DUALPIPE_SCHEDULE, set by
// meson) and checks what it prints and how it exits.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "dualpipe/analysis/validate.hpp"
#include "dualpipe/io/csv.hpp"
#include "run_tool.hpp"

namespace {

using tool_test::lines_of;
using tool_test::run_tool;
using tool_test::tool_run;

}  // namespace

TEST_CASE("default output is PyTorch's compute-only CSV and nothing else", "[tools]") {
  const tool_run r = run_tool({"--schedule", "dualpipe", "--ranks", "2", "--microbatches", "4"});
  CHECK(r.status == 0);
  CHECK(r.err.empty());
  // The order of the eight steps for P = 2, N = 4 (derived in tests/io/csv_test.cpp).
  CHECK(r.out ==
        "0F0,1F2,0F1,1B2,(1F3;0B0)OVERLAP_F_B,1B3,0I1,0W1\n"
        "0F2,1F0,0F3,1B0,(1F1;0B2)OVERLAP_F_B,1B1,0I3,0W3\n");
}

TEST_CASE("CSV has one line per rank and imports into a valid table", "[tools]") {
  for (const char* schedule : {"dualpipe", "dualpipev"})
    for (const int P : {2, 4, 8}) {
      INFO(schedule << " P=" << P);
      const tool_run r = run_tool({"--schedule", schedule, "--ranks", std::to_string(P),
                                   "--microbatches", std::to_string(2 * P + 2)});
      REQUIRE(r.status == 0);
      CHECK(lines_of(r.out).size() == static_cast<std::size_t>(P));
      CHECK(r.out.find("SEND") == std::string::npos);
      const auto table = dualpipe::read_csv(r.out);
      CHECK(table.info().ranks == P);
      CHECK(dualpipe::validate(table).ok);
    }
}

TEST_CASE("--with-comm and --forward-only", "[tools]") {
  const tool_run comm =
      run_tool({"--schedule", "dualpipe", "--ranks", "4", "--microbatches", "8", "--with-comm"});
  REQUIRE(comm.status == 0);
  CHECK(lines_of(comm.out).size() == 4);
  CHECK(comm.out.find("SEND_F") != std::string::npos);
  CHECK(comm.out.find("COMMIT") != std::string::npos);
  const auto table = dualpipe::read_csv(comm.out);
  CHECK(table.info().with_communication);
  CHECK(dualpipe::validate(table).ok);

  const tool_run fwd = run_tool(
      {"--schedule", "dualpipev", "--ranks", "4", "--microbatches", "8", "--forward-only"});
  REQUIRE(fwd.status == 0);
  CHECK(fwd.out.find('B') == std::string::npos);
  CHECK(fwd.out.find('W') == std::string::npos);
  CHECK(dualpipe::read_csv(fwd.out).info().forward_only);
}

TEST_CASE("--format grid", "[tools]") {
  const tool_run r = run_tool(
      {"--schedule", "dualpipe", "--ranks", "2", "--microbatches", "4", "--format", "grid"});
  REQUIRE(r.status == 0);
  CHECK(r.err.empty());
  const auto lines = lines_of(r.out);
  REQUIRE(lines.size() == 9);  // a header and eight compute steps per rank
  CHECK(lines[0] == "step  rank 0  rank 1");
  CHECK(lines[5] == "4     F3|B0   F1|B2");
  CHECK(lines[8] == "7     W1      W3");
}

TEST_CASE("DualPipe and DualPipeV for any N >= 1: every format holds a valid table", "[tools]") {
  struct size {
    const char* schedule;
    int P;
    int N;
  };
  // N = 1, 3, 2P-1 and an odd N above 2P; DualPipeV also on one rank.
  const size sizes[] = {{"dualpipe", 8, 1},  {"dualpipe", 8, 3},   {"dualpipe", 8, 5},
                        {"dualpipe", 8, 15}, {"dualpipe", 4, 11},  {"dualpipev", 8, 1},
                        {"dualpipev", 8, 3}, {"dualpipev", 8, 15}, {"dualpipev", 1, 1},
                        {"dualpipev", 1, 3}};
  for (const size& s : sizes) {
    const std::vector<std::string> args = {"--schedule", s.schedule, "--ranks",
                                           std::to_string(s.P), "--microbatches",
                                           std::to_string(s.N)};
    INFO(s.schedule << " P=" << s.P << " N=" << s.N);
    for (const bool comm : {false, true}) {
      std::vector<std::string> csv_args = args;
      if (comm) csv_args.push_back("--with-comm");
      const tool_run csv = run_tool(csv_args);
      REQUIRE(csv.status == 0);
      const auto table = dualpipe::read_csv(csv.out);
      CHECK(table.info().ranks == s.P);
      CHECK(table.info().microbatches == s.N);
      CHECK(dualpipe::validate(table).ok);
    }
    std::vector<std::string> grid_args = args;
    grid_args.insert(grid_args.end(), {"--format", "grid"});
    const tool_run grid = run_tool(grid_args);
    CHECK(grid.status == 0);
    CHECK(grid.err.empty());
    CHECK(lines_of(grid.out).size() > 1);
    std::vector<std::string> validate_args = {"validate"};
    validate_args.insert(validate_args.end(), args.begin(), args.end());
    const tool_run checked = run_tool(validate_args);
    CHECK(checked.status == 0);
    CHECK(checked.out == "ok\n");
  }
}

TEST_CASE("--format json", "[tools]") {
  const tool_run r = run_tool(
      {"--schedule", "dualpipev", "--ranks", "3", "--microbatches", "6", "--format", "json"});
  REQUIRE(r.status == 0);
  const auto j = nlohmann::json::parse(r.out);
  CHECK(j.at("schedule") == "dualpipev");
  CHECK(j.at("ranks") == 3);
  CHECK(j.at("stages") == 6);
  CHECK(j.at("microbatches") == 6);
  CHECK(j.at("placement") == "v-shape");
  CHECK(j.at("with_communication") == false);
  REQUIRE(j.at("actions").size() == 3);
  // Rank 0 starts with 2(P-0-1) = 4 warm-up forwards of stage 0.
  const auto rank0 = j.at("actions").at(0).get<std::vector<std::string>>();
  REQUIRE(rank0.size() >= 4);
  CHECK(std::vector<std::string>(rank0.begin(), rank0.begin() + 4) ==
        std::vector<std::string>{"0F0", "0F1", "0F2", "0F3"});
}

TEST_CASE("bad arguments: one line on stderr, exit status 2, nothing on stdout", "[tools]") {
  const std::vector<std::vector<std::string>> cases = {
      {"--schedule", "nosuch", "--ranks", "4", "--microbatches", "8"},
      {"--schedule", "dualpipe", "--ranks", "5", "--microbatches", "20"},
      {"--schedule", "dualpipe", "--ranks", "4", "--microbatches", "0"},
      {"--schedule", "dualpipe", "--ranks", "1", "--microbatches", "6"},
      {"--schedule", "dualpipev", "--ranks", "0", "--microbatches", "7"},
      {"--schedule", "dualpipe", "--ranks", "four", "--microbatches", "8"},
      {"--schedule", "dualpipe", "--ranks", "4", "--microbatches", "8x"},
      {"--schedule", "dualpipe", "--ranks", "99999999999", "--microbatches", "8"},
      {"--schedule", "dualpipe", "--ranks", "4", "--microbatches", "8", "--format", "xml"},
      {"--schedule", "dualpipe", "--ranks", "4"},
      {"--ranks", "4", "--microbatches", "8"},
      {"--schedule", "dualpipe", "--ranks", "4", "--microbatches", "8", "--bogus"},
      {"--schedule", "dualpipe", "--ranks", "4", "--microbatches", "8", "stray"},
      {"--schedule"},
      {},
  };
  for (const auto& args : cases) {
    std::string shown;
    for (const auto& a : args) shown += a + " ";
    INFO("arguments: " << shown);
    const tool_run r = run_tool(args);
    CHECK(r.status == 2);
    CHECK(r.out.empty());
    const auto lines = lines_of(r.err);
    REQUIRE(lines.size() == 1);
    CHECK_THAT(lines[0], Catch::StartsWith("dualpipe-schedule: error: "));
    CHECK(r.err.back() == '\n');
  }
}

TEST_CASE("error messages say what is wrong", "[tools]") {
  CHECK_THAT(run_tool({"--schedule", "nosuch", "--ranks", "4", "--microbatches", "8"}).err,
             Catch::Contains("unknown schedule 'nosuch'") && Catch::Contains("dualpipev"));
  CHECK_THAT(run_tool({"--schedule", "dualpipe", "--ranks", "5", "--microbatches", "20"}).err,
             Catch::Contains("P even"));
  CHECK_THAT(run_tool({"--schedule", "dualpipe", "--ranks", "4", "--microbatches", "0"}).err,
             Catch::Contains("N >= 1"));
  CHECK_THAT(
      run_tool({"--schedule", "dualpipe", "--ranks", "4", "--microbatches", "8", "--format", "xml"})
          .err,
      Catch::Contains("unknown format 'xml'") && Catch::Contains("grid"));
  CHECK_THAT(run_tool({"--schedule", "dualpipe", "--ranks", "four", "--microbatches", "8"}).err,
             Catch::Contains("--ranks"));
}

TEST_CASE("--help documents every option and exits 0", "[tools]") {
  const tool_run r = run_tool({"--help"});
  CHECK(r.status == 0);
  CHECK(r.err.empty());
  for (const char* option :
       {"--schedule", "--ranks", "--microbatches", "--forward-only", "--format", "--with-comm",
        "--help", "dualpipe", "dualpipev", "grid", "csv", "json"})
    CHECK_THAT(r.out, Catch::Contains(option));
}
