// Paged attention for decodes on the CPU: one query token per sequence, read straight from
// the paged KV cache through the block table (no gather of K/V into a padded batch first).
//
// Work is split over sequences and, when there are fewer sequences than threads, over parts
// of each context (flash-decoding's split: each part keeps its own max and sum, merged at the
// end). Within a part, each token's K row (every KV head, contiguous in the cache) is read
// once for all query heads: a block is 16 consecutive rows, so the reads stream. (Splitting
// by KV head instead strides through those rows; measured 4-6x slower on these CPUs.)
// Two passes: scores for every visible position, then exp and the weighted sum of V rows.
// Accumulation is in float32 whatever dtype the cache holds.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

struct Shape {
  int64_t n, num_heads, head_dim, block_size, num_kv_heads, group, max_blocks;
};

// One part of one sequence's context, [first, last): unnormalised output (acc), the scores'
// max (top) and the sum of exp(score - top), per query head.
template <typename scalar_t>
void attend_part(const Shape& sh, const scalar_t* q, const scalar_t* k_cache,
                 const scalar_t* v_cache, const int32_t* table, int64_t first, int64_t last,
                 float scale, float cap, float* acc, float* top, float* total) {
  const int64_t H = sh.num_heads, D = sh.head_dim, count = last - first;
  const int64_t row_size = sh.num_kv_heads * D;
  std::vector<float> qf(H * D), scores(H * std::max<int64_t>(count, 1));
  for (int64_t i = 0; i < H * D; ++i) qf[i] = static_cast<float>(q[i]) * scale;
  for (int64_t t = 0; t < count; ++t) {
    const int64_t pos = first + t;
    const int64_t slot = static_cast<int64_t>(table[pos / sh.block_size]) * sh.block_size + pos % sh.block_size;
    const scalar_t* k_row = k_cache + slot * row_size;
    for (int64_t h = 0; h < H; ++h) {
      const float* qh = qf.data() + h * D;
      const scalar_t* k = k_row + (h / sh.group) * D;
      float s = 0.f;
#pragma omp simd reduction(+ : s)
      for (int64_t d = 0; d < D; ++d) s += qh[d] * static_cast<float>(k[d]);
      if (cap > 0.f) s = cap * std::tanh(s / cap);
      scores[h * count + t] = s;
    }
  }
  for (int64_t h = 0; h < H; ++h) {
    float* row = scores.data() + h * count;
    const float m = count ? *std::max_element(row, row + count) : -std::numeric_limits<float>::infinity();
    float sum = 0.f;
    for (int64_t t = 0; t < count; ++t) sum += (row[t] = std::exp(row[t] - m));
    top[h] = m;
    total[h] = sum;
  }
  std::fill(acc, acc + H * D, 0.f);
  for (int64_t t = 0; t < count; ++t) {
    const int64_t pos = first + t;
    const int64_t slot = static_cast<int64_t>(table[pos / sh.block_size]) * sh.block_size + pos % sh.block_size;
    const scalar_t* v_row = v_cache + slot * row_size;
    for (int64_t h = 0; h < H; ++h) {
      const float w = scores[h * count + t];
      const scalar_t* v = v_row + (h / sh.group) * D;
      float* a = acc + h * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) a[d] += w * static_cast<float>(v[d]);
    }
  }
}

template <typename scalar_t>
void decode_attention_impl(const at::Tensor& q, const at::Tensor& k_cache,
                           const at::Tensor& v_cache, const at::Tensor& block_tables,
                           const at::Tensor& seq_lens, double scale, int64_t window,
                           double softcap, at::Tensor& out) {
  const Shape sh{q.size(0), q.size(1), q.size(2), k_cache.size(1), k_cache.size(2),
                 q.size(1) / k_cache.size(2), block_tables.size(1)};
  const int64_t H = sh.num_heads, D = sh.head_dim;
  const int64_t threads = at::get_num_threads();
  const int64_t parts = sh.n >= threads ? 1 : (threads + sh.n - 1) / sh.n;
  std::vector<float> acc(sh.n * parts * H * D), top(sh.n * parts * H), total(sh.n * parts * H);
  const scalar_t* q_ptr = q.data_ptr<scalar_t>();
  const scalar_t* k_ptr = k_cache.data_ptr<scalar_t>();
  const scalar_t* v_ptr = v_cache.data_ptr<scalar_t>();
  const int32_t* tables = block_tables.data_ptr<int32_t>();
  const int32_t* lens = seq_lens.data_ptr<int32_t>();

  at::parallel_for(0, sh.n * parts, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t seq = item / parts, part = item % parts;
      const int64_t len = lens[seq];
      const int64_t first = window > 0 ? std::max<int64_t>(0, len - window) : 0;
      const int64_t step = (len - first + parts - 1) / parts;
      const int64_t a = std::min(len, first + part * step), b = std::min(len, a + step);
      attend_part<scalar_t>(sh, q_ptr + seq * H * D, k_ptr, v_ptr, tables + seq * sh.max_blocks,
                            a, b, static_cast<float>(scale), static_cast<float>(softcap),
                            acc.data() + item * H * D, top.data() + item * H, total.data() + item * H);
    }
  });
  // Merge each sequence's parts: rescale each to the overall max, sum, normalise.
  scalar_t* out_ptr = out.data_ptr<scalar_t>();
  for (int64_t seq = 0; seq < sh.n; ++seq) {
    for (int64_t h = 0; h < H; ++h) {
      float m = -std::numeric_limits<float>::infinity();
      for (int64_t p = 0; p < parts; ++p) m = std::max(m, top[(seq * parts + p) * H + h]);
      float sum = 0.f;
      std::vector<float> o(D, 0.f);
      for (int64_t p = 0; p < parts; ++p) {
        const int64_t i = (seq * parts + p) * H + h;
        if (total[i] == 0.f) continue;  // an empty part
        const float w = std::exp(top[i] - m);
        sum += w * total[i];
        for (int64_t d = 0; d < D; ++d) o[d] += w * acc[i * D + d];
      }
      for (int64_t d = 0; d < D; ++d)
        out_ptr[(seq * H + h) * D + d] = static_cast<scalar_t>(o[d] / sum);
    }
  }
}

}  // namespace

// q: [n, heads, head_dim]; caches: [num_blocks, block_size, kv_heads, head_dim], all of one
// dtype and contiguous; block_tables: int32 [n, max_blocks]; seq_lens: int32 [n], each >= 1.
// window 0 = none; softcap 0 = off. Returns [n, heads, head_dim].
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k_cache,
                            const at::Tensor& v_cache, const at::Tensor& block_tables,
                            const at::Tensor& seq_lens, double scale, int64_t window,
                            double softcap) {
  TORCH_CHECK(q.dim() == 3 && k_cache.dim() == 4 && v_cache.sizes() == k_cache.sizes(),
              "decode_attention: q [n, heads, d] and caches [blocks, block_size, kv_heads, d]");
  TORCH_CHECK(q.is_contiguous() && k_cache.is_contiguous() && v_cache.is_contiguous(),
              "decode_attention: q and the caches must be contiguous");
  TORCH_CHECK(q.scalar_type() == k_cache.scalar_type() && q.scalar_type() == v_cache.scalar_type(),
              "decode_attention: q and the caches must share a dtype");
  TORCH_CHECK(q.size(2) == k_cache.size(3) && q.size(1) % k_cache.size(2) == 0,
              "decode_attention: head_dim differs, or heads do not divide by kv_heads");
  TORCH_CHECK(block_tables.scalar_type() == at::kInt && seq_lens.scalar_type() == at::kInt &&
                  block_tables.is_contiguous() && seq_lens.is_contiguous(),
              "decode_attention: block_tables and seq_lens must be contiguous int32");
  TORCH_CHECK(block_tables.size(0) == q.size(0) && seq_lens.size(0) == q.size(0),
              "decode_attention: one block-table row and one length per query");
  at::Tensor out = at::empty_like(q);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "decode_attention", [&] {
    decode_attention_impl<scalar_t>(q, k_cache, v_cache, block_tables, seq_lens, scale, window,
                                    softcap, out);
  });
  return out;
}
