// A schedule as JSON: its schedule info and, per rank, its actions in
// PyTorch's action syntax. Writing only, with the standard library; parse it
// with any JSON library (the tests and tools use nlohmann-json).
//
//   {
//     "schedule": "dualpipe", "ranks": 4, "stages": 4, "microbatches": 8,
//     "placement": "mirrored", "forward_only": false, "with_communication": false,
//     "actions": [["0F0", "0F1", ...], ...]
//   }
//
// "stage_ranks" (the rank of each stage) is present for placement "explicit".
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "dualpipe/schedule/action_syntax.hpp"
#include "dualpipe/schedule/instruction.hpp"
#include "dualpipe/schedule/table.hpp"

namespace dualpipe {

struct json_options {
  // Leave out SEND_*/RECV_*/COMMIT even when the table has them.
  bool compute_only = false;
};

namespace detail {

inline void append_json_string(std::string& out, std::string_view s) {
  out.push_back('"');
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(c);
    } else if (u < 0x20) {
      constexpr char hex[] = "0123456789abcdef";
      out += "\\u00";
      out.push_back(hex[u >> 4]);
      out.push_back(hex[u & 0xF]);
    } else {
      out.push_back(c);
    }
  }
  out.push_back('"');
}

}  // namespace detail

// Pretty-printed, one line per rank's action list, ending in a newline.
[[nodiscard]] inline std::string format_json(table_view table, json_options options = {}) {
  const schedule_info& info = table.info;
  std::string out = "{\n  \"schedule\": ";
  detail::append_json_string(out, info.kind.name);
  out += ",\n  \"ranks\": " + std::to_string(info.ranks);
  out += ",\n  \"stages\": " + std::to_string(info.stages);
  out += ",\n  \"microbatches\": " + std::to_string(info.microbatches);
  out += ",\n  \"placement\": ";
  detail::append_json_string(out, placement_name(info.where));
  out += ",\n  \"forward_only\": ";
  out += info.forward_only ? "true" : "false";
  out += ",\n  \"with_communication\": ";
  out += info.with_communication && !options.compute_only ? "true" : "false";
  if (info.where == placement::explicit_map) {
    out += ",\n  \"stage_ranks\": [";
    for (std::size_t s = 0; s < table.stage_ranks.size(); ++s) {
      if (s != 0) out += ", ";
      out += std::to_string(table.stage_ranks[s]);
    }
    out += "]";
  }
  out += ",\n  \"actions\": [";
  for (int r = 0; r < table.ranks(); ++r) {
    out += r == 0 ? "\n    [" : ",\n    [";
    bool first = true;
    for (const instruction& x : table.rank(r)) {
      if (options.compute_only && !is_compute(x.kind)) continue;
      if (!first) out += ", ";
      first = false;
      detail::append_json_string(out, format_action(x));
    }
    out += "]";
  }
  out += table.ranks() > 0 ? "\n  ]\n}\n" : "]\n}\n";
  return out;
}

}  // namespace dualpipe
