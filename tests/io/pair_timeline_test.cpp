// An overlapped pair's pictures and interchange (io/pair_timeline.hpp): the
// SVG has a row per lane and a box per sub-op placed by its times, labelled,
// coloured by pass and role, with totals_of's numbers in its caption; the
// Chrome trace has a track per lane and an event per sub-op; the JSON holds
// exactly the programs and the timeline; pair_timeline_problem names what
// does not fit.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstddef>
#include <limits>
#include <map>
#include <regex>
#include <string>
#include <vector>

#include "dualpipe/io/pair_timeline.hpp"
#include "dualpipe/overlap/issue_order.hpp"
#include "dualpipe/overlap/moe_layer.hpp"
#include "dualpipe/overlap/timeline.hpp"

using namespace dualpipe;
using nlohmann::json;

namespace {

// DeepSeek-V3's layer, two layers, costs of the docs' picture.
constexpr overlap::stage_programs moe =
    overlap::moe_layer_programs({2, 1.5, 2, 1.5, 2, 1, 2, 1}, 2);

std::vector<overlap::timed_sub_op> simulated(const overlap::stage_programs& p, bool sequential) {
  const overlap::issue_order order =
      sequential ? overlap::make_sequential_order(p) : overlap::make_pair_order(p);
  const overlap::simulated_timeline t = overlap::simulate_order(p, order.view());
  return {t.view().begin(), t.view().end()};
}

struct svg_box {
  std::string classes;
  std::string title;
  double x = 0, y = 0, width = 0;
  std::string fill;
  std::vector<std::string> texts;
};

double attribute(const std::string& element, const std::string& name) {
  const std::regex re(" " + name + "=\"([-0-9.]+)\"");
  std::smatch m;
  REQUIRE(std::regex_search(element, m, re));
  return std::stod(m[1]);
}

std::string text_attribute(const std::string& element, const std::string& name) {
  const std::regex re(" " + name + "=\"([^\"]*)\"");
  std::smatch m;
  REQUIRE(std::regex_search(element, m, re));
  return m[1];
}

// The sub-op groups of a picture, in document order.
std::vector<svg_box> boxes_of(const std::string& svg) {
  std::vector<svg_box> out;
  const std::regex group(
      "<g class=\"sub-op ([a-z ]+)\"><title>([^<]*)</title>(<rect [^>]*/>)((?:<text [^>]*>[^<]*</"
      "text>)*)</g>");
  const std::regex text("<text [^>]*>([^<]*)</text>");
  for (auto it = std::sregex_iterator(svg.begin(), svg.end(), group); it != std::sregex_iterator();
       ++it) {
    const std::smatch& m = *it;
    svg_box b;
    b.classes = m[1];
    b.title = m[2];
    const std::string rect = m[3];
    b.x = attribute(rect, "x");
    b.y = attribute(rect, "y");
    b.width = attribute(rect, "width");
    b.fill = text_attribute(rect, "fill");
    const std::string texts = m[4];
    for (auto t = std::sregex_iterator(texts.begin(), texts.end(), text);
         t != std::sregex_iterator(); ++t)
      b.texts.push_back((*t)[1]);
    out.push_back(b);
  }
  return out;
}

// Tags balance: every element opened is closed in order (what the writer
// produces: no comments, no CDATA).
bool balanced(const std::string& svg) {
  std::vector<std::string> open;
  const std::regex tag("<(/?)([a-zA-Z?][a-zA-Z0-9-]*)[^>]*?(/?)>");
  for (auto it = std::sregex_iterator(svg.begin(), svg.end(), tag); it != std::sregex_iterator();
       ++it) {
    const std::smatch& m = *it;
    const std::string name = m[2];
    if (name == "?xml" || m[3] == "/") continue;
    if (m[1] == "/") {
      if (open.empty() || open.back() != name) return false;
      open.pop_back();
    } else {
      open.push_back(name);
    }
  }
  return open.empty();
}

std::string label(const overlap::stage_programs& p, overlap::sub_op_ref r) {
  return std::string(overlap::sub_op_of(p, r).name.view()) +
         (r.which == overlap::pass::forward ? " F" : " B") + std::to_string(r.layer);
}

}  // namespace

TEST_CASE("the SVG: two lane rows, a box per sub-op placed by its times") {
  const auto timeline = simulated(moe, false);
  REQUIRE(timeline.size() == 20);
  const std::string svg = format_pair_svg(
      moe, timeline,
      {.title = "MoE pair", .forward_microbatch = 3, .backward_microbatch = 1, .plot_width = 2000});
  REQUIRE(svg.rfind("<?xml", 0) == 0);
  REQUIRE(balanced(svg));
  REQUIRE(svg.find(">MoE pair</text>") != std::string::npos);

  // The lanes group: two labelled rows.
  const auto lanes_at = svg.find("<g id=\"lanes\">");
  REQUIRE(lanes_at != std::string::npos);
  const std::string lanes = svg.substr(lanes_at, svg.find("</g>", lanes_at) - lanes_at);
  REQUIRE(lanes.find(">Compute</text>") != std::string::npos);
  REQUIRE(lanes.find(">Communication</text>") != std::string::npos);
  std::vector<double> row_y;
  const std::regex rect("<rect [^>]*/>");
  for (auto it = std::sregex_iterator(lanes.begin(), lanes.end(), rect);
       it != std::sregex_iterator(); ++it)
    row_y.push_back(attribute(it->str(), "y"));
  REQUIRE(row_y.size() == 2);
  REQUIRE(row_y[1] > row_y[0]);

  const std::vector<svg_box> boxes = boxes_of(svg);
  REQUIRE(boxes.size() == timeline.size());
  // x = left + start * scale and width = (end - start) * scale, one left and
  // one scale for all: read them off the first box and a later one.
  const double scale = (boxes[2].x - boxes[0].x) / (timeline[2].start - timeline[0].start);
  const double left = boxes[0].x - timeline[0].start * scale;
  REQUIRE(scale == Approx(2000.0 / overlap::totals_of(timeline).span));
  for (std::size_t i = 0; i < boxes.size(); ++i) {
    const overlap::timed_sub_op& t = timeline[i];
    const svg_box& b = boxes[i];
    INFO(b.title);
    REQUIRE(b.x == Approx(left + t.start * scale).margin(0.01));
    REQUIRE(b.width == Approx((t.end - t.start) * scale).margin(0.01));
    REQUIRE(b.y == row_y[t.where == overlap::lane::compute ? 0 : 1]);
    REQUIRE(b.title.rfind(overlap::describe(moe, t.op), 0) == 0);
    // Wide enough for every label on one line.
    REQUIRE(b.texts == std::vector<std::string>{label(moe, t.op)});
    const bool leaf = overlap::sub_op_of(moe, t.op).kind == overlap::role::leaf;
    const bool forward = t.op.which == overlap::pass::forward;
    REQUIRE(b.fill == (leaf ? "#7CBFFB" : forward ? "#F4B13E" : "#7ED957"));
    REQUIRE(b.classes ==
            std::string(forward ? "forward" : "backward") + (leaf ? " leaf" : " chain"));
  }
  // DeepSeek's order, as the labels read.
  REQUIRE(boxes[0].texts[0] == "combine B1");
  REQUIRE(boxes[1].texts[0] == "attn F0");
  REQUIRE(boxes[5].texts[0] == "mlp.W B1");

  // The legend names the micro-batches; with everything hidden there is no
  // exposed communication to mark.
  REQUIRE(svg.find("Forward (micro-batch 3)") != std::string::npos);
  REQUIRE(svg.find("Backward (micro-batch 1)") != std::string::npos);
  REQUIRE(svg.find("Backward for weights") != std::string::npos);
  REQUIRE(svg.find("id=\"exposed\"") == std::string::npos);
}

TEST_CASE("the SVG's caption is totals_of's, hidden fraction included") {
  for (const bool sequential : {false, true}) {
    const auto timeline = simulated(moe, sequential);
    const overlap::lane_totals totals = overlap::totals_of(timeline);
    const std::string svg = format_pair_svg(moe, timeline, {.unit = pair_time_unit::us});
    const std::regex caption(
        "span ([0-9.]+) us, compute ([0-9.]+) us, communication ([0-9.]+) us, hidden ([0-9.]+) "
        "us \\(([0-9.]+)% of communication\\)");
    std::smatch m;
    REQUIRE(std::regex_search(svg, m, caption));
    REQUIRE(std::stod(m[1]) == Approx(totals.span).margin(0.005));
    REQUIRE(std::stod(m[2]) == Approx(totals.compute).margin(0.005));
    REQUIRE(std::stod(m[3]) == Approx(totals.communication).margin(0.005));
    REQUIRE(std::stod(m[4]) == Approx(totals.hidden).margin(0.005));
    REQUIRE(std::stod(m[5]) == Approx(100.0 * totals.hidden_fraction()).margin(0.005));
    REQUIRE(m[0] == format_pair_totals(totals, pair_time_unit::us));
    REQUIRE(svg.find("Time (us)") != std::string::npos);
    // Sequential: communication under nothing is marked.
    REQUIRE((svg.find("id=\"exposed\"") != std::string::npos) == sequential);
  }
  REQUIRE(format_pair_totals(overlap::totals_of(simulated(moe, false)), pair_time_unit::units) ==
          "span 20 units, compute 20 units, communication 12 units, hidden 12 units (100% of "
          "communication)");
  REQUIRE(format_pair_totals(overlap::totals_of(simulated(moe, true)), pair_time_unit::ms) ==
          "span 29 ms, compute 20 ms, communication 12 ms, hidden 3 ms (25% of communication)");
}

TEST_CASE("a measured timeline is drawn from its first start; narrow boxes shorten labels") {
  auto timeline = simulated(moe, false);
  const std::vector<svg_box> at_zero = boxes_of(format_pair_svg(moe, timeline));
  for (overlap::timed_sub_op& t : timeline) {
    t.start += 1000.0;
    t.end += 1000.0;
  }
  const std::vector<svg_box> later = boxes_of(format_pair_svg(moe, timeline));
  REQUIRE(later.size() == at_zero.size());
  for (std::size_t i = 0; i < later.size(); ++i) {
    REQUIRE(later[i].x == at_zero[i].x);
    REQUIRE(later[i].width == at_zero[i].width);
    REQUIRE(later[i].texts == at_zero[i].texts);
  }
  // At 800 pixels a one-unit leaf takes two lines: its name over "B1".
  REQUIRE(at_zero[5].texts == std::vector<std::string>{"mlp.W", "B1"});
  // A tiny plot leaves labels out but keeps every box and its tooltip.
  const std::vector<svg_box> tiny = boxes_of(format_pair_svg(moe, timeline, {.plot_width = 40}));
  REQUIRE(tiny.size() == 20);
  for (const svg_box& b : tiny) REQUIRE(b.texts.empty());
}

TEST_CASE("the Chrome trace: a track per lane, an event per sub-op in microseconds") {
  const auto timeline = simulated(moe, false);
  const json trace = json::parse(format_pair_chrome_trace(moe, timeline,
                                                          {.title = "pair 3/1",
                                                           .unit = pair_time_unit::ms,
                                                           .forward_microbatch = 3,
                                                           .backward_microbatch = 1}));
  std::map<int, std::string> tracks;
  std::vector<json> events;
  std::string process;
  for (const json& e : trace.at("traceEvents")) {
    REQUIRE(e.at("pid") == 0);
    if (e.at("ph") == "M" && e.at("name") == "thread_name")
      tracks[e.at("tid").get<int>()] = e.at("args").at("name").get<std::string>();
    if (e.at("ph") == "M" && e.at("name") == "process_name")
      process = e.at("args").at("name").get<std::string>();
    if (e.at("ph") == "X") events.push_back(e);
  }
  REQUIRE(process == "pair 3/1");
  REQUIRE(tracks == std::map<int, std::string>{{0, "compute"}, {1, "communication"}});
  REQUIRE(events.size() == timeline.size());
  for (std::size_t i = 0; i < events.size(); ++i) {
    const overlap::timed_sub_op& t = timeline[i];
    const json& e = events[i];
    const overlap::sub_op& op = overlap::sub_op_of(moe, t.op);
    const bool forward = t.op.which == overlap::pass::forward;
    REQUIRE(e.at("name") == label(moe, t.op));
    REQUIRE(e.at("tid") == (t.where == overlap::lane::compute ? 0 : 1));
    REQUIRE(e.at("ts").get<double>() == t.start * 1000.0);
    REQUIRE(e.at("dur").get<double>() == (t.end - t.start) * 1000.0);
    const json& args = e.at("args");
    REQUIRE(args.at("pass") == (forward ? "F" : "B"));
    REQUIRE(args.at("layer") == t.op.layer);
    REQUIRE(args.at("index") == t.op.index);
    REQUIRE(args.at("lane") == std::string(overlap::lane_name(t.where)));
    REQUIRE(args.at("role") == (op.kind == overlap::role::leaf ? "leaf" : "chain"));
    REQUIRE(args.at("microbatch") == (forward ? 3 : 1));
  }
  // Units and microseconds are drawn as they are; no micro-batch, no arg.
  const json plain = json::parse(format_pair_chrome_trace(moe, timeline));
  const json& last = plain.at("traceEvents").back();
  REQUIRE(last.at("ts").get<double>() == timeline.back().start);
  REQUIRE_FALSE(last.at("args").contains("microbatch"));
  REQUIRE(plain.at("traceEvents").front().at("args").at("name") == "pair");
}

TEST_CASE("the JSON interchange holds exactly the programs and the timeline") {
  overlap::stage_programs p = moe;
  p.backward.ops[5].after = 2;  // attn.W waits for mlp.W too: "after" is written
  const auto timeline = simulated(p, false);
  const pair_picture_info info{
      .unit = pair_time_unit::us, .forward_microbatch = 3, .backward_microbatch = 1};
  const std::string text = format_pair_timeline_json(p, timeline, info);
  const json doc = json::parse(text);
  REQUIRE(doc.size() == 5);
  REQUIRE(doc.at("unit") == "us");
  REQUIRE(doc.at("forward_microbatch") == 3);
  REQUIRE(doc.at("backward_microbatch") == 1);
  const json& programs = doc.at("programs");
  REQUIRE(programs == json::parse(format_programs_json(p)));
  REQUIRE(programs.at("layers") == 2);
  for (const overlap::pass which : {overlap::pass::forward, overlap::pass::backward}) {
    const json& list = programs.at(which == overlap::pass::forward ? "forward" : "backward");
    const overlap::layer_program& prog = p.of(which);
    REQUIRE(list.size() == static_cast<std::size_t>(prog.size));
    for (int i = 0; i < prog.size; ++i) {
      const json& e = list.at(static_cast<std::size_t>(i));
      REQUIRE(e.size() == 5);
      REQUIRE(e.at("name") == std::string(prog[i].name.view()));
      REQUIRE(e.at("lane") == std::string(overlap::lane_name(prog[i].where)));
      REQUIRE(e.at("role") == (prog[i].kind == overlap::role::leaf ? "leaf" : "chain"));
      REQUIRE(e.at("cost").get<double>() == prog[i].cost);
      REQUIRE(e.at("after") == prog[i].after);
    }
  }
  REQUIRE(programs.at("backward").at(5).at("after") == 2);
  const json& ops = doc.at("sub_ops");
  REQUIRE(ops.size() == timeline.size());
  for (std::size_t i = 0; i < ops.size(); ++i) {
    const json& e = ops.at(i);
    const overlap::timed_sub_op& t = timeline[i];
    REQUIRE(e.size() == 6);
    REQUIRE(e.at("pass") == (t.op.which == overlap::pass::forward ? "F" : "B"));
    REQUIRE(e.at("layer") == t.op.layer);
    REQUIRE(e.at("index") == t.op.index);
    REQUIRE(e.at("lane") == std::string(overlap::lane_name(t.where)));
    REQUIRE(e.at("start").get<double>() == t.start);
    REQUIRE(e.at("end").get<double>() == t.end);
  }
  // Numbers read back exactly (shortest round-trip text).
  std::vector<overlap::timed_sub_op> odd = timeline;
  odd[0].end = 0.1 + 0.2;
  const json again = json::parse(format_pair_timeline_json(p, odd, info));
  REQUIRE(again.at("sub_ops").at(0).at("end").get<double>() == 0.1 + 0.2);
  // Unknown micro-batches are -1; an empty timeline is an empty list.
  const json bare = json::parse(format_pair_timeline_json(p, {}));
  REQUIRE(bare.at("forward_microbatch") == -1);
  REQUIRE(bare.at("unit") == "units");
  REQUIRE(bare.at("sub_ops") == json::array());
}

TEST_CASE("pair_timeline_problem: a timeline fits its programs or is named") {
  const auto good = simulated(moe, false);
  REQUIRE(pair_timeline_problem(moe, good).empty());
  REQUIRE(pair_timeline_problem(moe, simulated(moe, true)).empty());

  auto t = good;
  t[3].where = overlap::lane::compute;
  REQUIRE(pair_timeline_problem(moe, t) ==
          "entry 3 (dispatch(F) of layer 0) runs on the compute lane, but its program puts it on "
          "the communication lane");
  t = good;
  t[4] = t[3];
  REQUIRE(pair_timeline_problem(moe, t) == "entry 4 (dispatch(F) of layer 0) repeats entry 3");
  t = good;
  t.pop_back();
  REQUIRE(pair_timeline_problem(moe, t) == "combine(F) of layer 1 is missing");
  t = good;
  t[2].end = t[2].start - 1;
  REQUIRE(pair_timeline_problem(moe, t) == "entry 2 (mlp(B) of layer 1) ends before it starts");
  t = good;
  t[1].start = std::nan("");
  REQUIRE(pair_timeline_problem(moe, t) ==
          "entry 1 (attn(F) of layer 0) has a start or end that is not a finite number");
  t = good;
  t[0].op.layer = 2;
  REQUIRE(pair_timeline_problem(moe, t) == "entry 0 names a sub-op the programs do not have");
  overlap::stage_programs bad = moe;
  bad.layers = 0;
  REQUIRE(pair_timeline_problem(bad, good) ==
          "the programs: a stage's programs repeat over 1 to 32 layers");
}

TEST_CASE("time units by name") {
  REQUIRE(pair_time_unit_from_name("us") == pair_time_unit::us);
  REQUIRE(pair_time_unit_from_name("ms") == pair_time_unit::ms);
  REQUIRE(pair_time_unit_from_name("units") == pair_time_unit::units);
  REQUIRE_FALSE(pair_time_unit_from_name("s").has_value());
  for (const pair_time_unit u : {pair_time_unit::us, pair_time_unit::ms, pair_time_unit::units})
    REQUIRE(pair_time_unit_from_name(pair_time_unit_name(u)) == u);
  static_assert(microseconds_per(pair_time_unit::ms) == 1000.0);
}

TEST_CASE("degenerate timelines still give well-formed output") {
  // Empty: the frame, the axis at 0, no boxes, no legend.
  const std::string empty = format_pair_svg(moe, {});
  REQUIRE(balanced(empty));
  REQUIRE(boxes_of(empty).empty());
  REQUIRE(empty.find("id=\"legend\"") == std::string::npos);
  REQUIRE(json::parse(format_pair_chrome_trace(moe, {})).at("traceEvents").size() == 5);
  // Zero costs: every box has no width, the picture is still drawn.
  const overlap::stage_programs free = overlap::moe_layer_programs({}, 1);
  const auto zero = simulated(free, false);
  const std::string svg = format_pair_svg(free, zero);
  REQUIRE(balanced(svg));
  REQUIRE(boxes_of(svg).size() == 10);
  // An infinite end (refused by pair_timeline_problem) does not hang the axis.
  auto broken = simulated(moe, false);
  broken[0].end = std::numeric_limits<double>::infinity();
  REQUIRE_FALSE(pair_timeline_problem(moe, broken).empty());
  REQUIRE(balanced(format_pair_svg(moe, broken)));
}
