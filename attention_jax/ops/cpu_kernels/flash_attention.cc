// Flash attention (online softmax forward, recomputing backward) for the CPU, called from JAX
// through the XLA FFI: attention_jax/ops/cpu_flash.py registers the two handlers below and gives
// them a custom_vjp. Same semantics as attention_jax/ops/blockwise.py (the pure-JAX path, which is
// the reference the tests hold this kernel to):
//   logits = cap(scale * q . k), cap(z) = softcap * tanh(z / softcap) when softcap > 0;
//   query i sees key j iff  i < q_lens[b], j < kv_lens[b], q_seg[b, i] == kv_seg[b, j] (when
//   segments are given) and  -left <= j - (i + kv_len - q_len) <= right  (a bound < 0 is open);
//   a query that sees no key gets zero output, zero gradients and lse = -FLT_MAX.
//
// Layouts (row-major, float32): q [B, Lq, H, D], k [B, Lk, Hk, D], v [B, Lk, Hk, Dv],
// out [B, Lq, H, Dv], lse [B, H, Lq]; H % Hk == 0 (query head h reads key head h / (H / Hk)). Any
// leading dims are flattened into B (jax's vmap "broadcast_all" adds them).
//
// Every matrix product runs through one register-blocked micro-kernel, C[M x 16] (+)= A[M x K]
// B[K x 16] (A rows strided, B rows of 16 contiguous floats), so the operands that are not
// already in that form (K^T, V^T, zero-padded rows) are packed once per (batch, key head). The
// work is split over (batch, head, query block) forward and (batch, key head) backward, on XLA's
// own intra-op thread pool, so the kernel never competes with XLA for cores.

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define AJ_AVX2 1
#else
#define AJ_AVX2 0
#endif
// AVX-512 only changes the matrix-product tile (16 rows, one 16-float register each); the
// softmax, exp and packing stay on 256-bit vectors.
#if AJ_AVX2 && defined(__AVX512F__)
#define AJ_AVX512 1
#else
#define AJ_AVX512 0
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kPanel = 16;           // columns per micro-kernel tile
#if AJ_AVX512
constexpr int kRows = 16;            // rows per micro-kernel tile: a 64-query block is 4 tiles
#else
constexpr int kRows = 6;             // rows per micro-kernel tile
#endif
constexpr float kLowest = -FLT_MAX;  // masked logit, and the lse of a row that sees no key

int64_t RoundUp(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// A float buffer aligned for 512-bit loads.
struct Scratch {
  float* data = nullptr;
  explicit Scratch(size_t n) {
    size_t bytes = RoundUp(static_cast<int64_t>(std::max<size_t>(n, 1) * sizeof(float)), 64);
    data = static_cast<float*>(std::aligned_alloc(64, bytes));
  }
  ~Scratch() { std::free(data); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  float* get() const { return data; }
};

// ---------------------------------------------------------------------------------------------
// Micro-kernel: C[M x 16] = (accumulate ? C : 0) + A[M x K] * B[K x 16].
// A(i, k) = a[i * lda + k]; B(k, j) = b[k * ldb + j] (16 contiguous floats);
// C(i, j) = c[i * ldc + j].

#if AJ_AVX512
// Sixteen named accumulators, one 16-float register per row (named for the reason given below).
#define AJ_ROWS(X) \
  X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15)
template <int M>
inline void Tile(int64_t K, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                 int64_t ldc, bool accumulate) {
#define AJ_DECLARE(i) __m512 c##i = _mm512_setzero_ps();
  AJ_ROWS(AJ_DECLARE)
#undef AJ_DECLARE
  if (accumulate) {
#define AJ_LOAD(i) \
  if constexpr (i < M) c##i = _mm512_loadu_ps(c + (i) * ldc);
    AJ_ROWS(AJ_LOAD)
#undef AJ_LOAD
  }
  const float* a_k = a;
  const float* b_k = b;
  for (int64_t k = 0; k < K; ++k, ++a_k, b_k += ldb) {
    const __m512 bk = _mm512_loadu_ps(b_k);
#define AJ_FMA(i) \
  if constexpr (i < M) c##i = _mm512_fmadd_ps(_mm512_set1_ps(a_k[(i) * lda]), bk, c##i);
    AJ_ROWS(AJ_FMA)
#undef AJ_FMA
  }
#define AJ_STORE(i) \
  if constexpr (i < M) _mm512_storeu_ps(c + (i) * ldc, c##i);
  AJ_ROWS(AJ_STORE)
#undef AJ_STORE
}
#undef AJ_ROWS
#elif AJ_AVX2
// Twelve named accumulators (rows 0..M-1 x two 8-float halves): arrays of __m256 indexed in loops
// were spilled to the stack by GCC (measured: half the kernel's time in stack stores).
#define AJ_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5)
template <int M>
inline void Tile(int64_t K, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                 int64_t ldc, bool accumulate) {
#define AJ_DECLARE(i) __m256 c##i##0 = _mm256_setzero_ps(), c##i##1 = _mm256_setzero_ps();
  AJ_ROWS(AJ_DECLARE)
#undef AJ_DECLARE
  if (accumulate) {
#define AJ_LOAD(i)                                  \
  if constexpr (i < M) {                            \
    c##i##0 = _mm256_loadu_ps(c + (i) * ldc);       \
    c##i##1 = _mm256_loadu_ps(c + (i) * ldc + 8);   \
  }
    AJ_ROWS(AJ_LOAD)
#undef AJ_LOAD
  }
  const float* a_k = a;
  const float* b_k = b;
  for (int64_t k = 0; k < K; ++k, ++a_k, b_k += ldb) {
    const __m256 b0 = _mm256_loadu_ps(b_k);
    const __m256 b1 = _mm256_loadu_ps(b_k + 8);
#define AJ_FMA(i)                                          \
  if constexpr (i < M) {                                   \
    const __m256 ai = _mm256_broadcast_ss(a_k + (i) * lda); \
    c##i##0 = _mm256_fmadd_ps(ai, b0, c##i##0);            \
    c##i##1 = _mm256_fmadd_ps(ai, b1, c##i##1);            \
  }
    AJ_ROWS(AJ_FMA)
#undef AJ_FMA
  }
#define AJ_STORE(i)                                 \
  if constexpr (i < M) {                            \
    _mm256_storeu_ps(c + (i) * ldc, c##i##0);       \
    _mm256_storeu_ps(c + (i) * ldc + 8, c##i##1);   \
  }
  AJ_ROWS(AJ_STORE)
#undef AJ_STORE
}
#undef AJ_ROWS
#else
template <int M>
inline void Tile(int64_t K, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                 int64_t ldc, bool accumulate) {
  float acc[M][kPanel];
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < kPanel; ++j) acc[i][j] = accumulate ? c[i * ldc + j] : 0.0f;
  for (int64_t k = 0; k < K; ++k)
    for (int i = 0; i < M; ++i) {
      const float ai = a[i * lda + k];
      for (int j = 0; j < kPanel; ++j) acc[i][j] += ai * b[k * ldb + j];
    }
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < kPanel; ++j) c[i * ldc + j] = acc[i][j];
}
#endif

// Tile<m> for the rows left below a full tile, 0 <= m <= M.
template <int M>
inline void TileRows(int64_t m, int64_t K, const float* a, int64_t lda, const float* b,
                     int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  if constexpr (M > 0) {
    if (m == M) {
      Tile<M>(K, a, lda, b, ldb, c, ldc, accumulate);
    } else {
      TileRows<M - 1>(m, K, a, lda, b, ldb, c, ldc, accumulate);
    }
  }
}

// C[m x n] (+)= A[m x K] B[K x n], n a multiple of 16. `b_panel_stride` is the distance between
// consecutive 16-column panels of B: 16 for plain rows (B(k, j) = b[k * ldb + j]), or K * 16 for
// packed panels ([n / 16][K][16]).
void Gemm(int64_t m, int64_t n, int64_t K, const float* a, int64_t lda, const float* b,
          int64_t ldb, int64_t b_panel_stride, float* c, int64_t ldc, bool accumulate) {
  for (int64_t j = 0; j < n; j += kPanel) {
    const float* bj = b + (j / kPanel) * b_panel_stride;
    int64_t i = 0;
    for (; i + kRows <= m; i += kRows)
      Tile<kRows>(K, a + i * lda, lda, bj, ldb, c + i * ldc + j, ldc, accumulate);
    const float* ai = a + i * lda;
    float* ci = c + i * ldc + j;
    TileRows<kRows - 1>(m - i, K, ai, lda, bj, ldb, ci, ldc, accumulate);
  }
}

// ---------------------------------------------------------------------------------------------
// exp for the softmax: x <= -87 gives exactly 0 (so a masked logit's weight is 0, never a
// denormal). Cephes' single-precision polynomial, ~1 ulp.

#if AJ_AVX2
inline __m256 Exp(__m256 x) {
  const __m256 underflow = _mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_LT_OQ);
  x = _mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f));
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  __m256 fx = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f));
  fx = _mm256_floor_ps(fx);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500E-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  __m256i e = _mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127));
  y = _mm256_mul_ps(y, _mm256_castsi256_ps(_mm256_slli_epi32(e, 23)));
  return _mm256_andnot_ps(underflow, y);
}
#endif

inline float ExpScalar(float x) { return x < -87.0f ? 0.0f : std::exp(x); }

// out[j] = exp(in[j] - shift) for j < n; returns the sum.
float ExpShiftSum(const float* in, float shift, float* out, int64_t n) {
  int64_t j = 0;
  float total = 0.0f;
#if AJ_AVX2
  __m256 sum = _mm256_setzero_ps();
  const __m256 s = _mm256_set1_ps(shift);
  for (; j + 8 <= n; j += 8) {
    __m256 e = Exp(_mm256_sub_ps(_mm256_loadu_ps(in + j), s));
    _mm256_storeu_ps(out + j, e);
    sum = _mm256_add_ps(sum, e);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, sum);
  for (float lane : lanes) total += lane;
#endif
  for (; j < n; ++j) {
    out[j] = ExpScalar(in[j] - shift);
    total += out[j];
  }
  return total;
}

float RowMax(const float* x, int64_t n) {
  int64_t j = 0;
  float best = kLowest;
#if AJ_AVX2
  __m256 m = _mm256_set1_ps(kLowest);
  for (; j + 8 <= n; j += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + j));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, m);
  for (float lane : lanes) best = std::max(best, lane);
#endif
  for (; j < n; ++j) best = std::max(best, x[j]);
  return best;
}

// ---------------------------------------------------------------------------------------------
// Work split over XLA's intra-op threads. The caller works too, and waits only for items other
// threads have claimed (running, never queued), so a busy pool cannot deadlock it.

template <typename Pool, typename F>
void ParallelFor(Pool& pool, int64_t n, const F& body) {
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::mutex mu;
    std::condition_variable cv;
    const std::function<void(int64_t)>* body = nullptr;
    int64_t n = 0;
  };
  if (n <= 0) return;
  const std::function<void(int64_t)> fn = body;
  auto state = std::make_shared<State>();
  state->body = &fn;
  state->n = n;
  auto work = [](const std::shared_ptr<State>& s) {
    for (int64_t i; (i = s->next.fetch_add(1)) < s->n;) {
      (*s->body)(i);
      if (s->done.fetch_add(1) + 1 == s->n) {
        std::lock_guard<std::mutex> lock(s->mu);
        s->cv.notify_all();
      }
    }
  };
  const int64_t helpers = std::min<int64_t>(std::max<int64_t>(pool.num_threads(), 1), n) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([state, work] { work(state); });
  work(state);
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->done.load() == state->n; });
}

// ---------------------------------------------------------------------------------------------
// Problem description and visibility.

struct Problem {
  int64_t batch, q_len, kv_len, heads, kv_heads, dim, v_dim;
  float scale, softcap;  // softcap <= 0: none
  int64_t left, right;   // < 0: unbounded
  bool segments;
  int64_t group() const { return heads / kv_heads; }
  int64_t offset() const { return kv_len - q_len; }
};

// The (per batch row) facts that decide which query/key pairs may meet.
struct Row {
  const int32_t* q_seg;  // nullptr without segments
  const int32_t* kv_seg;
  int64_t q_valid, kv_valid;  // lengths, clipped to [0, len]
};

enum class Block { kSkip, kClear, kCut };

struct SegmentRange {
  int32_t lo, hi;
};

SegmentRange RangeOf(const int32_t* ids, int64_t start, int64_t end) {
  SegmentRange r{INT32_MAX, INT32_MIN};
  for (int64_t i = start; i < end; ++i) {
    r.lo = std::min(r.lo, ids[i]);
    r.hi = std::max(r.hi, ids[i]);
  }
  return r;
}

// Queries [i0, i1) against keys [j0, j1): all hidden, all visible, or cut (per-pair test).
Block Classify(const Problem& p, const Row& row, int64_t i0, int64_t i1, int64_t j0, int64_t j1,
               const SegmentRange* qr, const SegmentRange* kr) {
  bool clear = i1 <= row.q_valid && j1 <= row.kv_valid;
  i1 = std::min(i1, row.q_valid);
  j1 = std::min(j1, row.kv_valid);
  if (i0 >= i1 || j0 >= j1) return Block::kSkip;
  const int64_t first = i0 + p.offset(), last = i1 - 1 + p.offset();  // rows on the key axis
  if (p.right >= 0) {
    if (j0 > last + p.right) return Block::kSkip;
    clear = clear && j1 - 1 <= first + p.right;
  }
  if (p.left >= 0) {
    if (j1 - 1 < first - p.left) return Block::kSkip;
    clear = clear && j0 >= last - p.left;
  }
  if (qr != nullptr) {
    if (qr->hi < kr->lo || kr->hi < qr->lo) return Block::kSkip;
    clear = clear && qr->lo == qr->hi && kr->lo == kr->hi && qr->lo == kr->lo;
  }
  return clear ? Block::kClear : Block::kCut;
}

// The keys [lo, hi) query i may see by position and length (segments aside); lo >= hi: none.
inline void VisibleRange(const Problem& p, const Row& row, int64_t i, int64_t* lo, int64_t* hi) {
  *lo = 0;
  *hi = i < row.q_valid ? row.kv_valid : 0;
  const int64_t diagonal = i + p.offset();
  if (p.right >= 0) *hi = std::min(*hi, diagonal + p.right + 1);
  if (p.left >= 0) *lo = std::max(*lo, diagonal - p.left);
}

// The keys of [j0, j1) some query of [i0, i1) may see, widened to whole 16-key panels at the
// start (the packed panels begin there): [*hull_lo, *hull_hi).
void Hull(const Problem& p, const Row& row, int64_t i0, int64_t i1, int64_t j0, int64_t j1,
          int64_t* hull_lo, int64_t* hull_hi) {
  int64_t lo_first, hi_first, lo_last, hi_last;
  VisibleRange(p, row, i0, &lo_first, &hi_first);
  VisibleRange(p, row, std::min(i1, row.q_valid) - 1, &lo_last, &hi_last);
  const int64_t lo = std::max(j0, lo_first), hi = std::min(j1, std::max(hi_first, hi_last));
  *hull_lo = std::min(j0 + (std::max<int64_t>(lo - j0, 0) / kPanel) * kPanel, j1);
  *hull_hi = std::max(hi, *hull_lo);
}

// s[r, c] for queries [i0, i0 + rows) x keys [j0, j0 + cols): scale, soft-cap, then the mask
// (kLowest) on a cut block. With `capped_tanh`, also keeps tanh(z / softcap) for the backward.
void FinishLogits(const Problem& p, const Row& row, float* s, int64_t lds, int64_t rows,
                  int64_t cols, int64_t i0, int64_t j0, bool cut, float* capped_tanh) {
  for (int64_t r = 0; r < rows; ++r) {
    float* sr = s + r * lds;
    int64_t c = 0;
    if (p.softcap > 0.0f) {
      const float inv = 1.0f / p.softcap;
      for (; c < cols; ++c) {
        const float t = std::tanh(sr[c] * p.scale * inv);
        if (capped_tanh != nullptr) capped_tanh[r * lds + c] = t;
        sr[c] = p.softcap * t;
      }
    } else {
#if AJ_AVX2
      const __m256 scale = _mm256_set1_ps(p.scale);
      for (; c + 8 <= cols; c += 8)
        _mm256_storeu_ps(sr + c, _mm256_mul_ps(_mm256_loadu_ps(sr + c), scale));
#endif
      for (; c < cols; ++c) sr[c] *= p.scale;
    }
    if (cut) {
      int64_t lo, hi;
      VisibleRange(p, row, i0 + r, &lo, &hi);
      lo = std::clamp<int64_t>(lo - j0, 0, cols);
      hi = std::clamp<int64_t>(hi - j0, lo, cols);
      std::fill(sr, sr + lo, kLowest);
      std::fill(sr + hi, sr + cols, kLowest);
      if (row.q_seg != nullptr) {
        const int32_t id = row.q_seg[i0 + r];
        const int32_t* kv_ids = row.kv_seg + j0;
        for (c = lo; c < hi; ++c)
          if (kv_ids[c] != id) sr[c] = kLowest;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Packing, per (batch, key head): K^T and V^T as 16-key panels [Lk16 / 16][D][16], K and V as
// 16-column panels [D16 / 16][Lk][16], and rows zero-padded to a multiple of 16 columns.

void PackTransposed(const float* x, int64_t row_stride, int64_t len, int64_t dim, float* out) {
  const int64_t len16 = RoundUp(len, kPanel);
  for (int64_t p0 = 0; p0 < len16; p0 += kPanel) {
    float* panel = out + p0 * dim;  // [dim][16]
    for (int64_t d = 0; d < dim; ++d)
      for (int64_t t = 0; t < kPanel; ++t)
        panel[d * kPanel + t] = p0 + t < len ? x[(p0 + t) * row_stride + d] : 0.0f;
  }
}

// Rows as 16-column panels [dim16 / 16][len][16]: a micro-kernel tile then reads B contiguously.
void PackPanels(const float* x, int64_t row_stride, int64_t len, int64_t dim, float* out) {
  const int64_t dim16 = RoundUp(dim, kPanel);
  for (int64_t p0 = 0; p0 < dim16; p0 += kPanel) {
    float* panel = out + p0 * len;  // [len][16]
    const int64_t width = std::min<int64_t>(kPanel, dim - p0);
    for (int64_t i = 0; i < len; ++i) {
      std::memcpy(panel + i * kPanel, x + i * row_stride + p0, width * sizeof(float));
      std::fill(panel + i * kPanel + width, panel + (i + 1) * kPanel, 0.0f);
    }
  }
}

void PackRows(const float* x, int64_t row_stride, int64_t len, int64_t dim, int64_t dim16,
              float* out) {
  for (int64_t i = 0; i < len; ++i) {
    std::memcpy(out + i * dim16, x + i * row_stride, dim * sizeof(float));
    std::fill(out + i * dim16 + dim, out + (i + 1) * dim16, 0.0f);
  }
}

struct Sizes {
  int64_t block_q, block_k;
};

#ifndef AJ_BLOCK_Q
#define AJ_BLOCK_Q 64
#endif
#ifndef AJ_BLOCK_K
#define AJ_BLOCK_K 256
#endif

Sizes BlockSizes(const Problem& p) {
  return Sizes{AJ_BLOCK_Q, std::min<int64_t>(AJ_BLOCK_K, RoundUp(p.kv_len, kPanel))};
}

Row RowOf(const Problem& p, int64_t b, const int32_t* q_seg, const int32_t* kv_seg,
          const int32_t* q_lens, const int32_t* kv_lens) {
  Row row;
  row.q_seg = p.segments ? q_seg + b * p.q_len : nullptr;
  row.kv_seg = p.segments ? kv_seg + b * p.kv_len : nullptr;
  row.q_valid = std::clamp<int64_t>(q_lens[b], 0, p.q_len);
  row.kv_valid = std::clamp<int64_t>(kv_lens[b], 0, p.kv_len);
  return row;
}

// ---------------------------------------------------------------------------------------------
// Forward.

template <typename Pool>
void Forward(Pool& pool, const Problem& p, const float* q, const float* k,
             const float* v, const int32_t* q_seg, const int32_t* kv_seg, const int32_t* q_lens,
             const int32_t* kv_lens, float* out, float* lse) {
  const Sizes bs = BlockSizes(p);
  const int64_t lk16 = RoundUp(p.kv_len, kPanel), dv16 = RoundUp(p.v_dim, kPanel);
  const int64_t num_q = (p.q_len + bs.block_q - 1) / bs.block_q;
  const int64_t num_k = (p.kv_len + bs.block_k - 1) / bs.block_k;
  // Packed K^T panels and zero-padded V rows for every (batch, key head).
  const int64_t kt_size = lk16 * p.dim, v_size = p.kv_len * dv16;
  Scratch packed(static_cast<size_t>(p.batch * p.kv_heads * (kt_size + v_size)));
  ParallelFor(pool, p.batch * p.kv_heads, [&](int64_t bh) {
    const int64_t b = bh / p.kv_heads, hk = bh % p.kv_heads;
    float* kt = packed.get() + bh * (kt_size + v_size);
    PackTransposed(k + (b * p.kv_len * p.kv_heads + hk) * p.dim, p.kv_heads * p.dim, p.kv_len,
                   p.dim, kt);
    PackPanels(v + (b * p.kv_len * p.kv_heads + hk) * p.v_dim, p.kv_heads * p.v_dim, p.kv_len,
               p.v_dim, kt + kt_size);
  });
  // Segment id range of every key block, per batch row.
  std::vector<SegmentRange> key_ranges;
  if (p.segments) {
    key_ranges.resize(p.batch * num_k);
    for (int64_t b = 0; b < p.batch; ++b)
      for (int64_t kj = 0; kj < num_k; ++kj)
        key_ranges[b * num_k + kj] =
            RangeOf(kv_seg + b * p.kv_len, kj * bs.block_k,
                    std::min(p.kv_len, (kj + 1) * bs.block_k));
  }
  const int64_t lds = RoundUp(bs.block_k, kPanel);
  ParallelFor(pool, p.batch * p.heads * num_q, [&](int64_t task) {
    const int64_t qi = task % num_q, h = (task / num_q) % p.heads, b = task / (num_q * p.heads);
    const int64_t hk = h / p.group();
    const Row row = RowOf(p, b, q_seg, kv_seg, q_lens, kv_lens);
    const int64_t i0 = qi * bs.block_q, rows = std::min(bs.block_q, p.q_len - i0);
    const float* qb = q + ((b * p.q_len + i0) * p.heads + h) * p.dim;
    const int64_t ldq = p.heads * p.dim;
    const float* kt = packed.get() + (b * p.kv_heads + hk) * (kt_size + v_size);
    const float* vp = kt + kt_size;
    Scratch s(rows * lds), acc(rows * dv16);
    std::vector<float> m(rows, kLowest), l(rows, 0.0f);
    std::fill(acc.get(), acc.get() + rows * dv16, 0.0f);
    SegmentRange qr{};
    if (p.segments) qr = RangeOf(row.q_seg, i0, i0 + rows);
    for (int64_t kj = 0; kj < num_k; ++kj) {
      const int64_t block_start = kj * bs.block_k;
      const int64_t block_end = std::min(p.kv_len, block_start + bs.block_k);
      const Block kind = Classify(p, row, i0, i0 + rows, block_start, block_end,
                                  p.segments ? &qr : nullptr,
                                  p.segments ? &key_ranges[b * num_k + kj] : nullptr);
      if (kind == Block::kSkip) continue;
      int64_t j0, j1;  // only the keys some query of the block sees
      Hull(p, row, i0, i0 + rows, block_start, block_end, &j0, &j1);
      const int64_t cols = j1 - j0, cols16 = RoundUp(cols, kPanel);
      if (cols == 0) continue;
      Gemm(rows, cols16, p.dim, qb, ldq, kt + j0 * p.dim, kPanel, p.dim * kPanel, s.get(), lds,
           false);
      FinishLogits(p, row, s.get(), lds, rows, cols, i0, j0, kind == Block::kCut, nullptr);
      for (int64_t r = 0; r < rows; ++r) {
        float* sr = s.get() + r * lds;
        const float block_max = RowMax(sr, cols);
        if (block_max == kLowest) {  // this row sees no key here
          std::fill(sr, sr + cols, 0.0f);
          continue;
        }
        const float m_new = std::max(m[r], block_max);
        const float alpha = ExpScalar(m[r] - m_new);
        m[r] = m_new;
        l[r] = l[r] * alpha + ExpShiftSum(sr, m_new, sr, cols);
        if (alpha != 1.0f) {
          float* ar = acc.get() + r * dv16;
          for (int64_t c = 0; c < dv16; ++c) ar[c] *= alpha;
        }
      }
      Gemm(rows, dv16, cols, s.get(), lds, vp + j0 * kPanel, kPanel, p.kv_len * kPanel,
           acc.get(), dv16, true);
    }
    for (int64_t r = 0; r < rows; ++r) {
      float* o = out + ((b * p.q_len + i0 + r) * p.heads + h) * p.v_dim;
      const float* ar = acc.get() + r * dv16;
      const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
      for (int64_t c = 0; c < p.v_dim; ++c) o[c] = ar[c] * inv;
      lse[(b * p.heads + h) * p.q_len + i0 + r] = l[r] > 0.0f ? m[r] + std::log(l[r]) : kLowest;
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Backward (FlashAttention-2): per (batch, key head), key blocks outer and query blocks inner, so
// dK and dV of a block stay in cache; dQ of each head of the group accumulates in a scratch.

#if AJ_AVX2
// out[8 x 8] = x[8 x 8]^T in registers (unpack / shuffle / permute).
inline void Transpose8x8(const float* x, int64_t ldx, float* out, int64_t ldo) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(x + i * ldx);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(out + i * ldo, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(out + (i + 4) * ldo, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}
#endif

// out[cols x rows] = x[rows x cols]^T (the backward's P^T and dS^T).
void Transpose(const float* x, int64_t ldx, int64_t rows, int64_t cols, float* out,
               int64_t ldo) {
  int64_t r0 = 0;
#if AJ_AVX2
  for (; r0 + 8 <= rows; r0 += 8) {
    int64_t c0 = 0;
    for (; c0 + 8 <= cols; c0 += 8) Transpose8x8(x + r0 * ldx + c0, ldx, out + c0 * ldo + r0, ldo);
    for (int64_t r = r0; r < r0 + 8; ++r)
      for (int64_t c = c0; c < cols; ++c) out[c * ldo + r] = x[r * ldx + c];
  }
#endif
  for (int64_t r = r0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out[c * ldo + r] = x[r * ldx + c];
}

// dq rows of the group of key head hk = scale * (sum of the `count` partial [group, Lq, D16]).
void WriteDq(const Problem& p, int64_t b, int64_t hk, const float* const* parts, int64_t count,
             float* dq) {
  const int64_t d16 = RoundUp(p.dim, kPanel), group = p.group();
  for (int64_t g = 0; g < group; ++g) {
    const int64_t h = hk * group + g;
    for (int64_t i = 0; i < p.q_len; ++i) {
      float* dqr = dq + ((b * p.q_len + i) * p.heads + h) * p.dim;
      const int64_t at = (g * p.q_len + i) * d16;
      for (int64_t d = 0; d < p.dim; ++d) {
        float sum = 0.0f;
        for (int64_t part = 0; part < count; ++part) sum += parts[part][at + d];
        dqr[d] = sum * p.scale;
      }
    }
  }
}

template <typename Pool>
void Backward(Pool& pool, const Problem& p, const float* q, const float* k,
              const float* v, const float* o, const float* lse, const float* d_out,
              const int32_t* q_seg, const int32_t* kv_seg, const int32_t* q_lens,
              const int32_t* kv_lens, float* dq, float* dk, float* dv) {
  const Sizes bs = BlockSizes(p);
  const int64_t d16 = RoundUp(p.dim, kPanel), dv16 = RoundUp(p.v_dim, kPanel);
  const int64_t lk16 = RoundUp(p.kv_len, kPanel);
  const int64_t num_q = (p.q_len + bs.block_q - 1) / bs.block_q;
  const int64_t num_k = (p.kv_len + bs.block_k - 1) / bs.block_k;
  const int64_t lds = RoundUp(bs.block_k, kPanel), ldt = RoundUp(bs.block_q, kPanel);
  const int64_t group = p.group();
  // Fewer (batch, key head) pairs than twice the threads: each pair's key blocks are split into
  // `splits` ranges too, each with its own partial dQ, summed at the end.
  const int64_t pairs = p.batch * p.kv_heads;
  const int64_t threads = std::max<int64_t>(pool.num_threads(), 1);
  const int64_t splits = std::clamp<int64_t>((2 * threads + pairs - 1) / pairs, 1, num_k);
  const int64_t dq_size = group * p.q_len * d16;  // one (batch, key head)'s dQ, padded
  Scratch partial(splits > 1 ? static_cast<size_t>(pairs * splits * dq_size) : 1);
  ParallelFor(pool, pairs * splits, [&](int64_t task) {
    const int64_t bh = task / splits, split = task % splits;
    const int64_t b = bh / p.kv_heads, hk = bh % p.kv_heads;
    const int64_t kj_begin = num_k * split / splits, kj_end = num_k * (split + 1) / splits;
    const Row row = RowOf(p, b, q_seg, kv_seg, q_lens, kv_lens);
    const float* kb = k + (b * p.kv_len * p.kv_heads + hk) * p.dim;
    const float* vb = v + (b * p.kv_len * p.kv_heads + hk) * p.v_dim;
    // Per key head: K^T, V^T panels and K rows; per query head of the group: Q and dO rows, dQ.
    Scratch kt(lk16 * p.dim), vt(lk16 * p.v_dim), kr(p.kv_len * d16);
    PackTransposed(kb, p.kv_heads * p.dim, p.kv_len, p.dim, kt.get());
    PackTransposed(vb, p.kv_heads * p.v_dim, p.kv_len, p.v_dim, vt.get());
    PackPanels(kb, p.kv_heads * p.dim, p.kv_len, p.dim, kr.get());
    Scratch qr(group * p.q_len * d16), dor(group * p.q_len * dv16);
    Scratch own_dq(splits > 1 ? 1 : dq_size);
    float* dqa = splits > 1 ? partial.get() + task * dq_size : own_dq.get();
    std::vector<float> delta(group * p.q_len);
    std::fill(dqa, dqa + dq_size, 0.0f);
    for (int64_t g = 0; g < group; ++g) {
      const int64_t h = hk * group + g;
      PackRows(q + (b * p.q_len * p.heads + h) * p.dim, p.heads * p.dim, p.q_len, p.dim, d16,
               qr.get() + g * p.q_len * d16);
      PackRows(d_out + (b * p.q_len * p.heads + h) * p.v_dim, p.heads * p.v_dim, p.q_len,
               p.v_dim, dv16, dor.get() + g * p.q_len * dv16);
      for (int64_t i = 0; i < p.q_len; ++i) {
        const float* oi = o + ((b * p.q_len + i) * p.heads + h) * p.v_dim;
        const float* gi = dor.get() + (g * p.q_len + i) * dv16;
        float sum = 0.0f;
        for (int64_t c = 0; c < p.v_dim; ++c) sum += oi[c] * gi[c];
        delta[g * p.q_len + i] = sum;
      }
    }
    std::vector<SegmentRange> q_ranges;
    if (p.segments) {
      q_ranges.resize(num_q);
      for (int64_t qi = 0; qi < num_q; ++qi)
        q_ranges[qi] = RangeOf(row.q_seg, qi * bs.block_q,
                               std::min(p.q_len, (qi + 1) * bs.block_q));
    }
    Scratch s(bs.block_q * lds), tanh_s(p.softcap > 0.0f ? bs.block_q * lds : 1),
        dp(bs.block_q * lds), t(lds * ldt), dka(bs.block_k * d16), dva(bs.block_k * dv16);
    for (int64_t kj = kj_begin; kj < kj_end; ++kj) {
      const int64_t block_start = kj * bs.block_k;
      const int64_t block_end = std::min(p.kv_len, block_start + bs.block_k);
      SegmentRange kr_range{};
      if (p.segments) kr_range = RangeOf(row.kv_seg, block_start, block_end);
      std::fill(dka.get(), dka.get() + bs.block_k * d16, 0.0f);
      std::fill(dva.get(), dva.get() + bs.block_k * dv16, 0.0f);
      for (int64_t g = 0; g < group; ++g) {
        const int64_t h = hk * group + g;
        for (int64_t qi = 0; qi < num_q; ++qi) {
          const int64_t i0 = qi * bs.block_q, rows = std::min(bs.block_q, p.q_len - i0);
          const Block kind = Classify(p, row, i0, i0 + rows, block_start, block_end,
                                      p.segments ? &q_ranges[qi] : nullptr,
                                      p.segments ? &kr_range : nullptr);
          if (kind == Block::kSkip) continue;
          int64_t j0, j1;  // only the keys some query of the block sees
          Hull(p, row, i0, i0 + rows, block_start, block_end, &j0, &j1);
          const int64_t cols = j1 - j0, cols16 = RoundUp(cols, kPanel);
          if (cols == 0) continue;
          float* dk_rows = dka.get() + (j0 - block_start) * d16;
          float* dv_rows = dva.get() + (j0 - block_start) * dv16;
          const float* qi_rows = qr.get() + (g * p.q_len + i0) * d16;
          const float* do_rows = dor.get() + (g * p.q_len + i0) * dv16;
          const float* lse_rows = lse + (b * p.heads + h) * p.q_len + i0;
          const float* delta_rows = delta.data() + g * p.q_len + i0;
          // P = exp(cap(scale q k) - lse), zero where hidden or the row sees nothing.
          Gemm(rows, cols16, p.dim, qi_rows, d16, kt.get() + j0 * p.dim, kPanel, p.dim * kPanel,
               s.get(), lds, false);
          FinishLogits(p, row, s.get(), lds, rows, cols, i0, j0, kind == Block::kCut,
                       p.softcap > 0.0f ? tanh_s.get() : nullptr);
          for (int64_t r = 0; r < rows; ++r) {
            float* sr = s.get() + r * lds;
            if (lse_rows[r] == kLowest) {
              std::fill(sr, sr + cols16, 0.0f);
            } else {
              ExpShiftSum(sr, lse_rows[r], sr, cols);
              std::fill(sr + cols, sr + cols16, 0.0f);
            }
          }
          // dV += P^T dO.
          Transpose(s.get(), lds, rows, cols, t.get(), ldt);
          Gemm(cols, dv16, rows, t.get(), ldt, do_rows, dv16, kPanel, dv_rows, dv16, true);
          // dP = dO V^T;  dS = P (dP - delta) [1 - tanh^2];  the scale is applied at the end.
          Gemm(rows, cols16, p.v_dim, do_rows, dv16, vt.get() + j0 * p.v_dim, kPanel,
               p.v_dim * kPanel, dp.get(), lds, false);
          for (int64_t r = 0; r < rows; ++r) {
            float* sr = s.get() + r * lds;
            const float* dpr = dp.get() + r * lds;
            const float dr = delta_rows[r];
            if (p.softcap > 0.0f) {
              const float* tr = tanh_s.get() + r * lds;
              for (int64_t c = 0; c < cols; ++c)
                sr[c] = sr[c] * (dpr[c] - dr) * (1.0f - tr[c] * tr[c]);
            } else {
              for (int64_t c = 0; c < cols; ++c) sr[c] = sr[c] * (dpr[c] - dr);
            }
          }
          // dQ += dS K;  dK += dS^T Q.
          Gemm(rows, d16, cols, s.get(), lds, kr.get() + j0 * kPanel, kPanel, p.kv_len * kPanel,
               dqa + (g * p.q_len + i0) * d16, d16, true);
          Transpose(s.get(), lds, rows, cols, t.get(), ldt);
          Gemm(cols, d16, rows, t.get(), ldt, qi_rows, d16, kPanel, dk_rows, d16, true);
        }
      }
      for (int64_t c = 0; c < block_end - block_start; ++c) {
        float* dkr = dk + ((b * p.kv_len + block_start + c) * p.kv_heads + hk) * p.dim;
        float* dvr = dv + ((b * p.kv_len + block_start + c) * p.kv_heads + hk) * p.v_dim;
        for (int64_t d = 0; d < p.dim; ++d) dkr[d] = dka.get()[c * d16 + d] * p.scale;
        for (int64_t d = 0; d < p.v_dim; ++d) dvr[d] = dva.get()[c * dv16 + d];
      }
    }
    if (splits == 1) {
      const float* dqa_const = dqa;
      WriteDq(p, b, hk, &dqa_const, 1, dq);
    }
  });
  if (splits > 1)
    ParallelFor(pool, pairs, [&](int64_t bh) {
      std::vector<const float*> parts(splits);
      for (int64_t split = 0; split < splits; ++split)
        parts[split] = partial.get() + (bh * splits + split) * dq_size;
      WriteDq(p, bh / p.kv_heads, bh % p.kv_heads, parts.data(), splits, dq);
    });
}

// ---------------------------------------------------------------------------------------------
// FFI bindings.

ffi::Unexpected<ffi::Error> Invalid(const char* message) {
  return ffi::Unexpected<ffi::Error>(ffi::Error::InvalidArgument(message));
}

ffi::ErrorOr<Problem> Describe(const ffi::AnyBuffer::Dimensions& qd,
                               const ffi::AnyBuffer::Dimensions& kd,
                               const ffi::AnyBuffer::Dimensions& vd,
                               const ffi::AnyBuffer::Dimensions& segd, float scale,
                               float softcap, int64_t left, int64_t right) {
  const size_t rank = qd.size();
  if (rank < 3 || kd.size() != rank || vd.size() != rank)
    return Invalid("flash attention: q, k, v need the same rank >= 3");
  Problem p{};
  p.batch = 1;
  for (size_t i = 0; i + 3 < rank; ++i) {
    if (kd[i] != qd[i] || vd[i] != qd[i])
      return Invalid("flash attention: batch dims of q, k, v differ");
    p.batch *= qd[i];
  }
  p.q_len = qd[rank - 3];
  p.heads = qd[rank - 2];
  p.dim = qd[rank - 1];
  p.kv_len = kd[rank - 3];
  p.kv_heads = kd[rank - 2];
  p.v_dim = vd[rank - 1];
  if (kd[rank - 1] != p.dim || vd[rank - 3] != p.kv_len || vd[rank - 2] != p.kv_heads ||
      p.kv_heads <= 0 || p.heads % p.kv_heads != 0)
    return Invalid("flash attention: inconsistent q, k, v shapes");
  p.scale = scale;
  p.softcap = softcap;
  p.left = left;
  p.right = right;
  p.segments = segd.size() > 0 && segd.back() == p.q_len && p.q_len > 0;
  return p;
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                       ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::S32> q_seg,
                       ffi::Buffer<ffi::S32> kv_seg, ffi::Buffer<ffi::S32> q_lens,
                       ffi::Buffer<ffi::S32> kv_lens, ffi::ResultBuffer<ffi::F32> out,
                       ffi::ResultBuffer<ffi::F32> lse, float scale, float softcap, int64_t left,
                       int64_t right) {
  auto problem = Describe(q.dimensions(), k.dimensions(), v.dimensions(), q_seg.dimensions(),
                          scale, softcap, left, right);
  if (problem.has_error()) return problem.error();
  Forward(pool, *problem, q.typed_data(), k.typed_data(), v.typed_data(), q_seg.typed_data(),
          kv_seg.typed_data(), q_lens.typed_data(), kv_lens.typed_data(), out->typed_data(),
          lse->typed_data());
  return ffi::Error::Success();
}

ffi::Error BackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                        ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::F32> o,
                        ffi::Buffer<ffi::F32> lse, ffi::Buffer<ffi::F32> d_out,
                        ffi::Buffer<ffi::S32> q_seg, ffi::Buffer<ffi::S32> kv_seg,
                        ffi::Buffer<ffi::S32> q_lens, ffi::Buffer<ffi::S32> kv_lens,
                        ffi::ResultBuffer<ffi::F32> dq, ffi::ResultBuffer<ffi::F32> dk,
                        ffi::ResultBuffer<ffi::F32> dv, float scale, float softcap,
                        int64_t left, int64_t right) {
  auto problem = Describe(q.dimensions(), k.dimensions(), v.dimensions(), q_seg.dimensions(),
                          scale, softcap, left, right);
  if (problem.has_error()) return problem.error();
  Backward(pool, *problem, q.typed_data(), k.typed_data(), v.typed_data(), o.typed_data(),
           lse.typed_data(), d_out.typed_data(), q_seg.typed_data(), kv_seg.typed_data(),
           q_lens.typed_data(), kv_lens.typed_data(), dq->typed_data(), dk->typed_data(),
           dv->typed_data());
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AttentionJaxFlashForward, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale")
                                  .Attr<float>("softcap")
                                  .Attr<int64_t>("left")
                                  .Attr<int64_t>("right"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(AttentionJaxFlashBackward, BackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale")
                                  .Attr<float>("softcap")
                                  .Attr<int64_t>("left")
                                  .Attr<int64_t>("right"));
