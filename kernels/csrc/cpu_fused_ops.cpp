// The small per-layer ops of a decoder, each fused into one pass on the CPU: RMSNorm with
// its residual add, SiLU(gate) * up, and neox RoPE. At decode sizes (one to a few dozen rows
// of 576-4096 values) torch runs each as 4-8 ops, and every op pays its dispatch and an
// OpenMP fork/join that cost more than the arithmetic: 61 RMSNorms of a SmolLM2 decode step
// took 6 ms at one row, the work of 0.1 ms. Here small inputs run on the calling thread and
// large ones (a prefill chunk) split their rows over threads.
//
// Rounding follows transformers' Llama for float32 and bfloat16: the residual sum is rounded
// to the dtype, the norm is computed in float32 and rounded, then scaled by the weight; SiLU
// and each RoPE product are rounded where torch's elementwise ops round them.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <type_traits>
#ifdef __AVX2__
#include <immintrin.h>
#endif

namespace {

// Rows per task such that a task holds about this many values: smaller inputs stay on the
// calling thread (at::parallel_for runs inline when the range is within one grain).
constexpr int64_t kValuesPerTask = 1 << 15;

int64_t grain_for(int64_t row_size) { return std::max<int64_t>(1, kValuesPerTask / std::max<int64_t>(row_size, 1)); }

template <typename scalar_t>
inline scalar_t round_to(float v) { return static_cast<scalar_t>(v); }

// v rounded to the dtype and back: an intermediate result as torch would store it.
template <typename scalar_t>
inline float r(float v) { return static_cast<float>(static_cast<scalar_t>(v)); }

// out = rms_norm(sum) * weight, sum = x (+ residual), sum written to new_residual if given.
template <typename scalar_t>
void add_rms_norm_impl(const at::Tensor& x, const at::Tensor* residual, const at::Tensor& weight,
                       double eps, at::Tensor& out, at::Tensor* new_residual) {
  const int64_t rows = x.size(0), H = x.size(1);
  const scalar_t* xp = x.data_ptr<scalar_t>();
  const scalar_t* rp = residual ? residual->data_ptr<scalar_t>() : nullptr;
  const scalar_t* wp = weight.data_ptr<scalar_t>();
  scalar_t* op = out.data_ptr<scalar_t>();
  scalar_t* np = new_residual ? new_residual->data_ptr<scalar_t>() : nullptr;
  at::parallel_for(0, rows, grain_for(H), [&](int64_t begin, int64_t end) {
    std::vector<float> sum(H);
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* xr = xp + r * H;
      // Summed in double: a float sum taken in order drifts by ~sqrt(H) ulp, more than
      // torch's vectorised one; the double sum stays below either's rounding.
      double squares = 0.0;
      for (int64_t i = 0; i < H; ++i) {
        // The sum rounded to the dtype first: transformers adds the residual in the dtype.
        const scalar_t s = rp ? round_to<scalar_t>(static_cast<float>(xr[i]) + static_cast<float>(rp[r * H + i])) : xr[i];
        if (np) np[r * H + i] = s;
        sum[i] = static_cast<float>(s);
        squares += static_cast<double>(sum[i]) * sum[i];
      }
      const float inv = static_cast<float>(1.0 / std::sqrt(squares / static_cast<double>(H) + eps));
      scalar_t* o = op + r * H;
      for (int64_t i = 0; i < H; ++i)
        o[i] = round_to<scalar_t>(static_cast<float>(round_to<scalar_t>(sum[i] * inv)) * static_cast<float>(wp[i]));
    }
  });
}

#ifdef __AVX2__
// glibc's vector expf for 8 lanes (libmvec, linked with -lmvec): within 4 ulp of expf.
extern "C" __m256 _ZGVdN8v_expf(__m256);

// silu(g) * u over float lanes, 8 at a time; returns how many lanes it did.
int64_t silu_and_mul_avx2(const float* g, const float* u, float* o, int64_t n) {
  const __m256 one = _mm256_set1_ps(1.f), zero = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 a = _mm256_loadu_ps(g + i);
    const __m256 act = _mm256_div_ps(a, _mm256_add_ps(one, _ZGVdN8v_expf(_mm256_sub_ps(zero, a))));
    _mm256_storeu_ps(o + i, _mm256_mul_ps(act, _mm256_loadu_ps(u + i)));
  }
  return i;
}
#else
int64_t silu_and_mul_avx2(const float*, const float*, float*, int64_t) { return 0; }
#endif

template <typename scalar_t>
void silu_and_mul_impl(const at::Tensor& gate_up, at::Tensor& out) {
  const int64_t rows = gate_up.size(0), I = out.size(1);
  const int64_t in_stride = gate_up.stride(0);
  const scalar_t* gp = gate_up.data_ptr<scalar_t>();
  scalar_t* op = out.data_ptr<scalar_t>();
  at::parallel_for(0, rows, grain_for(2 * I), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* g = gp + r * in_stride;
      const scalar_t* u = g + I;
      scalar_t* o = op + r * I;
      int64_t i = 0;
      if constexpr (std::is_same_v<scalar_t, float>) i = silu_and_mul_avx2(g, u, o, I);
      for (; i < I; ++i) {
        const float a = static_cast<float>(g[i]);
        // torch rounds silu's result to the dtype before the product: the same here.
        const scalar_t act = round_to<scalar_t>(a / (1.f + std::exp(-a)));
        o[i] = round_to<scalar_t>(static_cast<float>(act) * static_cast<float>(u[i]));
      }
    }
  });
}

// x: [n, heads, d] (last dim contiguous, any row/head strides); cos, sin: [n, 1, r/2] with
// contiguous last dims. out: contiguous [n, heads, d]; lanes past r copied through.
template <typename scalar_t>
void rope_neox_impl(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, at::Tensor& out) {
  const int64_t n = x.size(0), heads = x.size(1), D = x.size(2), half = cos.size(2);
  const int64_t xs0 = x.stride(0), xs1 = x.stride(1);
  const int64_t cs0 = cos.stride(0), ss0 = sin.stride(0);
  const scalar_t* xp = x.data_ptr<scalar_t>();
  const scalar_t* cp = cos.data_ptr<scalar_t>();
  const scalar_t* sp = sin.data_ptr<scalar_t>();
  scalar_t* op = out.data_ptr<scalar_t>();
  at::parallel_for(0, n, grain_for(heads * D), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const scalar_t* c = cp + t * cs0;
      const scalar_t* s = sp + t * ss0;
      for (int64_t h = 0; h < heads; ++h) {
        const scalar_t* xi = xp + t * xs0 + h * xs1;
        scalar_t* o = op + (t * heads + h) * D;
        for (int64_t i = 0; i < half; ++i) {
          const float x1 = static_cast<float>(xi[i]), x2 = static_cast<float>(xi[i + half]);
          const float ci = static_cast<float>(c[i]), si = static_cast<float>(s[i]);
          // Each product rounded to the dtype before the sum, as torch's (and transformers')
          // elementwise ops do: bfloat16 results then equal theirs bit for bit.
          o[i] = round_to<scalar_t>(r<scalar_t>(x1 * ci) - r<scalar_t>(x2 * si));
          o[i + half] = round_to<scalar_t>(r<scalar_t>(x2 * ci) + r<scalar_t>(x1 * si));
        }
        for (int64_t i = 2 * half; i < D; ++i) o[i] = xi[i];
      }
    }
  });
}

void check_float_or_bf16(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu(), what, " must be on the CPU");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16, what,
              " must be float32 or bfloat16, not ", t.scalar_type());
}

}  // namespace

// x, residual: [rows, hidden] contiguous, of one dtype; weight: [hidden]. Returns
// (rms_norm(x + residual) * weight, x + residual); without residual (None), (norm(x), x).
std::vector<at::Tensor> add_rms_norm(const at::Tensor& x, const c10::optional<at::Tensor>& residual,
                                     const at::Tensor& weight, double eps) {
  check_float_or_bf16(x, "add_rms_norm: x");
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "add_rms_norm: x must be a contiguous [rows, hidden]");
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(1) && weight.is_contiguous() &&
                  weight.scalar_type() == x.scalar_type(),
              "add_rms_norm: weight must be a contiguous [hidden] of x's dtype");
  at::Tensor out = at::empty_like(x);
  if (!residual.has_value()) {
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "add_rms_norm", [&] {
      add_rms_norm_impl<scalar_t>(x, nullptr, weight, eps, out, nullptr);
    });
    return {out, x};
  }
  const at::Tensor& res = *residual;
  TORCH_CHECK(res.sizes() == x.sizes() && res.is_contiguous() && res.scalar_type() == x.scalar_type(),
              "add_rms_norm: residual must be a contiguous tensor of x's shape and dtype");
  at::Tensor new_residual = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "add_rms_norm", [&] {
    add_rms_norm_impl<scalar_t>(x, &res, weight, eps, out, &new_residual);
  });
  return {out, new_residual};
}

// gate_up: [rows, 2 * I] (rows may be strided, each row contiguous) -> silu(gate) * up, [rows, I].
at::Tensor silu_and_mul(const at::Tensor& gate_up) {
  check_float_or_bf16(gate_up, "silu_and_mul: gate_up");
  TORCH_CHECK(gate_up.dim() == 2 && gate_up.size(1) % 2 == 0 && gate_up.stride(1) == 1,
              "silu_and_mul: gate_up must be [rows, 2 * I] with contiguous rows");
  at::Tensor out = at::empty({gate_up.size(0), gate_up.size(1) / 2}, gate_up.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, gate_up.scalar_type(), "silu_and_mul", [&] {
    silu_and_mul_impl<scalar_t>(gate_up, out);
  });
  return out;
}

// Neox ("rotate half") RoPE: x [n, heads, d], cos/sin [n, 1, r/2] (r <= d) -> a new
// contiguous [n, heads, d].
at::Tensor rope_neox(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  check_float_or_bf16(x, "rope_neox: x");
  TORCH_CHECK(x.dim() == 3 && x.stride(2) == 1, "rope_neox: x must be [n, heads, d], last dim contiguous");
  TORCH_CHECK(cos.dim() == 3 && cos.sizes() == sin.sizes() && cos.size(0) == x.size(0) &&
                  cos.size(1) == 1 && 2 * cos.size(2) <= x.size(2) && cos.stride(2) == 1 &&
                  sin.stride(2) == 1,
              "rope_neox: cos and sin must be [n, 1, r/2] with r <= d, last dims contiguous");
  TORCH_CHECK(cos.scalar_type() == x.scalar_type() && sin.scalar_type() == x.scalar_type(),
              "rope_neox: cos and sin must have x's dtype");
  at::Tensor out = at::empty(x.sizes(), x.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "rope_neox", [&] {
    rope_neox_impl<scalar_t>(x, cos, sin, out);
  });
  return out;
}
