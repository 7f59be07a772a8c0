// dualpipe/torch/nccl.hpp where libtorch, CUDA and NCCL are all present: a
// cuda_tensor refuses what NCCL could not move as it is, and models the
// device tensor the NCCL transport takes. With a CUDA build of libtorch and
// a GPU, a buffer is also resized and refilled; elsewhere that part says
// why it did not run.
// torch first: Debian's c10 includes glog, whose CHECK macro would replace
// Catch2's.
#include <torch/torch.h>
#undef CHECK
#include <catch2/catch.hpp>

#include "dualpipe/torch/nccl.hpp"

namespace lt = dualpipe::libtorch;
using Catch::Matchers::Contains;

TEST_CASE("a cuda_tensor takes CUDA tensors of its element type only", "[torch][nccl]") {
  STATIC_REQUIRE(dualpipe::cuda::device_tensor<lt::cuda_tensor<double>>);
  CHECK_THROWS_WITH(lt::cuda_tensor<float>(at::zeros({2, 3})),
                    Contains("f32[2, 3] is not a CUDA tensor"));
  const lt::cuda_tensor<float> empty;
  CHECK(empty.size() == 0);
  CHECK(empty.data() == nullptr);
  const lt::cuda_tensor<float> undefined{at::Tensor()};  // a first stage's input gradient
  CHECK(undefined.size() == 0);
}

TEST_CASE("a cuda_tensor resizes on its GPU without overwriting a kept tensor", "[torch][nccl]") {
  if (!torch::cuda::is_available()) {
    WARN("skipped: this libtorch has no CUDA (Debian's is CPU only) or there is no GPU");
    return;
  }
  lt::cuda_tensor<float> t(at::ones({2, 3}, at::TensorOptions().device(at::kCUDA)));
  const at::Tensor kept = t.tensor().detach();
  t.resize(6);
  CHECK(t.size() == 6);
  CHECK(t.tensor().data_ptr() != kept.data_ptr());  // kept shares the old storage
  void* const alone = t.tensor().data_ptr();
  t.resize(6);
  CHECK(t.tensor().data_ptr() == alone);  // sole owner: reused
  CHECK_THROWS_WITH(lt::cuda_tensor<double>(t.tensor()), Contains("does not hold elements of"));
}
