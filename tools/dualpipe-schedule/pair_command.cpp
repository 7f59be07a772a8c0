// `dualpipe-schedule pair`: one overlapped pair (a micro-batch's forward with
// another's backward on one rank) on its two lanes, compute and
// communication. Simulated from sub-op programs (--moe: DeepSeek-V3's layer
// with --costs, or --programs FILE) in the generated pair order or the
// sequential one, or measured (--timeline FILE, as the MoE example writes
// it). Prints the issue order with each sub-op's times and the totals
// (text), or draws it (svg, trace), or writes the JSON interchange of
// io/pair_timeline.hpp (json).
//
// Every field of an input file is checked, and a bad one is a usage error
// (exit 2) naming it: "--timeline 'x.json': sub_ops[3].lane: ...".
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <initializer_list>
#include <iomanip>
#include <iostream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "dualpipe/io/pair_timeline.hpp"
#include "dualpipe/overlap/issue_order.hpp"
#include "dualpipe/overlap/moe_layer.hpp"
#include "dualpipe/overlap/program.hpp"
#include "dualpipe/overlap/timeline.hpp"
#include "table_source.hpp"
#include "usage_error.hpp"

namespace dualpipe::cli {

namespace {

using nlohmann::json;

struct pair_options {
  bool moe = false;
  std::string costs;
  int layers = 1;
  std::string programs_file;
  std::string timeline_file;
  std::string order = "pair";
  std::string format = "text";
  std::string unit = "units";
  std::string title;
  std::string output;
  CLI::Option* costs_option = nullptr;
  CLI::Option* layers_option = nullptr;
  CLI::Option* programs_option = nullptr;
  CLI::Option* timeline_option = nullptr;
  CLI::Option* order_option = nullptr;
  CLI::Option* unit_option = nullptr;
};

constexpr std::string_view moe_cost_names[] = {
    "attn", "dispatch", "mlp", "combine", "attn_input", "attn_weight", "mlp_input", "mlp_weight"};

// --costs attn,dispatch,mlp,combine,attn_input,attn_weight,mlp_input,mlp_weight
overlap::moe_layer_costs parse_moe_costs(const std::string& spec) {
  double values[8] = {1, 1, 1, 1, 1, 1, 1, 1};
  if (!spec.empty()) {
    std::vector<std::string> items;
    std::istringstream in(spec);
    for (std::string item; std::getline(in, item, ',');) items.push_back(item);
    if (spec.back() == ',') items.emplace_back();
    if (items.size() != 8)
      throw usage_error(
          "--costs: expected 8 numbers (attn,dispatch,mlp,combine,attn_input,"
          "attn_weight,mlp_input,mlp_weight), found " +
          std::to_string(items.size()));
    for (std::size_t i = 0; i < 8; ++i) {
      std::size_t used = 0;
      double v = -1.0;
      try {
        v = std::stod(items[i], &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used == 0 || used != items[i].size() || !std::isfinite(v) || v < 0.0)
        throw usage_error("--costs: " + std::string(moe_cost_names[i]) +
                          " must be a non-negative number, found '" + items[i] + "'");
      values[i] = v;
    }
  }
  return {values[0], values[1], values[2], values[3], values[4], values[5], values[6], values[7]};
}

// Reads fields of one input file; every complaint names the file and the
// field ("--programs 'p.json': forward[2].lane: ...").
class field_reader {
 public:
  explicit field_reader(std::string source) : source_(std::move(source)) {}

  [[noreturn]] void fail(const std::string& field, const std::string& why) const {
    throw usage_error(source_ + ": " + (field.empty() ? "" : field + ": ") + why);
  }

  json parse(const std::string& text) const {
    try {
      return json::parse(text);
    } catch (const json::parse_error& e) {
      fail("", std::string("not valid JSON: ") + e.what());
    }
  }

  void object(const json& v, const std::string& field,
              std::initializer_list<std::string_view> known) const {
    if (!v.is_object()) fail(field, "expected an object");
    for (const auto& [key, value] : v.items()) {
      bool ok = false;
      for (const std::string_view k : known) ok = ok || k == key;
      if (!ok) {
        std::string list;
        for (const std::string_view k : known) list += (list.empty() ? "" : ", ") + std::string(k);
        fail(join(field, key), "unknown field (known: " + list + ")");
      }
    }
  }

  const json* member(const json& v, const std::string& field, const char* key,
                     bool required) const {
    const auto it = v.find(key);
    if (it != v.end()) return &*it;
    if (required) fail(join(field, key), "missing");
    return nullptr;
  }

  std::int64_t integer(const json& v, const std::string& field, std::int64_t lo,
                       std::int64_t hi) const {
    if (!v.is_number_integer()) fail(field, "expected an integer, found " + v.dump());
    const std::int64_t x =
        v.is_number_unsigned()
            ? static_cast<std::int64_t>(std::min<std::uint64_t>(v.get<std::uint64_t>(), 1u << 31))
            : v.get<std::int64_t>();
    if (x < lo || x > hi)
      fail(field, "expected an integer from " + std::to_string(lo) + " to " + std::to_string(hi) +
                      ", found " + v.dump());
    return x;
  }

  double number(const json& v, const std::string& field, bool non_negative) const {
    if (!v.is_number()) fail(field, "expected a number, found " + v.dump());
    const double x = v.get<double>();
    if (!std::isfinite(x) || (non_negative && x < 0.0))
      fail(field, std::string("expected a ") + (non_negative ? "non-negative " : "") +
                      "finite number, found " + v.dump());
    return x;
  }

  std::string one_of(const json& v, const std::string& field,
                     std::initializer_list<std::string_view> allowed) const {
    std::string list;
    for (const std::string_view a : allowed) list += (list.empty() ? "" : ", ") + std::string(a);
    if (v.is_string())
      for (const std::string_view a : allowed)
        if (v.get<std::string>() == a) return std::string(a);
    fail(field, "expected one of " + list + ", found " + v.dump());
  }

  static std::string join(const std::string& field, std::string_view key) {
    return field.empty() ? std::string(key) : field + "." + std::string(key);
  }
  static std::string at(const std::string& field, std::size_t i) {
    return field + "[" + std::to_string(i) + "]";
  }

 private:
  std::string source_;
};

overlap::layer_program read_layer_program(const field_reader& r, const json& v,
                                          const std::string& field) {
  if (!v.is_array()) r.fail(field, "expected an array of sub-ops");
  if (v.empty() || v.size() > overlap::max_sub_ops)
    r.fail(field, "expected 1 to 12 sub-ops, found " + std::to_string(v.size()));
  overlap::layer_program prog;
  prog.size = static_cast<int>(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) {
    const std::string f = field_reader::at(field, i);
    const json& e = v[i];
    r.object(e, f, {"name", "lane", "role", "cost", "after"});
    const json& name = *r.member(e, f, "name", true);
    if (!name.is_string() || name.get<std::string>().empty() ||
        name.get<std::string>().size() > overlap::max_name_length)
      r.fail(f + ".name", "expected a name of 1 to 15 characters, found " + name.dump());
    overlap::sub_op& op = prog.ops[i];
    op.name = overlap::op_name(name.get<std::string>().c_str());
    op.where = r.one_of(*r.member(e, f, "lane", true), f + ".lane", {"compute", "communication"}) ==
                       "compute"
                   ? overlap::lane::compute
                   : overlap::lane::communication;
    if (const json* role = r.member(e, f, "role", false))
      op.kind = r.one_of(*role, f + ".role", {"chain", "leaf"}) == "chain" ? overlap::role::chain
                                                                           : overlap::role::leaf;
    if (const json* cost = r.member(e, f, "cost", false))
      op.cost = r.number(*cost, f + ".cost", true);
    // A wrong but representable index is program_problem's to name.
    if (const json* after = r.member(e, f, "after", false))
      op.after = static_cast<int>(
          r.integer(*after, f + ".after", -1, static_cast<std::int64_t>(overlap::max_sub_ops) - 1));
  }
  return prog;
}

// The "programs" object; `field` is its name in the file ("" at the top).
overlap::stage_programs read_programs(const field_reader& r, const json& v,
                                      const std::string& field) {
  r.object(v, field, {"layers", "forward", "backward"});
  overlap::stage_programs p;
  p.layers =
      static_cast<int>(r.integer(*r.member(v, field, "layers", true),
                                 field_reader::join(field, "layers"), 1, overlap::max_layers));
  p.forward = read_layer_program(r, *r.member(v, field, "forward", true),
                                 field_reader::join(field, "forward"));
  p.backward = read_layer_program(r, *r.member(v, field, "backward", true),
                                  field_reader::join(field, "backward"));
  if (const std::string problem = overlap::program_problem(p); !problem.empty())
    r.fail(field, problem);
  return p;
}

struct pair_timeline {
  overlap::stage_programs programs;
  std::vector<overlap::timed_sub_op> sub_ops;
  pair_time_unit unit = pair_time_unit::units;
  int forward_microbatch = -1;
  int backward_microbatch = -1;
};

pair_timeline read_timeline(const std::string& path) {
  const field_reader r("--timeline '" + path + "'");
  const json doc = r.parse(read_input_file("--timeline", path, "JSON"));
  r.object(doc, "", {"programs", "unit", "forward_microbatch", "backward_microbatch", "sub_ops"});
  pair_timeline t;
  t.programs = read_programs(r, *r.member(doc, "", "programs", true), "programs");
  if (const json* unit = r.member(doc, "", "unit", false))
    t.unit = *pair_time_unit_from_name(r.one_of(*unit, "unit", {"us", "ms", "units"}));
  if (const json* mb = r.member(doc, "", "forward_microbatch", false))
    t.forward_microbatch = static_cast<int>(r.integer(*mb, "forward_microbatch", -1, 1 << 30));
  if (const json* mb = r.member(doc, "", "backward_microbatch", false))
    t.backward_microbatch = static_cast<int>(r.integer(*mb, "backward_microbatch", -1, 1 << 30));
  const json& ops = *r.member(doc, "", "sub_ops", true);
  if (!ops.is_array()) r.fail("sub_ops", "expected an array of timed sub-ops");
  const overlap::stage_programs& p = t.programs;
  for (std::size_t i = 0; i < ops.size(); ++i) {
    const std::string f = field_reader::at("sub_ops", i);
    const json& e = ops[i];
    r.object(e, f, {"pass", "layer", "index", "lane", "start", "end"});
    const overlap::pass which =
        r.one_of(*r.member(e, f, "pass", true), f + ".pass", {"F", "B"}) == "F"
            ? overlap::pass::forward
            : overlap::pass::backward;
    const auto layer = r.integer(*r.member(e, f, "layer", true), f + ".layer", 0, p.layers - 1);
    const auto index =
        r.integer(*r.member(e, f, "index", true), f + ".index", 0, p.of(which).size - 1);
    const overlap::sub_op_ref ref =
        overlap::make_ref(which, static_cast<int>(layer), static_cast<int>(index));
    const overlap::lane expected = overlap::sub_op_of(p, ref).where;
    const std::string lane =
        r.one_of(*r.member(e, f, "lane", true), f + ".lane", {"compute", "communication"});
    if (lane != overlap::lane_name(expected))
      r.fail(f + ".lane", "'" + lane + "', but its program puts " + overlap::describe(p, ref) +
                              " on the " + std::string(overlap::lane_name(expected)) + " lane");
    const double start = r.number(*r.member(e, f, "start", true), f + ".start", false);
    const double end = r.number(*r.member(e, f, "end", true), f + ".end", false);
    if (end < start) r.fail(f + ".end", "before its start");
    t.sub_ops.push_back({ref, expected, start, end});
  }
  if (const std::string problem = pair_timeline_problem(p, t.sub_ops); !problem.empty())
    r.fail("sub_ops", problem);
  return t;
}

overlap::stage_programs read_programs_file(const std::string& path) {
  const field_reader r("--programs '" + path + "'");
  const json doc = r.parse(read_input_file("--programs", path, "JSON"));
  // A whole timeline file serves as well: its programs are simulated.
  if (doc.is_object() && doc.contains("programs"))
    return read_programs(r, doc["programs"], "programs");
  return read_programs(r, doc, "");
}

void check_usage(const pair_options& o) {
  const auto given = [](const CLI::Option* x) { return x != nullptr && x->count() > 0; };
  const int sources =
      (o.moe ? 1 : 0) + (given(o.programs_option) ? 1 : 0) + (given(o.timeline_option) ? 1 : 0);
  if (sources != 1)
    throw usage_error(sources == 0 ? "missing --moe, --programs FILE or --timeline FILE"
                                   : "give one of --moe, --programs FILE and --timeline FILE");
  if (!o.moe) {
    if (given(o.costs_option)) throw usage_error("--costs applies to --moe");
    if (given(o.layers_option))
      throw usage_error("--layers applies to --moe; a programs file says its layers");
  }
  if (given(o.timeline_option)) {
    if (given(o.order_option))
      throw usage_error("--order applies to simulated pairs; --timeline is measured");
    if (given(o.unit_option))
      throw usage_error("--unit applies to simulated pairs; --timeline says its unit");
  }
  if (o.order != "pair" && o.order != "sequential")
    throw usage_error("unknown --order '" + o.order + "' (known: pair, sequential)");
  if (o.format != "text" && o.format != "svg" && o.format != "trace" &&
      o.format != "chrome-trace" && o.format != "json")
    throw usage_error("unknown pair format '" + o.format + "' (known: text, svg, trace, json)");
  if (!pair_time_unit_from_name(o.unit))
    throw usage_error("unknown --unit '" + o.unit + "' (known: us, ms, units)");
}

// The issue order, one sub-op per line with its lane and times, then the
// totals.
void write_text(std::ostream& out, const std::string& heading, const pair_timeline& t) {
  out << heading << '\n';
  out << std::left << std::setw(6) << "#" << std::setw(26) << "sub-op" << std::setw(15) << "lane"
      << std::setw(10) << "start"
      << "end" << '\n';
  for (std::size_t i = 0; i < t.sub_ops.size(); ++i) {
    const overlap::timed_sub_op& s = t.sub_ops[i];
    out << std::setw(6) << i << std::setw(26) << overlap::describe(t.programs, s.op)
        << std::setw(15) << overlap::lane_name(s.where) << std::setw(10) << s.start << s.end
        << '\n';
  }
  out << format_pair_totals(overlap::totals_of(t.sub_ops), t.unit) << '\n';
}

}  // namespace

std::function<int()> attach_pair(CLI::App& sub) {
  auto o = std::make_shared<pair_options>();
  sub.add_flag("--moe", o->moe,
               "Simulate DeepSeek-V3's MoE layer (attention, dispatch, MLP, combine; the backward "
               "split into input and weight parts)");
  o->costs_option =
      sub.add_option("--costs", o->costs,
                     "With --moe: attn,dispatch,mlp,combine,attn_input,attn_weight,mlp_input,"
                     "mlp_weight, eight non-negative numbers (default all 1)")
          ->type_name("LIST");
  o->layers_option =
      sub.add_option("--layers", o->layers, "With --moe: layers in the stage (default 1)")
          ->type_name("L");
  o->programs_option =
      sub.add_option("--programs", o->programs_file,
                     "Simulate the sub-op programs in this JSON file ({\"layers\", \"forward\", "
                     "\"backward\"}, or a timeline file's \"programs\")")
          ->type_name("FILE");
  o->timeline_option =
      sub.add_option("--timeline", o->timeline_file,
                     "Draw the measured pair in this JSON file (programs, unit, micro-batches "
                     "and sub_ops, as the MoE example writes it)")
          ->type_name("FILE");
  o->order_option = sub.add_option("--order", o->order,
                                   "Issue order to simulate (default pair):\n  pair: the "
                                   "overlapped order (make_pair_order)\n  sequential: the "
                                   "forward, then the backward")
                        ->type_name("ORDER");
  sub.add_option("--format", o->format,
                 "Output (default text), one of:\n  text: the issue order with each sub-op's "
                 "lane, start and end, then the totals\n  svg: the two lanes as an SVG "
                 "picture\n  trace: Chrome trace JSON (Perfetto), a track per lane\n  json: "
                 "programs and timeline (the interchange --timeline reads)")
      ->type_name("FORMAT");
  o->unit_option = sub.add_option("--unit", o->unit,
                                  "Unit of the simulated costs: us, ms or units (default units)")
                       ->type_name("UNIT");
  sub.add_option("--title", o->title, "Heading of the picture (svg, trace)")->type_name("TEXT");
  sub.add_option("-o,--output", o->output, "Write to FILE instead of standard output")
      ->type_name("FILE");
  sub.footer(
      "Exit status: 0 written, 1 output could not be written, 2 bad usage or an input file with "
      "a bad field (the message names it).");
  return [o]() {
    check_usage(*o);
    pair_timeline t;
    std::string heading;
    if (o->timeline_option->count() > 0) {
      t = read_timeline(o->timeline_file);
      heading = o->timeline_file + ": measured pair";
      if (t.forward_microbatch >= 0 && t.backward_microbatch >= 0)
        heading += " (forward of micro-batch " + std::to_string(t.forward_microbatch) +
                   ", backward of micro-batch " + std::to_string(t.backward_microbatch) + ")";
    } else {
      if (o->moe) {
        t.programs = overlap::moe_layer_programs(parse_moe_costs(o->costs), o->layers);
        if (const std::string problem = overlap::program_problem(t.programs); !problem.empty())
          throw usage_error("--layers: " + problem);
        heading = "DeepSeek-V3 MoE layer";
      } else {
        t.programs = read_programs_file(o->programs_file);
        heading = o->programs_file;
      }
      heading += ", " + std::to_string(t.programs.layers) +
                 (t.programs.layers == 1 ? " layer" : " layers") + ": " + o->order +
                 " order, simulated";
      t.unit = *pair_time_unit_from_name(o->unit);
      const overlap::issue_order order = o->order == "pair"
                                             ? overlap::make_pair_order(t.programs)
                                             : overlap::make_sequential_order(t.programs);
      if (const overlap::order_verdict v = overlap::check_order(t.programs, order); !v.ok())
        throw std::logic_error("the generated order breaks a rule: " +
                               overlap::describe(t.programs, v));
      const overlap::simulated_timeline sim = overlap::simulate_order(t.programs, order.view());
      t.sub_ops.assign(sim.view().begin(), sim.view().end());
    }
    const std::string title = o->title.empty() ? heading : o->title;
    const pair_picture_info info{.title = title,
                                 .unit = t.unit,
                                 .forward_microbatch = t.forward_microbatch,
                                 .backward_microbatch = t.backward_microbatch};
    std::ostringstream text;
    if (o->format == "svg")
      text << format_pair_svg(t.programs, t.sub_ops, info);
    else if (o->format == "trace" || o->format == "chrome-trace")
      text << format_pair_chrome_trace(t.programs, t.sub_ops, info);
    else if (o->format == "json")
      text << format_pair_timeline_json(t.programs, t.sub_ops, info);
    else
      write_text(text, title, t);
    if (o->output.empty()) {
      std::cout << text.str();
      std::cout.flush();
      if (!std::cout) throw std::runtime_error("cannot write to standard output");
      return 0;
    }
    std::ofstream file(o->output, std::ios::binary);
    file << text.str();
    file.close();
    if (!file) throw std::runtime_error("cannot write -o file '" + o->output + "'");
    return 0;
  };
}

}  // namespace dualpipe::cli
