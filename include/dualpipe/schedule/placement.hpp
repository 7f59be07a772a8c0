// Placement: which rank runs model stage s for micro-batch m. The one place
// that maps a placement to ranks; tables, the executor, the readers and the
// pictures all ask here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace dualpipe {

// Where model stage s runs. Micro-batches always traverse stages 0, 1, ...,
// stages-1 in forward order; placement maps (stage, micro-batch) to a rank.
enum class placement : std::uint8_t {
  linear,    // stage s on rank s % ranks (one stage per rank, or interleaved loops)
  v_shape,   // stage s on rank s for s < ranks, else on rank 2*ranks-1-s
  mirrored,  // DualPipe: m < N/2 (rounded down) on rank s, the others on ranks-1-s
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

// The rank that runs `stage` for micro-batch `mb` on `ranks` ranks with
// `microbatches` micro-batches, or -1 if the stage does not exist.
// `stage_ranks` is the per-stage rank list of placement::explicit_map.
[[nodiscard]] constexpr int stage_rank(placement where, int ranks, int stages, int microbatches,
                                       int stage, int mb,
                                       std::span<const std::int32_t> stage_ranks = {}) noexcept {
  if (stage < 0 || stage >= stages || ranks <= 0) return -1;
  switch (where) {
    case placement::linear: return stage % ranks;
    case placement::v_shape: return stage < ranks ? stage : 2 * ranks - 1 - stage;
    case placement::mirrored: return mb < microbatches / 2 ? stage : ranks - 1 - stage;
    case placement::explicit_map:
      return static_cast<std::size_t>(stage) < stage_ranks.size()
                 ? stage_ranks[static_cast<std::size_t>(stage)]
                 : -1;
  }
  return -1;
}

// Whether `rank` holds model stage `stage` (its weights live there), whether
// or not a micro-batch of the step runs it: DualPipe's rank r holds stages r
// and ranks-1-r even when one direction carries no micro-batch (N = 1).
[[nodiscard]] constexpr bool holds_stage(placement where, int ranks, int stages, int stage,
                                         int rank,
                                         std::span<const std::int32_t> stage_ranks = {}) noexcept {
  if (stage < 0 || stage >= stages || rank < 0 || rank >= ranks) return false;
  if (where == placement::mirrored) return stage == rank || stage == ranks - 1 - rank;
  return stage_rank(where, ranks, stages, 0, stage, 0, stage_ranks) == rank;
}

// The rank holding the other copy of `rank`'s stages: under the mirrored
// placement every stage runs on two ranks, r and ranks-1-r (one copy for
// each direction); -1 under any other placement, which keeps one copy.
[[nodiscard]] constexpr int mirror_of(placement where, int ranks, int rank) noexcept {
  if (where != placement::mirrored || rank < 0 || rank >= ranks) return -1;
  return ranks - 1 - rank;
}

// Whether (stage, micro-batch) is on its micro-batch's way back: the second
// half of a DualPipe pair of directions, the right arm of a V, the odd loops
// of an interleaved pipeline. Pictures shade these; an explicit map has none.
[[nodiscard]] constexpr bool on_return_leg(placement where, int ranks, int microbatches, int stage,
                                           int mb) noexcept {
  if (ranks <= 0) return false;
  switch (where) {
    case placement::mirrored: return mb >= microbatches / 2;
    case placement::v_shape: return stage >= ranks;
    case placement::linear: return (stage / ranks) % 2 == 1;
    case placement::explicit_map: return false;
  }
  return false;
}

}  // namespace dualpipe
