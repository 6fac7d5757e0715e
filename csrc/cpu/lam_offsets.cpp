// Offset-major CPU kernels of the lam_ops operators for windowed radii, over lam/math.h.
//
// Work unit: a strip of L query pixels of one image row, L = one 64-byte vector (16 float32, 8
// float64). In a channel plane of the NCHW input, the keys of those L queries at one window offset
// (dy, dx) are L contiguous values, so every pair sum runs over full vectors with one unaligned load
// per channel and no pair outside the windows (the tiled kernels of lam_cpu.cpp compute the GEMM of
// a tile with its whole key rectangle: at r = 6, 400 keys per query of which 169 are used).
//
// Each image is first copied into channel planes padded by r on every side and to a multiple of L
// in width, with zeros and a key mask of 0 in the padding (lse -inf in the backward). Every strip
// then runs all (2r + 1)^2 offsets without a branch, borders included: a padded key is
// inadmissible, which is the contract's window clipping. The copies replace the tiled kernels'
// pixel-major ones and are made one image at a time.
//
// Per window row dy, the offsets dx of the row are processed in passes that each keep one set of
// vectors in registers: dot products (kDots offsets at a time, channels kDepth at a time so that
// their key rows stay in L1), the pair math of lam/math.h in lane loops (logit, select, exp, online
// softmax once per row; the backward's pair_grad), then the weighted sums (kAcc channels at a time,
// accumulated over the row's offsets in registers).
//
// Forward: online softmax per lane. Backward: the gather of lam_cpu.cpp: the pair (a, b) with b at
// offset (dy, dx) from strip pixel a is seen from a's strip only, as a query of b and as its key
// (b in window(a) iff a in window(b)), so a's strip writes all of dx_a and df_a; dsigma from
// per-strip partials summed in strip order. Nothing depends on the thread count.
//
// Non-finite inputs: where an image's x (forward), or f or grad_out (backward), holds a non-finite
// value, the weighted sums add only the terms of pairs in that sum (a select), never 0 * inf.
#include "lam_offsets.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "lam/math.h"

namespace lam {

// The dispatch below needs GCC's vector extensions and x86 target attributes.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define LAM_X86_DISPATCH 1
#else
#define LAM_X86_DISPATCH 0
#endif
// Everything a strip runs is inlined into the per-ISA entry points, so that it compiles per ISA.
#define LAM_ALWAYS_INLINE inline __attribute__((always_inline))

namespace {

template <typename T>
struct Simd {
  static constexpr int L = 64 / sizeof(T);  // lanes: one 64-byte vector (4 SSE, 2 AVX2 registers)
  typedef T V __attribute__((vector_size(64)));
};

template <typename V, typename T>
LAM_ALWAYS_INLINE V loadu(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename V, typename T>
LAM_ALWAYS_INLINE void storeu(T* p, const V& v) {
  std::memcpy(p, &v, sizeof v);
}

// Channels per pass of the dot products: their key rows (2r + L values each) stay in L1 while the
// row's offsets run over them.
constexpr int kDepth = 32;
// Offsets per register block of the dot products, channels per register block of the weighted
// sums: 8 accumulators (+ 2 operands) fit the 16 AVX2 registers of a float64 vector pair... and
// AVX-512's 32 with room; 8 independent FMA chains cover the FMA latency.
constexpr int kDots = 8;
constexpr int kAcc = 8;
// Channels ahead that the dot products prefetch.
constexpr int kAhead = 6;

// The padded channel planes of one image: P rows of Q values, the pixel (y, x) at (y + r, x + r).
struct Planes {
  int H, W, r, L, Wp, P, Q;
  int64_t plane;

  Planes(int64_t H_, int64_t W_, int r_, int L_)
      : H(static_cast<int>(H_)), W(static_cast<int>(W_)), r(r_), L(L_),
        Wp(static_cast<int>((W_ + L_ - 1) / L_ * L_)), P(H + 2 * r), Q(Wp + 2 * r), plane(int64_t(P) * Q) {}

  int offsets() const { return 2 * r + 1; }
  int64_t strips_per_row() const { return Wp / L; }
  // Strips are numbered down the columns: the next strip needs one new key row (of each channel),
  // the other 2r are in L2 (the key rows of a whole image row of strips are not, at D = 256).
  int64_t strips() const { return H * strips_per_row(); }
  int strip_y(int64_t s) const { return static_cast<int>(s % H); }
  int strip_x(int64_t s) const { return static_cast<int>(s / H) * L; }
  // Index of the strip's first query pixel; of its first key at offset (dy, -r).
  int64_t query(int y, int x0) const { return int64_t(y + r) * Q + x0 + r; }
  int64_t key_row(int y, int dy, int x0) const { return int64_t(y + r + dy) * Q + x0; }

  // A (n, H, W) tensor as n padded planes (contiguous, n x P x Q).
  at::Tensor pad(const at::Tensor& t, double value) const {
    return at::constant_pad_nd(t, {r, r + Wp - W, r, r}, value).contiguous();
  }
};

// s[j][l] (+)= sum_{c < n} q[c][l] k[c][j + l] for j < J; q and k index channel planes ps apart.
template <typename T, int J>
LAM_ALWAYS_INLINE void dot_block(T* s, const T* q, const T* k, int64_t n, int64_t ps, bool add) {
  using V = typename Simd<T>::V;
  constexpr int L = Simd<T>::L;
  V acc[J];
  for (int j = 0; j < J; ++j) acc[j] = add ? loadu<V>(s + j * L) : V{};
  for (int64_t c = 0; c < n; ++c) {
    // the channels' rows are a plane apart, out of reach of the hardware prefetchers
    const T* ahead = k + (c + kAhead) * ps;
    __builtin_prefetch(ahead);
    __builtin_prefetch(ahead + J + Simd<T>::L - 2);
    const V qv = loadu<V>(q + c * ps);
    for (int j = 0; j < J; ++j) acc[j] += qv * loadu<V>(k + c * ps + j);
  }
  for (int j = 0; j < J; ++j) storeu(s + j * L, acc[j]);
}

// dot_block for the last nj < J offsets of a row (J: a compile-time bound).
template <typename T, int J>
LAM_ALWAYS_INLINE void dot_tail(int nj, T* s, const T* q, const T* k, int64_t n, int64_t ps, bool add) {
  if constexpr (J > 0) {
    if (nj == J)
      dot_block<T, J>(s, q, k, n, ps, add);
    else
      dot_tail<T, J - 1>(nj, s, q, k, n, ps, add);
  }
}

// s[j][l] = q_l . k_{j + l}, j < nj: the dot products (n channels) of a strip's L queries with
// their keys at the nj offsets of one window row; q at the strip's queries, k at its first key.
template <typename T>
LAM_ALWAYS_INLINE void dots(T* s, const T* q, const T* k, int64_t n, int64_t ps, int nj) {
  constexpr int L = Simd<T>::L;
  if (n == 0) std::fill(s, s + int64_t(nj) * L, T(0));
  for (int64_t c0 = 0; c0 < n; c0 += kDepth) {
    const int64_t m = std::min<int64_t>(kDepth, n - c0);
    const T* qc = q + c0 * ps;
    const T* kc = k + c0 * ps;
    int j = 0;
    for (; j + kDots <= nj; j += kDots) dot_block<T, kDots>(s + j * L, qc, kc + j, m, ps, c0 > 0);
    dot_tail<T, kDots - 1>(nj - j, s + j * L, qc, kc + j, m, ps, c0 > 0);
  }
}

// acc[c][l] = acc[c][l] scale[l] + sum_{j < nj} w[j][l] k[c][j + l] for c < CC (scale: 1 where
// null). Masked: only the terms whose mask[j * mstride + l] is not 0, as a select (the others may be
// 0 * inf).
template <typename T, int CC, bool Masked>
LAM_ALWAYS_INLINE void acc_block(T* acc, const T* scale, const T* w, const T* mask, int mstride, const T* k,
                                 int64_t ps, int nj) {
  using V = typename Simd<T>::V;
  constexpr int L = Simd<T>::L;
  V a[CC];
  for (int c = 0; c < CC; ++c) a[c] = loadu<V>(acc + c * L);
  if (scale) {
    const V sv = loadu<V>(scale);
    for (int c = 0; c < CC; ++c) a[c] *= sv;
  }
  for (int j = 0; j < nj; ++j) {
    const V wv = loadu<V>(w + j * L);
    if constexpr (Masked) {
      const auto in_sum = loadu<V>(mask + j * mstride) != V{};
      for (int c = 0; c < CC; ++c) a[c] += in_sum ? wv * loadu<V>(k + c * ps + j) : V{};
    } else {
      for (int c = 0; c < CC; ++c) a[c] += wv * loadu<V>(k + c * ps + j);
    }
  }
  for (int c = 0; c < CC; ++c) storeu(acc + c * L, a[c]);
}

template <typename T, int CC, bool Masked>
LAM_ALWAYS_INLINE void acc_tail(int n, T* acc, const T* scale, const T* w, const T* mask, int mstride, const T* k,
                                int64_t ps, int nj) {
  if constexpr (CC > 0) {
    if (n == CC)
      acc_block<T, CC, Masked>(acc, scale, w, mask, mstride, k, ps, nj);
    else
      acc_tail<T, CC - 1, Masked>(n, acc, scale, w, mask, mstride, k, ps, nj);
  }
}

// acc_block over n channels: the weighted sums of one window row, k at the strip's first key.
template <typename T, bool Masked>
LAM_ALWAYS_INLINE void accumulate(T* acc, const T* scale, const T* w, const T* mask, int mstride, const T* k,
                                  int64_t n, int64_t ps, int nj) {
  constexpr int L = Simd<T>::L;
  int64_t c = 0;
  for (; c + kAcc <= n; c += kAcc) acc_block<T, kAcc, Masked>(acc + c * L, scale, w, mask, mstride, k + c * ps, ps, nj);
  acc_tail<T, kAcc - 1, Masked>(static_cast<int>(n - c), acc + c * L, scale, w, mask, mstride, k + c * ps, ps, nj);
}

// ---------------------------------------------------------------------------------------------
// Forward

template <typename T>
struct ForwardJob {
  Planes g;
  int64_t C, D;
  T coef;
  const T *f, *x, *key;  // padded planes: D, C and the key mask as T (0 in the padding)
  bool x_finite;
  T *out, *lse;  // this image's (C, H, W) and (H, W)

  template <bool Masked>
  LAM_ALWAYS_INLINE void strips(int64_t begin, int64_t end) const {
    constexpr int L = Simd<T>::L;
    const int r = g.r, nj = g.offsets();
    const int64_t N = int64_t(g.H) * g.W;
    std::vector<T> buf((int64_t(nj) + C) * L);
    T* s = buf.data();      // the row's logits, then weights: nj x L
    T* acc = s + nj * L;    // sum of weight x value: C x L
    OnlineSoftmax<T> sm[L];
    T row_max[L], scale[L], m[L], row_sum[L];
    for (int64_t i = begin; i < end; ++i) {
      const int y = g.strip_y(i), x0 = g.strip_x(i);
      std::fill(acc, acc + C * L, T(0));
      for (int l = 0; l < L; ++l) sm[l] = OnlineSoftmax<T>();
      const T* fq = f + g.query(y, x0);
      for (int dy = -r; dy <= r; ++dy) {
        const int64_t kr = g.key_row(y, dy, x0);
        dots(s, fq, f + kr, D, g.plane, nj);
        std::fill(row_max, row_max + L, neg_inf<T>());
        for (int j = 0; j < nj; ++j) {
          const int d2 = dist2(dy, j - r);
          T* sj = s + j * L;
          const T* kj = key + kr + j;
#pragma omp simd
          for (int l = 0; l < L; ++l) {
            const T v = kj[l] != T(0) ? logit(sj[l], d2, coef) : neg_inf<T>();
            sj[l] = v;
            row_max[l] = v > row_max[l] ? v : row_max[l];
          }
        }
        for (int l = 0; l < L; ++l) {
          scale[l] = sm[l].rescale_to(row_max[l]);
          m[l] = sm[l].m;
          row_sum[l] = 0;
        }
        for (int j = 0; j < nj; ++j) {
          T* sj = s + j * L;
          // -inf: no weight, also before the query's first admissible key (m = -inf); a NaN logit
          // gives a NaN weight, which reaches lse and out
#pragma omp simd
          for (int l = 0; l < L; ++l) {
            const T p = sj[l] == neg_inf<T>() ? T(0) : exp_(sj[l] - m[l]);
            sj[l] = p;
            row_sum[l] += p;
          }
        }
        for (int l = 0; l < L; ++l) sm[l].add(row_sum[l]);
        accumulate<T, Masked>(acc, scale, s, key + kr, 1, x + kr, C, g.plane, nj);
      }
      const int lanes = std::min(L, g.W - x0);
      const int64_t p0 = int64_t(y) * g.W + x0;
      for (int l = 0; l < lanes; ++l) {
        scale[l] = sm[l].inv_l();
        lse[p0 + l] = sm[l].lse();
      }
      for (int64_t c = 0; c < C; ++c)
        for (int l = 0; l < lanes; ++l)  // no weight at all: 0, even where an admissible x was inf
          out[c * N + p0 + l] = scale[l] == T(0) ? T(0) : acc[c * L + l] * scale[l];
    }
  }

  LAM_ALWAYS_INLINE void operator()(int64_t begin, int64_t end) const {
    if (x_finite)
      strips<false>(begin, end);
    else
      strips<true>(begin, end);
  }
};

// ---------------------------------------------------------------------------------------------
// Backward

template <typename T>
struct BackwardJob {
  Planes g;
  int64_t C, D;
  T coef;
  const T *f, *x, *go, *key, *lse, *delta;  // padded planes: D, C, C, then 1 each
  bool finite;                              // f and grad_out
  T *dx, *df;                               // this image's (C, H, W), (D, H, W)
  T* dsigma;                                // per strip: sum of dS(b, a) d2 over its pairs

  template <bool Masked>
  LAM_ALWAYS_INLINE void strips(int64_t begin, int64_t end) const {
    constexpr int L = Simd<T>::L;
    const int r = g.r, nj = g.offsets();
    const int64_t N = int64_t(g.H) * g.W, row = int64_t(nj) * L;
    std::vector<T> buf(5 * row + (C + D) * L);
    T* s = buf.data();  // f_a . f_b, then A(a, b) (a as the key of b)
    T* gx = s + row;    // g_a . x_b, then dS(a, b) + dS(b, a)
    T* xg = gx + row;   // x_a . g_b
    T* in_dx = xg + row;
    T* in_df = in_dx + row;  // Masked: whether the pair is in dx_a's, df_a's sum
    T* dxa = in_df + row;
    T* dfa = dxa + C * L;
    T ka[L], la[L], da[L], dsig[L];
    for (int64_t i = begin; i < end; ++i) {
      const int y = g.strip_y(i), x0 = g.strip_x(i);
      const int64_t qa = g.query(y, x0);
      for (int l = 0; l < L; ++l) {
        ka[l] = key[qa + l];
        la[l] = lse[qa + l];
        da[l] = delta[qa + l];
        dsig[l] = 0;
      }
      std::fill(dxa, dxa + (C + D) * L, T(0));
      for (int dy = -r; dy <= r; ++dy) {
        const int64_t kr = g.key_row(y, dy, x0);
        dots(s, f + qa, f + kr, D, g.plane, nj);
        dots(gx, go + qa, x + kr, C, g.plane, nj);
        dots(xg, x + qa, go + kr, C, g.plane, nj);
        for (int j = 0; j < nj; ++j) {
          const int d2 = dist2(dy, j - r);
          const T *kb = key + kr + j, *lb = lse + kr + j, *db = delta + kr + j;
          T *sj = s + j * L, *gxj = gx + j * L, *xgj = xg + j * L;
#pragma omp simd
          for (int l = 0; l < L; ++l) {
            const PairGrad<T> pg = pair_grad(logit(sj[l], d2, coef), ka[l] != T(0), kb[l] != T(0), la[l], lb[l],
                                             gxj[l], xgj[l], da[l], db[l]);
            sj[l] = pg.a;
            gxj[l] = pg.ds;
            dsig[l] += pg.ds_query * static_cast<T>(d2);
          }
          if constexpr (Masked) {
            // a as the key of b (where b has weight) for dx_a; for df_a also b as the key of a
            // (where a has weight): a query without any adds no term, not 0 * inf
            T *dxj = in_dx + j * L, *dfj = in_df + j * L;
#pragma omp simd
            for (int l = 0; l < L; ++l) {
              const bool a_as_key = ka[l] != T(0) && lb[l] != neg_inf<T>();
              dxj[l] = a_as_key ? T(1) : T(0);
              dfj[l] = a_as_key || (kb[l] != T(0) && la[l] != neg_inf<T>()) ? T(1) : T(0);
            }
          }
        }
        accumulate<T, Masked>(dxa, nullptr, s, in_dx, L, go + kr, C, g.plane, nj);  // dx_a += A(a, b) g_b
        accumulate<T, Masked>(dfa, nullptr, gx, in_df, L, f + kr, D, g.plane, nj);  // df_a += dS f_b
      }
      const int lanes = std::min(L, g.W - x0);
      const int64_t p0 = int64_t(y) * g.W + x0;
      for (int64_t c = 0; c < C; ++c) std::copy(dxa + c * L, dxa + c * L + lanes, dx + c * N + p0);
      for (int64_t d = 0; d < D; ++d) std::copy(dfa + d * L, dfa + d * L + lanes, df + d * N + p0);
      T sum = 0;  // the padding lanes hold 0: their lse is -inf
      for (int l = 0; l < L; ++l) sum += dsig[l];
      dsigma[i] = sum;
    }
  }

  LAM_ALWAYS_INLINE void operator()(int64_t begin, int64_t end) const {
    if (finite)
      strips<false>(begin, end);
    else
      strips<true>(begin, end);
  }
};

// ---------------------------------------------------------------------------------------------
// ISA dispatch. The jobs are compiled three times, for AVX-512 (x86-64-v4), AVX2 + FMA (x86-64-v3)
// and the build's baseline, and chosen at run time by the CPU: the build stays portable (no
// -march=native). Explicit entry points rather than target_clones so that the environment variable
// LAM_OPS_CPU_ISA (avx512, avx2, baseline) can force a narrower one: the tests run the baseline
// path on a machine that has AVX-512. The paths sum in other orders (vector width, FMA): results
// are reproducible on a machine and independent of the thread count, not equal across CPU types.

enum class Isa { kBaseline, kAvx2, kAvx512 };

Isa best_isa() {
#if LAM_X86_DISPATCH
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vl"))
    return Isa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
#endif
  return Isa::kBaseline;
}

Isa chosen_isa() {
  static const Isa isa = [] {
    const Isa best = best_isa();
    const char* env = std::getenv("LAM_OPS_CPU_ISA");
    if (!env || !*env) return best;
    const std::string want(env);
    TORCH_CHECK(want == "avx512" || want == "avx2" || want == "baseline",
                "LAM_OPS_CPU_ISA must be avx512, avx2 or baseline, got '", want, "'");
    const Isa asked = want == "avx512" ? Isa::kAvx512 : want == "avx2" ? Isa::kAvx2 : Isa::kBaseline;
    return std::min(asked, best);  // never one the CPU lacks
  }();
  return isa;
}

#if LAM_X86_DISPATCH
template <typename Job>
__attribute__((target("arch=x86-64-v4"))) void run_avx512(const Job& job, int64_t begin, int64_t end) {
  job(begin, end);
}
template <typename Job>
__attribute__((target("arch=x86-64-v3"))) void run_avx2(const Job& job, int64_t begin, int64_t end) {
  job(begin, end);
}
#endif
template <typename Job>
void run_baseline(const Job& job, int64_t begin, int64_t end) {
  job(begin, end);
}

// Runs the job's strips in parallel chunks of about 1M multiply-adds at least, so that tiny problems
// (gradcheck) run inline rather than paying for waking threads.
template <typename Job>
void run_strips(const Job& job, int64_t channels) {
  const Planes& g = job.g;
  const int64_t work = int64_t(g.offsets()) * g.offsets() * g.L * std::max<int64_t>(1, channels);
  const Isa isa = chosen_isa();
  at::parallel_for(0, g.strips(), std::max<int64_t>(1, (int64_t(1) << 20) / work), [&](int64_t begin, int64_t end) {
#if LAM_X86_DISPATCH
    if (isa == Isa::kAvx512) return run_avx512(job, begin, end);
    if (isa == Isa::kAvx2) return run_avx2(job, begin, end);
#endif
    run_baseline(job, begin, end);
  });
}

template <typename T>
bool all_finite(const at::Tensor& t) {
  return t.numel() == 0 || at::isfinite(t).all().item<bool>();
}

// The key mask of image b as T planes (1, H, W); all 1 without a mask.
at::Tensor key_plane(const at::Tensor& key_mask, int64_t b, int64_t H, int64_t W, const at::TensorOptions& opts) {
  return key_mask.defined() ? key_mask[b].to(opts.dtype()).unsqueeze(0) : at::ones({1, H, W}, opts);
}

}  // namespace

// Measured (B 2, C 21, 96 x 96, D 16 and 256): the offset kernels are faster than the tiled ones at
// every radius up to 18. Their work per query is (2r + 1)^2 pairs whatever the image, the tiled
// ones' the key rectangle of a tile, at most the image: where the windows are much larger than the
// image (the radius close to the image's size, where most offsets fall outside), the tiled kernels
// win.
bool use_offset_kernels(int64_t H, int64_t W, int radius) {
  const int64_t side = 2 * int64_t(radius) + 1, rect = 8 + 2 * int64_t(radius);
  return side * side <= 2 * std::min(H, rect) * std::min(W, rect);
}

template <typename T>
void offset_forward(const at::Tensor& x, const at::Tensor& f, const at::Tensor& key_mask, T sigma, int radius,
                    at::Tensor& out, at::Tensor& lse) {
  const int64_t B = x.size(0), C = x.size(1), D = f.size(1), H = x.size(2), W = x.size(3), N = H * W;
  const Planes g(H, W, radius, Simd<T>::L);
  for (int64_t b = 0; b < B; ++b) {
    const at::Tensor fp = g.pad(f[b], 0), xp = g.pad(x[b], 0), kp = g.pad(key_plane(key_mask, b, H, W, x.options()), 0);
    const ForwardJob<T> job{g,
                            C,
                            D,
                            dist_coef(sigma),
                            fp.data_ptr<T>(),
                            xp.data_ptr<T>(),
                            kp.data_ptr<T>(),
                            all_finite<T>(x[b]),
                            out.data_ptr<T>() + b * C * N,
                            lse.data_ptr<T>() + b * N};
    run_strips(job, C + D);
  }
}

template <typename T>
T offset_backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& f, const at::Tensor& key_mask,
                  const at::Tensor& out, const at::Tensor& lse, T sigma, int radius, at::Tensor& dx, at::Tensor& df) {
  const int64_t B = x.size(0), C = x.size(1), D = f.size(1), H = x.size(2), W = x.size(3), N = H * W;
  const Planes g(H, W, radius, Simd<T>::L);
  std::vector<T> dsig(B * g.strips());
  for (int64_t b = 0; b < B; ++b) {
    const at::Tensor gb = grad_out[b].to(x.scalar_type()).contiguous(), ob = out[b].contiguous();
    // Delta_j = g_j . out_j (the flash-attention preprocess), summed over c in order
    at::Tensor delta = at::zeros({1, H, W}, x.options());
    T* dp = delta.data_ptr<T>();
    const T *gp = gb.data_ptr<T>(), *op = ob.data_ptr<T>();
    for (int64_t c = 0; c < C; ++c)
      for (int64_t n = 0; n < N; ++n) dp[n] += gp[c * N + n] * op[c * N + n];
    const at::Tensor fp = g.pad(f[b], 0), xp = g.pad(x[b], 0), gpad = g.pad(gb, 0);
    const at::Tensor kp = g.pad(key_plane(key_mask, b, H, W, x.options()), 0);
    const at::Tensor lp = g.pad(lse[b].unsqueeze(0), -std::numeric_limits<double>::infinity());
    const at::Tensor dpad = g.pad(delta, 0);
    const BackwardJob<T> job{g,
                             C,
                             D,
                             dist_coef(sigma),
                             fp.data_ptr<T>(),
                             xp.data_ptr<T>(),
                             gpad.data_ptr<T>(),
                             kp.data_ptr<T>(),
                             lp.data_ptr<T>(),
                             dpad.data_ptr<T>(),
                             all_finite<T>(f[b]) && all_finite<T>(gb),
                             dx.data_ptr<T>() + b * C * N,
                             df.data_ptr<T>() + b * D * N,
                             dsig.data() + b * g.strips()};
    run_strips(job, 3 * C + 2 * D);
  }
  T total = 0;
  for (T v : dsig) total += v;
  return total * dsigma_factor(sigma);
}

template void offset_forward<float>(const at::Tensor&, const at::Tensor&, const at::Tensor&, float, int, at::Tensor&,
                                    at::Tensor&);
template void offset_forward<double>(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, int, at::Tensor&,
                                     at::Tensor&);
template float offset_backward<float>(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                      const at::Tensor&, const at::Tensor&, float, int, at::Tensor&, at::Tensor&);
template double offset_backward<double>(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                        const at::Tensor&, const at::Tensor&, double, int, at::Tensor&, at::Tensor&);

}  // namespace lam
