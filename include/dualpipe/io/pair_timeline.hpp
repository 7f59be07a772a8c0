// An overlapped pair's timeline (overlap/timeline.hpp: simulated by
// simulate_order, or measured by a lane backend) as a picture of its two
// lanes: SVG (one row per lane, one box per sub-op, a time axis, a caption
// with what hid behind what), Chrome trace JSON (one track per lane), and the
// JSON interchange that carries programs and a timeline between the MoE
// example, which measures pairs, and the tool, which draws them. Standard
// library only; reading the JSON is left to any JSON library (the tool uses
// nlohmann-json).
//
// The interchange (format_pair_timeline_json; format_programs_json writes the
// "programs" object alone):
//
//   {
//     "programs": {
//       "layers": 2,
//       "forward": [
//         {"name": "attn", "lane": "compute", "role": "chain", "cost": 2, "after": -1},
//         ...
//       ],
//       "backward": [...]
//     },
//     "unit": "us",
//     "forward_microbatch": 3,
//     "backward_microbatch": 1,
//     "sub_ops": [
//       {"pass": "F", "layer": 0, "index": 0, "lane": "compute", "start": 0, "end": 12.5},
//       ...
//     ]
//   }
//
// - programs: a stage_programs. "lane" is "compute" or "communication",
//   "role" "chain" or "leaf", "cost" a sub-op's time in `unit` (0: unknown),
//   "after" the index of an extra sub-op of the same program it waits for
//   (-1: none); names hold 1 to 15 characters.
// - unit: "us", "ms" or "units" (the cost model's own units).
// - forward_microbatch, backward_microbatch: the micro-batches of the pair's
//   two halves, -1 when unknown.
// - sub_ops: the timeline, one entry per sub-op of both passes and every
//   layer ("pass" "F" or "B"; "index" in its layer program), in issue order
//   when simulated. pair_timeline_problem() says whether a timeline fits its
//   programs.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "dualpipe/io/chrome_trace.hpp"
#include "dualpipe/io/json.hpp"
#include "dualpipe/io/svg.hpp"
#include "dualpipe/overlap/program.hpp"
#include "dualpipe/overlap/timeline.hpp"

namespace dualpipe {

// The unit of a pair's times: microseconds, milliseconds, or the cost
// model's units (drawn as microseconds in a Chrome trace, as the schedule
// simulator's traces are).
enum class pair_time_unit : std::uint8_t { units, us, ms };

[[nodiscard]] constexpr std::string_view pair_time_unit_name(pair_time_unit u) noexcept {
  return u == pair_time_unit::us ? "us" : u == pair_time_unit::ms ? "ms" : "units";
}

[[nodiscard]] constexpr std::optional<pair_time_unit> pair_time_unit_from_name(
    std::string_view s) noexcept {
  if (s == "us") return pair_time_unit::us;
  if (s == "ms") return pair_time_unit::ms;
  if (s == "units") return pair_time_unit::units;
  return std::nullopt;
}

[[nodiscard]] constexpr double microseconds_per(pair_time_unit u) noexcept {
  return u == pair_time_unit::ms ? 1000.0 : 1.0;
}

// What a picture says beyond the timeline itself.
struct pair_picture_info {
  std::string_view title{};  // the SVG's heading and the trace's process name
  pair_time_unit unit = pair_time_unit::units;
  int forward_microbatch = -1;  // -1: unknown
  int backward_microbatch = -1;
  double plot_width = 800.0;  // SVG pixels from the first start to the last end
};

// Whether `timeline` is a timeline of `programs`' pair: every sub-op of both
// passes and every layer exactly once, on its program's lane, with finite
// times and start <= end. Empty when it is, else the first problem as a
// sentence naming the entry ("entry 3 (dispatch(F) of layer 0) ..."). The
// formatters draw any timeline, but only one that passes this is a pair.
[[nodiscard]] inline std::string pair_timeline_problem(
    const overlap::stage_programs& programs, std::span<const overlap::timed_sub_op> timeline) {
  using overlap::lane;
  using overlap::pass;
  using overlap::timed_sub_op;
  if (std::string p = overlap::program_problem(programs); !p.empty()) return "the programs: " + p;
  std::vector<int> seen_at(
      static_cast<std::size_t>((programs.forward.size + programs.backward.size) * programs.layers),
      -1);
  for (std::size_t i = 0; i < timeline.size(); ++i) {
    const timed_sub_op& t = timeline[i];
    std::string at = "entry ";
    detail::append_int(at, static_cast<std::int64_t>(i));
    if (!overlap::contains(programs, t.op)) return at + " names a sub-op the programs do not have";
    at += " (" + overlap::describe(programs, t.op) + ")";
    int& first = seen_at[static_cast<std::size_t>(overlap::flat_index(programs, t.op))];
    if (first >= 0) {
      at += " repeats entry ";
      detail::append_int(at, first);
      return at;
    }
    first = static_cast<int>(i);
    const lane expected = overlap::sub_op_of(programs, t.op).where;
    if (t.where != expected)
      return at + " runs on the " + std::string(overlap::lane_name(t.where)) +
             " lane, but its program puts it on the " + std::string(overlap::lane_name(expected)) +
             " lane";
    if (!(std::isfinite(t.start) && std::isfinite(t.end)))
      return at + " has a start or end that is not a finite number";
    if (t.end < t.start) return at + " ends before it starts";
  }
  for (std::size_t k = 0; k < seen_at.size(); ++k) {
    if (seen_at[k] >= 0) continue;
    const int per_pass_f = programs.forward.size * programs.layers;
    const bool forward = static_cast<int>(k) < per_pass_f;
    const int j = forward ? static_cast<int>(k) : static_cast<int>(k) - per_pass_f;
    const int per = forward ? programs.forward.size : programs.backward.size;
    return overlap::describe(programs, overlap::make_ref(forward ? pass::forward : pass::backward,
                                                         j / per, j % per)) +
           " is missing";
  }
  return {};
}

namespace detail {

// "pass": "F", "layer": 0, "index": 0, "lane": "compute": which sub-op
// and where, as the trace's args and the interchange both spell it.
inline void append_sub_op_fields(std::string& out, const overlap::timed_sub_op& t) {
  out += "\"pass\": ";
  out += t.op.which == overlap::pass::forward ? "\"F\"" : "\"B\"";
  out += ", \"layer\": ";
  append_int(out, t.op.layer);
  out += ", \"index\": ";
  append_int(out, t.op.index);
  out += ", \"lane\": ";
  append_json_string(out, overlap::lane_name(t.where));
}

// "attn F0", "combine B1", "mlp.W B0": name, pass, layer.
[[nodiscard]] inline std::string pair_sub_op_label(const overlap::stage_programs& p,
                                                   overlap::sub_op_ref r) {
  std::string out(overlap::contains(p, r) ? overlap::sub_op_of(p, r).name.view() : "?");
  out += r.which == overlap::pass::forward ? " F" : " B";
  append_int(out, r.layer);
  return out;
}

[[nodiscard]] inline overlap::role pair_role_of(const overlap::stage_programs& p,
                                                overlap::sub_op_ref r) noexcept {
  return overlap::contains(p, r) ? overlap::sub_op_of(p, r).kind : overlap::role::chain;
}

// Forwards and backwards in the schedule pictures' colours; leaves (weight
// gradients) in their weight-gradient blue.
[[nodiscard]] inline const svg_kind_style& pair_style(const overlap::stage_programs& p,
                                                      overlap::sub_op_ref r) noexcept {
  if (pair_role_of(p, r) == overlap::role::leaf) return svg_style(op::backward_weight);
  return svg_style(r.which == overlap::pass::forward ? op::forward : op::backward);
}

// A round step for about `ticks` ticks over `span`: 1, 2 or 5 times a power
// of ten.
[[nodiscard]] inline double pair_tick_step(double span, double ticks) {
  if (!(span > 0.0) || !std::isfinite(span)) return 1.0;
  const double raw = span / ticks;
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  for (const double m : {1.0, 2.0, 5.0})
    if (m * magnitude >= raw) return m * magnitude;
  return 10.0 * magnitude;
}

inline void append_pair_quantity(std::string& out, double v, pair_time_unit unit) {
  append_svg_number(out, v);
  out += ' ';
  out += pair_time_unit_name(unit);
}

// The parts of [start, end) that no compute sub-op covers.
inline void append_exposed(std::vector<std::pair<double, double>>& out, double start, double end,
                           std::span<const overlap::timed_sub_op> timeline) {
  std::vector<std::pair<double, double>> covered;
  for (const overlap::timed_sub_op& c : timeline)
    if (c.where == overlap::lane::compute && c.end > start && c.start < end)
      covered.emplace_back(std::max(c.start, start), std::min(c.end, end));
  std::sort(covered.begin(), covered.end());
  double at = start;
  for (const auto& [s, e] : covered) {
    if (s > at) out.emplace_back(at, s);
    at = std::max(at, e);
  }
  if (at < end) out.emplace_back(at, end);
}

}  // namespace detail

// What a timeline adds up to, as the SVG's caption says it: "span 9.5 units,
// compute 8 units, communication 6 units, hidden 4.5 units (75% of
// communication)". Numbers have at most two decimals.
[[nodiscard]] inline std::string format_pair_totals(const overlap::lane_totals& t,
                                                    pair_time_unit unit) {
  std::string out = "span ";
  detail::append_pair_quantity(out, t.span, unit);
  out += ", compute ";
  detail::append_pair_quantity(out, t.compute, unit);
  out += ", communication ";
  detail::append_pair_quantity(out, t.communication, unit);
  if (t.communication > 0.0) {
    out += ", hidden ";
    detail::append_pair_quantity(out, t.hidden, unit);
    out += " (";
    detail::append_svg_number(out, 100.0 * t.hidden_fraction());
    out += "% of communication)";
  }
  return out;
}

// The picture: a row for the compute lane above a row for the communication
// lane, each sub-op a box from its start to its end labelled like "attn F0"
// (name, pass, layer; shrunk or shortened to fit, the full name in its
// tooltip), forwards orange, backwards green, leaves (weight gradients) blue,
// as in the schedule pictures. Communication that nothing on the compute
// lane hides is underlined red. The time axis starts at the first start; the
// caption gives totals_of's span, busy times and hidden share.
[[nodiscard]] inline std::string format_pair_svg(const overlap::stage_programs& programs,
                                                 std::span<const overlap::timed_sub_op> timeline,
                                                 const pair_picture_info& info = {}) {
  using overlap::lane;
  using overlap::timed_sub_op;
  const overlap::lane_totals totals = overlap::totals_of(timeline);
  double first = 0.0;
  if (!timeline.empty()) {
    first = timeline[0].start;
    for (const timed_sub_op& t : timeline) first = std::min(first, t.start);
  }
  const double row = 34.0, margin = 8.0, label_size = row * 0.42;
  const double plot_width = info.plot_width > 0.0 ? info.plot_width : 800.0;
  const double scale = plot_width / (totals.span > 0.0 ? totals.span : 1.0);
  // Bold labels run wider than svg_text_width's estimate.
  const double left = margin + 1.15 * detail::svg_text_width("Communication", label_size) + 12.0;
  const double top = margin + (info.title.empty() ? 0.0 : row * 1.2);
  const auto x_at = [&](double t) { return left + (t - first) * scale; };

  // Legend: the kinds present, with the micro-batches when known.
  bool has_forward = false, has_backward = false, has_leaf = false;
  std::vector<std::pair<double, double>> exposed;
  for (const timed_sub_op& t : timeline) {
    const overlap::role r = detail::pair_role_of(programs, t.op);
    has_leaf = has_leaf || r == overlap::role::leaf;
    has_forward =
        has_forward || (r == overlap::role::chain && t.op.which == overlap::pass::forward);
    has_backward =
        has_backward || (r == overlap::role::chain && t.op.which == overlap::pass::backward);
    if (t.where == lane::communication) detail::append_exposed(exposed, t.start, t.end, timeline);
  }
  struct legend_entry {
    std::string text;
    std::string_view fill;
  };
  std::vector<legend_entry> legend;
  const auto with_microbatch = [](std::string_view s, int mb) {
    std::string out(s);
    if (mb >= 0) {
      out += " (micro-batch ";
      detail::append_int(out, mb);
      out += ")";
    }
    return out;
  };
  if (has_forward)
    legend.push_back(
        {with_microbatch("Forward", info.forward_microbatch), detail::svg_style(op::forward).fill});
  if (has_backward)
    legend.push_back({with_microbatch("Backward", info.backward_microbatch),
                      detail::svg_style(op::backward).fill});
  if (has_leaf)
    legend.push_back({"Backward for weights (leaf)", detail::svg_style(op::backward_weight).fill});
  if (!exposed.empty()) legend.push_back({"Communication not hidden", "#D62728"});

  const std::string caption = format_pair_totals(totals, info.unit);
  const double axis_top = top + 2.0 * row;
  const double caption_y = axis_top + row * 1.3;
  const double legend_y = caption_y + row * 0.6;
  const double swatch_w = row, swatch_h = row * 0.6, legend_size = row * 0.45;
  double legend_right = left;
  for (const legend_entry& e : legend)
    legend_right += swatch_w + 8.0 + detail::svg_text_width(e.text, legend_size) + 24.0;
  const double width = std::max({left + plot_width + margin + 16.0, legend_right + margin,
                                 left + detail::svg_text_width(caption, legend_size) + margin,
                                 left + detail::svg_text_width(info.title, row * 0.55) + margin});
  const double height = legend_y + (legend.empty() ? 0.0 : swatch_h) + margin;

  std::string out;
  out.reserve(1024 + timeline.size() * 240);
  detail::svg_writer w(out);
  detail::append_svg_open(out, width, height);
  w.rect(0, 0, width, height, "#FFFFFF", "");
  out += "\n";
  if (!info.title.empty()) {
    w.text(left, margin + row * 0.5, info.title, row * 0.55, "start", "bold");
    out += "\n";
  }

  // The two lanes: labels and rows.
  out += "<g id=\"lanes\">";
  const std::string_view lane_labels[2] = {"Compute", "Communication"};
  for (int l = 0; l < 2; ++l) {
    const double y = top + row * l;
    w.text(left - 8.0, y + row / 2.0, lane_labels[l], label_size, "end", "bold");
    w.rect(left, y, plot_width, row, l == 0 ? "#FFFFFF" : "#F7F7F7", "");
  }
  out += "</g>\n<g id=\"sub-ops\" text-anchor=\"middle\">\n";
  for (const timed_sub_op& t : timeline) {
    const detail::svg_kind_style& style = detail::pair_style(programs, t.op);
    const double x = x_at(t.start), bw = (t.end - t.start) * scale;
    const double y = top + row * (t.where == lane::compute ? 0 : 1);
    const std::string label = detail::pair_sub_op_label(programs, t.op);
    out += "<g class=\"sub-op ";
    out += t.op.which == overlap::pass::forward ? "forward" : "backward";
    out += detail::pair_role_of(programs, t.op) == overlap::role::leaf ? " leaf" : " chain";
    out += "\"><title>";
    detail::append_xml_text(
        out, overlap::contains(programs, t.op) ? overlap::describe(programs, t.op) : label);
    out += " [";
    detail::append_svg_number(out, t.start);
    out += ", ";
    detail::append_svg_number(out, t.end);
    out += "]</title>";
    w.rect(x, y, bw, row, style.fill, "#000");
    // The label on one line if it reads at a fair size, else its name above
    // its pass and layer, else "F0" alone, else nothing (the tooltip still
    // names it).
    const std::size_t space = label.rfind(' ');
    const std::string_view name = std::string_view(label).substr(0, space);
    const std::string_view pass_layer = std::string_view(label).substr(space + 1);
    const auto fit = [bw](std::string_view s, double most) {
      return std::min(most, (bw - 4.0) / (0.62 * static_cast<double>(s.size())));
    };
    if (const double one = fit(label, row * 0.4); one >= 10.0) {
      w.text(x + bw / 2.0, y + row / 2.0, label, one, "");
    } else if (const double two =
                   fit(name.size() > pass_layer.size() ? name : pass_layer, row * 0.33);
               two >= 7.0) {
      w.text(x + bw / 2.0, y + row * 0.3, name, two, "");
      w.text(x + bw / 2.0, y + row * 0.7, pass_layer, two, "");
    } else if (const double short_size = fit(pass_layer, row * 0.33); short_size >= 7.0) {
      w.text(x + bw / 2.0, y + row / 2.0, pass_layer, short_size, "");
    }
    out += "</g>\n";
  }
  out += "</g>\n";
  if (!exposed.empty()) {
    out += "<g id=\"exposed\">";
    for (const auto& [s, e] : exposed)
      w.rect(x_at(s), top + row * 2.0 - 4.0, (e - s) * scale, 4.0, "#D62728", "");
    out += "</g>\n";
  }
  w.rect(left, top, plot_width, row * 2.0, "none", "#000", 1.5);
  out += "\n";

  // The time axis: round ticks from the first start.
  out += "<g id=\"axis\">";
  const double step = detail::pair_tick_step(totals.span, 10.0);
  const double tick_size = row * 0.4;
  for (int k = 0; k <= 100 && k * step <= totals.span * (1.0 + 1e-9); ++k) {
    const double x = left + k * step * scale;
    w.rect(x - 0.5, axis_top, 1.0, 5.0, "#000", "");
    std::string tick;
    detail::append_svg_number(tick, k * step);
    w.text(x, axis_top + 5.0 + tick_size * 0.8, tick, tick_size);
  }
  std::string axis_label = "Time (";
  axis_label += pair_time_unit_name(info.unit);
  axis_label += ")";
  w.text(left - 12.0, axis_top + 5.0 + tick_size * 0.8, axis_label, label_size, "end", "bold");
  out += "</g>\n";
  out += "<g id=\"caption\">";
  w.text(left, caption_y, caption, legend_size, "start");
  out += "</g>\n";

  if (!legend.empty()) {
    out += "<g id=\"legend\">";
    double x = left;
    for (const legend_entry& e : legend) {
      w.rect(x, legend_y, swatch_w, swatch_h, e.fill, "#000");
      w.text(x + swatch_w + 8.0, legend_y + swatch_h / 2.0, e.text, legend_size, "start", "bold");
      x += swatch_w + 8.0 + detail::svg_text_width(e.text, legend_size) + 24.0;
    }
    out += "</g>\n";
  }
  out += "</svg>\n";
  return out;
}

// The Chrome trace: one process for the pair (named by the title, else
// "pair"), thread 0 the compute lane and thread 1 the communication lane, one
// complete event per sub-op named like the SVG's labels, with ts and dur in
// microseconds and the sub-op's pass, layer, lane and role in its args. Ends
// in a newline.
[[nodiscard]] inline std::string format_pair_chrome_trace(
    const overlap::stage_programs& programs, std::span<const overlap::timed_sub_op> timeline,
    const pair_picture_info& info = {}) {
  const double us = microseconds_per(info.unit);
  std::string out = "{\"displayTimeUnit\": \"ms\", \"traceEvents\": [\n";
  out +=
      "  {\"name\": \"process_name\", \"ph\": \"M\", \"pid\": 0, \"tid\": 0, \"args\": {\"name\": ";
  detail::append_json_string(out, info.title.empty() ? std::string_view("pair") : info.title);
  out += "}}";
  for (int l = 0; l < 2; ++l) {
    out += ",\n  {\"name\": \"thread_name\", \"ph\": \"M\", \"pid\": 0, \"tid\": ";
    detail::append_int(out, l);
    out += ", \"args\": {\"name\": ";
    detail::append_json_string(out, overlap::lane_name(static_cast<overlap::lane>(l)));
    out += "}},\n  {\"name\": \"thread_sort_index\", \"ph\": \"M\", \"pid\": 0, \"tid\": ";
    detail::append_int(out, l);
    out += ", \"args\": {\"sort_index\": ";
    detail::append_int(out, l);
    out += "}}";
  }
  for (const overlap::timed_sub_op& t : timeline) {
    const bool forward = t.op.which == overlap::pass::forward;
    const bool leaf = detail::pair_role_of(programs, t.op) == overlap::role::leaf;
    out += ",\n  {\"name\": ";
    detail::append_json_string(out, detail::pair_sub_op_label(programs, t.op));
    out += ", \"cat\": ";
    detail::append_json_string(out, leaf ? "backward-weight" : forward ? "forward" : "backward");
    out += ", \"ph\": \"X\", \"pid\": 0, \"tid\": ";
    out += t.where == overlap::lane::compute ? '0' : '1';
    out += ", \"ts\": ";
    detail::append_json_number(out, t.start * us);
    out += ", \"dur\": ";
    detail::append_json_number(out, (t.end - t.start) * us);
    out += ", \"args\": {";
    detail::append_sub_op_fields(out, t);
    out += ", \"role\": ";
    out += leaf ? "\"leaf\"" : "\"chain\"";
    const int mb = forward ? info.forward_microbatch : info.backward_microbatch;
    if (mb >= 0) {
      out += ", \"microbatch\": ";
      detail::append_int(out, mb);
    }
    out += "}}";
  }
  out += "\n]}\n";
  return out;
}

namespace detail {

inline void append_layer_program_json(std::string& out, const overlap::layer_program& prog,
                                      std::string_view indent) {
  out += "[";
  for (int i = 0; i < prog.size; ++i) {
    const overlap::sub_op& op = prog[i];
    out += i == 0 ? "\n" : ",\n";
    out += indent;
    out += "  {\"name\": ";
    append_json_string(out, op.name.view());
    out += ", \"lane\": ";
    append_json_string(out, overlap::lane_name(op.where));
    out += ", \"role\": ";
    out += op.kind == overlap::role::leaf ? "\"leaf\"" : "\"chain\"";
    out += ", \"cost\": ";
    append_json_number(out, op.cost);
    out += ", \"after\": ";
    append_int(out, op.after);
    out += "}";
  }
  if (prog.size > 0) {
    out += "\n";
    out += indent;
  }
  out += "]";
}

// The "programs" object, its lines indented by `indent` after the first.
inline void append_programs_json(std::string& out, const overlap::stage_programs& p,
                                 std::string_view indent) {
  out += "{\n";
  out += indent;
  out += "  \"layers\": ";
  append_int(out, p.layers);
  out += ",\n";
  out += indent;
  out += "  \"forward\": ";
  std::string inner(indent);
  inner += "  ";
  append_layer_program_json(out, p.forward, inner);
  out += ",\n";
  out += indent;
  out += "  \"backward\": ";
  append_layer_program_json(out, p.backward, inner);
  out += "\n";
  out += indent;
  out += "}";
}

}  // namespace detail

// The "programs" object of the interchange, alone (what the tool's
// --programs reads). Ends in a newline.
[[nodiscard]] inline std::string format_programs_json(const overlap::stage_programs& programs) {
  std::string out;
  detail::append_programs_json(out, programs, "");
  out += "\n";
  return out;
}

// The whole interchange: programs, unit, micro-batches and the timeline, one
// sub-op per line. Ends in a newline.
[[nodiscard]] inline std::string format_pair_timeline_json(
    const overlap::stage_programs& programs, std::span<const overlap::timed_sub_op> timeline,
    const pair_picture_info& info = {}) {
  std::string out = "{\n  \"programs\": ";
  detail::append_programs_json(out, programs, "  ");
  out += ",\n  \"unit\": ";
  detail::append_json_string(out, pair_time_unit_name(info.unit));
  out += ",\n  \"forward_microbatch\": ";
  detail::append_int(out, info.forward_microbatch);
  out += ",\n  \"backward_microbatch\": ";
  detail::append_int(out, info.backward_microbatch);
  out += ",\n  \"sub_ops\": [";
  for (std::size_t i = 0; i < timeline.size(); ++i) {
    const overlap::timed_sub_op& t = timeline[i];
    out += i == 0 ? "\n    {" : ",\n    {";
    detail::append_sub_op_fields(out, t);
    out += ", \"start\": ";
    detail::append_json_number(out, t.start);
    out += ", \"end\": ";
    detail::append_json_number(out, t.end);
    out += "}";
  }
  out += timeline.empty() ? "]\n}\n" : "\n  ]\n}\n";
  return out;
}

}  // namespace dualpipe
