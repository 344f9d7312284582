// A linear layer for the few rows of a decode step on an AVX2 CPU: y = x @ W.T (+ bias), x in
// float32, W stored packed in float32 or bfloat16 (bf16 is read at half the bytes, widened in
// registers, and every product and sum is float32).
//
// At one to a few dozen rows a linear is bound by reading its weight from memory. oneDNN's
// inner product reaches 6-8 GB/s on a SmolLM2 attention matrix at one row against ~15 GB/s on
// its LM head: the small matrices are split too finely over threads to stream. Here each
// thread reads one contiguous run of the packed weight from start to end.
//
// Packed layout: W [N, K] becomes [ceil(N/16), K, 16]: for each block of 16 outputs, the 16
// weights of input k side by side, so one k is one 64-byte (fp32) or 32-byte (bf16) load that
// feeds two 8-lane FMAs per row of x. Rows of x go through in groups of up to 6 (12
// accumulators, the register file's limit) while the block's weights stay in L1.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t kBlock = 16;
constexpr int kMaxRows = 6;

// The 16 weights of one k as two 8-lane float vectors.
inline void load_weights(const float* w, __m256& lo, __m256& hi) {
  lo = _mm256_loadu_ps(w);
  hi = _mm256_loadu_ps(w + 8);
}

inline void load_weights(const at::BFloat16* w, __m256& lo, __m256& hi) {
  // bf16 is the top half of a float32: widen to 32 bits (the load folds into the widening)
  // and shift into place.
  const __m128i* p = reinterpret_cast<const __m128i*>(w);
  lo = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(p)), 16));
  hi = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(p + 1)), 16));
}

// One packed block ([K, 16]) widened to float32, into `out`.
inline void widen_block(const at::BFloat16* w, int64_t K, float* out) {
  for (int64_t k = 0; k < K; ++k) {
    __m256 lo, hi;
    load_weights(w + k * kBlock, lo, hi);
    _mm256_storeu_ps(out + k * kBlock, lo);
    _mm256_storeu_ps(out + k * kBlock + 8, hi);
  }
}

// The accumulators of up to kMaxRows rows: named registers, not an array. GCC keeps an
// array of vectors indexed in a loop in memory and stores every accumulator back on each k
// (12 stores per 12 FMAs: the loop ran at half speed); fixed names stay in registers.
struct Acc {
  __m256 lo0, hi0, lo1, hi1, lo2, hi2, lo3, hi3, lo4, hi4, lo5, hi5;
};

template <int ROWS>
inline void fma_rows(Acc& a, const float* x, int64_t K, int64_t k, __m256 w0, __m256 w1) {
#define PAGEDESK_ROW(r)                                              \
  if constexpr (ROWS > r) {                                          \
    const __m256 v = _mm256_broadcast_ss(x + r * K + k);             \
    a.lo##r = _mm256_fmadd_ps(w0, v, a.lo##r);                       \
    a.hi##r = _mm256_fmadd_ps(w1, v, a.hi##r);                       \
  }
  PAGEDESK_ROW(0) PAGEDESK_ROW(1) PAGEDESK_ROW(2) PAGEDESK_ROW(3) PAGEDESK_ROW(4) PAGEDESK_ROW(5)
#undef PAGEDESK_ROW
}

inline void store_row(__m256 lo, __m256 hi, const __m256* bias, float* out, int64_t valid) {
  if (bias) {
    lo = _mm256_add_ps(lo, bias[0]);
    hi = _mm256_add_ps(hi, bias[1]);
  }
  if (valid == kBlock) {
    _mm256_storeu_ps(out, lo);
    _mm256_storeu_ps(out + 8, hi);
  } else {  // the last block of an N that is not a multiple of 16
    alignas(32) float tmp[kBlock];
    _mm256_store_ps(tmp, lo);
    _mm256_store_ps(tmp + 8, hi);
    std::memcpy(out, tmp, valid * sizeof(float));
  }
}

// y[r, n0:n0+16] for ROWS rows of x (row stride K) against one packed block (w: [K, 16]).
template <int ROWS, typename weight_t>
inline void block_rows(const float* x, int64_t K, const weight_t* w, const float* bias,
                       float* y, int64_t ldy, int64_t valid) {
  const __m256 zero = _mm256_setzero_ps();
  Acc a{zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero};
  int64_t k = 0;
  if constexpr (ROWS <= 2) {
    // Few rows: a second set of accumulators for odd k, or the FMA latency (4 cycles)
    // would bound the loop before memory does.
    Acc b{zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero};
    for (; k + 1 < K; k += 2) {
      __m256 w0, w1, v0, v1;
      load_weights(w + k * kBlock, w0, w1);
      load_weights(w + (k + 1) * kBlock, v0, v1);
      fma_rows<ROWS>(a, x, K, k, w0, w1);
      fma_rows<ROWS>(b, x, K, k + 1, v0, v1);
    }
    a.lo0 = _mm256_add_ps(a.lo0, b.lo0); a.hi0 = _mm256_add_ps(a.hi0, b.hi0);
    a.lo1 = _mm256_add_ps(a.lo1, b.lo1); a.hi1 = _mm256_add_ps(a.hi1, b.hi1);
  }
  for (; k < K; ++k) {
    __m256 w0, w1;
    load_weights(w + k * kBlock, w0, w1);
    fma_rows<ROWS>(a, x, K, k, w0, w1);
  }
  __m256 b[2];
  const __m256* bp = nullptr;
  if (bias) {
    alignas(32) float padded[kBlock] = {};
    std::memcpy(padded, bias, valid * sizeof(float));
    b[0] = _mm256_load_ps(padded);
    b[1] = _mm256_load_ps(padded + 8);
    bp = b;
  }
  store_row(a.lo0, a.hi0, bp, y, valid);
  if constexpr (ROWS > 1) store_row(a.lo1, a.hi1, bp, y + ldy, valid);
  if constexpr (ROWS > 2) store_row(a.lo2, a.hi2, bp, y + 2 * ldy, valid);
  if constexpr (ROWS > 3) store_row(a.lo3, a.hi3, bp, y + 3 * ldy, valid);
  if constexpr (ROWS > 4) store_row(a.lo4, a.hi4, bp, y + 4 * ldy, valid);
  if constexpr (ROWS > 5) store_row(a.lo5, a.hi5, bp, y + 5 * ldy, valid);
}

template <typename weight_t>
void rows_of_block(const float* x, int64_t M, int64_t K, const weight_t* w, const float* bias,
                   float* y, int64_t N, int64_t valid) {
  int64_t m = 0;
  for (; m + kMaxRows <= M; m += kMaxRows)
    block_rows<kMaxRows>(x + m * K, K, w, bias, y + m * N, N, valid);
  switch (M - m) {
    case 5: block_rows<5>(x + m * K, K, w, bias, y + m * N, N, valid); break;
    case 4: block_rows<4>(x + m * K, K, w, bias, y + m * N, N, valid); break;
    case 3: block_rows<3>(x + m * K, K, w, bias, y + m * N, N, valid); break;
    case 2: block_rows<2>(x + m * K, K, w, bias, y + m * N, N, valid); break;
    case 1: block_rows<1>(x + m * K, K, w, bias, y + m * N, N, valid); break;
    default: break;
  }
}

template <typename weight_t>
void linear_impl(const at::Tensor& x, const at::Tensor& packed, const float* bias, at::Tensor& y) {
  const int64_t M = x.size(0), K = x.size(1), N = y.size(1), blocks = packed.size(0);
  const float* xp = x.data_ptr<float>();
  const weight_t* wp = packed.data_ptr<weight_t>();
  float* yp = y.data_ptr<float>();
  // A bf16 block feeding more than one group of rows is widened once into a float32 copy
  // that stays in cache: widening in every group's inner loop cost ~50% at 64 rows.
  constexpr bool kWiden = std::is_same_v<weight_t, at::BFloat16>;
  const bool widen = kWiden && M > kMaxRows;
  // One contiguous run of blocks per thread (grain 1: even 36 blocks are worth splitting, the
  // work is reading them).
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> wide(widen ? K * kBlock : 0);
    for (int64_t b = begin; b < end; ++b) {
      const int64_t n0 = b * kBlock;
      const float* bb = bias ? bias + n0 : nullptr;
      const int64_t valid = std::min(kBlock, N - n0);
      const weight_t* block = wp + b * K * kBlock;
      if constexpr (kWiden) {
        if (widen) {
          widen_block(block, K, wide.data());
          rows_of_block(xp, M, K, static_cast<const float*>(wide.data()), bb, yp + n0, N, valid);
          continue;
        }
      }
      rows_of_block(xp, M, K, block, bb, yp + n0, N, valid);
    }
  });
}

}  // namespace

// x [M, K] float32 @ packed [ceil(N/16), K, 16] (float32 or bfloat16) (+ bias [N]) -> [M, N].
at::Tensor packed_linear(const at::Tensor& x, const at::Tensor& packed, const c10::optional<at::Tensor>& bias,
                         int64_t out_features) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat, "x must be a 2-D float32 tensor, got ", x.sizes(), " ", x.scalar_type());
  TORCH_CHECK(packed.dim() == 3 && packed.size(2) == kBlock && packed.size(1) == x.size(1),
              "packed must be [ceil(out/16), in_features=", x.size(1), ", 16], got ", packed.sizes());
  TORCH_CHECK(packed.size(0) * kBlock >= out_features && (packed.size(0) - 1) * kBlock < out_features,
              "packed holds ", packed.size(0), " blocks of 16, not the ", out_features, " outputs asked for");
  TORCH_CHECK(packed.scalar_type() == at::kFloat || packed.scalar_type() == at::kBFloat16,
              "packed must be float32 or bfloat16, got ", packed.scalar_type());
  TORCH_CHECK(packed.is_contiguous(), "packed must be contiguous");
  const at::Tensor xc = x.contiguous();
  const float* bp = nullptr;
  at::Tensor bc;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->numel() == out_features, "bias must have ", out_features, " values, got ", bias->numel());
    bc = bias->to(at::kFloat).contiguous();
    bp = bc.data_ptr<float>();
  }
  at::Tensor y = at::empty({x.size(0), out_features}, x.options());
  if (packed.scalar_type() == at::kFloat)
    linear_impl<float>(xc, packed, bp, y);
  else
    linear_impl<at::BFloat16>(xc, packed, bp, y);
  return y;
}
