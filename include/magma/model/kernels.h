// Dense kernels the decoder needs beyond stock libtorch 1.13.
#ifndef MAGMA_MODEL_KERNELS_H_
#define MAGMA_MODEL_KERNELS_H_

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

namespace magma::model {

// y = x @ w^T (+ bias) with bfloat16 weights and float32 activations and
// result: x [..., K] float32, w [N, K] bfloat16 (contiguous), bias [N]
// float32 or undefined -> [..., N] float32. Products are formed from x
// rounded to bfloat16 and accumulated in float32 (AVX512-BF16 dot products
// where the CPU has them). Weight rows are streamed once for all rows of x,
// which makes small-batch decode bandwidth-bound rather than latency-bound.
at::Tensor LinearBf16(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias);

// The same products for many rows of x (prefill), as a matrix product:
// with oneDNN's bfloat16 GEMM where the CPU has bfloat16 dot products (its
// result comes back rounded to bfloat16); elsewhere with a float32 GEMM on
// blocks of weight rows widened to float32 (exact), result in float32,
// since emulated bfloat16 GEMM runs at a few GFLOP/s there.
at::Tensor LinearBf16Gemm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias);

// One matrix of a fused matrix-vector pass: y[B, N] = (or +=) x[B, K] . w^T.
struct GemvTarget {
  const at::Tensor* w;  // [N, K] bfloat16, contiguous
  float* y;             // [B, N], row-major
  bool accumulate;      // add the products to y instead of overwriting it
};

// Runs every target against the same bfloat16 activations xb [B, K] (raw
// bfloat16 bits) in one parallel pass: the rows of all targets are split
// evenly across threads, so q/k/v or gate/up cost one fork/join and each
// thread streams one long run of weights instead of several short ones.
void GemvBf16(const uint16_t* xb, int64_t B, int64_t K, const std::vector<GemvTarget>& targets);

// Single-query attention for a decode step, reading the KV cache in place
// (no gather, no dtype copies). For each sequence b and query head h:
//   out[b, h] = softmax_t(q[b, h] . K[slot_b, h / g, t] * scale) V[slot_b, h / g, t]
// over t < lengths[b], where g = heads / kv_heads.
//   q:      [B, heads, head_dim] float32
//   k, v:   [slots, kv_heads, capacity, head_dim] float32 or bfloat16
//   slots:  [B] int64, lengths: [B] int64 (positions to attend, >= 1)
// Returns [B, heads, head_dim] float32.
at::Tensor DecodeAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const std::vector<int64_t>& slots, const std::vector<int64_t>& lengths, double scale);

// Depthwise convolution with stride 1 and `padding` on every side, as
// at::conv2d computes it: x [N, C, H, W] float32, w [C, 1, k, k], bias [C]
// or undefined. Its backward pass computes the weight gradient with
// DepthwiseConvWeightGrad (oneDNN's took ~10x the forward's time on
// ConvNeXt's 7x7 kernels over 16-64 channels) and the input gradient as the
// convolution of the output gradient with the flipped kernel.
at::Tensor DepthwiseConv2d(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, int64_t padding);

// The weight gradient of that convolution: sum over n, h, w of
// x[n, c, h + i - padding, w + j - padding] * g[n, c, h, w] into [C, 1, k, k]
// (x, g [N, C, H, W] float32; terms outside x are zero). Sums run in float32
// along an image row and in float64 across rows.
at::Tensor DepthwiseConvWeightGrad(const at::Tensor& x, const at::Tensor& g, int64_t k, int64_t padding);

// The instruction sets the bfloat16 kernels use, best first: bfloat16 dot
// products (AVX512-BF16), float32 FMA on widened weights (AVX2), plain C++.
enum class Bf16Isa { kAvx512Bf16, kAvx2, kPortable };

// Its name: "avx512-bf16", "avx2" or "portable".
const char* Bf16IsaName(Bf16Isa isa);

// The best one this CPU has.
Bf16Isa BestBf16Isa();

// The one the kernels use: the best this CPU has, or a slower one set with
// LimitBf16Isa.
Bf16Isa Bf16IsaInUse();

// Keeps the kernels to `isa` or a slower one (tests compare the paths on one
// machine); returns the previous limit. kAvx512Bf16 lifts the limit.
Bf16Isa LimitBf16Isa(Bf16Isa isa);

// True when the AVX512-BF16 path is in use on this CPU.
bool HasAvx512Bf16();

}  // namespace magma::model

#endif  // MAGMA_MODEL_KERNELS_H_
