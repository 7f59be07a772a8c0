// Chrome trace JSON of simulated timelines: it parses (nlohmann-json), has
// one complete event per compute instruction on the right rank's track, with
// the right name, times and args.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <map>
#include <string>
#include <vector>

#include "dualpipe/analysis/simulate.hpp"
#include "dualpipe/io/chrome_trace.hpp"
#include "dualpipe/schedule/dualpipe.hpp"

#include "hand_tables.hpp"
#include "schedule_catalogue.hpp"

using namespace dualpipe;
using nlohmann::json;

namespace {

// The event name derived from the action text: "3F0" -> "F0",
// "(0F4;7B1)OVERLAP_F_B" -> "F4&B1", "2I5" -> "I5".
std::string expected_name(const std::string& action) {
  if (action.front() == '(') {
    const auto f = action.find('F');
    const auto semicolon = action.find(';');
    const auto b = action.find('B', semicolon);
    const auto close = action.find(')');
    return "F" + action.substr(f + 1, semicolon - f - 1) + "&B" +
           action.substr(b + 1, close - b - 1);
  }
  std::size_t i = 0;
  while (i < action.size() && action[i] >= '0' && action[i] <= '9') ++i;
  return action.substr(i);
}

}  // namespace

TEST_CASE("a hand-made two-rank timeline, event by event") {
  const schedule_table t = test::two_ranks_with_overlap();
  // comm 0.5: F(1,0) [1.5, 2.5]; pair waits for F(0,1) (ends 2, +0.5) -> [2.5, 5.5].
  const simulation s = simulate(
      t, cost_model{.forward = 1, .backward = 2, .weight = 1, .overlapped = 3, .comm = 0.5});
  const json trace = json::parse(format_chrome_trace(s, {.microseconds_per_unit = 10.0}));
  const json& events = trace.at("traceEvents");
  REQUIRE(events.is_array());
  std::vector<json> complete;
  std::map<int, std::string> track_names;
  for (const json& e : events) {
    if (e.at("ph") == "X") complete.push_back(e);
    if (e.at("ph") == "M" && e.at("name") == "thread_name")
      track_names[e.at("tid").get<int>()] = e.at("args").at("name").get<std::string>();
  }
  REQUIRE(complete.size() == 8);
  REQUIRE(track_names == std::map<int, std::string>{{0, "rank 0"}, {1, "rank 1"}});
  const json& pair = complete[5];
  REQUIRE(pair.at("name") == "F1&B0");
  REQUIRE(pair.at("cat") == "overlapped-forward-backward");
  REQUIRE(pair.at("tid") == 1);
  REQUIRE(pair.at("ts").get<double>() == 25.0);
  REQUIRE(pair.at("dur").get<double>() == 30.0);
  REQUIRE(pair.at("args").at("stage") == 1);
  REQUIRE(pair.at("args").at("microbatch") == 1);
  REQUIRE(pair.at("args").at("stage_b") == 1);
  REQUIRE(pair.at("args").at("microbatch_b") == 0);
  REQUIRE(pair.at("args").at("action") == "(1F1;1B0)OVERLAP_F_B");
  REQUIRE(pair.at("args").at("index") == 1);
  REQUIRE(complete[6].at("name") == "I1");
  REQUIRE(complete[6].at("dur").get<double>() == 10.0);
  REQUIRE(complete[7].at("name") == "W1");
  REQUIRE(complete[7].at("cat") == "backward-weight");
  REQUIRE(complete[0].at("name") == "F0");
  REQUIRE(complete[0].at("ts").get<double>() == 0.0);
}

TEST_CASE("every schedule's trace parses and has one event per compute") {
  for (const auto& entry : test_catalogue::all_schedules(8)) {
    INFO(entry.name);
    const simulation s = simulate(entry.table, cost_model{1.0, 2.0, 0.75, 2.5, 0.125});
    const json trace = json::parse(format_chrome_trace(s));
    // Expected events straight from the table: its compute instructions.
    std::vector<std::pair<int, std::string>> want;
    for (int r = 0; r < entry.table.view().ranks(); ++r)
      for (const instruction& x : entry.table.rank(r))
        if (x.kind <= op::overlapped_forward_backward) want.emplace_back(r, format_action(x));
    std::size_t k = 0;
    int tracks = 0;
    for (const json& e : trace.at("traceEvents")) {
      if (e.at("ph") == "M") {
        if (e.at("name") == "thread_name") ++tracks;
        continue;
      }
      REQUIRE(e.at("ph") == "X");
      REQUIRE(k < want.size());
      REQUIRE(e.at("tid").get<int>() == want[k].first);
      REQUIRE(e.at("args").at("action") == want[k].second);
      REQUIRE(e.at("name") == expected_name(want[k].second));
      REQUIRE(e.at("ts").get<double>() == s.timeline[k].start);
      REQUIRE(e.at("dur").get<double>() == s.timeline[k].end - s.timeline[k].start);
      ++k;
    }
    REQUIRE(k == want.size());
    REQUIRE(tracks == entry.table.view().ranks());
  }
}

TEST_CASE("the process name is escaped") {
  const simulation s = simulate(schedules::dualpipe(2, 4, {.with_communication = false}));
  const json trace = json::parse(format_chrome_trace(s, {.process_name = "say \"hi\"\n\\"}));
  REQUIRE(trace.at("traceEvents").at(0).at("args").at("name") == "say \"hi\"\n\\");
}
