// Offset-major CPU kernels of the lam_ops operators for windowed radii, over lam/math.h.
//
// Work unit: a strip of R rows of L query pixels, L = one vector (AVX-512: 16 float32, 8 float64,
// R = 4; AVX2: 8 and 4, R = 3; see the ISA dispatch below). In a channel plane of the NCHW input, the keys of those L
// queries at one window offset (dy, dx) are L contiguous values, so every pair sum runs over full vectors with one
// unaligned load per channel and no pair outside the windows (the tiled kernels of lam_cpu.cpp compute the GEMM of a
// tile with its whole key rectangle: at r = 6, 400 keys per query of which 169 are used).
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
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
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
#pragma GCC diagnostic ignored "-Wpsabi"  // 64-byte vectors: all inlined, no call passes one

namespace {

// The ISA levels the kernels compile for: vector bytes, vector registers, query rows per strip.
struct Avx512 {
  static constexpr int kBytes = 64, kRegs = 32, kRows = 4;
};
struct Avx2 {
  static constexpr int kBytes = 32, kRegs = 16, kRows = 3;
};

// The vectors of T at one ISA level: L lanes, one register.
template <typename T_, typename Level>
struct Simd {
  using T = T_;
  static constexpr int L = Level::kBytes / sizeof(T), kRegs = Level::kRegs, kRows = Level::kRows;
  typedef T V __attribute__((vector_size(Level::kBytes)));
  typedef T Unaligned __attribute__((vector_size(Level::kBytes), aligned(sizeof(T))));
};

// Unaligned vector loads and stores, as GCC's vector extensions spell them.
template <typename S>
LAM_ALWAYS_INLINE typename S::V loadu(const typename S::T* p) {
  return *reinterpret_cast<const typename S::Unaligned*>(p);
}
template <typename S>
LAM_ALWAYS_INLINE void storeu(typename S::T* p, const typename S::V& v) {
  *reinterpret_cast<typename S::Unaligned*>(p) = v;
}

// Channels per pass of the dot products: their key rows (2r + L values each) stay in L1 while the
// row's offsets run over them.
constexpr int kDepth = 32;
// At most this many offsets per register block of the dot products, channels per register block of
// the weighted sums: times the R query rows, plus R + 2 operands, in the vector registers (AVX-512,
// R = 4: 6; AVX2: 2), at most 8. (R below the strip's rows: the first and last key rows of a strip,
// which lie in fewer rows' windows.)
template <typename S, int R>
constexpr int kDots = std::min(8, (S::kRegs - R - 2) / R);
template <typename S, int R>
constexpr int kAcc = kDots<S, R>;
// Channels ahead that the dot products and weighted sums prefetch: the channels' rows are a plane
// apart, out of reach of the hardware prefetchers.
constexpr int kAhead = 6;

// The padded copy of one image's n channels: P rows of n channel rows of Q values, the pixel
// (y, x) at (y + r, x + X), X = r rounded up to a multiple of L, and Q a multiple of L: the query
// vectors of a strip are aligned (from torch's 64-byte aligned allocation) and their loads never
// split a cache line; only the key vectors, at every shift, do. Q / L is odd: channel rows a power
// of two of cache lines apart would fall in a few cache sets (D = 256 ran 8% slower). A key row of all channels is
// contiguous, so the channel rows that the dot products and sums step through are Q values apart (a stride that the
// hardware prefetchers follow, in a few pages: channel planes were a plane apart, each in its own page, and the kernels
// spent much of their time in TLB and cache misses). A strip is R query rows x L columns; the R - 1
// extra rows at the bottom hold the queries of a last strip below the image (results dropped).
struct Planes {
  int H, W, r, L, R, Wp, X, P, Q;

  Planes(int64_t H_, int64_t W_, int r_, int L_, int R_)
      : H(static_cast<int>(H_)), W(static_cast<int>(W_)), r(r_), L(L_), R(R_),
        Wp(static_cast<int>((W_ + L_ - 1) / L_ * L_)), X((r_ + L_ - 1) / L_ * L_), P(H + 2 * r + R - 1),
        Q(((X + Wp + r + L - 1) / L | 1) * L) {}

  int offsets() const { return 2 * r + 1; }
  int64_t strip_rows() const { return (H + R - 1) / R; }
  // Strips are numbered down the columns: the next strip needs R new key rows (of each channel),
  // the others are in L2 (the key rows of a whole image row of strips are not, at D = 256).
  int64_t strips() const { return strip_rows() * (Wp / L); }
  int strip_y(int64_t s) const { return static_cast<int>(s % strip_rows()) * R; }
  int strip_x(int64_t s) const { return static_cast<int>(s / strip_rows()) * L; }
  // In a copy of n channels: the index of the first query pixel of row y, and of its first key at
  // offset (dy, -r), in channel 0.
  int64_t query(int y, int x0, int64_t n) const { return int64_t(y + r) * n * Q + x0 + X; }
  int64_t key_row(int y, int dy, int x0, int64_t n) const { return int64_t(y + r + dy) * n * Q + x0 + X - r; }

  // The padded copy of a (n, H, W) tensor: contiguous (P, n, Q).
  at::Tensor pad(const at::Tensor& t, double value) const {
    return at::constant_pad_nd(t.permute({1, 0, 2}), {X, Q - X - W, 0, 0, r, r + R - 1}, value).contiguous();
  }
};

// For the R query rows (of one strip) whose windows hold one key row: s[i][j][l] (+)=
// sum_{c < n} q[i][c][l] k[c][j + l], j < J; q and k index channel planes ps apart. One load of a
// key vector serves the R rows.
template <typename S, int R, int J, typename T = typename S::T>
LAM_ALWAYS_INLINE void dot_block(T* const* s, const T* const* q, const T* k, int64_t n, int64_t ps, bool add) {
  using V = typename S::V;
  constexpr int L = S::L;
  V acc[R][J];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < J; ++j) acc[i][j] = add ? loadu<S>(s[i] + j * L) : V{};
  for (int64_t c = 0; c < n; ++c) {
    const T* ahead = k + (c + kAhead) * ps;
    __builtin_prefetch(ahead);
    __builtin_prefetch(ahead + J + L - 2);
    V qv[R];
    for (int i = 0; i < R; ++i) qv[i] = loadu<S>(q[i] + c * ps);
    for (int j = 0; j < J; ++j) {
      const V kv = loadu<S>(k + c * ps + j);
      for (int i = 0; i < R; ++i) acc[i][j] += qv[i] * kv;
    }
  }
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < J; ++j) storeu<S>(s[i] + j * L, acc[i][j]);
}

// dot_block for a block of nj <= J offsets (J: a compile-time bound).
template <typename S, int R, int J, typename T = typename S::T>
LAM_ALWAYS_INLINE void dot_blocks(int nj, T* const* s, const T* const* q, const T* k, int64_t n, int64_t ps, bool add) {
  if constexpr (J > 0) {
    if (nj == J)
      dot_block<S, R, J>(s, q, k, n, ps, add);
    else
      dot_blocks<S, R, J - 1>(nj, s, q, k, n, ps, add);
  }
}

// The sizes of the register blocks of nj offsets: as equal as can be, at most `most` each.
struct Blocks {
  int count, size, larger;  // `larger` blocks of size + 1 first, then blocks of size
  Blocks(int nj, int most) : count((nj + most - 1) / most), size(nj / count), larger(nj % count) {}
  int size_of(int b) const { return size + (b < larger ? 1 : 0); }
};

// s[i][j][l] = q_{i,l} . k_{j + l}, j < nj: the dot products (n channels) of the strip's L queries of
// rows i < R with their keys at the nj offsets of one key row; q at the queries, k at the first key.
template <typename S, int R, typename T = typename S::T>
LAM_ALWAYS_INLINE void dots(T* const* s, const T* const* q, const T* k, int64_t n, int64_t ps, int nj) {
  constexpr int L = S::L;
  if (n == 0)
    for (int i = 0; i < R; ++i) std::fill(s[i], s[i] + int64_t(nj) * L, T(0));
  const Blocks blocks(nj, kDots<S, R>);
  for (int64_t c0 = 0; c0 < n; c0 += kDepth) {
    const int64_t m = std::min<int64_t>(kDepth, n - c0);
    const T* qc[R];
    for (int i = 0; i < R; ++i) qc[i] = q[i] + c0 * ps;
    for (int b = 0, j = 0; b < blocks.count; j += blocks.size_of(b++)) {
      T* sj[R];
      for (int i = 0; i < R; ++i) sj[i] = s[i] + j * L;
      dot_blocks<S, R, kDots<S, R>>(blocks.size_of(b), sj, qc, k + c0 * ps + j, m, ps, c0 > 0);
    }
  }
}

// For the R rows: acc[i][c][l] = acc[i][c][l] scale[i][l] + sum_{j < nj} w[i][j][l] k[c][j + l] for
// c < CC (no scale: null). Masked: only the terms whose mask[i][j * mstride + l] is not 0, as a
// select (the others may be 0 * inf). One load of a key vector serves the R rows.
template <typename S, int R, int CC, bool Masked, typename T = typename S::T>
LAM_ALWAYS_INLINE void acc_block(T* const* acc, const T* const* scale, const T* const* w, const T* const* mask,
                                 int mstride, const T* k, int64_t ps, int nj) {
  using V = typename S::V;
  constexpr int L = S::L;
  V a[R][CC];
  for (int i = 0; i < R; ++i) {
    for (int c = 0; c < CC; ++c) a[i][c] = loadu<S>(acc[i] + c * L);
    if (scale) {
      const V sv = loadu<S>(scale[i]);
      for (int c = 0; c < CC; ++c) a[i][c] *= sv;
    }
  }
  for (int c = 0; c < CC; ++c) __builtin_prefetch(k + (c + kAcc<S, R>)*ps + nj + L - 2);  // the next block's
  for (int j = 0; j < nj; ++j) {
    V wv[R];
    for (int i = 0; i < R; ++i) wv[i] = loadu<S>(w[i] + j * L);
    if constexpr (Masked) {
      V live[R];
      for (int i = 0; i < R; ++i) live[i] = loadu<S>(mask[i] + j * mstride);
      for (int c = 0; c < CC; ++c) {
        const V kv = loadu<S>(k + c * ps + j);
        for (int i = 0; i < R; ++i) a[i][c] += live[i] != V{} ? wv[i] * kv : V{};
      }
    } else {
      for (int c = 0; c < CC; ++c) {
        const V kv = loadu<S>(k + c * ps + j);
        for (int i = 0; i < R; ++i) a[i][c] += wv[i] * kv;
      }
    }
  }
  for (int i = 0; i < R; ++i)
    for (int c = 0; c < CC; ++c) storeu<S>(acc[i] + c * L, a[i][c]);
}

template <typename S, int R, int CC, bool Masked, typename T = typename S::T>
LAM_ALWAYS_INLINE void acc_tail(int n, T* const* acc, const T* const* scale, const T* const* w, const T* const* mask,
                                int mstride, const T* k, int64_t ps, int nj) {
  if constexpr (CC > 0) {
    if (n == CC)
      acc_block<S, R, CC, Masked>(acc, scale, w, mask, mstride, k, ps, nj);
    else
      acc_tail<S, R, CC - 1, Masked>(n, acc, scale, w, mask, mstride, k, ps, nj);
  }
}

// acc_block over n channels: the weighted sums of one key row, k at its first key.
template <typename S, int R, bool Masked, typename T = typename S::T>
LAM_ALWAYS_INLINE void accumulate(T* const* acc, const T* const* scale, const T* const* w, const T* const* mask,
                                  int mstride, const T* k, int64_t n, int64_t ps, int nj) {
  constexpr int L = S::L;
  for (int64_t c = 0; c < n; c += kAcc<S, R>) {
    T* ac[R];
    for (int i = 0; i < R; ++i) ac[i] = acc[i] + c * L;
    if (n - c >= kAcc<S, R>)
      acc_block<S, R, kAcc<S, R>, Masked>(ac, scale, w, mask, mstride, k + c * ps, ps, nj);
    else
      acc_tail<S, R, kAcc<S, R> - 1, Masked>(static_cast<int>(n - c), ac, scale, w, mask, mstride, k + c * ps, ps, nj);
  }
}

// The query rows of a strip of R rows whose windows hold the key row at offset t from its first
// row: rows [lo, hi], row i at offset t - i.
struct KeyRow {
  int lo, hi;
  KeyRow(int t, int r, int R) : lo(std::max(0, t - r)), hi(std::min(R - 1, t + r)) {}
};

// The start of buf (n + 64 / sizeof(T) values) aligned to 64 bytes: vectors at multiples of L from it
// are aligned.
template <typename T>
T* aligned(std::vector<T>& buf) {
  const uintptr_t at = reinterpret_cast<uintptr_t>(buf.data());
  return buf.data() + (64 - at % 64) % 64 / sizeof(T);
}

// Calls fn(std::integral_constant<int, rows>) for 1 <= rows <= R (a compile-time row count).
template <int R, typename F>
LAM_ALWAYS_INLINE void with_rows(int rows, F&& fn) {
  if constexpr (R > 1)
    if (rows == R) return fn(std::integral_constant<int, R>());
  if constexpr (R > 1)
    with_rows<R - 1>(rows, fn);
  else
    fn(std::integral_constant<int, 1>());
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

  template <typename S, int R, bool Masked>
  LAM_ALWAYS_INLINE void strips(int64_t begin, int64_t end) const {
    constexpr int L = S::L;
    const int r = g.r, nj = g.offsets();
    // The lane loops run to g.L (= L) unknown to the compiler: a constant trip count of 16 has GCC
    // unroll them before the loop vectoriser runs, and the unrolled selects stay scalar.
    const int lanes = g.L;
    const int64_t N = int64_t(g.H) * g.W;
    std::vector<T> buf(R * (int64_t(nj) + C) * L + 64 / sizeof(T));
    T* const base = aligned(buf);
    T *s[R], *acc[R];  // per row: the key row's logits, then weights (nj x L); sum of weight x value (C x L)
    for (int i = 0; i < R; ++i) {
      s[i] = base + i * nj * L;
      acc[i] = base + (R * nj + i * C) * L;
    }
    OnlineSoftmax<T> sm[R][L];
    T scale[R][L], row_max[L], m[L], row_sum[L];
    for (int64_t strip = begin; strip < end; ++strip) {
      const int y0 = g.strip_y(strip), x0 = g.strip_x(strip);
      std::fill(acc[0], acc[0] + R * C * L, T(0));
      const T* fq[R];
      for (int i = 0; i < R; ++i) {
        fq[i] = f + g.query(y0 + i, x0, D);
        for (int l = 0; l < L; ++l) sm[i][l] = OnlineSoftmax<T>();
      }
      for (int t = -r; t <= r + R - 1; ++t) {
        const KeyRow rows(t, r, R);
        const int64_t kf = g.key_row(y0, t, x0, D), kx = g.key_row(y0, t, x0, C);
        const T* kmask = key + g.key_row(y0, t, x0, 1);
        with_rows<R>(rows.hi - rows.lo + 1, [&](auto n) __attribute__((always_inline)) {
          dots<S, decltype(n)::value>(s + rows.lo, fq + rows.lo, f + kf, D, g.Q, nj);
        });
        for (int i = rows.lo; i <= rows.hi; ++i) {
          const int dy = t - i;
          std::fill(row_max, row_max + L, neg_inf<T>());
          for (int j = 0; j < nj; ++j) {
            const int d2 = dist2(dy, j - r);
            T* sj = s[i] + j * L;
            const T* kj = kmask + j;
#pragma omp simd
            for (int l = 0; l < lanes; ++l) {
              const T lg = logit(sj[l], d2, coef);  // outside the select, which then if-converts
              const T v = kj[l] != T(0) ? lg : neg_inf<T>();
              sj[l] = v;
              row_max[l] = v > row_max[l] ? v : row_max[l];
            }
          }
          for (int l = 0; l < L; ++l) {
            scale[i][l] = sm[i][l].rescale_to(row_max[l]);
            m[l] = sm[i][l].m;
            row_sum[l] = 0;
          }
          for (int j = 0; j < nj; ++j) {
            T* sj = s[i] + j * L;
            // -inf: no weight, also before the query's first admissible key (m = -inf); a NaN
            // logit gives a NaN weight, which reaches lse and out
#pragma omp simd
            for (int l = 0; l < lanes; ++l) {
              const T p = sj[l] == neg_inf<T>() ? T(0) : exp_(sj[l] - m[l]);
              sj[l] = p;
              row_sum[l] += p;
            }
          }
          for (int l = 0; l < L; ++l) sm[i][l].add(row_sum[l]);
        }
        const T* sc[R];
        const T* masks[R];
        for (int i = 0; i < R; ++i) {
          sc[i] = scale[i];
          masks[i] = kmask;
        }
        with_rows<R>(rows.hi - rows.lo + 1, [&](auto n) __attribute__((always_inline)) {
          accumulate<S, decltype(n)::value, Masked>(acc + rows.lo, sc + rows.lo, s + rows.lo, masks, 1, x + kx, C, g.Q,
                                                    nj);
        });
      }
      const int valid = std::min(L, g.W - x0);
      for (int i = 0; i < R && y0 + i < g.H; ++i) {
        const int64_t p0 = int64_t(y0 + i) * g.W + x0;
        for (int l = 0; l < valid; ++l) {
          row_sum[l] = sm[i][l].inv_l();
          lse[p0 + l] = sm[i][l].lse();
        }
        for (int64_t c = 0; c < C; ++c)
          for (int l = 0; l < valid; ++l)  // no weight at all: 0, even where an admissible x was inf
            out[c * N + p0 + l] = row_sum[l] == T(0) ? T(0) : acc[i][c * L + l] * row_sum[l];
      }
    }
  }

  template <typename S>
  LAM_ALWAYS_INLINE void run(int64_t begin, int64_t end) const {
    if (x_finite)
      strips<S, S::kRows, false>(begin, end);
    else
      strips<S, S::kRows, true>(begin, end);
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

  template <typename S, int R, bool Masked>
  LAM_ALWAYS_INLINE void strips(int64_t begin, int64_t end) const {
    constexpr int L = S::L;
    const int r = g.r, nj = g.offsets();
    const int lanes = g.L;  // as in the forward
    const int64_t N = int64_t(g.H) * g.W, row = int64_t(nj) * L, per_row = 5 * row + (C + D) * L;
    std::vector<T> buf(R * per_row + 64 / sizeof(T));
    // Per query row: f_a . f_b, then A(a, b) (a as the key of b); g_a . x_b, then dS(a, b) + dS(b, a);
    // x_a . g_b; Masked: whether the pair is in dx_a's, df_a's sum; dx_a and df_a.
    T *s[R], *gx[R], *xg[R], *in_dx[R], *in_df[R], *dxa[R], *dfa[R];
    for (int i = 0; i < R; ++i) {
      s[i] = aligned(buf) + i * per_row;
      gx[i] = s[i] + row;
      xg[i] = gx[i] + row;
      in_dx[i] = xg[i] + row;
      in_df[i] = in_dx[i] + row;
      dxa[i] = in_df[i] + row;
      dfa[i] = dxa[i] + C * L;
    }
    T ka[R][L], la[R][L], da[R][L], dsig[R][L];
    for (int64_t strip = begin; strip < end; ++strip) {
      const int y0 = g.strip_y(strip), x0 = g.strip_x(strip);
      const T *fq[R], *gq[R], *xq[R];
      for (int i = 0; i < R; ++i) {
        const int64_t qa = g.query(y0 + i, x0, 1);
        fq[i] = f + g.query(y0 + i, x0, D), gq[i] = go + g.query(y0 + i, x0, C), xq[i] = x + g.query(y0 + i, x0, C);
        for (int l = 0; l < L; ++l) {
          ka[i][l] = key[qa + l];
          la[i][l] = lse[qa + l];
          da[i][l] = delta[qa + l];
          dsig[i][l] = 0;
        }
        std::fill(dxa[i], dxa[i] + (C + D) * L, T(0));
      }
      for (int t = -r; t <= r + R - 1; ++t) {
        const KeyRow rows(t, r, R);
        const int64_t kf = g.key_row(y0, t, x0, D), kx = g.key_row(y0, t, x0, C), kr = g.key_row(y0, t, x0, 1);
        with_rows<R>(rows.hi - rows.lo + 1, [&](auto n) __attribute__((always_inline)) {
          dots<S, decltype(n)::value>(s + rows.lo, fq + rows.lo, f + kf, D, g.Q, nj);
          dots<S, decltype(n)::value>(gx + rows.lo, gq + rows.lo, x + kx, C, g.Q, nj);
          dots<S, decltype(n)::value>(xg + rows.lo, xq + rows.lo, go + kx, C, g.Q, nj);
        });
        for (int i = rows.lo; i <= rows.hi; ++i) {
          const int dy = t - i;
          const T *kai = ka[i], *lai = la[i], *dai = da[i];
          T* dsi = dsig[i];
          for (int j = 0; j < nj; ++j) {
            const int d2 = dist2(dy, j - r);
            const T *kb = key + kr + j, *lb = lse + kr + j, *db = delta + kr + j;
            T *sj = s[i] + j * L, *gxj = gx[i] + j * L, *xgj = xg[i] + j * L;
#pragma omp simd
            for (int l = 0; l < lanes; ++l) {
              const PairGrad<T> pg = pair_grad(logit(sj[l], d2, coef), kai[l] != T(0), kb[l] != T(0), lai[l], lb[l],
                                               gxj[l], xgj[l], dai[l], db[l]);
              sj[l] = pg.a;
              gxj[l] = pg.ds;
              dsi[l] += pg.ds_query * static_cast<T>(d2);
            }
            if constexpr (Masked) {
              // a as the key of b (where b has weight) for dx_a; for df_a also b as the key of a
              // (where a has weight): a query without any adds no term, not 0 * inf
              T *dxj = in_dx[i] + j * L, *dfj = in_df[i] + j * L;
#pragma omp simd
              for (int l = 0; l < lanes; ++l) {
                const bool a_as_key = kai[l] != T(0) && lb[l] != neg_inf<T>();
                dxj[l] = a_as_key ? T(1) : T(0);
                dfj[l] = a_as_key || (kb[l] != T(0) && lai[l] != neg_inf<T>()) ? T(1) : T(0);
              }
            }
          }
        }
        with_rows<R>(rows.hi - rows.lo + 1, [&](auto n) __attribute__((always_inline)) {
          const T* const* none = nullptr;
          // dx_a += A(a, b) g_b; df_a += dS f_b
          accumulate<S, decltype(n)::value, Masked>(dxa + rows.lo, none, s + rows.lo, in_dx + rows.lo, L, go + kx, C,
                                                    g.Q, nj);
          accumulate<S, decltype(n)::value, Masked>(dfa + rows.lo, none, gx + rows.lo, in_df + rows.lo, L, f + kf, D,
                                                    g.Q, nj);
        });
      }
      const int valid = std::min(L, g.W - x0);
      T sum = 0;  // the padding's lanes and rows hold 0: their lse is -inf
      for (int i = 0; i < R; ++i) {
        for (int l = 0; l < L; ++l) sum += dsig[i][l];
        if (y0 + i >= g.H) continue;
        const int64_t p0 = int64_t(y0 + i) * g.W + x0;
        for (int64_t c = 0; c < C; ++c) std::copy(dxa[i] + c * L, dxa[i] + c * L + valid, dx + c * N + p0);
        for (int64_t d = 0; d < D; ++d) std::copy(dfa[i] + d * L, dfa[i] + d * L + valid, df + d * N + p0);
      }
      dsigma[strip] = sum;
    }
  }

  template <typename S>
  LAM_ALWAYS_INLINE void run(int64_t begin, int64_t end) const {
    if (finite)
      strips<S, S::kRows, false>(begin, end);
    else
      strips<S, S::kRows, true>(begin, end);
  }
};

// ---------------------------------------------------------------------------------------------
// ISA dispatch. The kernels are compiled twice through target attributes (the build stays portable,
// no -march=native): for AVX-512 (x86-64-v4, 64-byte vectors, strips of 4 rows: blocks of 4 x 6
// in 32 registers) and for AVX2 (x86-64-v3, 32-byte vectors, strips of 3 rows: blocks of 3 x 3 in 16
// registers; 4 rows, blocks of 4 x 2, measured 12% slower), the best the CPU has running. (Vectors of
// 64 bytes compiled for AVX2, split by GCC into halves, spilled and ran 7x slower.) Without AVX2 the
// tiled kernels run every radius. LAM_OPS_CPU_ISA (avx512, avx2, baseline) caps the ISA: the tests
// run every path on a machine that has AVX-512.

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
template <typename T, template <typename> class Job>
__attribute__((target("arch=x86-64-v4"))) void run_avx512(const Job<T>& job, int64_t begin, int64_t end) {
  job.template run<Simd<T, Avx512>>(begin, end);
}
template <typename T, template <typename> class Job>
__attribute__((target("arch=x86-64-v3"))) void run_avx2(const Job<T>& job, int64_t begin, int64_t end) {
  job.template run<Simd<T, Avx2>>(begin, end);
}
#endif

// The padded copies' layout for the strips of the ISA level that runs.
template <typename T>
Planes planes_for(int64_t H, int64_t W, int radius) {
  if (chosen_isa() == Isa::kAvx512) return Planes(H, W, radius, Simd<T, Avx512>::L, Avx512::kRows);
  return Planes(H, W, radius, Simd<T, Avx2>::L, Avx2::kRows);
}

// Runs the job's strips in parallel chunks of about 1M multiply-adds at least, so that tiny problems
// (gradcheck) run inline rather than paying for waking threads.
template <typename T, template <typename> class Job>
void run_strips(const Job<T>& job, int64_t channels) {
  const Planes& g = job.g;
  const int64_t work = int64_t(g.offsets()) * g.offsets() * g.L * g.R * std::max<int64_t>(1, channels);
  const bool wide = chosen_isa() == Isa::kAvx512;
  TORCH_INTERNAL_ASSERT(chosen_isa() >= Isa::kAvx2 && g.L == (wide ? Simd<T, Avx512>::L : Simd<T, Avx2>::L));
  at::parallel_for(0, g.strips(), std::max<int64_t>(1, (int64_t(1) << 20) / work), [&](int64_t begin, int64_t end) {
#if LAM_X86_DISPATCH
    if (wide)
      run_avx512(job, begin, end);
    else
      run_avx2(job, begin, end);
#endif
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

// Measured (B 2, C 21, 96 x 96, D 16 and 256, r 6, 12, 18; one thread): with AVX-512 the offset
// kernels are faster than the tiled ones at every radius up to 18. With AVX2 only (MKL capped to AVX2
// as well) they are faster at D 16 and at D 256 r 6, equal at D 256 r 12 and 1.1x slower at D 256
// r 18 (fwd + bwd), where BLAS's GEMMs over the tiles' key rectangles waste less: there the tiled
// kernels run (D >= 128 and r > 12, the midpoints of what was measured). Their work per query is
// (2r + 1)^2 pairs whatever the image, the tiled ones' the key rectangle of a tile, at most the image:
// where the windows are much larger than the image (the radius close to the image's size, where most
// offsets fall outside), the tiled kernels win.
bool use_offset_kernels(int64_t H, int64_t W, int64_t D, int radius) {
  const Isa isa = chosen_isa();
  if (isa < Isa::kAvx2 || (isa == Isa::kAvx2 && D >= 128 && radius > 12)) return false;
  const int64_t side = 2 * int64_t(radius) + 1, rect = 8 + 2 * int64_t(radius);
  return side * side <= 2 * std::min(H, rect) * std::min(W, rect);
}

template <typename T>
void offset_forward(const at::Tensor& x, const at::Tensor& f, const at::Tensor& key_mask, T sigma, int radius,
                    at::Tensor& out, at::Tensor& lse) {
  const int64_t B = x.size(0), C = x.size(1), D = f.size(1), H = x.size(2), W = x.size(3), N = H * W;
  const Planes g = planes_for<T>(H, W, radius);
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
  const Planes g = planes_for<T>(H, W, radius);
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
