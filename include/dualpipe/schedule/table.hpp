// Instruction tables: for every rank, the ordered instructions it executes.
// static_table is a literal type filled at compile time; schedule_table holds
// a table built at run time; table_view is what every analysis consumes.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "dualpipe/schedule/instruction.hpp"
#include "dualpipe/schedule/placement.hpp"

namespace dualpipe {

// Which generator made a table: its registry name ("dualpipe", "1f1b", ...),
// the name sentences use ("DualPipe", "1F1B", ...) and the placement every
// table it makes uses. Each generator declares its own (a `kind` member), so
// a new schedule adds no enumerator here. The default, schedule_kind::custom,
// marks a table imported or written by hand, whose placement is its info's.
// Kinds compare by name.
struct schedule_kind {
  std::string_view name = "custom";
  std::string_view title = "custom";
  placement where = placement::explicit_map;

  static const schedule_kind custom;

  [[nodiscard]] constexpr bool is_custom() const noexcept { return name == "custom"; }
  friend constexpr bool operator==(const schedule_kind& a, const schedule_kind& b) noexcept {
    return a.name == b.name;
  }
};
inline constexpr schedule_kind schedule_kind::custom{};

struct schedule_info {
  schedule_kind kind{};
  std::int32_t ranks = 0;
  std::int32_t stages = 0;
  std::int32_t microbatches = 0;
  placement where = placement::linear;
  bool forward_only = false;
  bool with_communication = false;

  friend constexpr bool operator==(const schedule_info&, const schedule_info&) = default;
};

// Limits every table respects: ranks, stages and micro-batch ids fit in 32 bits
// with room to spare, and total sizes fit the 32-bit offsets.
inline constexpr std::int32_t max_ranks = 1 << 14;
inline constexpr std::int32_t max_microbatches = 1 << 22;
inline constexpr std::uint64_t max_instructions = 0xFFFF'FFFFull;

// A read-only view of any table: the analyses take this.
struct table_view {
  schedule_info info{};
  std::span<const instruction> instructions{};
  std::span<const std::uint32_t> offsets{};     // ranks + 1 entries
  std::span<const std::int32_t> stage_ranks{};  // placement::explicit_map only

  [[nodiscard]] constexpr int ranks() const noexcept { return info.ranks; }
  [[nodiscard]] constexpr int stages() const noexcept { return info.stages; }
  [[nodiscard]] constexpr int microbatches() const noexcept { return info.microbatches; }

  // The instructions of one rank, in execution order.
  [[nodiscard]] constexpr std::span<const instruction> rank(int r) const {
    if (r < 0 || r >= info.ranks) throw std::out_of_range("dualpipe: rank out of range");
    return instructions.subspan(offsets[static_cast<std::size_t>(r)],
                                offsets[static_cast<std::size_t>(r) + 1] -
                                    offsets[static_cast<std::size_t>(r)]);
  }

  // The rank that runs `stage` for micro-batch `mb`, or -1 if the stage does
  // not exist.
  [[nodiscard]] constexpr int rank_of(int stage, int mb) const noexcept {
    return stage_rank(info.where, info.ranks, info.stages, info.microbatches, stage, mb,
                      stage_ranks);
  }
};

// The first way a view's sizes and offsets disagree: a sentence (empty when
// every rank's instructions lie inside the view) and the rank it concerns
// (-1: the whole table). The check each reader of an untrusted view makes
// before it indexes; it reads as its sentence.
struct shape_problem {
  std::string_view what{};
  int rank = -1;

  [[nodiscard]] constexpr bool empty() const noexcept { return what.empty(); }
  constexpr operator std::string_view() const noexcept { return what; }  // NOLINT(google-explicit-constructor)
};

[[nodiscard]] constexpr shape_problem shape_violation(const table_view& t) noexcept {
  if (t.info.ranks <= 0 || t.info.stages <= 0 || t.info.microbatches <= 0)
    return {"the table has no ranks, stages or micro-batches"};
  const auto ranks = static_cast<std::size_t>(t.info.ranks);
  if (t.offsets.size() != ranks + 1 || t.offsets[0] != 0 || t.offsets[ranks] != t.instructions.size())
    return {"the rank offsets do not cover the instructions"};
  for (std::size_t r = 0; r < ranks; ++r)
    if (t.offsets[r] > t.offsets[r + 1]) return {"the rank offsets decrease", static_cast<int>(r)};
  return {};
}

// A table whose sizes are template arguments: a literal type, so it can be a
// constexpr variable and be checked with static_assert.
//
// It answers the same calls as schedule_table (info(), view(), rank(r),
// size()); its members are public only so that it stays a literal aggregate.
template <std::size_t Ranks, std::size_t Total>
struct static_table {
  schedule_info header{};
  std::array<instruction, Total> instructions{};
  std::array<std::uint32_t, Ranks + 1> offsets{};

  [[nodiscard]] constexpr const schedule_info& info() const noexcept { return header; }
  [[nodiscard]] constexpr table_view view() const noexcept {
    return {header, std::span<const instruction>(instructions),
            std::span<const std::uint32_t>(offsets), {}};
  }
  constexpr operator table_view() const noexcept { return view(); }  // NOLINT(google-explicit-constructor)
  [[nodiscard]] constexpr std::span<const instruction> rank(int r) const { return view().rank(r); }
  [[nodiscard]] static constexpr std::size_t size() noexcept { return Total; }
};

// A table built at run time.
class schedule_table {
 public:
  schedule_table() = default;
  explicit schedule_table(schedule_info info) : info_(info) {}

  [[nodiscard]] const schedule_info& info() const noexcept { return info_; }
  [[nodiscard]] table_view view() const noexcept {
    return {info_, instructions_, offsets_, stage_ranks_};
  }
  operator table_view() const noexcept { return view(); }  // NOLINT(google-explicit-constructor)
  [[nodiscard]] std::span<const instruction> rank(int r) const { return view().rank(r); }
  [[nodiscard]] std::size_t size() const noexcept { return instructions_.size(); }

  // Building: append instructions of the current rank, then close it.
  void reserve(std::size_t n) { instructions_.reserve(n); }
  void push(const instruction& i) { instructions_.push_back(i); }
  void end_rank() {
    if (instructions_.size() > max_instructions)
      throw std::length_error("dualpipe: table exceeds the 2^32-1 instruction limit");
    offsets_.push_back(static_cast<std::uint32_t>(instructions_.size()));
  }
  [[nodiscard]] int ranks_built() const noexcept {
    return offsets_.empty() ? 0 : static_cast<int>(offsets_.size()) - 1;
  }
  void set_info(const schedule_info& info) { info_ = info; }
  void set_stage_ranks(std::vector<std::int32_t> stage_ranks) {
    stage_ranks_ = std::move(stage_ranks);
  }

  friend bool operator==(const schedule_table& a, const schedule_table& b) {
    return a.info_ == b.info_ && a.instructions_ == b.instructions_ && a.offsets_ == b.offsets_ &&
           a.stage_ranks_ == b.stage_ranks_;
  }

 private:
  schedule_info info_{};
  std::vector<instruction> instructions_;
  std::vector<std::uint32_t> offsets_{0};
  std::vector<std::int32_t> stage_ranks_;
};

// Anything a table_view can be made from.
template <class T>
concept instruction_table = requires(const T& t) {
  { table_view(t) };
};

}  // namespace dualpipe
