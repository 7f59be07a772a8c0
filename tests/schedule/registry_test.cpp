// The name -> table registry shared by the tool, the examples and the tests.
#include <catch2/catch.hpp>

#include <set>
#include <stdexcept>
#include <string>

#include "dualpipe/analysis/validate.hpp"
#include "dualpipe/schedule/dualpipe.hpp"
#include "dualpipe/schedule/registry.hpp"

using namespace dualpipe;

TEST_CASE("the registry holds DualPipe and DualPipeV under their names", "[registry]") {
  std::set<std::string> names;
  for (const schedule_entry& e : schedule_registry()) {
    CHECK(names.insert(std::string(e.name)).second);  // names are unique
    CHECK_FALSE(e.summary.empty());
    CHECK(e.build != nullptr);
  }
  CHECK(names.count("dualpipe") == 1);
  CHECK(names.count("dualpipev") == 1);
  REQUIRE(find_schedule("dualpipe") != nullptr);
  CHECK(find_schedule("dualpipe")->name == "dualpipe");
  CHECK(find_schedule("DualPipe") == nullptr);
  CHECK(find_schedule("") == nullptr);
  CHECK_THAT(schedule_names(), Catch::Contains("dualpipe, dualpipev"));
}

TEST_CASE("make_schedule builds the same table as the generator", "[registry]") {
  const generator_options options{.forward_only = true, .with_communication = false};
  CHECK(make_schedule("dualpipe", {6, 14, options, {}}) == schedules::dualpipe(6, 14, options));
  CHECK(make_schedule("dualpipev", {3, 8, {}, {}}) == schedules::dualpipev(3, 8));
}

TEST_CASE("make_schedule rejects unknown names, parameters and sizes", "[registry]") {
  try {
    (void)make_schedule("nosuch", {4, 8, {}, {}});
    FAIL("no exception");
  } catch (const std::invalid_argument& e) {
    CHECK_THAT(e.what(), Catch::StartsWith("unknown schedule 'nosuch' (known: ") &&
                             Catch::Contains("dualpipev"));
  }
  try {
    (void)make_schedule("dualpipe", {4, 8, {}, {{"virtual-stages", 2}}});
    FAIL("no exception");
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()) == "schedule 'dualpipe' takes no parameter 'virtual-stages'");
  }
  CHECK_THROWS_WITH(make_schedule("dualpipe", {5, 10, {}, {}}), Catch::Contains("P even"));
  CHECK_THROWS_WITH(make_schedule("dualpipev", {4, 0, {}, {}}), Catch::Contains("N >= 1"));
  const schedule_request request{4, 8, {}, {{"virtual-stages", 3}}};
  CHECK(request.parameter("virtual-stages") == 3);
  CHECK_THROWS_AS(request.parameter("chunks"), std::logic_error);
}

TEST_CASE("every registered schedule builds a valid table under its own name", "[registry]") {
  // P = 4, N = 16 fits every schedule's constraints (even, >= 2P, a multiple of P).
  for (const schedule_entry& e : schedule_registry())
    for (const bool comm : {false, true})
      for (const bool forward_only : {false, true}) {
        INFO(e.name << " comm=" << comm << " forward_only=" << forward_only);
        const schedule_table t = make_schedule(e.name, {4, 16, {forward_only, comm}, {}});
        CHECK(std::string(t.info().kind.name) == std::string(e.name));
        CHECK(t.info().kind == e.kind);
        CHECK(t.info().where == e.kind.where);  // the entry's placement is the tables'
        CHECK_FALSE(e.summary.empty());
        CHECK(t.info().ranks == 4);
        CHECK(t.info().microbatches == 16);
        CHECK(t.info().with_communication == comm);
        CHECK(t.info().forward_only == forward_only);
        const validation v = validate(t);
        INFO(describe(v));
        CHECK(v.ok);
        for (const schedule_parameter& p : e.parameters) {
          CHECK_FALSE(p.description.empty());
          CHECK(p.name.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789-") ==
                std::string_view::npos);
        }
      }
}
