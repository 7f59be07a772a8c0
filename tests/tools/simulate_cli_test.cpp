// The tool's simulate and validate subcommands, --input FILE.csv and the
// timeline formats: runs the built binary (path in $DUALPIPE_SCHEDULE, set by
// meson) and checks its output and exit status.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "run_tool.hpp"

namespace {

using tool_test::lines_of;
using tool_test::run_tool;
using tool_test::temporary_file;
using tool_test::tool_run;

// Counts of each compute kind per rank, read from the tool's own CSV export
// (not from the simulator): "3F0", "2I5", "(0F4;7B1)OVERLAP_F_B".
std::vector<std::map<std::string, int>> compute_counts(const std::string& csv) {
  std::vector<std::map<std::string, int>> out;
  for (const std::string& line : lines_of(csv)) {
    std::map<std::string, int> counts;
    std::istringstream fields(line);
    for (std::string a; std::getline(fields, a, ',');) {
      if (a.empty()) continue;
      if (a.front() == '(') {
        ++counts["FB"];
        continue;
      }
      std::size_t i = 0;
      while (i < a.size() && a[i] >= '0' && a[i] <= '9') ++i;
      std::size_t j = i;
      while (j < a.size() && (a[j] < '0' || a[j] > '9')) ++j;
      ++counts[a.substr(i, j - i)];
    }
    out.push_back(counts);
  }
  return out;
}

}  // namespace

TEST_CASE("simulate --format json: DualPipe 8x20 under the published figure's costs") {
  const tool_run o =
      run_tool({"simulate", "--schedule", "dualpipe", "--ranks", "8", "--microbatches", "20",
                "--cost", "F=1,B=2,W=1,FB=2.5,comm=0", "--format", "json"});
  INFO(o.err);
  REQUIRE(o.status == 0);
  REQUIRE(o.err.empty());
  const nlohmann::json doc = nlohmann::json::parse(o.out);
  REQUIRE(doc.at("makespan").is_number());
  REQUIRE(doc.at("bubble_max").is_number());
  // (PP/2 - 1)(F&B + B - 3W) = 3 * (2.5 + 2 - 3)
  REQUIRE(doc.at("bubble_max").get<double>() == 4.5);
  const auto& ranks = doc.at("ranks");
  REQUIRE(ranks.size() == 8);

  const tool_run csv = run_tool({"--schedule", "dualpipe", "--ranks", "8", "--microbatches", "20"});
  REQUIRE(csv.status == 0);
  const auto counts = compute_counts(csv.out);
  REQUIRE(counts.size() == 8);
  const double makespan = doc.at("makespan").get<double>();
  for (int r = 0; r < 8; ++r) {
    INFO("rank " << r);
    const auto& e = ranks.at(static_cast<std::size_t>(r));
    auto count = [&](const char* k) {
      const auto it = counts[static_cast<std::size_t>(r)].find(k);
      return it == counts[static_cast<std::size_t>(r)].end() ? 0 : it->second;
    };
    const double busy = 1.0 * count("F") + 2.0 * count("B") + 1.0 * count("I") + 1.0 * count("W") +
                        2.5 * count("FB");
    REQUIRE(e.at("rank") == r);
    REQUIRE(e.at("busy").get<double>() == busy);
    REQUIRE(e.at("bubble").get<double>() == makespan - busy);
    REQUIRE(e.at("peak_activations") == 9);  // PP + 1
  }
}

TEST_CASE("simulate --format text is a readable table") {
  const tool_run o =
      run_tool({"simulate", "--schedule", "dualpipev", "--ranks", "4", "--microbatches", "8"});
  REQUIRE(o.status == 0);
  const auto text = lines_of(o.out);
  REQUIRE(text.size() == 3 + 4);
  REQUIRE(text[1].find("makespan") == 0);
  REQUIRE(text[2].find("rank") != std::string::npos);
  REQUIRE(text[2].find("bubble") != std::string::npos);
}

TEST_CASE("simulate --input FILE.csv gives the same result as the schedule it came from") {
  for (const char* schedule : {"dualpipe", "dualpipev"}) {
    INFO(schedule);
    const tool_run csv = run_tool({"--schedule", schedule, "--ranks", "4", "--microbatches", "10"});
    REQUIRE(csv.status == 0);
    const temporary_file file(csv.out);
    const std::vector<std::string> common = {"--cost", "F=1.5,B=2.5,W=1,FB=3,comm=0.25", "--format",
                                             "json"};
    std::vector<std::string> a = {"simulate", "--schedule",     schedule, "--ranks",
                                  "4",        "--microbatches", "10"};
    std::vector<std::string> b = {"simulate", "--input", file.path};
    a.insert(a.end(), common.begin(), common.end());
    b.insert(b.end(), common.begin(), common.end());
    const tool_run from_schedule = run_tool(a);
    const tool_run from_file = run_tool(b);
    INFO(from_file.err);
    REQUIRE(from_schedule.status == 0);
    REQUIRE(from_file.status == 0);
    const auto x = nlohmann::json::parse(from_schedule.out);
    const auto y = nlohmann::json::parse(from_file.out);
    REQUIRE(x.at("makespan") == y.at("makespan"));
    REQUIRE(x.at("ranks") == y.at("ranks"));
  }
}

TEST_CASE("timeline formats: chrome-trace and svg, from simulate and as --format") {
  const tool_run csv = run_tool({"--schedule", "dualpipe", "--ranks", "4", "--microbatches", "8"});
  std::size_t computes = 0;
  for (const auto& rank : compute_counts(csv.out))
    for (const auto& [kind, n] : rank) computes += static_cast<std::size_t>(n);
  for (const bool sub : {true, false}) {
    std::vector<std::string> args = {
        "--schedule", "dualpipe",           "--ranks",  "4",           "--microbatches", "8",
        "--cost",     "F=1,B=2,W=1,FB=2.5", "--format", "chrome-trace"};
    if (sub) args.insert(args.begin(), "simulate");
    const tool_run trace = run_tool(args);
    REQUIRE(trace.status == 0);
    const auto doc = nlohmann::json::parse(trace.out);
    std::size_t complete = 0;
    for (const auto& e : doc.at("traceEvents")) complete += e.at("ph") == "X" ? 1 : 0;
    REQUIRE(complete == computes);

    args.back() = "svg";
    const tool_run svg = run_tool(args);
    REQUIRE(svg.status == 0);
    REQUIRE(svg.out.rfind("<?xml", 0) == 0);
    REQUIRE(svg.out.find("<svg xmlns=\"http://www.w3.org/2000/svg\"") != std::string::npos);
    REQUIRE(svg.out.find("id=\"legend\"") != std::string::npos);
    REQUIRE(svg.out.find("</svg>") != std::string::npos);
  }
}

TEST_CASE("validate: ok, or the first violation with exit 1") {
  const tool_run csv =
      run_tool({"--schedule", "dualpipe", "--ranks", "4", "--microbatches", "8", "--with-comm"});
  REQUIRE(csv.status == 0);
  const temporary_file good(csv.out);
  const tool_run ok = run_tool({"validate", "--input", good.path});
  REQUIRE(ok.status == 0);
  REQUIRE(ok.out == "ok\n");
  REQUIRE(run_tool({"validate", "--schedule", "dualpipev", "--ranks", "4", "--microbatches", "8",
                    "--with-comm"})
              .out == "ok\n");

  const temporary_file bad("0B0,0F0\n1F0,1B0\n");
  const tool_run invalid = run_tool({"validate", "--input", bad.path});
  REQUIRE(invalid.status == 1);
  REQUIRE(invalid.out ==
          "invalid schedule: rank 0, instruction 0 (0B0): a backward runs before its own forward; "
          "expected 0F0 on rank 0 [causality]\n");
}

TEST_CASE("malformed CSV is exit 2 with its line and column") {
  const temporary_file malformed("0F0,0B0\n1F0,1X0\n");
  for (const char* command : {"validate", "simulate"}) {
    const tool_run o = run_tool({command, "--input", malformed.path});
    REQUIRE(o.status == 2);
    REQUIRE(o.out.empty());
    REQUIRE(lines_of(o.err).size() == 1);
    REQUIRE(o.err.rfind("dualpipe-schedule: error: CSV line 2, column 6: expected an action kind",
                        0) == 0);
  }
  const tool_run reexport = run_tool({"--input", malformed.path, "--format", "json"});
  REQUIRE(reexport.status == 2);
}

TEST_CASE("re-export of an imported CSV") {
  const std::string text = "0F0,0F1,0B0,0B1\n1F0,1B0,1F1,1B1\n";
  const temporary_file file(text);
  const tool_run again = run_tool({"--input", file.path});
  REQUIRE(again.status == 0);
  REQUIRE(again.out == text);
  const tool_run json = run_tool({"--input", file.path, "--format", "json"});
  REQUIRE(json.status == 0);
  REQUIRE(nlohmann::json::parse(json.out).at("ranks") == 2);
}

TEST_CASE("a schedule that cannot run: simulate exits 1 naming the stuck instructions") {
  const temporary_file cyclic("0F0,0B0,0F1,0B1\n1F1,1F0,1B0,1B1\n");
  const tool_run o = run_tool({"simulate", "--input", cyclic.path});
  REQUIRE(o.status == 1);
  REQUIRE(o.out.empty());
  REQUIRE(lines_of(o.err).size() == 1);
  REQUIRE(o.err.find("rank 0 waits at instruction 1 (0B0) for 1B0") != std::string::npos);
  REQUIRE(o.err.find("rank 1 waits at instruction 0 (1F1) for 0F1") != std::string::npos);
  // validate names the same cycle.
  const tool_run v = run_tool({"validate", "--input", cyclic.path});
  REQUIRE(v.status == 1);
  REQUIRE(v.out ==
          "invalid schedule: rank 0, instruction 1 (0B0): the ranks wait in a cycle: rank 0 waits "
          "at instruction 1 (0B0) for 1B0 on rank 1; rank 1 waits at instruction 0 (1F1) for 0F1 "
          "on rank 0 [deadlock]\n");
}

TEST_CASE("simulate refuses a table that does not validate, with validate's sentence") {
  std::vector<std::string> invalid;
  // Rank 1's I is never followed by its W: every compute has its inputs, so
  // the simulator alone would time the step.
  invalid.push_back("0F0,0B0\n1F0,1I0\n");
  // DualPipe with communication, one receive dropped: the simulator ignores
  // communication, validate does not.
  const tool_run csv =
      run_tool({"--schedule", "dualpipe", "--ranks", "2", "--microbatches", "4", "--with-comm"});
  REQUIRE(csv.status == 0);
  std::string dropped = csv.out;
  const std::size_t recv = dropped.find("RECV_F");
  REQUIRE(recv != std::string::npos);
  const std::size_t begin = dropped.rfind(',', recv) + 1;  // the whole field, and its comma
  dropped.erase(begin, dropped.find(',', recv) + 1 - begin);
  invalid.push_back(dropped);
  for (const std::string& text : invalid) {
    INFO(text);
    const temporary_file file(text);
    const tool_run v = run_tool({"validate", "--input", file.path});
    REQUIRE(v.status == 1);
    REQUIRE(v.out.rfind("invalid schedule: ", 0) == 0);
    for (const char* format : {"text", "json", "chrome-trace", "svg"}) {
      INFO(format);
      const tool_run o = run_tool({"simulate", "--input", file.path, "--format", format});
      REQUIRE(o.status == 1);
      REQUIRE(o.out.empty());
      REQUIRE(o.err == "dualpipe-schedule: error: " + v.out);
    }
    // The timelines as a top-level --format refuse it alike.
    for (const char* format : {"chrome-trace", "svg"}) {
      INFO(format);
      const tool_run o = run_tool({"--input", file.path, "--format", format});
      REQUIRE(o.status == 1);
      REQUIRE(o.out.empty());
      REQUIRE(o.err == "dualpipe-schedule: error: " + v.out);
    }
  }
  const temporary_file missing_w(invalid[0]);
  REQUIRE(run_tool({"validate", "--input", missing_w.path}).out ==
          "invalid schedule: rank 1: a deferred weight gradient (W) never runs; expected 1W0 on "
          "rank 1 [missing]\n");
  // The positive twin: the W restored, it simulates.
  const temporary_file complete("0F0,0B0\n1F0,1I0,1W0\n");
  const tool_run ok = run_tool({"simulate", "--input", complete.path, "--format", "json"});
  INFO(ok.err);
  REQUIRE(ok.status == 0);
  REQUIRE(nlohmann::json::parse(ok.out).at("makespan").is_number());
}

TEST_CASE("bad usage is one line on stderr and exit 2") {
  const std::vector<std::vector<std::string>> cases = {
      {"simulate", "--schedule", "dualpipe", "--ranks", "4", "--microbatches", "8", "--cost",
       "F=1,X=2"},
      {"simulate", "--schedule", "dualpipe", "--ranks", "4", "--microbatches", "8", "--cost",
       "F=-1"},
      {"simulate", "--schedule", "dualpipe", "--ranks", "4", "--microbatches", "8", "--cost",
       "B=1,W=2"},
      {"simulate", "--schedule", "dualpipe", "--ranks", "4", "--microbatches", "8", "--format",
       "xml"},
      {"simulate", "--schedule", "dualpipe", "--ranks", "3", "--microbatches", "7"},
      {"simulate", "--input", "/nonexistent/file.csv"},
      {"simulate", "--input", "/tmp", "--format", "json"},
      {"validate"},
      {"validate", "--input", "x.csv", "--schedule", "dualpipe"},
      {"validate", "--input", "x.csv", "--ranks", "4"},
  };
  for (const auto& args : cases) {
    std::string shown;
    for (const auto& a : args) shown += a + " ";
    INFO(shown);
    const tool_run o = run_tool(args);
    REQUIRE(o.status == 2);
    REQUIRE(o.out.empty());
    REQUIRE(lines_of(o.err).size() == 1);
    REQUIRE(o.err.rfind("dualpipe-schedule: error: ", 0) == 0);
  }
}

TEST_CASE("simulate the baselines by name: 1F1B and ZB1P closed forms, interleaved stages") {
  struct expectation {
    std::vector<std::string> args;
    double bubble;  // every rank: (P-1)(F+B) for 1F1B, (P-1)(F+B-2W) for ZB1P
    int parameters;
  };
  const std::vector<expectation> cases = {
      {{"--schedule", "1f1b", "--ranks", "8", "--microbatches", "16"}, 7 * 3.0, 1},
      {{"--schedule", "gpipe", "--ranks", "8", "--microbatches", "16"}, 7 * 3.0, 1},
      {{"--schedule", "zb1p", "--ranks", "8", "--microbatches", "16"}, 7 * 1.0, 1},
      {{"--schedule", "interleaved-1f1b", "--virtual-stages", "3", "--ranks", "4", "--microbatches",
        "8"},
       -1.0,
       3},
      {{"--schedule", "zbv", "--ranks", "4", "--microbatches", "8"}, -1.0, 2},
  };
  for (const expectation& c : cases) {
    std::vector<std::string> args = {"simulate", "--cost", "F=1,B=2,W=1", "--format", "json"};
    args.insert(args.end(), c.args.begin(), c.args.end());
    INFO(c.args[1]);
    const tool_run o = run_tool(args);
    INFO(o.err);
    REQUIRE(o.status == 0);
    const auto doc = nlohmann::json::parse(o.out);
    for (const auto& r : doc.at("ranks")) {
      if (c.bubble >= 0) REQUIRE(r.at("bubble").get<double>() == c.bubble);
      REQUIRE(r.at("parameter_copies") == c.parameters);
    }
  }
}
