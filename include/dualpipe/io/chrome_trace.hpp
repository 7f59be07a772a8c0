// A timeline as Chrome trace JSON (the Trace Event Format that Perfetto and
// chrome://tracing open): one track per rank, one complete event ("ph": "X")
// per compute instruction, named like "F3", "I3", "W3" or "F3&B12" after its
// micro-batches, with the stage(s) and micro-batch(es) in its args. Times are
// the timeline's units read as microseconds (scaled by an option). Standard
// library only.
#pragma once

#include <charconv>
#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <system_error>

#include "dualpipe/analysis/simulate.hpp"
#include "dualpipe/io/json.hpp"
#include "dualpipe/schedule/action_syntax.hpp"
#include "dualpipe/schedule/instruction.hpp"

namespace dualpipe {

struct chrome_trace_options {
  // Microseconds per time unit of the timeline (1: one cost unit shows as 1 us).
  double microseconds_per_unit = 1.0;
  // The process name Perfetto shows above the rank tracks.
  std::string_view process_name = "dualpipe";
};

namespace detail {

// Shortest text that reads back as the same double (finite values only).
inline void append_json_number(std::string& out, double v) {
  char buffer[32];
  const auto [end, error] = std::to_chars(buffer, buffer + sizeof buffer, v);
  if (error != std::errc{}) {
    out += '0';
    return;
  }
  out.append(buffer, end);
}

// "F3", "B3", "I3", "W3", "F3&B12": the micro-batches, as the reference's
// figures label cells; the stages go in the args.
[[nodiscard]] inline std::string timeline_event_name(const instruction& x) {
  std::string name(x.kind == op::overlapped_forward_backward ? "F" : op_name(x.kind));
  append_int(name, x.microbatch);
  if (x.kind == op::overlapped_forward_backward) {
    name += "&B";
    append_int(name, x.microbatch_b);
  }
  return name;
}

[[nodiscard]] constexpr std::string_view timeline_category(op k) noexcept {
  switch (k) {
    case op::forward:
      return "forward";
    case op::backward:
      return "backward";
    case op::backward_input:
      return "backward-input";
    case op::backward_weight:
      return "backward-weight";
    case op::overlapped_forward_backward:
      return "overlapped-forward-backward";
    default:
      return "communication";
  }
}

}  // namespace detail

// The trace of `timeline` on `ranks` ranks (each rank gets a named track even
// if it runs nothing). Ends in a newline.
[[nodiscard]] inline std::string format_chrome_trace(std::span<const timed_instruction> timeline,
                                                     int ranks,
                                                     const chrome_trace_options& options = {}) {
  std::string out = "{\"displayTimeUnit\": \"ms\", \"traceEvents\": [\n";
  out +=
      "  {\"name\": \"process_name\", \"ph\": \"M\", \"pid\": 0, \"tid\": 0, \"args\": {\"name\": ";
  detail::append_json_string(out, options.process_name);
  out += "}}";
  for (int r = 0; r < ranks; ++r) {
    out += ",\n  {\"name\": \"thread_name\", \"ph\": \"M\", \"pid\": 0, \"tid\": ";
    detail::append_int(out, r);
    out += ", \"args\": {\"name\": \"rank ";
    detail::append_int(out, r);
    out += "\"}},\n  {\"name\": \"thread_sort_index\", \"ph\": \"M\", \"pid\": 0, \"tid\": ";
    detail::append_int(out, r);
    out += ", \"args\": {\"sort_index\": ";
    detail::append_int(out, r);
    out += "}}";
  }
  for (const timed_instruction& e : timeline) {
    const instruction& x = e.what;
    out += ",\n  {\"name\": ";
    detail::append_json_string(out, detail::timeline_event_name(x));
    out += ", \"cat\": ";
    detail::append_json_string(out, detail::timeline_category(x.kind));
    out += ", \"ph\": \"X\", \"pid\": 0, \"tid\": ";
    detail::append_int(out, e.rank);
    out += ", \"ts\": ";
    detail::append_json_number(out, e.start * options.microseconds_per_unit);
    out += ", \"dur\": ";
    detail::append_json_number(out, (e.end - e.start) * options.microseconds_per_unit);
    out += ", \"args\": {\"action\": ";
    detail::append_json_string(out, format_action(x));
    out += ", \"stage\": ";
    detail::append_int(out, x.stage);
    out += ", \"microbatch\": ";
    detail::append_int(out, x.microbatch);
    if (x.kind == op::overlapped_forward_backward) {
      out += ", \"stage_b\": ";
      detail::append_int(out, x.stage_b);
      out += ", \"microbatch_b\": ";
      detail::append_int(out, x.microbatch_b);
    }
    out += ", \"index\": ";
    detail::append_int(out, e.index);
    out += "}}";
  }
  out += "\n]}\n";
  return out;
}

[[nodiscard]] inline std::string format_chrome_trace(const simulation& sim,
                                                     const chrome_trace_options& options = {}) {
  return format_chrome_trace(sim.timeline, static_cast<int>(sim.ranks.size()), options);
}

}  // namespace dualpipe
