// PyTorch's pipeline-schedule CSV (torch.distributed.pipelining): one line per
// rank, rank 0 first, the rank's actions comma-separated in the action syntax
// of action_syntax.hpp. Export (write_csv) and import (read_csv) both ways, so
// a schedule made here loads in PyTorch and one made there can be validated
// and simulated here.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "dualpipe/schedule/action_syntax.hpp"
#include "dualpipe/schedule/instruction.hpp"
#include "dualpipe/schedule/table.hpp"

namespace dualpipe {

// What an exported CSV holds.
enum class csv_content : std::uint8_t {
  // F, B, I, W and overlapped pairs: PyTorch's compute-only format.
  compute_only,
  // Also SEND_*/RECV_* in posting order: PyTorch's compute + comms format.
  with_communication,
  // Also this library's COMMIT batch boundaries: nothing of the table is lost,
  // but PyTorch's loader does not know the COMMIT token.
  with_commit,
};

// Stage ids an imported table may use: the importer allocates one rank slot
// per stage, so an absurd id in a file must not become an absurd allocation.
inline constexpr std::int32_t max_imported_stages = 1 << 20;

// Malformed CSV text: where (1-based line and column, in bytes) and what was
// expected there. Line L holds rank L-1.
class csv_error : public std::runtime_error {
 public:
  csv_error(std::size_t line, std::size_t column, const std::string& expected)
      : std::runtime_error("CSV line " + std::to_string(line) + ", column " +
                           std::to_string(column) + ": " + expected),
        line_(line),
        column_(column),
        expected_(expected) {}

  [[nodiscard]] std::size_t line() const noexcept { return line_; }
  [[nodiscard]] std::size_t column() const noexcept { return column_; }
  // The message without its position.
  [[nodiscard]] const std::string& expected() const noexcept { return expected_; }

 private:
  std::size_t line_;
  std::size_t column_;
  std::string expected_;
};

// The table as CSV text: one line per rank, each ending in '\n'. A rank with
// nothing to export is an empty line, so the line count is always the rank
// count.
[[nodiscard]] inline std::string write_csv(table_view table,
                                           csv_content content = csv_content::compute_only) {
  std::string out;
  for (int r = 0; r < table.ranks(); ++r) {
    bool first = true;
    for (const instruction& x : table.rank(r)) {
      const bool keep = is_compute(x.kind) ||
                        (is_communication(x.kind) && content != csv_content::compute_only) ||
                        (x.kind == op::commit && content == csv_content::with_commit);
      if (!keep) continue;
      if (!first) out.push_back(',');
      first = false;
      out += format_action(x);
    }
    out.push_back('\n');
  }
  return out;
}

namespace detail {

// One parsed action and where it stood, for errors found after parsing.
struct csv_action {
  instruction action;
  std::size_t line;
  std::size_t column;
};

[[nodiscard]] inline std::string csv_quote(std::string_view text) {
  constexpr std::size_t shown = 40;
  std::string out = "\"";
  for (const char c : text.substr(0, shown)) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u >= 0x7F) {
      constexpr char hex[] = "0123456789abcdef";
      out += "\\x";
      out.push_back(hex[u >> 4]);
      out.push_back(hex[u & 0xF]);
    } else {
      out.push_back(c);
    }
  }
  if (text.size() > shown) out += "...";
  out += "\"";
  return out;
}

[[nodiscard]] constexpr bool csv_blank(char c) noexcept {
  return c == ' ' || c == '\t';
}

// parse_action reads numbers into 31 bits and reports an overflowing one
// vaguely; finding it first lets the error point at the number itself.
inline void csv_check_numbers(std::string_view field, std::size_t line, std::size_t column) {
  std::size_t i = 0;
  while (i < field.size()) {
    if (field[i] < '0' || field[i] > '9') {
      ++i;
      continue;
    }
    const std::size_t start = i;
    std::uint64_t value = 0;
    bool too_large = false;
    for (; i < field.size() && field[i] >= '0' && field[i] <= '9'; ++i) {
      value = value * 10 + static_cast<std::uint64_t>(field[i] - '0');
      if (value > 0x7FFF'FFFF) too_large = true, value = 0x7FFF'FFFF;
    }
    if (too_large)
      throw csv_error(line, column + start,
                      "expected a number of at most 2147483647, found " +
                          csv_quote(field.substr(start, i - start)));
  }
}

// Reads one line's fields into `out`. Blanks around a field are ignored and an
// empty field is an idle slot (PyTorch writes None as an empty field); a field
// may be wrapped in double quotes, as spreadsheet programs write them.
inline void csv_parse_line(std::string_view text, std::size_t line, std::vector<csv_action>& out) {
  std::size_t pos = 0;
  while (true) {
    while (pos < text.size() && csv_blank(text[pos])) ++pos;
    std::size_t start = pos;
    std::string_view field;
    if (pos < text.size() && text[pos] == '"') {
      const std::size_t close = text.find('"', pos + 1);
      if (close == std::string_view::npos)
        throw csv_error(line, pos + 1,
                        "expected a closing '\"' for the quoted action on this line");
      start = pos + 1;
      field = text.substr(start, close - start);
      pos = close + 1;
      while (pos < text.size() && csv_blank(text[pos])) ++pos;
      if (pos < text.size() && text[pos] != ',')
        throw csv_error(line, pos + 1,
                        "expected ',' or the end of the line after a quoted action, found " +
                            csv_quote(text.substr(pos, 1)));
    } else {
      const std::size_t comma = std::min(text.find(',', pos), text.size());
      std::size_t end = comma;
      while (end > start && csv_blank(text[end - 1])) --end;
      field = text.substr(start, end - start);
      pos = comma;
    }
    if (!field.empty()) {
      csv_check_numbers(field, line, start + 1);
      const action_parse_result parsed = parse_action(field);
      if (!parsed)
        throw csv_error(line, start + 1 + parsed.error.column,
                        std::string(parsed.error.message) + " in action " + csv_quote(field));
      const instruction& x = *parsed.action;
      if (x.kind != op::commit) {
        const bool pair = x.kind == op::overlapped_forward_backward;
        const std::int32_t stage = pair ? std::max(x.stage, x.stage_b) : x.stage;
        const std::int32_t mb = pair ? std::max(x.microbatch, x.microbatch_b) : x.microbatch;
        if (stage >= max_imported_stages)
          throw csv_error(line, start + 1,
                          "expected stage ids below " + std::to_string(max_imported_stages) +
                              " in action " + csv_quote(field));
        if (mb >= max_microbatches)
          throw csv_error(line, start + 1,
                          "expected micro-batch ids below " + std::to_string(max_microbatches) +
                              " in action " + csv_quote(field));
      }
      out.push_back({x, line, start + 1});
    }
    if (pos >= text.size()) return;
    ++pos;  // the comma
  }
}

[[nodiscard]] constexpr bool csv_is_training_work(op k) noexcept {
  return k == op::backward || k == op::backward_input || k == op::backward_weight ||
         k == op::overlapped_forward_backward || k == op::send_backward || k == op::recv_backward;
}

// Where each stage first ran, to find one stage on two ranks.
struct csv_stage_seen {
  std::int32_t rank = -1;
  std::size_t line = 0;
};

inline schedule_table read_csv(std::string_view text, const schedule_info* given,
                               std::optional<schedule_kind> kind) {
  // Lines: a final '\n' ends the last line rather than starting an empty one;
  // "\r\n" (what Python's csv module writes) counts as '\n'.
  std::vector<std::vector<csv_action>> ranks;
  std::size_t pos = 0;
  std::size_t line = 0;
  while (pos < text.size()) {
    ++line;
    if (line > static_cast<std::size_t>(max_ranks))
      throw csv_error(line, 1,
                      "expected at most " + std::to_string(max_ranks) + " lines (one per rank)");
    std::size_t end = text.find('\n', pos);
    const std::size_t next = end == std::string_view::npos ? text.size() : end + 1;
    if (end == std::string_view::npos) end = text.size();
    if (end > pos && text[end - 1] == '\r') --end;
    ranks.emplace_back();
    csv_parse_line(text.substr(pos, end - pos), line, ranks.back());
    pos = next;
  }
  if (ranks.empty()) throw csv_error(1, 1, "expected at least one line (one per rank)");

  schedule_info info{};
  info.ranks = static_cast<std::int32_t>(ranks.size());
  std::int32_t stages = 0, microbatches = 0;
  bool training = false;
  for (const auto& list : ranks)
    for (const csv_action& a : list) {
      const instruction& x = a.action;
      if (x.kind == op::commit) {
        info.with_communication = true;
        continue;
      }
      stages = std::max(stages, x.stage + 1);
      microbatches = std::max(microbatches, x.microbatch + 1);
      if (x.kind == op::overlapped_forward_backward) {
        stages = std::max(stages, x.stage_b + 1);
        microbatches = std::max(microbatches, x.microbatch_b + 1);
      }
      if (is_communication(x.kind)) info.with_communication = true;
      if (csv_is_training_work(x.kind)) training = true;
    }
  info.forward_only = !training;
  info.stages = stages;
  info.microbatches = microbatches;

  std::optional<placement> where;
  if (kind) {
    info.kind = *kind;
    if (!kind->is_custom()) where = kind->where;
  }
  if (given != nullptr) {
    info.kind = given->kind;
    where = given->where;
    if (given->ranks > 0 && given->ranks != info.ranks)
      throw csv_error(std::min(ranks.size(), static_cast<std::size_t>(given->ranks)) + 1, 1,
                      "expected " + std::to_string(given->ranks) +
                          " lines, one per rank of the given schedule, found " +
                          std::to_string(ranks.size()));
    if (given->stages > 0 || given->microbatches > 0) {
      for (const auto& list : ranks)
        for (const csv_action& a : list) {
          const instruction& x = a.action;
          if (x.kind == op::commit) continue;
          const bool pair = x.kind == op::overlapped_forward_backward;
          const std::int32_t s = pair ? std::max(x.stage, x.stage_b) : x.stage;
          const std::int32_t m = pair ? std::max(x.microbatch, x.microbatch_b) : x.microbatch;
          if (given->stages > 0 && s >= given->stages)
            throw csv_error(a.line, a.column,
                            "expected stages below " + std::to_string(given->stages) +
                                " (the given schedule's stage count), found " +
                                csv_quote(format_action(x)));
          if (given->microbatches > 0 && m >= given->microbatches)
            throw csv_error(a.line, a.column,
                            "expected micro-batches below " + std::to_string(given->microbatches) +
                                " (the given schedule's micro-batch count), found " +
                                csv_quote(format_action(x)));
        }
      if (given->stages > 0) info.stages = given->stages;
      if (given->microbatches > 0) info.microbatches = given->microbatches;
    }
  }

  // Placement: one rank per stage is an explicit map; otherwise only DualPipe's
  // mirrored layout explains a stage on two ranks.
  std::vector<std::int32_t> stage_ranks;
  if (!where || *where == placement::explicit_map) {
    std::vector<csv_stage_seen> seen(static_cast<std::size_t>(info.stages));
    const csv_action* conflict = nullptr;
    std::int32_t conflict_stage = -1;
    csv_stage_seen conflict_first{};
    for (std::size_t r = 0; r < ranks.size() && conflict == nullptr; ++r)
      for (const csv_action& a : ranks[r]) {
        const instruction& x = a.action;
        if (x.kind == op::commit) continue;
        for (const std::int32_t s :
             {x.stage, x.kind == op::overlapped_forward_backward ? x.stage_b : x.stage}) {
          csv_stage_seen& at = seen[static_cast<std::size_t>(s)];
          if (at.rank < 0) {
            at = {static_cast<std::int32_t>(r), a.line};
          } else if (at.rank != static_cast<std::int32_t>(r) && conflict == nullptr) {
            conflict = &a;
            conflict_stage = s;
            conflict_first = at;
          }
        }
        if (conflict != nullptr) break;
      }
    bool mirrored = false;
    if (conflict != nullptr && !where) {
      const std::int32_t P = info.ranks, half = info.microbatches / 2;
      mirrored = true;
      for (std::size_t r = 0; r < ranks.size() && mirrored; ++r)
        for (const csv_action& a : ranks[r]) {
          const instruction& x = a.action;
          if (x.kind == op::commit) continue;
          const auto fits = [&](std::int32_t s, std::int32_t m) {
            return static_cast<std::int32_t>(r) == (m < half ? s : P - 1 - s);
          };
          if (!fits(x.stage, x.microbatch) ||
              (x.kind == op::overlapped_forward_backward && !fits(x.stage_b, x.microbatch_b))) {
            mirrored = false;
            break;
          }
        }
    }
    if (conflict != nullptr && !mirrored)
      throw csv_error(
          conflict->line, conflict->column,
          "stage " + std::to_string(conflict_stage) + " runs on rank " +
              std::to_string(conflict->line - 1) + " here and on rank " +
              std::to_string(conflict_first.rank) + " (line " +
              std::to_string(conflict_first.line) +
              "): expected each stage on one rank, or DualPipe's mirrored layout (stage s on "
              "rank s for micro-batches below N/2, on rank P-1-s from N/2 on)");
    if (mirrored) {
      where = placement::mirrored;
    } else {
      where = placement::explicit_map;
      stage_ranks.reserve(seen.size());
      for (const csv_stage_seen& at : seen) stage_ranks.push_back(at.rank);
    }
  }
  info.where = *where;

  // A kind's own placement must explain where the text runs each stage.
  if (kind && info.where != placement::explicit_map) {
    schedule_table probe(info);
    const table_view layout = probe.view();
    for (std::size_t r = 0; r < ranks.size(); ++r)
      for (const csv_action& a : ranks[r]) {
        const instruction& x = a.action;
        if (x.kind == op::commit) continue;
        for (const auto& [s, m] :
             {std::pair{x.stage, x.microbatch},
              std::pair{
                  x.kind == op::overlapped_forward_backward ? x.stage_b : x.stage,
                  x.kind == op::overlapped_forward_backward ? x.microbatch_b : x.microbatch}}) {
          const int owner = layout.rank_of(s, m);
          if (owner != static_cast<int>(r))
            throw csv_error(a.line, a.column,
                            "stage " + std::to_string(s) + " of micro-batch " + std::to_string(m) +
                                " runs on rank " + std::to_string(r) + " here, but a " +
                                std::string(kind->name) + " table (placement " +
                                placement_name(info.where) + ") runs it on rank " +
                                std::to_string(owner));
        }
      }
  }

  schedule_table table(info);
  if (info.where == placement::explicit_map) table.set_stage_ranks(std::move(stage_ranks));
  // The text names no peers: each is the rank of the neighbouring stage.
  const table_view layout = table.view();
  std::size_t total = 0;
  for (const auto& list : ranks) total += list.size();
  table.reserve(total);
  for (const auto& list : ranks) {
    for (const csv_action& a : list) {
      instruction x = a.action;
      if (is_communication(x.kind)) {
        const bool towards_next = x.kind == op::send_forward || x.kind == op::recv_backward;
        x.peer = layout.rank_of(towards_next ? x.stage + 1 : x.stage - 1, x.microbatch);
      }
      table.push(x);
    }
    table.end_rank();
  }
  return table;
}

}  // namespace detail

// Reads CSV text into a table, inferring its shape: ranks from the lines,
// stages and micro-batches from the largest ids, forward_only when no
// backward work appears, with_communication when any SEND/RECV/COMMIT does,
// and the placement: placement::explicit_map when every stage appears on one
// rank, placement::mirrored when the table is DualPipe-shaped (stage s on rank
// s for micro-batches below N/2 and on rank P-1-s after). Communication peers
// are the ranks of the neighbouring stages. The table is not validated: run
// validate() on it. Throws csv_error for malformed text, never anything worse.
[[nodiscard]] inline schedule_table read_csv(std::string_view text) {
  return detail::read_csv(text, nullptr, std::nullopt);
}

// As above, for a table the caller knows was made by `kind`'s generator (e.g.
// dualpipev_generator::kind, or a registry entry's kind): the table gets that
// kind and its placement (kind.where), so that exporting a generated
// table and reading it back with its kind gives an equal table. A stage found
// on a rank that placement does not give it is a csv_error.
[[nodiscard]] inline schedule_table read_csv(std::string_view text, schedule_kind kind) {
  return detail::read_csv(text, nullptr, kind);
}

// As above, but the caller names the schedule: `given.kind` and `given.where`
// replace the inferred kind and placement, and `given.ranks`, `stages` and
// `microbatches` replace the inferred sizes where they are positive (the text
// must fit in them). forward_only and with_communication are always read from
// the text.
[[nodiscard]] inline schedule_table read_csv(std::string_view text, const schedule_info& given) {
  return detail::read_csv(text, &given, std::nullopt);
}

}  // namespace dualpipe
