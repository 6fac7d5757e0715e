// Per-pixel math of the Local Aggregation operator, shared by the CPU and CUDA kernels.
//
// Everything here is __host__ __device__ and free of indexing and memory layout: kernels decide
// how pixels are laid out and visited, this header decides what is computed for a pair (i, j).
// The CPU build runs exactly these functions (exp aside, see exp_), so the CPU tests exercise the
// GPU's math.
// Notation follows docs/operator.md: j is a query pixel, i a key in its window.
#pragma once

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define LAM_HD __host__ __device__ __forceinline__
#else
#define LAM_HD inline
#endif

namespace lam {

LAM_HD int imin(int a, int b) { return a < b ? a : b; }
LAM_HD int imax(int a, int b) { return a > b ? a : b; }

#if !defined(__CUDA_ARCH__) && !defined(__HIP_DEVICE_COMPILE__)
// float exp on the CPU, for x <= 88: 2^n p(r), n = round(x / ln 2), with Cephes' expf range
// reduction and polynomial (relative error under 1e-7 against exp, checked by the ctest); 0 below
// expf's normal range (x < -87). Unlike libm's expf, a loop of it vectorises (no call, no branch:
// kernels are built with -fno-trapping-math so that the selects are if-converted); with libm the
// pair loops spent most of their time in exp. A NaN is clamped out of the arithmetic (its integer
// conversion would be undefined) and added back at the end.
inline float exp_poly(float x) {
  const float lo = -87.0f, hi = 88.0f;
  const float xc = x > lo ? (x < hi ? x : hi) : lo;
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  const float r = (xc - n * 0.693359375f) + n * 2.12194440e-4f;             // x - n ln 2 in two parts
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float two_n;
  memcpy(&two_n, &bits, sizeof two_n);
  return x < lo ? 0.0f : p * two_n + (x - x);
}
#endif

LAM_HD float exp_(float v) {
#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
  return expf(v);
#else
  return exp_poly(v);
#endif
}
LAM_HD double exp_(double v) { return exp(v); }
LAM_HD float log_(float v) { return logf(v); }
LAM_HD double log_(double v) { return log(v); }

template <typename T>
LAM_HD T neg_inf() {
  return static_cast<T>(-INFINITY);
}
template <typename T>
LAM_HD T max_finite();
template <>
LAM_HD float max_finite<float>() {
  return FLT_MAX;
}
template <>
LAM_HD double max_finite<double>() {
  return DBL_MAX;
}

// Window of pixel (y, x): rows [y0, y1) and columns [x0, x1). Clipped at the border, never
// shifted, so i in window(j) iff j in window(i): every gradient is a gather. radius < 0 is the
// whole image (the Python `radius=None`).
struct Window {
  int y0, y1, x0, x1;
};

LAM_HD Window window(int y, int x, int H, int W, int radius) {
  if (radius < 0) return {0, H, 0, W};
  return {imax(y - radius, 0), imin(y + radius + 1, H), imax(x - radius, 0), imin(x + radius + 1, W)};
}

LAM_HD int dist2(int dy, int dx) { return dy * dy + dx * dx; }

// Whether a pixel at offset (dy, dx) from pixel j lies in j's window, given that it lies in the
// image: the membership test of window() for kernels that visit a block's keys, not one window.
LAM_HD bool in_window(int dy, int dx, int radius) {
  return radius < 0 || (dy <= radius && -dy <= radius && dx <= radius && -dx <= radius);
}

// logit(i, j) = f_i . f_j - |s_i - s_j|^2 / (2 sigma^2) = dot + coef * d2 with coef from dist_coef.
// coef is clamped to the lowest finite value: for a tiny sigma, sigma^2 underflows to 0 and
// -0.5 / 0 = -inf, and the own pixel's term would be -inf * 0 = NaN. Finite, coef * 0 is exactly 0
// for every sigma, with no branch in the pair loops, while any other key's term is at most
// -max_finite, so its weight is exactly 0 next to the own pixel's (the contract's sigma -> 0 limit).
// For a huge sigma, sigma^2 = inf gives coef = -0: the distance term vanishes, as it should.
template <typename T>
LAM_HD T dist_coef(T sigma) {
  const T coef = static_cast<T>(-0.5) / (sigma * sigma);
  return coef < -max_finite<T>() ? -max_finite<T>() : coef;
}

template <typename T>
LAM_HD T logit(T dot, int d2, T coef) {
  return dot + coef * static_cast<T>(d2);
}

// Online softmax over the keys of one query (flash-attention style). The kernel keeps its own
// accumulator acc = sum_i p_i x_i and rescales it by `scale` whenever the running max grows.
template <typename T>
struct OnlineSoftmax {
  T m;  // running max of the logits seen
  T l;  // running sum of exp(logit - m)

  LAM_HD OnlineSoftmax() : m(neg_inf<T>()), l(0) {}

  // Absorbs a block of logits whose max is block_max; returns the factor that rescales what was
  // accumulated so far. The kernel then adds exp(s - m) for each s of the block, via weight().
  LAM_HD T rescale_to(T block_max) {
    if (!(block_max > m)) return static_cast<T>(1);
    const T scale = (m == neg_inf<T>()) ? static_cast<T>(0) : exp_(m - block_max);
    l *= scale;
    m = block_max;
    return scale;
  }
  LAM_HD T weight(T s) {
    const T p = exp_(s - m);
    l += p;
    return p;
  }
  // Or the sum of a block's weights exp(s - m), computed by the kernel.
  LAM_HD void add(T block_sum) {
    l += block_sum;
  }

  // No admissible key (through key_mask), or all their weights underflowed: l = 0, lse = -inf and
  // the output is 0, not NaN. A NaN logit makes l NaN, which reaches lse and the output (l == 0
  // is false for NaN, where l > 0 would have hidden it).
  LAM_HD T lse() const {
    return l == static_cast<T>(0) ? neg_inf<T>() : m + log_(l);
  }
  LAM_HD T inv_l() const { return l == static_cast<T>(0) ? static_cast<T>(0) : static_cast<T>(1) / l; }
};

// Backward: A(i, j) recomputed from the saved log-sum-exp of query j.
template <typename T>
LAM_HD T prob(T logit_ij, T lse_j) {
  return lse_j == neg_inf<T>() ? static_cast<T>(0) : exp_(logit_ij - lse_j);
}

// dS(i, j) = A(i, j) (g_j . x_i - Delta_j), with Delta_j = g_j . out_j. A query without weight
// (lse_j = -inf: no admissible key, or all their weights underflowed) has out_j = 0 by definition,
// not as a sum: none of its pairs has a gradient, also where an x_i is not finite (0 * NaN).
template <typename T>
LAM_HD T dscore(T a, T lse_j, T g_dot_x, T delta_j) {
  return lse_j == neg_inf<T>() ? static_cast<T>(0) : a * (g_dot_x - delta_j);
}

// The backward of one pair (p, q) of pixels with q in window(p), hence p in window(q), seen from
// p, which owns dx_p and df_p: p is the query of key q (j = p, i = q) and the key of query q
// (i = p, j = q). p_key, q_key: key_mask of p and q; g_p.x_q, g_q.x_p, Delta and lse as in the spec.
template <typename T>
struct PairGrad {
  T a;         // A(p, q) (p as the key of query q): dx_p += a g_q
  T ds;        // dS(q, p) + dS(p, q): df_p += ds f_q
  T ds_query;  // dS(q, p): dsigma += ds_query |s_p - s_q|^2 / sigma^3
};

template <typename T>
LAM_HD PairGrad<T> pair_grad(T logit_pq, bool p_key, bool q_key, T lse_p, T lse_q, T gp_dot_xq, T gq_dot_xp, T delta_p,
                             T delta_q) {
  const T zero = static_cast<T>(0);
  const T ds_query = q_key ? dscore(prob(logit_pq, lse_p), lse_p, gp_dot_xq, delta_p) : zero;
  const T a = p_key ? prob(logit_pq, lse_q) : zero;
  const T ds_key = p_key ? dscore(a, lse_q, gq_dot_xp, delta_q) : zero;
  return {a, ds_query + ds_key, ds_query};
}

// d logit / d sigma = |s_i - s_j|^2 / sigma^3: kernels sum dS * d2 over the pairs and multiply
// once by this factor at the end. Clamped to a finite value: where 1 / sigma^3 overflows, sigma is
// so small that every pair with d2 > 0 has weight exactly 0 (see dist_coef), so the sum is 0, and
// 0 * inf would be NaN where the derivative's limit is 0.
template <typename T>
LAM_HD T dsigma_factor(T sigma) {
  const T factor = static_cast<T>(1) / (sigma * sigma * sigma);
  return factor > max_finite<T>() ? max_finite<T>() : factor;
}

}  // namespace lam
