// PyTorch CSV export and import: known text, round trips, precise errors,
// and robustness against random and truncated input.
#include <catch2/catch.hpp>

#include <cstdint>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "dualpipe/analysis/validate.hpp"
#include "dualpipe/io/csv.hpp"
#include "dualpipe/schedule/dualpipe.hpp"
#include "dualpipe/schedule/registry.hpp"
#include "hand_tables.hpp"

using namespace dualpipe;
using dualpipe::test::two_stage_with_communication;

namespace {

// DualPipe, P = 2, N = 4, compute only, written out from the eight steps
// (h = 1, k = 0 on both ranks, both ranks middle ones):
// step 2 F(phase 0) F(phase 1); step 4 the middle rank's plain F(phase 0) then
// B(phase 1), then the pair (F phase 1 ; B phase 0); step 6 B(phase 1), then
// phase 0's backward deferred (k even: switch after iteration 0's phase-1 B);
// step 8 its W. Rank 0 runs stage 0 for micro-batches 0,1 (phase 0) and stage
// 1 for 2,3 (phase 1); rank 1 runs stage 0 for 2,3 (phase 0) and stage 1 for
// 0,1 (phase 1).
constexpr std::string_view dualpipe_2x4_csv =
    "0F0,1F2,0F1,1B2,(1F3;0B0)OVERLAP_F_B,1B3,0I1,0W1\n"
    "0F2,1F0,0F3,1B0,(1F1;0B2)OVERLAP_F_B,1B1,0I3,0W3\n";

void check_error(std::string_view text, std::size_t line, std::size_t column,
                 std::string_view fragment) {
  INFO("input: " << std::string(text));
  try {
    (void)read_csv(text);
    FAIL("no csv_error");
  } catch (const csv_error& e) {
    CHECK(e.line() == line);
    CHECK(e.column() == column);
    CHECK_THAT(e.expected(), Catch::Contains(std::string(fragment)));
    CHECK_THAT(std::string(e.what()),
               Catch::StartsWith("CSV line " + std::to_string(line) + ", column " +
                                 std::to_string(column) + ": "));
  }
}

// Import must return a table or throw csv_error; nothing else. Returns
// whether it imported.
bool import_survives(std::string_view text) {
  try {
    const schedule_table t = read_csv(text);
    CHECK(t.info().ranks >= 1);
    CHECK(t.ranks_built() == t.info().ranks);
    if (static_cast<std::int64_t>(t.info().stages) * t.info().microbatches <= 1 << 16)
      (void)validate(t);
    return true;
  } catch (const csv_error& e) {
    CHECK(e.line() >= 1);
    CHECK(e.column() >= 1);
    return false;
  }
}

}  // namespace

TEST_CASE("export of DualPipe P=2 N=4 matches the order derived by hand", "[csv]") {
  const auto table = schedules::dualpipe(2, 4, {.with_communication = false});
  CHECK(write_csv(table) == dualpipe_2x4_csv);
  // A table with communication exports compute only unless asked.
  CHECK(write_csv(schedules::dualpipe(2, 4)) == dualpipe_2x4_csv);
}

TEST_CASE("export with communication, with and without COMMIT", "[csv]") {
  const schedule_table t = two_stage_with_communication();
  CHECK(write_csv(t) == "0F0,0B0\n1F0,1I0,1W0\n");
  CHECK(write_csv(t, csv_content::with_communication) ==
        "0F0,0SEND_F0,0RECV_B0,0B0\n1RECV_F0,1F0,1I0,1SEND_B0,1W0\n");
  CHECK(write_csv(t, csv_content::with_commit) ==
        "0F0,0SEND_F0,COMMIT,0RECV_B0,COMMIT,0B0\n"
        "1RECV_F0,COMMIT,1F0,1I0,1SEND_B0,COMMIT,1W0\n");
}

TEST_CASE("import infers sizes, kinds and an explicit placement", "[csv]") {
  const schedule_table t = read_csv(
      "0F0,0SEND_F0,COMMIT,0RECV_B0,COMMIT,0B0\n"
      "1RECV_F0,COMMIT,1F0,1I0,1SEND_B0,COMMIT,1W0\n");
  CHECK(t.info().kind == schedule_kind::custom);
  CHECK(t.info().ranks == 2);
  CHECK(t.info().stages == 2);
  CHECK(t.info().microbatches == 1);
  CHECK(t.info().where == placement::explicit_map);
  CHECK_FALSE(t.info().forward_only);
  CHECK(t.info().with_communication);
  const std::vector<std::int32_t> expected_map{0, 1};
  CHECK(std::vector<std::int32_t>(t.view().stage_ranks.begin(), t.view().stage_ranks.end()) ==
        expected_map);
  // Peers come from the placement: the same instructions as written by hand.
  const schedule_table hand = two_stage_with_communication();
  REQUIRE(t.size() == hand.size());
  for (int r = 0; r < 2; ++r)
    for (std::size_t i = 0; i < t.rank(r).size(); ++i) CHECK(t.rank(r)[i] == hand.rank(r)[i]);
  CHECK(validate(t).ok);
}

TEST_CASE("import of forward-only and compute-only text", "[csv]") {
  const schedule_table t = read_csv("0F0,0F1\n1F0,1F1\n");
  CHECK(t.info().forward_only);
  CHECK_FALSE(t.info().with_communication);
  CHECK(t.info().stages == 2);
  CHECK(t.info().microbatches == 2);
  CHECK(validate(t).ok);
  // Backward communication alone marks a training table.
  CHECK_FALSE(read_csv("0F0,0RECV_B0\n1F0\n").info().forward_only);
  CHECK(read_csv("0F0\nCOMMIT\n").info().with_communication);
}

TEST_CASE("import recognises DualPipe's mirrored layout", "[csv]") {
  const schedule_table t = read_csv(dualpipe_2x4_csv);
  CHECK(t.info().where == placement::mirrored);
  CHECK(t.info().ranks == 2);
  CHECK(t.info().stages == 2);
  CHECK(t.info().microbatches == 4);
  CHECK(t.view().stage_ranks.empty());
  CHECK(validate(t).ok);
}

TEST_CASE("import reads what Python's csv module writes", "[csv]") {
  // CRLF line ends, blanks around fields, empty fields for idle steps (None),
  // quoted fields, no final line end.
  const schedule_table t = read_csv("0F0,,0F1\r\n \"1F0\" ,\t1F1 ,\r\n");
  CHECK(t.info().ranks == 2);
  REQUIRE(t.rank(0).size() == 2);
  REQUIRE(t.rank(1).size() == 2);
  CHECK(t.rank(0)[1] == make_forward(0, 1));
  CHECK(t.rank(1)[0] == make_forward(1, 0));
  CHECK(read_csv("0F0\n1F0").info().ranks == 2);
  // An empty line is a rank with nothing to do.
  const schedule_table gap = read_csv("0F0\n\n1F0\n");
  CHECK(gap.info().ranks == 3);
  CHECK(gap.rank(1).empty());
}

TEST_CASE("round trip of generated tables", "[csv]") {
  for (const bool v_shape : {false, true})
    for (int P = 2; P <= 8; P += 2)
      for (const int N : {2 * P, 2 * P + 2, 4 * P, 6 * P + 4})
        for (const bool forward_only : {false, true})
          for (const bool comm : {false, true}) {
            const generator_options options{forward_only, comm};
            const schedule_table generated =
                v_shape ? schedules::dualpipev(P, N, options) : schedules::dualpipe(P, N, options);
            INFO((v_shape ? "dualpipev" : "dualpipe")
                 << " P=" << P << " N=" << N << " forward_only=" << forward_only
                 << " comm=" << comm);
            const std::string text =
                write_csv(generated, comm ? csv_content::with_commit : csv_content::compute_only);
            // The caller names the kind (and DualPipeV's V placement, which
            // import cannot tell from an explicit map).
            schedule_info given{};
            given.kind = v_shape ? dualpipev_generator::kind : dualpipe_generator::kind;
            given.where = v_shape ? placement::v_shape : placement::mirrored;
            CHECK(read_csv(text, given) == generated);
            // Or just the kind, which brings its placement.
            CHECK(read_csv(text, given.kind) == generated);

            // Inferred: DualPipe is recognised as mirrored; DualPipeV, whose
            // stages each run on one rank, becomes an explicit map.
            const schedule_table inferred = read_csv(text);
            schedule_info expected = generated.info();
            expected.kind = schedule_kind::custom;
            expected.where = v_shape ? placement::explicit_map : placement::mirrored;
            CHECK(inferred.info() == expected);
            if (v_shape) {
              std::vector<std::int32_t> map;
              for (int s = 0; s < 2 * P; ++s) map.push_back(s < P ? s : 2 * P - 1 - s);
              CHECK(std::vector<std::int32_t>(inferred.view().stage_ranks.begin(),
                                              inferred.view().stage_ranks.end()) == map);
            }
            REQUIRE(inferred.size() == generated.size());
            bool same = true;
            for (int r = 0; r < P; ++r)
              for (std::size_t i = 0; i < generated.rank(r).size(); ++i)
                same = same && inferred.rank(r)[i] == generated.rank(r)[i];
            CHECK(same);
            CHECK(validate(inferred).ok);
            CHECK(write_csv(inferred, csv_content::with_commit) == text);
          }
}

TEST_CASE("round trip of every registered schedule, given its kind", "[csv]") {
  for (const schedule_entry& e : schedule_registry())
    for (const bool comm : {false, true}) {
      INFO(e.name << " comm=" << comm);
      const schedule_table generated = make_schedule(e.name, {4, 16, {false, comm}, {}});
      const std::string text =
          write_csv(generated, comm ? csv_content::with_commit : csv_content::compute_only);
      CHECK(read_csv(text, generated.info().kind) == generated);
    }
}

TEST_CASE("a kind whose placement contradicts the text is an error", "[csv]") {
  try {
    (void)read_csv(dualpipe_2x4_csv, dualpipev_generator::kind);
    FAIL("no csv_error");
  } catch (const csv_error& e) {
    CHECK(e.line() == 1);
    CHECK(e.column() == 5);
    CHECK(e.expected() ==
          "stage 1 of micro-batch 2 runs on rank 0 here, but a dualpipev table (placement "
          "v-shape) runs it on rank 1");
  }
  // custom has no placement of its own: inference as without a kind.
  CHECK(read_csv(dualpipe_2x4_csv, schedule_kind::custom).info().where == placement::mirrored);
}

TEST_CASE("PyTorch's compute + comms format: SEND/RECV without COMMIT", "[csv]") {
  const schedule_table generated = schedules::dualpipe(4, 8);
  const schedule_table t = read_csv(write_csv(generated, csv_content::with_communication));
  CHECK(t.info().with_communication);
  for (int r = 0; r < 4; ++r) {
    std::vector<instruction> expected;
    for (const instruction& x : generated.rank(r))
      if (x.kind != op::commit) expected.push_back(x);
    const auto got = t.rank(r);
    CHECK(std::vector<instruction>(got.begin(), got.end()) == expected);
  }
}

TEST_CASE("a caller-given schedule_info overrides inference", "[csv]") {
  schedule_info given{};
  given.kind = one_f_one_b_generator::kind;
  given.where = placement::linear;
  given.ranks = 2;
  given.stages = 2;
  given.microbatches = 5;
  const schedule_table t = read_csv("0F0,0B0\n1F0,1B0\n", given);
  CHECK(t.info().kind == one_f_one_b_generator::kind);
  CHECK(t.info().where == placement::linear);
  CHECK(t.info().microbatches == 5);
  CHECK(t.view().stage_ranks.empty());

  // An explicit map asked for but impossible: the stage on two ranks is named.
  schedule_info map_only{};
  map_only.where = placement::explicit_map;
  try {
    (void)read_csv(dualpipe_2x4_csv, map_only);
    FAIL("no csv_error");
  } catch (const csv_error& e) {
    CHECK(e.line() == 2);
    CHECK(e.column() == 1);
    CHECK_THAT(e.expected(), Catch::StartsWith("stage 0 runs on rank 1 here and on rank 0"));
  }
}

TEST_CASE("import errors name the line, the column and what was expected", "[csv]") {
  check_error("0F0,0X1\n", 1, 6, "expected an action kind");
  check_error("0F0\n1F\n", 2, 3, "expected a micro-batch number in action \"1F\"");
  check_error("0F0, x1F0\n", 1, 6, "expected a stage number");
  check_error("0F-1", 1, 3, "expected a micro-batch number");
  check_error("0F\t1", 1, 3, "expected a micro-batch number");
  check_error("0F0;0F1", 1, 4, "unexpected text after the action");
  check_error(std::string_view("0F0\0", 4), 1, 4,
              "unexpected text after the action in action \"0F0\\x00\"");
  check_error("COMMITX", 1, 1, "expected a stage number");
  check_error("1F0,0UNSHARD", 1, 6, "expected an action kind");
  check_error("(0B1;1B2)OVERLAP_F_B", 1, 2, "an overlapped pair starts with a forward");
  check_error("(0F1;1F2)OVERLAP_F_B", 1, 6, "full backward");
  check_error("(0F1,1B2)OVERLAP_F_B", 1, 5, "expected ';'");
  check_error("0F0\n(0F1;1B2)OVERLAP", 2, 9, "expected ')OVERLAP_F_B'");
  check_error("0F99999999999", 1, 3, "expected a number of at most 2147483647");
  check_error("99999999999F0", 1, 1, "expected a number of at most 2147483647");
  check_error("1048576F0", 1, 1, "expected stage ids below 1048576");
  check_error("0F0,0B4194304", 1, 5, "expected micro-batch ids below 4194304");
  check_error("0F0,\"0F1", 1, 5, "expected a closing '\"'");
  check_error("\"0F0\" x", 1, 7, "expected ',' or the end of the line");
  check_error("", 1, 1, "expected at least one line");
  // Stage 0 on ranks 0 and 1 and not DualPipe-shaped: 0F1 is on rank 0 but
  // micro-batch 1 is in the second half (N = 3), which mirroring would put on rank 1.
  check_error("0F0,0F1\n0F2\n", 2, 1, "stage 0 runs on rank 1 here and on rank 0 (line 1)");
  check_error("0F0\n1F0\n2F0\n1F1\n", 4, 1, "stage 1 runs on rank 3 here and on rank 1 (line 2)");
  // Too many lines for a table.
  std::string many;
  for (int i = 0; i <= max_ranks; ++i) many += "\n";
  check_error(many, static_cast<std::size_t>(max_ranks) + 1, 1, "expected at most 16384 lines");
}

TEST_CASE("errors against a caller-given schedule_info", "[csv]") {
  schedule_info given{};
  given.where = placement::linear;
  given.ranks = 3;
  try {
    (void)read_csv("0F0\n1F0\n", given);
    FAIL("no csv_error");
  } catch (const csv_error& e) {
    CHECK(e.line() == 3);
    CHECK(e.column() == 1);
    CHECK_THAT(e.expected(), Catch::StartsWith("expected 3 lines"));
  }
  given.ranks = 0;
  given.stages = 2;
  try {
    (void)read_csv("0F0\n1F0,   2F0\n", given);
    FAIL("no csv_error");
  } catch (const csv_error& e) {
    CHECK(e.line() == 2);
    CHECK(e.column() == 8);
    CHECK_THAT(e.expected(), Catch::StartsWith("expected stages below 2"));
  }
  given.stages = 0;
  given.microbatches = 1;
  try {
    (void)read_csv("0F0\n(1F0;1B1)OVERLAP_F_B\n", given);
    FAIL("no csv_error");
  } catch (const csv_error& e) {
    CHECK(e.line() == 2);
    CHECK(e.column() == 1);
    CHECK_THAT(e.expected(), Catch::StartsWith("expected micro-batches below 1"));
  }
}

TEST_CASE("random, mutated and truncated input never crashes", "[csv][fuzz]") {
  std::mt19937 rng(20250101);
  const auto pick = [&](std::size_t n) {
    return static_cast<std::size_t>(std::uniform_int_distribution<std::size_t>(0, n - 1)(rng));
  };
  constexpr std::string_view alphabet = "0123456789FBIWSENDRCVOMT_;(),\"\r\n \t-x";

  // Random text over the syntax's own characters, and arbitrary bytes.
  for (int iteration = 0; iteration < 20000; ++iteration) {
    std::string text(pick(60), '\0');
    const bool bytes = iteration % 4 == 0;
    for (char& c : text) c = bytes ? static_cast<char>(pick(256)) : alphabet[pick(alphabet.size())];
    import_survives(text);
  }

  // Mutations of valid tables: replace, insert or delete characters.
  const std::string seeds[] = {write_csv(schedules::dualpipe(4, 8), csv_content::with_commit),
                               write_csv(schedules::dualpipev(2, 6)),
                               std::string(dualpipe_2x4_csv)};
  int imported = 0, rejected = 0;
  for (int iteration = 0; iteration < 20000; ++iteration) {
    std::string text = seeds[pick(3)];
    for (std::size_t edits = 1 + pick(4); edits > 0; --edits) {
      const std::size_t at = pick(text.size());
      switch (pick(3)) {
        case 0:
          text[at] = alphabet[pick(alphabet.size())];
          break;
        case 1:
          text.insert(at, 1, alphabet[pick(alphabet.size())]);
          break;
        default:
          text.erase(at, 1);
          break;
      }
    }
    (import_survives(text) ? imported : rejected) += 1;
  }
  // The mutations reach both outcomes, so both paths were exercised.
  CHECK(imported > 100);
  CHECK(rejected > 1000);

  // Every prefix of a table with communication.
  const std::string full = seeds[0];
  for (std::size_t n = 0; n <= full.size(); ++n)
    import_survives(std::string_view(full).substr(0, n));
}
