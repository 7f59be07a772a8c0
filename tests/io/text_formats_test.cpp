// The text grid and the JSON writer, on tables whose content is known by hand.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "dualpipe/io/csv.hpp"
#include "dualpipe/io/grid.hpp"
#include "dualpipe/io/json.hpp"
#include "dualpipe/schedule/dualpipe.hpp"
#include "hand_tables.hpp"

using namespace dualpipe;
using dualpipe::test::two_stage_with_communication;

TEST_CASE("grid of DualPipe P=2 N=4", "[grid]") {
  // The per-rank orders derived in csv_test.cpp, micro-batch numbers only.
  const std::string expected =
      "step  rank 0  rank 1\n"
      "0     F0      F2\n"
      "1     F2      F0\n"
      "2     F1      F3\n"
      "3     B2      B0\n"
      "4     F3|B0   F1|B2\n"
      "5     B3      B1\n"
      "6     I1      I3\n"
      "7     W1      W3\n";
  CHECK(format_grid(schedules::dualpipe(2, 4)) == expected);
  CHECK(format_grid(schedules::dualpipe(2, 4, {.with_communication = false})) == expected);
}

TEST_CASE("grid with communication, and with stages", "[grid]") {
  const schedule_table t = two_stage_with_communication();
  CHECK(format_grid(t, {.communication = true}) ==
        "step  rank 0   rank 1\n"
        "0     F0       RECV_F0\n"
        "1     SEND_F0  COMMIT\n"
        "2     COMMIT   F0\n"
        "3     RECV_B0  I0\n"
        "4     COMMIT   SEND_B0\n"
        "5     B0       COMMIT\n"
        "6              W0\n");
  CHECK(format_grid(t, {.stages = grid_stages::always}) ==
        "step  rank 0  rank 1\n"
        "0     0F0     1F0\n"
        "1     0B0     1I0\n"
        "2             1W0\n");
  CHECK(grid_cell(make_overlapped(3, 4, 7, 1), true) == "3F4|7B1");
  CHECK(grid_cell(make_communication(op::send_backward, 2, 5, 1), true) == "2SEND_B5");
  CHECK(grid_cell(make_commit(), true) == "COMMIT");
  CHECK(grid_cell(make_overlapped(3, 4, 7, 1)) == "F4|B1");
}

TEST_CASE("grid of DualPipeV P=2 N=4 names stages: each rank runs two stages of a micro-batch",
          "[grid]") {
  // From the eight steps with h -> P = 2, k -> r, N/2 -> N; rank 0 holds
  // stages 0 and 3, rank 1 (the last rank, the "middle" one) stages 1 and 2.
  const std::string expected =
      "step  rank 0   rank 1\n"
      "0     0F0      1F0\n"
      "1     0F1      2F0\n"
      "2     0F2      1F1\n"
      "3     3F0      2F1\n"
      "4     3I0      1F2\n"
      "5     3W0      2B0\n"
      "6     3F1      2F2|1B0\n"
      "7     0F3|3B1  1F3|2B1\n"
      "8     3F2|0B0  2F3|1B1\n"
      "9     3B2      2B2\n"
      "10    3F3|0B1  1B2\n"
      "11    3B3      2I3\n"
      "12    0I2      1I3\n"
      "13    0W2      2W3\n"
      "14    0I3      1W3\n"
      "15    0W3\n";
  const schedule_table t = schedules::dualpipev(2, 4);
  CHECK(format_grid(t) == expected);
  const std::string plain = format_grid(t, {.stages = grid_stages::never});
  CHECK(plain.find("\n3     F0      F1\n") != std::string::npos);
}

TEST_CASE("grid columns widen to the widest cell and steps to ten and beyond", "[grid]") {
  schedule_table t({schedule_kind::custom, 1, 1, 1200, placement::linear, true, false});
  for (int m = 0; m < 12; ++m) t.push(make_forward(0, m * 100));
  t.end_rank();
  const std::string grid = format_grid(t);
  CHECK(grid.rfind("step  rank 0\n0     F0\n", 0) == 0);
  CHECK(grid.find("\n11    F1100\n") != std::string::npos);
}

TEST_CASE("JSON holds the schedule info and every action", "[json]") {
  const schedule_table t = two_stage_with_communication();
  const auto j = nlohmann::json::parse(format_json(t));
  CHECK(j.at("schedule") == "custom");
  CHECK(j.at("ranks") == 2);
  CHECK(j.at("stages") == 2);
  CHECK(j.at("microbatches") == 1);
  CHECK(j.at("placement") == "linear");
  CHECK(j.at("forward_only") == false);
  CHECK(j.at("with_communication") == true);
  CHECK_FALSE(j.contains("stage_ranks"));
  const std::vector<std::vector<std::string>> actions{
      {"0F0", "0SEND_F0", "COMMIT", "0RECV_B0", "COMMIT", "0B0"},
      {"1RECV_F0", "COMMIT", "1F0", "1I0", "1SEND_B0", "COMMIT", "1W0"}};
  CHECK(j.at("actions").get<std::vector<std::vector<std::string>>>() == actions);

  const auto compute = nlohmann::json::parse(format_json(t, {.compute_only = true}));
  CHECK(compute.at("with_communication") == false);
  const std::vector<std::vector<std::string>> compute_actions{{"0F0", "0B0"},
                                                              {"1F0", "1I0", "1W0"}};
  CHECK(compute.at("actions").get<std::vector<std::vector<std::string>>>() == compute_actions);
}

TEST_CASE("JSON of generated and imported tables", "[json]") {
  const auto dp = nlohmann::json::parse(format_json(schedules::dualpipe(2, 4, {true, false})));
  CHECK(dp.at("schedule") == "dualpipe");
  CHECK(dp.at("placement") == "mirrored");
  CHECK(dp.at("forward_only") == true);
  const std::vector<std::vector<std::string>> forwards{{"0F0", "1F2", "0F1", "1F3"},
                                                       {"0F2", "1F0", "0F3", "1F1"}};
  CHECK(dp.at("actions").get<std::vector<std::vector<std::string>>>() == forwards);

  CHECK(nlohmann::json::parse(format_json(schedules::dualpipev(2, 4))).at("placement") ==
        "v-shape");

  const auto imported = nlohmann::json::parse(format_json(read_csv("0F0\n1F0\n2F0,3F0\n")));
  CHECK(imported.at("placement") == "explicit");
  CHECK(imported.at("stage_ranks").get<std::vector<int>>() == std::vector<int>{0, 1, 2, 2});

  const auto empty = nlohmann::json::parse(format_json(schedule_table{}));
  CHECK(empty.at("ranks") == 0);
  CHECK(empty.at("actions").empty());
}
