#include "magma/model/kernels.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

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
                      int64_t n1, float* y, bool accumulate) {
  std::vector<float> wrow(K);
  for (int64_t n = n0; n < n1; ++n) {
    const uint16_t* wr = w + n * K;
    for (int64_t k = 0; k < K; ++k) wrow[k] = Bf16ToFloat(wr[k]);
    for (int64_t b = 0; b < B; ++b) {
      const uint16_t* xr = xb + b * K;
      float acc = 0.f;
      for (int64_t k = 0; k < K; ++k) acc += wrow[k] * Bf16ToFloat(xr[k]);
      y[b * N + n] = accumulate ? y[b * N + n] + acc : acc;
    }
  }
}

#if defined(__x86_64__)
// GCC 12 flags the undefined-vector idiom inside _mm512_reduce_add_ps.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define MAGMA_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

// One weight row against kCols activation rows. Rows are streamed one at a
// time, front to back, with no software prefetch: measured on this class of
// CPU, a single sequential stream per core lets the hardware prefetcher reach
// 45-60 GB/s on two cores, where interleaving four rows (four streams) with
// explicit prefetches stalled at 35-40. One accumulator per column, in the
// same order as Tile, so that a row's result never depends on how many rows
// share the pass (a sequence decodes the same alone or in a batch).
template <int kCols>
MAGMA_BF16_TARGET inline void Row(const uint16_t* wr, int64_t K, const uint16_t* const* xs, float* const* out,
                                  int64_t n, bool accumulate) {
  __m512 acc[kCols];
  _Pragma("GCC unroll 8") for (int c = 0; c < kCols; ++c) acc[c] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    const __m512i wv = _mm512_loadu_si512(wr + k);
    _Pragma("GCC unroll 8") for (int c = 0; c < kCols; ++c) {
      acc[c] = _mm512_dpbf16_ps(acc[c], (__m512bh)wv, (__m512bh)_mm512_loadu_si512(xs[c] + k));
    }
  }
  if (k < K) {
    const __mmask32 mask = static_cast<__mmask32>((uint64_t{1} << (K - k)) - 1);
    const __m512i wv = _mm512_maskz_loadu_epi16(mask, wr + k);
    _Pragma("GCC unroll 8") for (int c = 0; c < kCols; ++c) {
      acc[c] = _mm512_dpbf16_ps(acc[c], (__m512bh)wv, (__m512bh)_mm512_maskz_loadu_epi16(mask, xs[c] + k));
    }
  }
  _Pragma("GCC unroll 8") for (int c = 0; c < kCols; ++c) {
    const float dot = _mm512_reduce_add_ps(acc[c]);
    out[c][n] = accumulate ? out[c][n] + dot : dot;
  }
}

// kRows weight rows against kCols activation rows: kRows*kCols accumulators.
template <int kRows, int kCols>
MAGMA_BF16_TARGET inline void Tile(const uint16_t* w, int64_t K, const uint16_t* const* xs, float* const* out,
                                   int64_t n, bool accumulate) {
  __m512 acc[kRows][kCols];
  _Pragma("GCC unroll 8") for (int r = 0; r < kRows; ++r)
    _Pragma("GCC unroll 8") for (int c = 0; c < kCols; ++c) acc[r][c] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    __m512i wv[kRows];
    _Pragma("GCC unroll 8") for (int r = 0; r < kRows; ++r) {
      wv[r] = _mm512_loadu_si512(w + (n + r) * K + k);
    }
    _Pragma("GCC unroll 8") for (int c = 0; c < kCols; ++c) {
      const __m512i xv = _mm512_loadu_si512(xs[c] + k);
      _Pragma("GCC unroll 8") for (int r = 0; r < kRows; ++r) {
        acc[r][c] = _mm512_dpbf16_ps(acc[r][c], (__m512bh)wv[r], (__m512bh)xv);
      }
    }
  }
  if (k < K) {
    const __mmask32 mask = static_cast<__mmask32>((uint64_t{1} << (K - k)) - 1);
    __m512i wv[kRows];
    _Pragma("GCC unroll 8") for (int r = 0; r < kRows; ++r) wv[r] = _mm512_maskz_loadu_epi16(mask, w + (n + r) * K + k);
    _Pragma("GCC unroll 8") for (int c = 0; c < kCols; ++c) {
      const __m512i xv = _mm512_maskz_loadu_epi16(mask, xs[c] + k);
      _Pragma("GCC unroll 8") for (int r = 0; r < kRows; ++r) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], (__m512bh)wv[r], (__m512bh)xv);
    }
  }
  _Pragma("GCC unroll 8") for (int r = 0; r < kRows; ++r)
    _Pragma("GCC unroll 8") for (int c = 0; c < kCols; ++c) {
      const float dot = _mm512_reduce_add_ps(acc[r][c]);
      out[c][n + r] = accumulate ? out[c][n + r] + dot : dot;
    }
}

// Few columns: bandwidth-bound, one row (one stream) at a time. More
// columns: each activation load is shared by four weight rows, which keeps
// the load ports from becoming the limit.
constexpr int kSingleRowCols = 2;

template <int kCols>
MAGMA_BF16_TARGET void RowsForCols(const uint16_t* w, int64_t K, const uint16_t* const* xs, float* const* out,
                                   int64_t n0, int64_t n1, bool accumulate) {
  int64_t n = n0;
  if (kCols > kSingleRowCols) {
    for (; n + 4 <= n1; n += 4) Tile<4, kCols>(w, K, xs, out, n, accumulate);
  }
  for (; n < n1; ++n) Row<kCols>(w + n * K, K, xs, out, n, accumulate);
}

MAGMA_BF16_TARGET void GemvRowsAvx512(const uint16_t* w, const uint16_t* xb, int64_t B, int64_t K, int64_t N,
                                      int64_t n0, int64_t n1, float* y, bool accumulate) {
  for (int64_t b0 = 0; b0 < B; b0 += 8) {
    const int cols = static_cast<int>(std::min<int64_t>(8, B - b0));
    const uint16_t* xs[8];
    float* out[8];
    for (int c = 0; c < cols; ++c) {
      xs[c] = xb + (b0 + c) * K;
      out[c] = y + (b0 + c) * N;
    }
    switch (cols) {
      case 1: RowsForCols<1>(w, K, xs, out, n0, n1, accumulate); break;
      case 2: RowsForCols<2>(w, K, xs, out, n0, n1, accumulate); break;
      case 3: RowsForCols<3>(w, K, xs, out, n0, n1, accumulate); break;
      case 4: RowsForCols<4>(w, K, xs, out, n0, n1, accumulate); break;
      case 5: RowsForCols<5>(w, K, xs, out, n0, n1, accumulate); break;
      case 6: RowsForCols<6>(w, K, xs, out, n0, n1, accumulate); break;
      case 7: RowsForCols<7>(w, K, xs, out, n0, n1, accumulate); break;
      default: RowsForCols<8>(w, K, xs, out, n0, n1, accumulate); break;
    }
  }
}

// Without bfloat16 dot products (AVX2 + FMA): weights widened to float32 in
// registers (exact: a bfloat16 is the top half of a float32), activations
// widened once per pass. Each activation row has two accumulators of its
// own, in the same order whatever the batch, so that a row's result never
// depends on how many rows share the pass. Up to four activation rows go
// with each walk along a weight row (eight accumulators, two weight
// registers); a larger batch walks the row again, from L1.
#define MAGMA_AVX2_TARGET __attribute__((target("avx2,fma")))

MAGMA_AVX2_TARGET inline __m256 LoadBf16x8(const uint16_t* p) {
  return _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
}

MAGMA_AVX2_TARGET inline float Sum8(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}

template <int kCols>
MAGMA_AVX2_TARGET inline void RowAvx2(const uint16_t* wr, int64_t K, const float* const* xs, float* const* out,
                                      int64_t n, bool accumulate) {
  __m256 acc[kCols][2];
  _Pragma("GCC unroll 4") for (int c = 0; c < kCols; ++c) acc[c][0] = acc[c][1] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    const __m256 w0 = LoadBf16x8(wr + k), w1 = LoadBf16x8(wr + k + 8);
    _Pragma("GCC unroll 4") for (int c = 0; c < kCols; ++c) {
      acc[c][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xs[c] + k), acc[c][0]);
      acc[c][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xs[c] + k + 8), acc[c][1]);
    }
  }
  _Pragma("GCC unroll 4") for (int c = 0; c < kCols; ++c) {
    float dot = Sum8(_mm256_add_ps(acc[c][0], acc[c][1]));
    for (int64_t t = k; t < K; ++t) dot += Bf16ToFloat(wr[t]) * xs[c][t];
    out[c][n] = accumulate ? out[c][n] + dot : dot;
  }
}

// xf: the activations widened to float32, [B, K].
MAGMA_AVX2_TARGET void GemvRowsAvx2(const uint16_t* w, const float* xf, int64_t B, int64_t K, int64_t N, int64_t n0,
                                    int64_t n1, float* y, bool accumulate) {
  constexpr int64_t kWalk = 4;  // activation rows per walk along a weight row
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t b0 = 0; b0 < B; b0 += kWalk) {
      const int cols = static_cast<int>(std::min(kWalk, B - b0));
      const float* xs[kWalk];
      float* out[kWalk];
      for (int c = 0; c < cols; ++c) {
        xs[c] = xf + (b0 + c) * K;
        out[c] = y + (b0 + c) * N;
      }
      switch (cols) {
        case 1:
          RowAvx2<1>(w + n * K, K, xs, out, n, accumulate);
          break;
        case 2:
          RowAvx2<2>(w + n * K, K, xs, out, n, accumulate);
          break;
        case 3:
          RowAvx2<3>(w + n * K, K, xs, out, n, accumulate);
          break;
        default:
          RowAvx2<4>(w + n * K, K, xs, out, n, accumulate);
          break;
      }
    }
  }
}
#endif

}  // namespace

namespace {

Bf16Isa DetectBf16Isa() {
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw")) return Bf16Isa::kAvx512Bf16;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Bf16Isa::kAvx2;
#endif
  return Bf16Isa::kPortable;
}

std::atomic<Bf16Isa> isa_limit{Bf16Isa::kAvx512Bf16};

}  // namespace

const char* Bf16IsaName(Bf16Isa isa) {
  switch (isa) {
    case Bf16Isa::kAvx512Bf16:
      return "avx512-bf16";
    case Bf16Isa::kAvx2:
      return "avx2";
    case Bf16Isa::kPortable:
      break;
  }
  return "portable";
}

Bf16Isa BestBf16Isa() {
  static const Bf16Isa best = DetectBf16Isa();
  return best;
}

Bf16Isa Bf16IsaInUse() { return std::max(BestBf16Isa(), isa_limit.load(std::memory_order_relaxed)); }

Bf16Isa LimitBf16Isa(Bf16Isa isa) { return isa_limit.exchange(isa); }

bool HasAvx512Bf16() { return Bf16IsaInUse() == Bf16Isa::kAvx512Bf16; }

void GemvBf16(const uint16_t* xb, int64_t B, int64_t K, const std::vector<GemvTarget>& targets) {
  std::vector<int64_t> first_row{0};  // targets[i] owns rows [first_row[i], first_row[i + 1]) of the pass
  for (const GemvTarget& t : targets) {
    TORCH_CHECK(t.w != nullptr && t.w->scalar_type() == at::kBFloat16 && t.w->dim() == 2 && t.w->is_contiguous() &&
                    t.w->size(1) == K,
                "GemvBf16: weight must be contiguous bfloat16 [N, ", K, "]");
    first_row.push_back(first_row.back() + t.w->size(0));
  }
  const Bf16Isa isa = Bf16IsaInUse();
  // The AVX2 path multiplies float32 activations: widened once here.
  std::vector<float> xf;
  if (isa == Bf16Isa::kAvx2) {
    xf.resize(static_cast<size_t>(B * K));
    for (int64_t i = 0; i < B * K; ++i) xf[static_cast<size_t>(i)] = Bf16ToFloat(xb[i]);
  }
  // Grain: enough rows that each task streams at least ~256 KiB of weights.
  const int64_t grain = std::max<int64_t>(16, (256 << 10) / std::max<int64_t>(1, K * 2));
  at::parallel_for(0, first_row.back(), grain, [&](int64_t r0, int64_t r1) {
    for (size_t i = 0; i < targets.size(); ++i) {
      const int64_t n0 = std::max(r0, first_row[i]) - first_row[i];
      const int64_t n1 = std::min(r1, first_row[i + 1]) - first_row[i];
      if (n0 >= n1) continue;
      const GemvTarget& t = targets[i];
      const auto* wp = reinterpret_cast<const uint16_t*>(t.w->data_ptr());
      const int64_t N = t.w->size(0);
#if defined(__x86_64__)
      if (isa == Bf16Isa::kAvx512Bf16) {
        GemvRowsAvx512(wp, xb, B, K, N, n0, n1, t.y, t.accumulate);
        continue;
      }
      if (isa == Bf16Isa::kAvx2) {
        GemvRowsAvx2(wp, xf.data(), B, K, N, n0, n1, t.y, t.accumulate);
        continue;
      }
#endif
      GemvRowsPortable(wp, xb, B, K, N, n0, n1, t.y, t.accumulate);
    }
  });
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
  GemvBf16(reinterpret_cast<const uint16_t*>(x2.data_ptr()), B, K, {{&w, y.data_ptr<float>(), false}});
  if (bias.defined()) y.add_(bias.to(at::kFloat));
  return y.view(out_shape);
}

at::Tensor LinearBf16Gemm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias) {
  TORCH_CHECK(w.scalar_type() == at::kBFloat16 && w.dim() == 2, "LinearBf16Gemm: bad weight");
  const int64_t N = w.size(0), K = w.size(1);
  TORCH_CHECK(K > 0 && x.size(-1) == K, "LinearBf16Gemm: x has ", x.size(-1), " features, weight expects ", K);
  if (Bf16IsaInUse() == Bf16Isa::kAvx512Bf16) {
    // oneDNN returns bfloat16: the sums are rounded to bfloat16 on this path.
    at::Tensor y = at::linear(x.to(at::kBFloat16), w).to(at::kFloat);
    return bias.defined() ? y.add_(bias.to(at::kFloat)) : y;
  }
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = N;
  // The same products as above (x rounded to bfloat16, exact float32
  // weights), with the sums kept in float32.
  const at::Tensor xr = x.reshape({-1, K}).to(at::kBFloat16).to(at::kFloat);
  at::Tensor y = at::empty({xr.size(0), N}, at::TensorOptions().dtype(at::kFloat));
  // Blocks of about 16 MiB of widened weights, in a buffer each thread keeps
  // (a fresh large block would be page-faulted in on every call).
  const int64_t block = std::max<int64_t>(64, (int64_t{16} << 20) / (K * 4));
  thread_local at::Tensor buffer;
  if (!buffer.defined() || buffer.numel() < std::min(block, N) * K) {
    buffer = at::empty({std::min(block, N) * K}, at::TensorOptions().dtype(at::kFloat));
  }
  for (int64_t n0 = 0; n0 < N; n0 += block) {
    const int64_t nb = std::min(block, N - n0);
    at::Tensor wf = buffer.narrow(0, 0, nb * K).view({nb, K});
    wf.copy_(w.narrow(0, n0, nb));
    if (nb == N) {
      at::mm_out(y, xr, wf.t());
    } else {
      y.narrow(1, n0, nb).copy_(at::mm(xr, wf.t()));
    }
  }
  if (bias.defined()) y.add_(bias.to(at::kFloat));
  return y.view(out_shape);
}

namespace {

// Row of a cache tensor as float32 values, 16 lanes at a time (the fixed
// lane count lets the compiler vectorise without fast-math).
template <typename T>
inline float LoadAsFloat(const T* p, int64_t i);
template <>
inline float LoadAsFloat<float>(const float* p, int64_t i) {
  return p[i];
}
template <>
inline float LoadAsFloat<uint16_t>(const uint16_t* p, int64_t i) {
  return Bf16ToFloat(p[i]);
}

template <typename T>
inline float Dot(const float* q, const T* k, int64_t d) {
  float lanes[16] = {0};
  int64_t i = 0;
  for (; i + 16 <= d; i += 16) {
    for (int l = 0; l < 16; ++l) lanes[l] += q[i + l] * LoadAsFloat(k, i + l);
  }
  float acc = 0;
  for (; i < d; ++i) acc += q[i] * LoadAsFloat(k, i);
  for (int l = 0; l < 16; ++l) acc += lanes[l];
  return acc;
}

#if defined(__x86_64__)
// 16 bfloat16 values widened to float32 (a bfloat16 is the top half of one).
MAGMA_BF16_TARGET inline __m512 LoadBf16x16(const uint16_t* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
}

// scores[j * len + t] = q[j] . k[t] * scale for the g query heads sharing
// one KV head; each key row is read once for all g heads.
MAGMA_BF16_TARGET void ScoresAvx512(const float* q, const uint16_t* kb, int64_t len, int64_t d, int64_t g, float scale,
                                    float* scores) {
  for (int64_t t = 0; t < len; ++t) {
    const uint16_t* kr = kb + t * d;
    for (int64_t j = 0; j < g; ++j) {
      const float* qj = q + j * d;
      __m512 acc = _mm512_setzero_ps();
      for (int64_t i = 0; i < d; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(qj + i), LoadBf16x16(kr + i), acc);
      scores[j * len + t] = _mm512_reduce_add_ps(acc) * scale;
    }
  }
}

// out[j] = sum_t probs[j * len + t] * v[t] for the g heads.
MAGMA_BF16_TARGET void ValuesAvx512(const float* probs, const uint16_t* vb, int64_t len, int64_t d, int64_t g,
                                    float* out) {
  for (int64_t i = 0; i < g * d; ++i) out[i] = 0;
  for (int64_t t = 0; t < len; ++t) {
    const uint16_t* vr = vb + t * d;
    for (int64_t i = 0; i < d; i += 16) {
      const __m512 vv = LoadBf16x16(vr + i);
      for (int64_t j = 0; j < g; ++j) {
        float* o = out + j * d + i;
        _mm512_storeu_ps(o, _mm512_fmadd_ps(_mm512_set1_ps(probs[j * len + t]), vv, _mm512_loadu_ps(o)));
      }
    }
  }
}
#endif

template <typename T>
void DecodeAttentionImpl(const float* q, const T* k, const T* v, const std::vector<int64_t>& slots,
                         const std::vector<int64_t>& lengths, int64_t heads, int64_t kv_heads, int64_t capacity,
                         int64_t d, float scale, float* out) {
  const int64_t B = static_cast<int64_t>(slots.size());
  const int64_t g = heads / kv_heads;
  at::parallel_for(0, B * kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / kv_heads, kh = task % kv_heads;
      const int64_t len = lengths[b];
      const T* kb = k + (slots[b] * kv_heads + kh) * capacity * d;
      const T* vb = v + (slots[b] * kv_heads + kh) * capacity * d;
      scores.resize(static_cast<size_t>(g * len));
      const float* qh = q + (b * heads + kh * g) * d;  // the g query heads of this KV head
#if defined(__x86_64__)
      constexpr bool kBf16 = std::is_same<T, uint16_t>::value;
      const bool vector_path = kBf16 && d % 16 == 0 && HasAvx512Bf16();
      if (vector_path) {
        ScoresAvx512(qh, reinterpret_cast<const uint16_t*>(kb), len, d, g, scale, scores.data());
      }
#else
      const bool vector_path = false;
#endif
      if (!vector_path) {
        for (int64_t t = 0; t < len; ++t) {
          for (int64_t j = 0; j < g; ++j) scores[j * len + t] = Dot(qh + j * d, kb + t * d, d) * scale;
        }
      }
      for (int64_t j = 0; j < g; ++j) {
        float* s = scores.data() + j * len;
        float mx = s[0];
        for (int64_t t = 1; t < len; ++t) mx = std::max(mx, s[t]);
        float sum = 0;
        for (int64_t t = 0; t < len; ++t) {
          s[t] = std::exp(s[t] - mx);
          sum += s[t];
        }
        const float inv = 1.0f / sum;
        for (int64_t t = 0; t < len; ++t) s[t] *= inv;
        if (vector_path) continue;
        float* o = out + (b * heads + kh * g + j) * d;
        for (int64_t i = 0; i < d; ++i) o[i] = 0;
        for (int64_t t = 0; t < len; ++t) {
          const T* vr = vb + t * d;
          for (int64_t i = 0; i < d; ++i) o[i] += s[t] * LoadAsFloat(vr, i);
        }
      }
#if defined(__x86_64__)
      if (vector_path) {
        ValuesAvx512(scores.data(), reinterpret_cast<const uint16_t*>(vb), len, d, g, out + (b * heads + kh * g) * d);
      }
#endif
    }
  });
}

}  // namespace

at::Tensor DecodeAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const std::vector<int64_t>& slots, const std::vector<int64_t>& lengths, double scale) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 4 && k.sizes() == v.sizes() && k.scalar_type() == v.scalar_type(),
              "DecodeAttention: bad shapes");
  TORCH_CHECK(k.is_contiguous() && v.is_contiguous(), "DecodeAttention: cache must be contiguous");
  const int64_t heads = q.size(1), d = q.size(2), kv_heads = k.size(1), capacity = k.size(2);
  TORCH_CHECK(k.size(3) == d && heads % kv_heads == 0 && static_cast<int64_t>(slots.size()) == q.size(0) &&
                  slots.size() == lengths.size(),
              "DecodeAttention: inconsistent sizes");
  at::Tensor qc = q.to(at::kFloat).contiguous();
  at::Tensor out = at::empty(q.sizes(), at::TensorOptions().dtype(at::kFloat));
  if (k.scalar_type() == at::kBFloat16) {
    DecodeAttentionImpl(qc.data_ptr<float>(), reinterpret_cast<const uint16_t*>(k.data_ptr()),
                        reinterpret_cast<const uint16_t*>(v.data_ptr()), slots, lengths, heads, kv_heads, capacity, d,
                        static_cast<float>(scale), out.data_ptr<float>());
  } else {
    TORCH_CHECK(k.scalar_type() == at::kFloat, "DecodeAttention: cache must be float32 or bfloat16");
    DecodeAttentionImpl(qc.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(), slots, lengths, heads,
                        kv_heads, capacity, d, static_cast<float>(scale), out.data_ptr<float>());
  }
  return out;
}

namespace {

// Rows [r0, r1) (image rows n * H + h) of the depthwise weight gradient, into
// acc [k * k * C] (float64). x, g: [N, H, W, C] memory.
template <int kBlock>
[[gnu::always_inline]] inline void DepthwiseRows(const float* x, const float* g, int64_t H, int64_t W, int64_t C,
                                                 int64_t k, int64_t pad, int64_t r0, int64_t r1, double* acc) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / H, h = r % H;
    const float* grow = g + (n * H + h) * W * C;
    for (int64_t i = 0; i < k; ++i) {
      const int64_t iy = h + i - pad;
      if (iy < 0 || iy >= H) continue;
      const float* xrow = x + (n * H + iy) * W * C;
      for (int64_t j = 0; j < k; ++j) {
        // Output columns whose input column w + j - pad lies in the row.
        const int64_t w0 = std::max<int64_t>(0, pad - j), w1 = std::min<int64_t>(W, W + pad - j);
        double* out = acc + (i * k + j) * C;
        for (int64_t c0 = 0; c0 < C; c0 += kBlock) {
          const int64_t cb = std::min<int64_t>(kBlock, C - c0);
          float t[kBlock] = {};
          if (cb == kBlock) {
            for (int64_t w = w0; w < w1; ++w) {
              const float* xp = xrow + (w + j - pad) * C + c0;
              const float* gp = grow + w * C + c0;
              for (int c = 0; c < kBlock; ++c) t[c] += xp[c] * gp[c];
            }
          } else {
            for (int64_t w = w0; w < w1; ++w) {
              const float* xp = xrow + (w + j - pad) * C + c0;
              const float* gp = grow + w * C + c0;
              for (int64_t c = 0; c < cb; ++c) t[c] += xp[c] * gp[c];
            }
          }
          for (int64_t c = 0; c < cb; ++c) out[c0 + c] += t[c];
        }
      }
    }
  }
}

void DepthwiseRowsPortable(const float* x, const float* g, int64_t H, int64_t W, int64_t C, int64_t k, int64_t pad,
                           int64_t r0, int64_t r1, double* acc) {
  DepthwiseRows<16>(x, g, H, W, C, k, pad, r0, r1, acc);
}

#if defined(__x86_64__)
MAGMA_AVX2_TARGET void DepthwiseRowsAvx2(const float* x, const float* g, int64_t H, int64_t W, int64_t C, int64_t k,
                                         int64_t pad, int64_t r0, int64_t r1, double* acc) {
  DepthwiseRows<16>(x, g, H, W, C, k, pad, r0, r1, acc);
}
#endif

// at::conv2d's depthwise convolution with the backward pass above.
struct DepthwiseConvFunction : public torch::autograd::Function<DepthwiseConvFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w,
                            const at::Tensor& bias, int64_t padding) {
    TORCH_CHECK(x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat,
                "DepthwiseConv2d: x and w must be float32");
    ctx->save_for_backward({x, w});
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["bias"] = bias.defined();
    return at::conv2d(x, w, bias, {1, 1}, {padding, padding}, {1, 1}, x.size(1));
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    TORCH_CHECK(!at::GradMode::is_enabled(), "DepthwiseConv2d has no second derivative (create_graph)");
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor& w = saved[1];
    const int64_t padding = ctx->saved_data["padding"].toInt();
    const at::Tensor g = grads[0].contiguous(x.suggest_memory_format());
    at::Tensor gx, gw, gb;
    if (ctx->needs_input_grad(0)) {
      gx = at::conv2d(g, w.flip({2, 3}), {}, {1, 1}, {w.size(2) - 1 - padding, w.size(3) - 1 - padding}, {1, 1},
                      x.size(1));
    }
    if (ctx->needs_input_grad(1)) gw = DepthwiseConvWeightGrad(x, g, w.size(2), padding);
    if (ctx->needs_input_grad(2) && ctx->saved_data["bias"].toBool()) gb = g.sum({0, 2, 3});
    return {gx, gw, gb, at::Tensor()};
  }
};

}  // namespace

at::Tensor DepthwiseConvWeightGrad(const at::Tensor& x, const at::Tensor& g, int64_t k, int64_t padding) {
  TORCH_CHECK(x.dim() == 4 && g.sizes() == x.sizes() && x.scalar_type() == at::kFloat && g.scalar_type() == at::kFloat,
              "DepthwiseConvWeightGrad: x and g must be float32 [N, C, H, W] of one shape");
  TORCH_CHECK(k >= 1 && padding >= 0 && 2 * padding == k - 1,
              "DepthwiseConvWeightGrad: the output must keep the input's size (k = 2 * padding + 1)");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  // [N, H, W, C] memory: a no-op for channels-last tensors.
  const at::Tensor xl = x.permute({0, 2, 3, 1}).contiguous(), gl = g.permute({0, 2, 3, 1}).contiguous();
  const float* xp = xl.data_ptr<float>();
  const float* gp = gl.data_ptr<float>();
  const int threads = at::get_num_threads();
  std::vector<std::vector<double>> acc(threads, std::vector<double>(k * k * C, 0.0));
#if defined(__x86_64__)
  const bool avx2 = Bf16IsaInUse() != Bf16Isa::kPortable;
#else
  const bool avx2 = false;
#endif
  at::parallel_for(0, N * H, 4, [&](int64_t r0, int64_t r1) {
    const int tid = at::get_thread_num();
    TORCH_CHECK(tid >= 0 && tid < threads, "DepthwiseConvWeightGrad: thread ", tid, " of ", threads);
    double* a = acc[tid].data();
#if defined(__x86_64__)
    if (avx2) return DepthwiseRowsAvx2(xp, gp, H, W, C, k, padding, r0, r1, a);
#endif
    DepthwiseRowsPortable(xp, gp, H, W, C, k, padding, r0, r1, a);
  });
  at::Tensor out = at::empty({C, 1, k, k}, at::kFloat);
  float* o = out.data_ptr<float>();
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t ij = 0; ij < k * k; ++ij) {
      double sum = 0.0;
      for (const auto& a : acc) sum += a[ij * C + c];
      o[c * k * k + ij] = static_cast<float>(sum);
    }
  }
  return out;
}

at::Tensor DepthwiseConv2d(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, int64_t padding) {
  return DepthwiseConvFunction::apply(x, w, bias, padding);
}

}  // namespace magma::model
