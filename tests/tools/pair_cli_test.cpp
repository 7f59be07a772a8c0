// The tool's pair subcommand: an overlapped pair simulated from DeepSeek-V3's
// layer (--moe) or a programs file, or measured (--timeline), as text, SVG,
// Chrome trace or JSON; and bad input files refused with the field named.
// Runs the built binary (path in $DUALPIPE_SCHEDULE, set by meson).
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "run_tool.hpp"

namespace {

using nlohmann::json;
using tool_test::lines_of;
using tool_test::read_file;
using tool_test::run_tool;
using tool_test::temporary_file;
using tool_test::tool_run;

// The second word of each line between the column heads and the totals:
// "combine(B)" from "0     combine(B) of layer 0     communication  0  1".
std::vector<std::string> issued(const std::string& text) {
  const std::vector<std::string> lines = lines_of(text);
  REQUIRE(lines.size() >= 3);
  std::vector<std::string> out;
  for (std::size_t i = 2; i + 1 < lines.size(); ++i) {
    std::istringstream words(lines[i]);
    std::string index, name;
    words >> index >> name;
    REQUIRE(index == std::to_string(i - 2));
    out.push_back(name);
  }
  return out;
}

// A bad usage: exit 2, nothing on stdout, one line on stderr holding `what`.
void require_usage_error(const std::vector<std::string>& args, const std::string& what) {
  const tool_run r = run_tool(args);
  INFO(r.err);
  REQUIRE(r.status == 2);
  REQUIRE(r.out.empty());
  REQUIRE(lines_of(r.err).size() == 1);
  REQUIRE(r.err.rfind("dualpipe-schedule: error: ", 0) == 0);
  REQUIRE(r.err.find(what) != std::string::npos);
}

const char* const docs_costs = "2,1.5,2,1.5,2,1,2,1";

}  // namespace

TEST_CASE("pair --moe: DeepSeek's issue order with simulated times and totals") {
  const tool_run r = run_tool({"pair", "--moe"});
  INFO(r.err);
  REQUIRE(r.status == 0);
  REQUIRE(r.err.empty());
  REQUIRE(issued(r.out) ==
          std::vector<std::string>{"combine(B)", "attn(F)", "mlp(B)", "dispatch(F)", "dispatch(B)",
                                   "mlp.W(B)", "mlp(F)", "attn(B)", "attn.W(B)", "combine(F)"});
  const std::vector<std::string> lines = lines_of(r.out);
  REQUIRE(lines.front() == "DeepSeek-V3 MoE layer, 1 layer: pair order, simulated");
  REQUIRE(lines[2] == "0     combine(B) of layer 0     communication  0         1");
  // Unit costs: the compute lane never idles and hides all communication.
  REQUIRE(lines.back() ==
          "span 6 units, compute 6 units, communication 4 units, hidden 4 units (100% of "
          "communication)");

  const tool_run seq = run_tool({"pair", "--moe", "--order", "sequential", "--layers", "2"});
  REQUIRE(seq.status == 0);
  const std::vector<std::string> order = issued(seq.out);
  REQUIRE(order.size() == 20);
  REQUIRE(order.front() == "attn(F)");
  REQUIRE(order.back() == "attn.W(B)");
  REQUIRE(lines_of(seq.out).back() ==
          "span 17 units, compute 12 units, communication 8 units, hidden 3 units (37.5% of "
          "communication)");
}

TEST_CASE("pair --moe --format json, and the same back through --timeline") {
  const tool_run r = run_tool({"pair", "--moe", "--costs", docs_costs, "--layers", "2", "--format",
                               "json", "--unit", "us"});
  INFO(r.err);
  REQUIRE(r.status == 0);
  const json doc = json::parse(r.out);
  REQUIRE(doc.at("programs").at("layers") == 2);
  REQUIRE(doc.at("programs").at("forward").size() == 4);
  REQUIRE(doc.at("programs").at("backward").size() == 6);
  REQUIRE(doc.at("programs").at("forward").at(1) ==
          json::parse(R"({"name": "dispatch", "lane": "communication", "role": "chain",
                          "cost": 1.5, "after": -1})"));
  REQUIRE(doc.at("unit") == "us");
  REQUIRE(doc.at("forward_microbatch") == -1);
  REQUIRE(doc.at("sub_ops").size() == 20);
  double last_end = 0;
  for (const json& e : doc.at("sub_ops")) last_end = std::max(last_end, e.at("end").get<double>());
  REQUIRE(last_end == 20);

  // The tool's reader takes back exactly what it wrote.
  const temporary_file file(r.out);
  const tool_run back = run_tool({"pair", "--timeline", file.path, "--format", "json"});
  INFO(back.err);
  REQUIRE(back.status == 0);
  REQUIRE(back.out == r.out);
  // And -o writes the same to a file, nothing to stdout.
  const temporary_file target("");
  const tool_run to_file =
      run_tool({"pair", "--timeline", file.path, "--format", "json", "-o", target.path});
  REQUIRE(to_file.status == 0);
  REQUIRE(to_file.out.empty());
  REQUIRE(read_file(target.path) == r.out);
}

TEST_CASE("pair --format svg and trace") {
  const tool_run svg = run_tool({"pair", "--moe", "--costs", docs_costs, "--layers", "2",
                                 "--format", "svg", "--title", "two layers"});
  INFO(svg.err);
  REQUIRE(svg.status == 0);
  REQUIRE(svg.out.rfind("<?xml", 0) == 0);
  REQUIRE(svg.out.find(">two layers</text>") != std::string::npos);
  std::size_t boxes = 0;
  for (auto at = svg.out.find("<g class=\"sub-op "); at != std::string::npos;
       at = svg.out.find("<g class=\"sub-op ", at + 1))
    ++boxes;
  REQUIRE(boxes == 20);
  REQUIRE(svg.out.find("(100% of communication)") != std::string::npos);

  for (const char* format : {"trace", "chrome-trace"}) {
    const tool_run trace = run_tool({"pair", "--moe", "--format", format, "--unit", "ms"});
    REQUIRE(trace.status == 0);
    const json doc = json::parse(trace.out);
    int events = 0;
    for (const json& e : doc.at("traceEvents"))
      if (e.at("ph") == "X") {
        ++events;
        REQUIRE(e.at("dur") == 1000);  // unit costs, in milliseconds
      }
    REQUIRE(events == 10);
  }
}

TEST_CASE("docs/img/moe-pair-2layers.svg is what the command in docs/cli.md draws") {
  const char* picture = std::getenv("DUALPIPE_PAIR_PICTURE");
  if (picture == nullptr)
    FAIL("DUALPIPE_PAIR_PICTURE is not set: run this test through meson test");
  const tool_run r =
      run_tool({"pair", "--moe", "--costs", docs_costs, "--layers", "2", "--format", "svg"});
  REQUIRE(r.status == 0);
  INFO("regenerate it with the command in docs/cli.md, section pair");
  REQUIRE(read_file(picture) == r.out);
}

TEST_CASE("pair --programs FILE simulates the programs in it") {
  // One layer: compute, then an all-reduce; the backward's weight gradient,
  // with no communication left in its layer to wait for, follows its
  // predecessor at once.
  const temporary_file programs(R"({
    "layers": 1,
    "forward": [{"name": "mm", "lane": "compute", "cost": 2},
                {"name": "reduce", "lane": "communication", "cost": 1}],
    "backward": [{"name": "reduce", "lane": "communication", "cost": 1},
                 {"name": "mm", "lane": "compute", "role": "chain", "cost": 2},
                 {"name": "mm.W", "lane": "compute", "role": "leaf", "cost": 1.5, "after": -1}]
  })");
  const tool_run r = run_tool({"pair", "--programs", programs.path});
  INFO(r.err);
  REQUIRE(r.status == 0);
  REQUIRE(lines_of(r.out).front() == programs.path + ", 1 layer: pair order, simulated");
  REQUIRE(issued(r.out) ==
          std::vector<std::string>{"reduce(B)", "mm(F)", "mm(B)", "mm.W(B)", "reduce(F)"});
  const json doc =
      json::parse(run_tool({"pair", "--programs", programs.path, "--format", "json"}).out);
  REQUIRE(doc.at("programs").at("backward").at(2).at("role") == "leaf");
  REQUIRE(doc.at("programs").at("forward").at(0).at("role") == "chain");  // the default

  // A timeline file serves as --programs: its programs are simulated again.
  const tool_run json_out = run_tool({"pair", "--moe", "--format", "json"});
  const temporary_file timeline(json_out.out);
  const tool_run again = run_tool({"pair", "--programs", timeline.path, "--format", "json"});
  REQUIRE(again.status == 0);
  REQUIRE(again.out == json_out.out);
}

TEST_CASE("pair --timeline FILE draws a measured pair") {
  const std::string measured = R"({
    "programs": {"layers": 1,
      "forward": [{"name": "attn", "lane": "compute", "role": "chain", "cost": 0, "after": -1},
                  {"name": "a2a", "lane": "communication", "role": "chain", "cost": 0, "after": -1}],
      "backward": [{"name": "a2a", "lane": "communication", "role": "chain", "cost": 0, "after": -1},
                   {"name": "attn", "lane": "compute", "role": "chain", "cost": 0, "after": -1}]},
    "unit": "us", "forward_microbatch": 3, "backward_microbatch": 1,
    "sub_ops": [
      {"pass": "B", "layer": 0, "index": 0, "lane": "communication", "start": 100, "end": 140},
      {"pass": "F", "layer": 0, "index": 0, "lane": "compute", "start": 100, "end": 150},
      {"pass": "F", "layer": 0, "index": 1, "lane": "communication", "start": 150, "end": 180},
      {"pass": "B", "layer": 0, "index": 1, "lane": "compute", "start": 150, "end": 210}]
  })";
  const temporary_file file(measured);
  const tool_run text = run_tool({"pair", "--timeline", file.path});
  INFO(text.err);
  REQUIRE(text.status == 0);
  const std::vector<std::string> lines = lines_of(text.out);
  REQUIRE(lines.front() == file.path +
                               ": measured pair (forward of micro-batch 3, backward of "
                               "micro-batch 1)");
  REQUIRE(issued(text.out) == std::vector<std::string>{"a2a(B)", "attn(F)", "a2a(F)", "attn(B)"});
  REQUIRE(lines.back() ==
          "span 110 us, compute 110 us, communication 70 us, hidden 70 us (100% of "
          "communication)");
  const tool_run svg = run_tool({"pair", "--timeline", file.path, "--format", "svg"});
  REQUIRE(svg.status == 0);
  REQUIRE(svg.out.find("Forward (micro-batch 3)") != std::string::npos);
  REQUIRE(svg.out.find("Time (us)") != std::string::npos);
  const json trace =
      json::parse(run_tool({"pair", "--timeline", file.path, "--format", "trace"}).out);
  REQUIRE(trace.at("traceEvents").back().at("ts") == 150);
  REQUIRE(trace.at("traceEvents").back().at("args").at("microbatch") == 1);
}

TEST_CASE("pair: bad usage and bad files name what is wrong") {
  require_usage_error({"pair"}, "missing --moe, --programs FILE or --timeline FILE");
  require_usage_error({"pair", "--moe", "--programs", "x.json"}, "give one of --moe");
  require_usage_error({"pair", "--moe", "--costs", "1,2,3"}, "--costs: expected 8 numbers");
  require_usage_error({"pair", "--moe", "--costs", "1,1,1,1,1,-1,1,1"},
                      "--costs: attn_weight must be a non-negative number, found '-1'");
  require_usage_error({"pair", "--moe", "--layers", "33"}, "--layers: a stage's programs repeat");
  require_usage_error({"pair", "--moe", "--format", "png"}, "unknown pair format 'png'");
  require_usage_error({"pair", "--moe", "--order", "zigzag"}, "unknown --order 'zigzag'");
  require_usage_error({"pair", "--moe", "--unit", "s"}, "unknown --unit 's'");
  require_usage_error({"pair", "--programs", "/nonexistent/p.json"}, "cannot read --programs");

  const temporary_file timeline(run_tool({"pair", "--moe", "--format", "json"}).out);
  const std::string good = read_file(timeline.path);
  require_usage_error({"pair", "--timeline", timeline.path, "--order", "pair"},
                      "--order applies to simulated pairs");
  require_usage_error({"pair", "--timeline", timeline.path, "--costs", "1,1,1,1,1,1,1,1"},
                      "--costs applies to --moe");

  // One field spoiled at a time: the message names the file and the field.
  const json doc = json::parse(good);
  const auto spoiled = [&](const std::string& pointer, const json& value) {
    json bad = doc;
    if (value.is_discarded())
      bad.at(json::json_pointer(pointer.substr(0, pointer.rfind('/'))))
          .erase(pointer.substr(pointer.rfind('/') + 1));
    else
      bad[json::json_pointer(pointer)] = value;
    return bad.dump();
  };
  const json remove = json(json::value_t::discarded);
  struct case_ {
    std::string pointer;
    json value;
    std::string message;
  };
  const std::vector<case_> cases = {
      {"/sub_ops/3/lane", "compute",
       "sub_ops[3].lane: 'compute', but its program puts dispatch(F) of layer 0 on the "
       "communication lane"},
      {"/sub_ops/3/layer", 1, "sub_ops[3].layer: expected an integer from 0 to 0, found 1"},
      {"/sub_ops/3/index", 9, "sub_ops[3].index: expected an integer from 0 to 3, found 9"},
      {"/sub_ops/3/pass", "W", "sub_ops[3].pass: expected one of F, B, found \"W\""},
      {"/sub_ops/3/end", -1, "sub_ops[3].end: before its start"},
      {"/sub_ops/3/start", "0", "sub_ops[3].start: expected a number, found \"0\""},
      {"/sub_ops/3/end", remove, "sub_ops[3].end: missing"},
      {"/sub_ops/3/when", 1, "sub_ops[3].when: unknown field"},
      {"/sub_ops/4", doc.at("sub_ops").at(3),
       "sub_ops: entry 4 (dispatch(F) of layer 0) repeats "
       "entry 3"},
      {"/unit", "s", "unit: expected one of us, ms, units, found \"s\""},
      {"/forward_microbatch", -2, "forward_microbatch: expected an integer from -1"},
      {"/programs/layers", 0, "programs.layers: expected an integer from 1 to 32, found 0"},
      {"/programs/forward/1/cost", -1,
       "programs.forward[1].cost: expected a non-negative finite number, found -1"},
      {"/programs/forward/1/lane", "network",
       "programs.forward[1].lane: expected one of compute, communication"},
      {"/programs/backward/2/role", "twig", "programs.backward[2].role: expected one of chain"},
      {"/programs/backward/0/role", "leaf",
       "programs: the backward program: sub-op 0 is a leaf with no chain sub-op before it"},
      {"/programs/forward/1/name", "attn",
       "programs: the forward program: sub-op 1 has the name of sub-op 0"},
      {"/programs/forward/1/name", "a_name_of_sixteen",
       "programs.forward[1].name: expected a name of 1 to 15 characters"},
      {"/programs/forward/1/after", 3,
       "programs: the forward program: sub-op 1 waits for a sub-op that does not come before it"},
      {"/programs/forward", json::array(), "programs.forward: expected 1 to 12 sub-ops, found 0"},
      {"/programs", remove, "programs: missing"},
  };
  for (const case_& c : cases) {
    INFO(c.pointer);
    const temporary_file bad(spoiled(c.pointer, c.value));
    require_usage_error({"pair", "--timeline", bad.path},
                        "--timeline '" + bad.path + "': " + c.message);
  }
  // A sub-op left out.
  json missing = doc;
  missing.at("sub_ops").erase(9);
  const temporary_file short_file(missing.dump());
  require_usage_error({"pair", "--timeline", short_file.path},
                      "sub_ops: combine(F) of layer 0 is missing");
  const temporary_file not_json("{\"programs\": ");
  require_usage_error({"pair", "--timeline", not_json.path}, "not valid JSON");
  // The same checks for --programs, whose fields sit at the top.
  const temporary_file programs(doc.at("programs").dump());
  REQUIRE(run_tool({"pair", "--programs", programs.path}).status == 0);
  json bad_programs = doc.at("programs");
  bad_programs["forward"][0]["lane"] = 7;
  const temporary_file bad_file(bad_programs.dump());
  require_usage_error({"pair", "--programs", bad_file.path},
                      "--programs '" + bad_file.path + "': forward[0].lane: expected one of");
}

TEST_CASE("pair: output that cannot be written is exit status 1") {
  const tool_run r = run_tool({"pair", "--moe", "-o", "/nonexistent/dir/pair.svg"});
  REQUIRE(r.status == 1);
  REQUIRE(r.err.find("cannot write") != std::string::npos);
}
