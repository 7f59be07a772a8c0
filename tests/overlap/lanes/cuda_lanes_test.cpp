// cuda_lanes: compiled wherever CUDA is found; run only with a GPU (its
// runner, tests/cuda/gpu_main.cpp, exits 77 without one). A pair of MoE
// sub-ops whose work is copies and memsets on the lanes' streams: each chain
// copies a value along its sub-ops, across the two streams, so a missing
// cross-stream wait would show as a stale value; the host waits only at the
// end, on the compute stream, which the run leaves joined to the other.
#include <catch2/catch.hpp>

#include <cuda_runtime.h>

#include <cstddef>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "dualpipe/cuda/error.hpp"
#include "dualpipe/overlap/cuda_lanes.hpp"
#include "dualpipe/overlap/issue_order.hpp"
#include "dualpipe/overlap/moe_layer.hpp"
#include "dualpipe/overlap/program.hpp"

namespace {

namespace ov = dualpipe::overlap;

// Large enough that a copy racing its producer would be caught half-written.
constexpr std::size_t bytes = std::size_t{32} << 20;

// One device buffer per sub-op of both programs, every layer.
struct buffers {
  std::vector<void*> of;
  explicit buffers(std::size_t n) : of(n, nullptr) {
    for (void*& p : of) {
      DUALPIPE_CUDA_CHECK(cudaMalloc(&p, bytes));
      DUALPIPE_CUDA_CHECK(cudaMemset(p, 0, bytes));
    }
  }
  buffers(const buffers&) = delete;
  buffers& operator=(const buffers&) = delete;
  ~buffers() {
    for (void* p : of) (void)cudaFree(p);
  }
};

}  // namespace

TEST_CASE("cuda_lanes issue a pair across two streams in dependency order", "[cuda_lanes]") {
  const ov::stage_programs p = ov::moe_layer_programs({}, 2);
  const ov::issue_order order = ov::make_pair_order(p);
  ov::cuda_lanes lanes;
  REQUIRE(lanes.compute_stream() != lanes.communication_stream());
  REQUIRE(lanes.stream_of(ov::lane::compute) == lanes.compute_stream());
  const std::size_t n = static_cast<std::size_t>((p.forward.size + p.backward.size) * p.layers);
  buffers b(n);
  for (int repeat = 0; repeat < 3; ++repeat) {
    const int seed = 0x10 + repeat;
    const auto run_sub_op = [&](ov::sub_op_ref r, cudaStream_t s) {
      REQUIRE(s == lanes.stream_of(ov::sub_op_of(p, r).where));
      void* mine = b.of[static_cast<std::size_t>(ov::flat_index(p, r))];
      const ov::dependencies d = ov::dependencies_of(p, r);
      if (d.count == 0) {
        // The first sub-op of each pass: the value to carry.
        DUALPIPE_CUDA_CHECK(cudaMemsetAsync(mine, seed + static_cast<int>(r.which), bytes, s));
      } else {
        const void* from = b.of[static_cast<std::size_t>(ov::flat_index(p, d.on[0]))];
        DUALPIPE_CUDA_CHECK(cudaMemcpyAsync(mine, from, bytes, cudaMemcpyDeviceToDevice, s));
      }
    };
    lanes.run(p, order.view(), run_sub_op);
    DUALPIPE_CUDA_CHECK(cudaStreamSynchronize(lanes.compute_stream()));
    std::vector<unsigned char> host(bytes);
    for (const ov::sub_op_ref r : order) {
      CAPTURE(repeat, ov::describe(p, r));
      DUALPIPE_CUDA_CHECK(cudaMemcpy(host.data(),
                                     b.of[static_cast<std::size_t>(ov::flat_index(p, r))], bytes,
                                     cudaMemcpyDeviceToHost));
      const auto expected = static_cast<unsigned char>(seed + static_cast<int>(r.which));
      std::size_t wrong = 0;
      for (const unsigned char x : host) wrong += x != expected ? 1 : 0;
      REQUIRE(wrong == 0);
    }
  }
}

TEST_CASE("cuda_lanes name a failing sub-op and stay usable", "[cuda_lanes]") {
  const ov::stage_programs p = ov::moe_layer_programs({}, 1);
  const ov::issue_order order = ov::make_pair_order(p);
  ov::cuda_lanes lanes;
  int aborts = 0;
  const ov::sub_op_ref failing = ov::make_ref(ov::pass::forward, 0, ov::moe_forward::dispatch);
  try {
    lanes.run(
        p, order.view(),
        [&](ov::sub_op_ref r, cudaStream_t) {
          if (r == failing) throw std::runtime_error("boom");
        },
        [&](std::string_view) noexcept { ++aborts; });
    FAIL("no exception");
  } catch (const ov::sub_op_error& e) {
    REQUIRE(std::string(e.what()) ==
            "dualpipe::overlap: dispatch(F) of layer 0 failed on the communication lane: boom");
  }
  REQUIRE(aborts == 1);
  int ran = 0;
  lanes.run(p, order.view(), [&](ov::sub_op_ref, cudaStream_t) { ++ran; });
  REQUIRE(ran == order.size);
  DUALPIPE_CUDA_CHECK(cudaStreamSynchronize(lanes.compute_stream()));
}
