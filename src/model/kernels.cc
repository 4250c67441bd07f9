#include "magma/model/kernels.h"

#include <immintrin.h>

#include <cstring>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

namespace magma::model {
namespace {

inline float Bf16ToFloat(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Rows [n0, n1) of y[B, N] = xb[B, K] . w[N, K], all bf16 inputs.
void GemvRowsPortable(const uint16_t* w, const uint16_t* xb, int64_t B, int64_t K, int64_t N, int64_t n0,
                      int64_t n1, float* y) {
  std::vector<float> wrow(K);
  for (int64_t n = n0; n < n1; ++n) {
    const uint16_t* wr = w + n * K;
    for (int64_t k = 0; k < K; ++k) wrow[k] = Bf16ToFloat(wr[k]);
    for (int64_t b = 0; b < B; ++b) {
      const uint16_t* xr = xb + b * K;
      float acc = 0.f;
      for (int64_t k = 0; k < K; ++k) acc += wrow[k] * Bf16ToFloat(xr[k]);
      y[b * N + n] = acc;
    }
  }
}

#if defined(__x86_64__)
#define MAGMA_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

// kRows weight rows against kCols activation rows: kRows*kCols accumulators.
template <int kRows, int kCols>
MAGMA_BF16_TARGET inline void Tile(const uint16_t* w, int64_t K, const uint16_t* const* xs, float* out[kCols],
                                   int64_t n) {
  __m512 acc[kRows][kCols];
  for (int r = 0; r < kRows; ++r)
    for (int c = 0; c < kCols; ++c) acc[r][c] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    __m512i wv[kRows];
    for (int r = 0; r < kRows; ++r) {
      wv[r] = _mm512_loadu_si512(w + (n + r) * K + k);
    }
    for (int c = 0; c < kCols; ++c) {
      const __m512i xv = _mm512_loadu_si512(xs[c] + k);
      for (int r = 0; r < kRows; ++r) {
        acc[r][c] = _mm512_dpbf16_ps(acc[r][c], (__m512bh)wv[r], (__m512bh)xv);
      }
    }
  }
  if (k < K) {
    const __mmask32 mask = static_cast<__mmask32>((uint64_t{1} << (K - k)) - 1);
    __m512i wv[kRows];
    for (int r = 0; r < kRows; ++r) wv[r] = _mm512_maskz_loadu_epi16(mask, w + (n + r) * K + k);
    for (int c = 0; c < kCols; ++c) {
      const __m512i xv = _mm512_maskz_loadu_epi16(mask, xs[c] + k);
      for (int r = 0; r < kRows; ++r) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], (__m512bh)wv[r], (__m512bh)xv);
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int c = 0; c < kCols; ++c) out[c][n + r] = _mm512_reduce_add_ps(acc[r][c]);
}

template <int kCols>
MAGMA_BF16_TARGET void RowsForCols(const uint16_t* w, int64_t K, const uint16_t* const* xs, float** out, int64_t n0,
                                   int64_t n1) {
  constexpr int kRows = kCols <= 2 ? 4 : 2;
  int64_t n = n0;
  for (; n + kRows <= n1; n += kRows) Tile<kRows, kCols>(w, K, xs, out, n);
  for (; n < n1; ++n) Tile<1, kCols>(w, K, xs, out, n);
}

MAGMA_BF16_TARGET void GemvRowsAvx512(const uint16_t* w, const uint16_t* xb, int64_t B, int64_t K, int64_t N,
                                      int64_t n0, int64_t n1, float* y) {
  for (int64_t b0 = 0; b0 < B; b0 += 4) {
    const int cols = static_cast<int>(std::min<int64_t>(4, B - b0));
    const uint16_t* xs[4];
    float* out[4];
    for (int c = 0; c < cols; ++c) {
      xs[c] = xb + (b0 + c) * K;
      out[c] = y + (b0 + c) * N;
    }
    switch (cols) {
      case 1: RowsForCols<1>(w, K, xs, out, n0, n1); break;
      case 2: RowsForCols<2>(w, K, xs, out, n0, n1); break;
      case 3: RowsForCols<3>(w, K, xs, out, n0, n1); break;
      default: RowsForCols<4>(w, K, xs, out, n0, n1); break;
    }
  }
}
#endif

}  // namespace

bool HasAvx512Bf16() {
#if defined(__x86_64__)
  static const bool has = __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw");
  return has;
#else
  return false;
#endif
}

at::Tensor LinearBf16(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias) {
  TORCH_CHECK(w.scalar_type() == at::kBFloat16 && w.dim() == 2 && w.is_contiguous(), "LinearBf16: bad weight");
  const int64_t N = w.size(0), K = w.size(1);
  TORCH_CHECK(x.size(-1) == K, "LinearBf16: x has ", x.size(-1), " features, weight expects ", K);
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = N;
  at::Tensor x2 = x.reshape({-1, K}).to(at::kBFloat16).contiguous();
  const int64_t B = x2.size(0);
  at::Tensor y = at::empty({B, N}, at::TensorOptions().dtype(at::kFloat));
  const auto* wp = reinterpret_cast<const uint16_t*>(w.data_ptr());
  const auto* xp = reinterpret_cast<const uint16_t*>(x2.data_ptr());
  float* yp = y.data_ptr<float>();
  const bool fast = HasAvx512Bf16();
  // Grain: enough rows that each task streams at least ~256 KiB of weights.
  const int64_t grain = std::max<int64_t>(16, (256 << 10) / std::max<int64_t>(1, K * 2));
  at::parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) {
#if defined(__x86_64__)
    if (fast) {
      GemvRowsAvx512(wp, xp, B, K, N, n0, n1, yp);
      return;
    }
#endif
    GemvRowsPortable(wp, xp, B, K, N, n0, n1, yp);
  });
  if (bias.defined()) y.add_(bias.to(at::kFloat));
  return y.view(out_shape);
}

}  // namespace magma::model
