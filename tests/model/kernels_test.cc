#include "magma/model/kernels.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

namespace magma::model {
namespace {

// Every bfloat16 path this CPU can run, best first.
std::vector<Bf16Isa> PathsHere() {
  std::vector<Bf16Isa> out;
  for (Bf16Isa isa : {Bf16Isa::kAvx512Bf16, Bf16Isa::kAvx2, Bf16Isa::kPortable}) {
    if (isa >= BestBf16Isa()) out.push_back(isa);
  }
  return out;
}

// Runs the kernels on one path for the life of the object.
class OnPath {
 public:
  explicit OnPath(Bf16Isa isa) : previous_(LimitBf16Isa(isa)) {}
  ~OnPath() { LimitBf16Isa(previous_); }

 private:
  Bf16Isa previous_;
};

// The reference: x rounded to bfloat16, products and sums in float64.
at::Tensor RoundedProduct(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias) {
  return at::linear(x.to(at::kBFloat16).to(at::kDouble), w.to(at::kDouble), bias.to(at::kDouble));
}

TEST(KernelsTest, LinearBf16MatchesAFloat32ProductOfRoundedInputs) {
  for (Bf16Isa isa : PathsHere()) {
    OnPath path(isa);
    EXPECT_EQ(Bf16IsaInUse(), isa);
    at::manual_seed(1);
    for (int64_t k : {64, 100, 4096}) {       // 100: a masked tail
      for (int64_t rows : {1, 2, 3, 5, 9}) {  // odd counts: a lone activation row in the AVX2 pass
        at::Tensor w = at::randn({37, k}).to(at::kBFloat16);
        at::Tensor x = at::randn({rows, k});
        at::Tensor bias = at::randn({37});
        at::Tensor got = LinearBf16(x, w, bias);
        EXPECT_LE((got.to(at::kDouble) - RoundedProduct(x, w, bias)).abs().max().item<double>(),
                  1e-4 * std::sqrt(static_cast<double>(k)))
            << Bf16IsaName(isa) << ", K = " << k << ", rows = " << rows;
      }
    }
  }
}

TEST(KernelsTest, LinearBf16RowsDoNotDependOnTheBatch) {
  for (Bf16Isa isa : PathsHere()) {
    OnPath path(isa);
    at::manual_seed(2);
    at::Tensor w = at::randn({300, 520}).to(at::kBFloat16);  // 520: a tail after the vector loop
    for (int64_t rows : {5, 8, 9}) {  // part-filled groups of activation rows as well as full ones
      at::Tensor x = at::randn({rows, 520});
      at::Tensor together = LinearBf16(x, w, {});
      for (int64_t b = 0; b < rows; ++b) {
        EXPECT_TRUE(at::equal(LinearBf16(x.narrow(0, b, 1), w, {}), together.narrow(0, b, 1)))
            << Bf16IsaName(isa) << ", " << rows << " rows, row " << b;
      }
    }
  }
}

TEST(KernelsTest, GemvBf16AddsOntoTheOutputWhenAsked) {
  for (Bf16Isa isa : PathsHere()) {
    OnPath path(isa);
    at::manual_seed(5);
    const int64_t B = 3, K = 72, N = 40;
    at::Tensor w = at::randn({N, K}).to(at::kBFloat16);
    at::Tensor v = at::randn({N, K}).to(at::kBFloat16);
    at::Tensor xb = at::randn({B, K}).to(at::kBFloat16);
    at::Tensor y = at::randn({B, N}), z = at::randn({B, N});
    const at::Tensor y0 = y.clone(), z0 = z.clone();
    // y = x . w^T replaces, z += x . v^T adds, in one pass.
    GemvBf16(reinterpret_cast<const uint16_t*>(xb.data_ptr()), B, K,
             {{&w, y.data_ptr<float>(), false}, {&v, z.data_ptr<float>(), true}});
    const at::Tensor x = xb.to(at::kDouble);
    const double tolerance = 1e-4 * std::sqrt(static_cast<double>(K));
    EXPECT_LE((y.to(at::kDouble) - at::mm(x, w.to(at::kDouble).t())).abs().max().item<double>(), tolerance)
        << Bf16IsaName(isa);
    EXPECT_LE((z.to(at::kDouble) - z0.to(at::kDouble) - at::mm(x, v.to(at::kDouble).t())).abs().max().item<double>(),
              tolerance)
        << Bf16IsaName(isa);
    EXPECT_FALSE(at::equal(y, y0));
  }
}

TEST(KernelsTest, LinearBf16GemmMatchesAFloat32ProductOfRoundedInputs) {
  for (Bf16Isa isa : PathsHere()) {
    OnPath path(isa);
    at::manual_seed(4);
    // 5000 x 1024 weights: more than one 16 MiB block of widened rows.
    for (auto [n, k] : {std::pair<int64_t, int64_t>{37, 100}, {5000, 1024}}) {
      at::Tensor w = at::randn({n, k}).to(at::kBFloat16);
      at::Tensor x = at::randn({2, 33, k});
      at::Tensor bias = at::randn({n});
      at::Tensor got = LinearBf16Gemm(x, w, bias);
      ASSERT_EQ(got.sizes(), (std::vector<int64_t>{2, 33, n}));
      EXPECT_EQ(got.scalar_type(), at::kFloat);
      const at::Tensor want = RoundedProduct(x, w, bias);
      // oneDNN (the AVX512-BF16 path) rounds the sums to bfloat16 (8
      // significant bits) before the bias is added.
      const at::Tensor allowed = isa == Bf16Isa::kAvx512Bf16
                                     ? 1e-4 * std::sqrt(static_cast<double>(k)) + (want - bias).abs() / 256
                                     : at::full_like(want, 1e-4 * std::sqrt(static_cast<double>(k)));
      EXPECT_TRUE(((got.to(at::kDouble) - want).abs() <= allowed).all().item<bool>())
          << Bf16IsaName(isa) << ", N = " << n << ", K = " << k;
    }
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

TEST(KernelsTest, DepthwiseConv2dGradientsMatchLibtorchsInFloat64) {
  for (Bf16Isa isa : PathsHere()) {
    OnPath path(isa);
    at::manual_seed(3);
    // 20 and 40 channels: a part-filled block of 16 after the full ones.
    for (int64_t c : {16, 20, 40}) {
      for (const bool channels_last : {true, false}) {
        at::Tensor x = at::randn({2, c, 11, 9});
        if (channels_last) x = x.contiguous(at::MemoryFormat::ChannelsLast);
        const at::Tensor w = at::randn({c, 1, 7, 7}), bias = at::randn({c}), g = at::randn({2, c, 11, 9});
        const at::Tensor xr = x.detach().requires_grad_(true), wr = w.detach().requires_grad_(true),
                         br = bias.detach().requires_grad_(true);
        const at::Tensor y = DepthwiseConv2d(xr, wr, br, 3);
        y.backward(g);
        const at::Tensor xd = x.to(at::kDouble).requires_grad_(true), wd = w.to(at::kDouble).requires_grad_(true),
                         bd = bias.to(at::kDouble).requires_grad_(true);
        const at::Tensor yd = at::conv2d(xd, wd, bd, {1, 1}, {3, 3}, {1, 1}, c);
        yd.backward(g.to(at::kDouble));
        const std::string what = std::string(Bf16IsaName(isa)) + ", C = " + std::to_string(c) +
                                 (channels_last ? ", channels-last" : ", contiguous");
        EXPECT_LE((y.to(at::kDouble) - yd).abs().max().item<double>(), 1e-4) << what;
        EXPECT_LE((xr.grad().to(at::kDouble) - xd.grad()).abs().max().item<double>(), 1e-4) << what;
        // A weight's gradient sums 2 * 11 * 9 products of unit normals.
        EXPECT_LE((wr.grad().to(at::kDouble) - wd.grad()).abs().max().item<double>(), 1e-4) << what;
        EXPECT_LE((br.grad().to(at::kDouble) - bd.grad()).abs().max().item<double>(), 1e-4) << what;
      }
    }
  }
}

TEST(KernelsTest, DepthwiseConvWeightGradRefusesAnOutputOfAnotherSize) {
  const at::Tensor x = at::randn({1, 16, 8, 8});
  EXPECT_THROW(DepthwiseConvWeightGrad(x, x, 7, 2), c10::Error);
  EXPECT_THROW(DepthwiseConvWeightGrad(x, x.narrow(2, 0, 7), 7, 3), c10::Error);
}

}  // namespace
}  // namespace magma::model
