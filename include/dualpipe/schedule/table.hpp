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
#include <vector>

#include "dualpipe/schedule/instruction.hpp"

namespace dualpipe {

// Which generator made a table (custom: imported or hand-written).
enum class schedule_kind : std::uint8_t {
  custom,
  dualpipe,
  dualpipev,
  gpipe,
  one_f_one_b,
  zb1p,
  interleaved_1f1b,
  zbv,
};

[[nodiscard]] constexpr const char* schedule_name(schedule_kind k) noexcept {
  switch (k) {
    case schedule_kind::custom: return "custom";
    case schedule_kind::dualpipe: return "dualpipe";
    case schedule_kind::dualpipev: return "dualpipev";
    case schedule_kind::gpipe: return "gpipe";
    case schedule_kind::one_f_one_b: return "1f1b";
    case schedule_kind::zb1p: return "zb1p";
    case schedule_kind::interleaved_1f1b: return "interleaved-1f1b";
    case schedule_kind::zbv: return "zbv";
  }
  return "?";
}

// Where model stage s runs. Micro-batches always traverse stages 0, 1, ...,
// stages-1 in forward order; placement maps (stage, micro-batch) to a rank.
enum class placement : std::uint8_t {
  linear,    // stage s on rank s % ranks (one stage per rank, or interleaved loops)
  v_shape,   // stage s on rank s for s < ranks, else on rank 2*ranks-1-s
  mirrored,  // DualPipe: micro-batch m < N/2 runs stage s on rank s, otherwise on ranks-1-s
  explicit_map,  // a per-stage rank list carried by the table (imported tables)
};

// The name interchange formats use for each placement ("linear", "v-shape", ...).
[[nodiscard]] constexpr const char* placement_name(placement p) noexcept {
  switch (p) {
    case placement::linear: return "linear";
    case placement::v_shape: return "v-shape";
    case placement::mirrored: return "mirrored";
    case placement::explicit_map: return "explicit";
  }
  return "?";
}

struct schedule_info {
  schedule_kind kind = schedule_kind::custom;
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
    if (stage < 0 || stage >= info.stages || info.ranks <= 0) return -1;
    switch (info.where) {
      case placement::linear: return stage % info.ranks;
      case placement::v_shape: return stage < info.ranks ? stage : 2 * info.ranks - 1 - stage;
      case placement::mirrored:
        return mb < info.microbatches / 2 ? stage : info.ranks - 1 - stage;
      case placement::explicit_map:
        return static_cast<std::size_t>(stage) < stage_ranks.size()
                   ? stage_ranks[static_cast<std::size_t>(stage)]
                   : -1;
    }
    return -1;
  }
};

// A table whose sizes are template arguments: a literal type, so it can be a
// constexpr variable and be checked with static_assert.
template <std::size_t Ranks, std::size_t Total>
struct static_table {
  schedule_info info{};
  std::array<instruction, Total> instructions{};
  std::array<std::uint32_t, Ranks + 1> offsets{};

  [[nodiscard]] constexpr table_view view() const noexcept {
    return {info, std::span<const instruction>(instructions),
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
