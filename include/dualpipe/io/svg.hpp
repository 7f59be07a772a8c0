// A timeline as an SVG picture in the style of the DualPipe paper's schedule
// figures: one row per rank, one cell per compute instruction (forward,
// backward, backward-input, backward-weight, overlapped pair split into its
// forward and backward parts) in distinct colours with its micro-batch number
// (white on a micro-batch's second leg when the schedule is known),
// idle time left white on a faint grid of time units, and a legend. Standard
// library only.
#pragma once

#include <algorithm>
#include <array>
#include <charconv>
#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <system_error>

#include "dualpipe/analysis/simulate.hpp"
#include "dualpipe/schedule/action_syntax.hpp"
#include "dualpipe/schedule/instruction.hpp"
#include "dualpipe/schedule/table.hpp"

namespace dualpipe {

struct svg_options {
  double unit = 24.0;        // pixels per time unit
  double row_height = 26.0;  // pixels per rank
  // The share of an overlapped pair's cell drawn as its forward: F / (F + B)
  // of the cost model reproduces the paper's figures.
  double forward_share = 1.0 / 3.0;
  bool legend = true;
  bool unit_grid = true;  // faint lines every time unit, so the bubble reads as white cells
  bool numbers = true;    // micro-batch numbers in the cells
  std::string_view title{};
  std::string_view rank_label = "Rank";
  // The table's info, if known: numbers of cells on a micro-batch's second
  // leg (DualPipe's reverse direction, the way back up a V, odd loops of an
  // interleaved schedule) are then white, as in the paper's figures, so that
  // a rank's two stages read apart.
  schedule_info schedule{};
};

namespace detail {

struct svg_kind_style {
  op kind;
  std::string_view css_class;
  std::string_view fill;
  std::string_view legend;
};

// Orange forwards, green backwards and blue weight gradients as in the
// paper's figures; backward-input gets its own teal so that I and B differ.
inline constexpr std::array<svg_kind_style, 5> svg_styles = {{
    {op::forward, "forward", "#F4B13E", "Forward"},
    {op::backward, "backward", "#7ED957", "Backward"},
    {op::backward_input, "backward-input", "#3CBFA0", "Backward for input"},
    {op::backward_weight, "backward-weight", "#7CBFFB", "Backward for weights"},
    {op::overlapped_forward_backward, "overlapped", "", "Overlapped forward & backward"},
}};

[[nodiscard]] constexpr const svg_kind_style& svg_style(op k) noexcept {
  for (const svg_kind_style& s : svg_styles)
    if (s.kind == k) return s;
  return svg_styles[0];
}

inline void append_svg_number(std::string& out, double v) {
  char buffer[48];
  const auto [end, error] =
      std::to_chars(buffer, buffer + sizeof buffer, v, std::chars_format::fixed, 2);
  if (error != std::errc{}) {
    out += '0';
    return;
  }
  // 12.50 -> 12.5, 12.00 -> 12: shorter files, same picture.
  char* stop = end;
  while (stop > buffer && *(stop - 1) == '0') --stop;
  if (stop > buffer && *(stop - 1) == '.') --stop;
  out.append(buffer, stop);
}

inline void append_xml_text(std::string& out, std::string_view s) {
  for (const char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out.push_back(c);
    }
  }
}

// The document's opening (XML declaration and <svg> tag), width x height.
inline void append_svg_open(std::string& out, double width, double height) {
  out += "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
  out += "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"";
  append_svg_number(out, width);
  out += "\" height=\"";
  append_svg_number(out, height);
  out += "\" viewBox=\"0 0 ";
  append_svg_number(out, width);
  out += " ";
  append_svg_number(out, height);
  out += "\" font-family=\"Helvetica, Arial, sans-serif\">\n";
}

class svg_writer {
 public:
  explicit svg_writer(std::string& out) : out_(out) {}

  void rect(double x, double y, double w, double h, std::string_view fill, std::string_view stroke,
            double stroke_width = 1.0) {
    out_ += "<rect x=\"";
    append_svg_number(out_, x);
    out_ += "\" y=\"";
    append_svg_number(out_, y);
    out_ += "\" width=\"";
    append_svg_number(out_, std::max(w, 0.0));
    out_ += "\" height=\"";
    append_svg_number(out_, std::max(h, 0.0));
    out_ += "\" fill=\"";
    out_ += fill;
    out_ += "\"";
    if (!stroke.empty()) {
      out_ += " stroke=\"";
      out_ += stroke;
      out_ += "\"";
      if (stroke_width != 1.0) {  // 1 is SVG's default
        out_ += " stroke-width=\"";
        append_svg_number(out_, stroke_width);
        out_ += "\"";
      }
    }
    out_ += "/>";
  }

  // Text whose middle height is at y (a baseline 0.35 em lower suits digits
  // and capitals, and needs no dominant-baseline support). An empty anchor,
  // or a size equal to `inherited_size`, is left to the enclosing group.
  void text(double x, double y, std::string_view s, double size, std::string_view anchor = "middle",
            std::string_view weight = "normal", std::string_view fill = "",
            double inherited_size = 0.0) {
    out_ += "<text x=\"";
    append_svg_number(out_, x);
    out_ += "\" y=\"";
    append_svg_number(out_, y + 0.35 * size);
    out_ += "\"";
    if (size != inherited_size) {
      out_ += " font-size=\"";
      append_svg_number(out_, size);
      out_ += "\"";
    }
    if (!anchor.empty()) {
      out_ += " text-anchor=\"";
      out_ += anchor;
      out_ += "\"";
    }
    if (weight != "normal") {
      out_ += " font-weight=\"";
      out_ += weight;
      out_ += "\"";
    }
    if (!fill.empty()) {
      out_ += " fill=\"";
      out_ += fill;
      out_ += "\"";
    }
    out_ += ">";
    append_xml_text(out_, s);
    out_ += "</text>";
  }

  // A micro-batch number in a cell, shrunk to fit or left out if it cannot.
  // The timeline group sets text-anchor="middle" and font-size h * 0.6.
  void number_in(double x, double y, double w, double h, int value, bool white = false) {
    std::string s;
    append_int(s, value);
    const double glyphs = static_cast<double>(s.size());
    const double size = std::min(h * 0.6, (w - 2.0) / (0.6 * glyphs));
    if (size < 6.0) return;
    text(x + w / 2.0, y + h / 2.0, s, size, "", "normal", white ? "#FFFFFF" : "", h * 0.6);
  }

  std::string& raw() { return out_; }

 private:
  std::string& out_;
};

// Rough width of sans-serif text: enough to lay out labels without a font.
[[nodiscard]] constexpr double svg_text_width(std::string_view s, double size) noexcept {
  return 0.62 * size * static_cast<double>(s.size());
}

}  // namespace detail

// The picture of `timeline` on `ranks` ranks; the time axis spans 0 to the
// timeline's last end.
[[nodiscard]] inline std::string format_svg(std::span<const timed_instruction> timeline, int ranks,
                                            const svg_options& options = {}) {
  using detail::svg_style;
  double makespan = 0.0;
  std::array<bool, 5> present{};
  for (const timed_instruction& e : timeline) {
    makespan = std::max(makespan, e.end);
    for (std::size_t k = 0; k < detail::svg_styles.size(); ++k)
      if (detail::svg_styles[k].kind == e.what.kind) present[k] = true;
  }
  const double unit = options.unit > 0.0 ? options.unit : 24.0;
  const double row = options.row_height > 0.0 ? options.row_height : 26.0;
  const double share = std::clamp(options.forward_share, 0.0, 1.0);
  const double label_size = row * 0.55;
  const double margin = 8.0;

  std::string widest = std::string(options.rank_label) + " ";
  detail::append_int(widest, std::max(ranks - 1, 0));
  const double left = margin + detail::svg_text_width(widest, label_size) + 10.0;
  const double top = margin + (options.title.empty() ? 0.0 : row * 1.2);
  const double plot_width = makespan * unit;
  const double plot_height = row * ranks;
  double width = left + plot_width + margin;
  double height = top + plot_height + row * 1.1 + margin;  // + the time axis label

  // Legend entries laid out left to right.
  struct legend_entry {
    std::size_t style;
    double x;
  };
  std::array<legend_entry, 5> legend{};
  std::size_t legend_count = 0;
  const double swatch_w = row * 1.3, swatch_h = row * 0.8, legend_size = row * 0.5;
  if (options.legend) {
    double x = left;
    for (std::size_t k = 0; k < detail::svg_styles.size(); ++k) {
      if (!present[k]) continue;
      legend[legend_count++] = {k, x};
      x +=
          swatch_w + 8.0 + detail::svg_text_width(detail::svg_styles[k].legend, legend_size) + 24.0;
    }
    if (legend_count > 0) {
      width = std::max(width, x + margin);
      height += row * 1.3;
    }
  }

  std::string out;
  out.reserve(256 + timeline.size() * 200);
  detail::svg_writer w(out);
  detail::append_svg_open(out, width, height);
  if (options.unit_grid && makespan > 0.0) {
    // One tile per time unit and rank: a faint outline, as the paper's
    // figures show idle slots.
    out += "<defs><pattern id=\"time-units\" patternUnits=\"userSpaceOnUse\" x=\"";
    detail::append_svg_number(out, left);
    out += "\" y=\"";
    detail::append_svg_number(out, top);
    out += "\" width=\"";
    detail::append_svg_number(out, unit);
    out += "\" height=\"";
    detail::append_svg_number(out, row);
    out += "\">";
    w.rect(0, 0, unit, row, "#FFFFFF", "#D9D9D9", 1.0);
    out += "</pattern></defs>\n";
  }
  w.rect(0, 0, width, height, "#FFFFFF", "");
  out += "\n";
  if (!options.title.empty()) {
    w.text(left, margin + row * 0.5, options.title, row * 0.6, "start", "bold");
    out += "\n";
  }

  // Rank labels and the idle background of each row.
  out += "<g id=\"ranks\">";
  for (int r = 0; r < ranks; ++r) {
    const double y = top + row * r;
    std::string label = std::string(options.rank_label) + " ";
    detail::append_int(label, r);
    w.text(left - 8.0, y + row / 2.0, label, label_size, "end", "bold");
    w.rect(left, y, plot_width, row, options.unit_grid ? "url(#time-units)" : "#FFFFFF", "");
  }
  out += "</g>\n<g id=\"timeline\" text-anchor=\"middle\" font-size=\"";
  detail::append_svg_number(out, row * 0.6);
  out += "\">\n";

  const schedule_info& shape = options.schedule;
  const auto return_leg = [&shape](int stage, int mb) {
    return on_return_leg(shape.where, shape.ranks, shape.microbatches, stage, mb);
  };
  for (const timed_instruction& e : timeline) {
    const instruction& x = e.what;
    const detail::svg_kind_style& style = svg_style(x.kind);
    const double cx = left + e.start * unit;
    const double cy = top + row * e.rank;
    const double cw = (e.end - e.start) * unit;
    out += "<g class=\"";
    out += style.css_class;
    out += "\"><title>rank ";
    detail::append_int(out, e.rank);
    out += ": ";
    detail::append_xml_text(out, format_action(x));
    out += " [";
    detail::append_svg_number(out, e.start);
    out += ", ";
    detail::append_svg_number(out, e.end);
    out += "]</title>";
    if (x.kind == op::overlapped_forward_backward) {
      const double fw = cw * share;
      w.rect(cx, cy, fw, row, svg_style(op::forward).fill, "");
      w.rect(cx + fw, cy, cw - fw, row, svg_style(op::backward).fill, "");
      w.rect(cx, cy, cw, row, "none", "#000");
      if (options.numbers) {
        w.number_in(cx, cy, fw, row, x.microbatch,
                    return_leg(x.stage, x.microbatch));
        w.number_in(cx + fw, cy, cw - fw, row, x.microbatch_b,
                    return_leg(x.stage_b, x.microbatch_b));
      }
    } else {
      w.rect(cx, cy, cw, row, style.fill, "#000");
      if (options.numbers)
        w.number_in(cx, cy, cw, row, x.microbatch,
                    return_leg(x.stage, x.microbatch));
    }
    out += "</g>\n";
  }
  out += "</g>\n";
  // The frame around the plot, and the time axis.
  w.rect(left, top, plot_width, plot_height, "none", "#000", 1.5);
  out += "\n";
  const double axis_y = top + plot_height + row * 0.55;
  w.text(left - 8.0, axis_y, "Time", label_size, "end", "bold");
  w.text(left + 4.0, axis_y, "\u2192", label_size, "start");
  out += "\n";

  if (legend_count > 0) {
    const double y = top + plot_height + row * 1.1 + row * 0.15;
    out += "<g id=\"legend\">";
    for (std::size_t i = 0; i < legend_count; ++i) {
      const detail::svg_kind_style& style = detail::svg_styles[legend[i].style];
      const double x = legend[i].x;
      if (style.kind == op::overlapped_forward_backward) {
        w.rect(x, y, swatch_w * share, swatch_h, svg_style(op::forward).fill, "");
        w.rect(x + swatch_w * share, y, swatch_w * (1.0 - share), swatch_h,
               svg_style(op::backward).fill, "");
        w.rect(x, y, swatch_w, swatch_h, "none", "#000");
      } else {
        w.rect(x, y, swatch_w, swatch_h, style.fill, "#000");
      }
      w.text(x + swatch_w + 8.0, y + swatch_h / 2.0, style.legend, legend_size, "start", "bold");
    }
    out += "</g>\n";
  }
  out += "</svg>\n";
  return out;
}

[[nodiscard]] inline std::string format_svg(const simulation& sim,
                                            const svg_options& options = {}) {
  return format_svg(sim.timeline, static_cast<int>(sim.ranks.size()), options);
}

}  // namespace dualpipe
