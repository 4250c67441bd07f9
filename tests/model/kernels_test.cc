#include "magma/model/kernels.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

namespace magma::model {
namespace {

TEST(KernelsTest, LinearBf16MatchesAFloat32ProductOfRoundedInputs) {
  at::manual_seed(1);
  for (int64_t k : {64, 100, 4096}) {  // 100: a masked tail
    at::Tensor w = at::randn({37, k}).to(at::kBFloat16);
    at::Tensor x = at::randn({5, k});
    at::Tensor bias = at::randn({37});
    at::Tensor got = LinearBf16(x, w, bias);
    // The reference: x rounded to bfloat16, products and sums in float64.
    at::Tensor want = at::linear(x.to(at::kBFloat16).to(at::kDouble), w.to(at::kDouble), bias.to(at::kDouble));
    EXPECT_LE((got.to(at::kDouble) - want).abs().max().item<double>(), 1e-4 * std::sqrt(static_cast<double>(k)))
        << "K = " << k;
  }
}

TEST(KernelsTest, LinearBf16RowsDoNotDependOnTheBatch) {
  at::manual_seed(2);
  at::Tensor w = at::randn({300, 512}).to(at::kBFloat16);
  at::Tensor x = at::randn({8, 512});
  at::Tensor together = LinearBf16(x, w, {});
  for (int64_t b = 0; b < 8; ++b) {
    EXPECT_TRUE(at::equal(LinearBf16(x.narrow(0, b, 1), w, {}), together.narrow(0, b, 1))) << "row " << b;
  }
}

TEST(KernelsTest, DecodeAttentionMatchesSoftmaxAttention) {
  at::manual_seed(3);
  const int64_t heads = 8, kv_heads = 2, d = 64, capacity = 50, g = heads / kv_heads;
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    at::Tensor k = at::randn({4, kv_heads, capacity, d}).to(dtype);
    at::Tensor v = at::randn({4, kv_heads, capacity, d}).to(dtype);
    at::Tensor q = at::randn({3, heads, d});
    const std::vector<int64_t> slots = {2, 0, 3}, lengths = {1, 17, 50};
    const double scale = 0.125;
    at::Tensor got = DecodeAttention(q, k, v, slots, lengths, scale);
    for (int64_t b = 0; b < 3; ++b) {
      for (int64_t h = 0; h < heads; ++h) {
        at::Tensor keys = k[slots[b]][h / g].narrow(0, 0, lengths[b]).to(at::kDouble);
        at::Tensor vals = v[slots[b]][h / g].narrow(0, 0, lengths[b]).to(at::kDouble);
        at::Tensor p = at::softmax(at::mv(keys, q[b][h].to(at::kDouble)) * scale, 0);
        at::Tensor want = at::mv(vals.t(), p);
        EXPECT_LE((got[b][h].to(at::kDouble) - want).abs().max().item<double>(), 1e-4)
            << "dtype " << dtype << " b " << b << " h " << h;
      }
    }
  }
}

}  // namespace
}  // namespace magma::model
