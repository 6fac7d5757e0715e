// CUDA kernels of the lam_ops operators: indexing, tiling and memory movement around lam/math.h,
// which holds all of the per-pixel math (the CPU kernels call the same functions).
//
// No ATen here: lam_kernels.cu launches these kernels on a GPU, and tests/cpp/test_cuda_emulated.cpp
// runs them unchanged on CPU threads (one std::thread per CUDA thread, a barrier per
// __syncthreads), so that CPU-only CI exercises their index math, tiling and barriers too.
//
// Tiling. A block owns a tile of query pixels of one image, one thread per pixel. The keys that
// its windows reach (their union, clipped at the border: the whole image for radius None) are
// visited row-major in tiles of TK keys. For each key tile the block stages CK channels at a time
// of the keys' f (then x) in shared memory, and every thread accumulates its TK logits in
// registers from there; a key outside the thread's own window is masked out. Accumulators of
// runtime length (out over C, dx over C, df over D) stay in global memory, each element owned by
// one thread (float32 for half inputs), and are updated once per key tile: no atomics anywhere,
// and a fixed visiting order, so results are bitwise reproducible.
//
// What a GPU run must confirm (nothing here has run on a GPU yet; ptxas -v reports no spills,
// at most 164 registers per thread for sm_80 and sm_90):
// - correctness and determinism in every dtype (tests/test_cuda.py);
// - speed: for a small radius r the union of a 8x8 tile's windows holds (8 + 2r)^2 keys against
//   (2r + 1)^2 per query, so 4x the necessary logits at r = 3, while each staged key feeds 64
//   threads from shared memory; if a direct per-thread gather wins at small r in the benchmarks,
//   it belongs beside this kernel, not instead of it (radius None has no such waste).
#pragma once

#include <stdint.h>

#include "lam/math.h"

namespace lam {
namespace cuda {

constexpr int kMaxThreads = 128;  // the largest block of launch_geometry
constexpr int CK = 32;            // channels staged in shared memory at a time

// Keys per tile: the length of the per-thread register arrays (three of them in the backward).
template <typename acc_t>
struct KeysPerTile {
  static constexpr int value = sizeof(acc_t) == 8 ? 16 : 32;
};

struct Launch {
  dim3 grid, block;
};

// One thread per query pixel, a block per tile of TY x TX pixels of one image (gridDim.y = B).
// Square tiles keep the union of small windows small; with radius None every query sees every
// key, so any shape will do and the larger block shares each staged key among more threads.
// Both blocks are powers of two (block_sum) and hold at least TK threads (load_keys).
inline Launch launch_geometry(int B, int H, int W, int radius) {
  const int tx = radius < 0 ? 16 : 8, ty = 8;
  const int tiles = ((W + tx - 1) / tx) * ((H + ty - 1) / ty);
  return {dim3(tiles, B, 1), dim3(tx, ty, 1)};
}

// This thread's query pixel and the keys its block visits.
struct QueryTile {
  int64_t b;     // image (64-bit: batch offsets are b * C * H * W)
  int y, x, p;   // row, column and linear index (y * W + x) of the query
  bool active;   // the query lies in the image (border tiles overhang it)
  int ky0, kx0;  // the keys: rows from ky0, columns [kx0, kx0 + kw), row-major, nk of them
  int kw, nk;
};

__device__ inline int thread_rank() { return static_cast<int>(threadIdx.y * blockDim.x + threadIdx.x); }
__device__ inline int block_threads() { return static_cast<int>(blockDim.x * blockDim.y); }

__device__ inline QueryTile query_tile(int H, int W, int radius) {
  const int TX = static_cast<int>(blockDim.x), TY = static_cast<int>(blockDim.y);
  const int tiles_x = (W + TX - 1) / TX;
  const int ty0 = static_cast<int>(blockIdx.x) / tiles_x * TY, tx0 = static_cast<int>(blockIdx.x) % tiles_x * TX;
  // Windows grow monotonically with the query, so the first and last query of the tile bound
  // the union of its windows.
  const Window first = window(ty0, tx0, H, W, radius);
  const Window last = window(imin(ty0 + TY, H) - 1, imin(tx0 + TX, W) - 1, H, W, radius);
  QueryTile q;
  q.b = blockIdx.y;
  q.y = ty0 + static_cast<int>(threadIdx.y);
  q.x = tx0 + static_cast<int>(threadIdx.x);
  q.p = q.y * W + q.x;
  q.active = q.y < H && q.x < W;
  q.ky0 = first.y0;
  q.kx0 = first.x0;
  q.kw = last.x1 - first.x0;
  q.nk = (last.y1 - first.y0) * q.kw;
  return q;
}

// Shared memory of a block: one tile of keys.
template <typename acc_t>
struct KeyTile {
  static constexpr int TK = KeysPerTile<acc_t>::value;
  int y[TK], x[TK];
  int pix[TK];    // linear index of the key, -1 past the last key
  bool key[TK];   // key_mask of the key
  acc_t lse[TK];  // backward: the key pixel's own lse and Delta, as a query
  acc_t delta[TK];
  acc_t v[CK][TK];  // CK channels of one tensor at these keys
};

// Keys k0 .. k0 + TK - 1 of the block (threads 0 .. TK - 1; the caller syncs). lse and delta
// only in the backward.
template <typename acc_t>
__device__ void load_keys(KeyTile<acc_t>& s, const QueryTile& q, int k0, int W, const bool* mask,
                          const acc_t* lse = nullptr, const acc_t* delta = nullptr) {
  const int t = thread_rank();
  if (t >= KeyTile<acc_t>::TK) return;
  const int k = k0 + t;
  const bool in = k < q.nk;
  s.y[t] = in ? q.ky0 + k / q.kw : 0;
  s.x[t] = in ? q.kx0 + k % q.kw : 0;
  const int i = s.y[t] * W + s.x[t];
  s.pix[t] = in ? i : -1;
  s.key[t] = in && (mask == nullptr || mask[i]);
  if (lse != nullptr) {
    s.lse[t] = in ? lse[i] : neg_inf<acc_t>();
    s.delta[t] = in ? delta[i] : static_cast<acc_t>(0);
  }
}

// s.v[c][t] = src[c0 + c] at key t as acc_t, zero past the n channels or the last key (all
// threads; the caller syncs before and after the reads). Neighbouring threads read neighbouring
// keys, so the loads coalesce along key rows.
template <typename scalar_t, typename acc_t>
__device__ void load_channels(KeyTile<acc_t>& s, const scalar_t* src, int c0, int n, int64_t N) {
  constexpr int TK = KeyTile<acc_t>::TK;
  for (int e = thread_rank(); e < CK * TK; e += block_threads()) {
    const int c = e / TK, t = e % TK;
    s.v[c][t] =
        (c0 + c < n && s.pix[t] >= 0) ? static_cast<acc_t>(src[(c0 + c) * N + s.pix[t]]) : static_cast<acc_t>(0);
  }
}

// acc[t] += sum over the staged channels c < n - c0 of own[c0 + c] * s.v[c][t], where own is this
// thread's pixel of a (C, N) tensor: dot products of the query with the keys, a chunk at a time.
template <int TK, typename scalar_t, typename acc_t>
__device__ void dot_keys(acc_t (&acc)[TK], const acc_t (&v)[CK][TK], const scalar_t* own, int c0, int n, int64_t N) {
  const int cn = imin(CK, n - c0);
  for (int c = 0; c < cn; ++c) {
    const acc_t o = static_cast<acc_t>(own[(c0 + c) * N]);
#pragma unroll
    for (int t = 0; t < TK; ++t) acc[t] += o * v[c][t];
  }
}

// own[c0 + c] = own[c0 + c] * scale + sum_t w[t] * s.v[c][t] over the keys t whose bit is set in
// `pairs`: weighted sum of the staged keys into this thread's accumulator of a (C, N) tensor. A
// pair left out (the key outside the window or masked out, or a query without weight) is skipped
// by a select, not multiplied: its value may be inf or NaN, and 0 * inf = NaN would let it reach
// this query. A pair in the sum whose weight is 0 (underflowed) is multiplied like any other, so
// that a non-finite value there reaches the result as on every backend (docs/operator.md).
template <int TK, typename acc_t>
__device__ void gather_keys(acc_t* own, const acc_t (&w)[TK], uint32_t pairs, const acc_t (&v)[CK][TK], int c0, int n,
                            int64_t N, acc_t scale) {
  static_assert(TK <= 32, "one bit of `pairs` per key");
  const int cn = imin(CK, n - c0);
  for (int c = 0; c < cn; ++c) {
    acc_t a = 0;
#pragma unroll
    for (int t = 0; t < TK; ++t) a += (pairs >> t & 1u) ? w[t] * v[c][t] : static_cast<acc_t>(0);
    acc_t& o = own[(c0 + c) * N];
    o = o * scale + a;
  }
}

// The sum of v over the block in a fixed order (blockDim a power of two; called once per kernel).
template <typename acc_t>
__device__ acc_t block_sum(acc_t v, acc_t* red) {
  const int t = thread_rank();
  red[t] = v;
  __syncthreads();
  for (int s = block_threads() / 2; s > 0; s /= 2) {
    if (t < s) red[t] += red[t + s];
    __syncthreads();
  }
  return red[0];
}

// out (B, C, H, W) and lse (B, H, W). acc: (B, C, H, W) zeros, the unnormalised output; it may be
// out itself when scalar_t is acc_t.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxThreads)
    forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ f, const acc_t* __restrict__ sigma,
                   const bool* __restrict__ key_mask, int C, int D, int H, int W, int radius, acc_t* acc, scalar_t* out,
                   acc_t* __restrict__ lse) {
  constexpr int TK = KeyTile<acc_t>::TK;
  __shared__ KeyTile<acc_t> keys;
  const QueryTile q = query_tile(H, W, radius);
  const int64_t N = static_cast<int64_t>(H) * W;
  const scalar_t* xb = x + q.b * C * N;
  const scalar_t* fb = f + q.b * D * N;
  const bool* mb = key_mask == nullptr ? nullptr : key_mask + q.b * N;
  acc_t* ab = acc + q.b * C * N + q.p;
  const acc_t coef = dist_coef(*sigma);
  OnlineSoftmax<acc_t> sm;

  for (int k0 = 0; k0 < q.nk; k0 += TK) {
    load_keys(keys, q, k0, W, mb);
    __syncthreads();
    acc_t s[TK];  // f_j . f_i, then the logits, then the weights exp(logit - m)
#pragma unroll
    for (int t = 0; t < TK; ++t) s[t] = 0;
    for (int d0 = 0; d0 < D; d0 += CK) {
      load_channels(keys, fb, d0, D, N);
      __syncthreads();
      if (q.active) dot_keys(s, keys.v, fb + q.p, d0, D, N);
      __syncthreads();
    }
    acc_t tile_max = neg_inf<acc_t>();
    uint32_t admissible = 0;  // bit t: key t is admissible for this query
#pragma unroll
    for (int t = 0; t < TK; ++t) {
      const int dy = keys.y[t] - q.y, dx = keys.x[t] - q.x;
      const bool ok = q.active && keys.key[t] && in_window(dy, dx, radius);
      admissible |= static_cast<uint32_t>(ok) << t;
      s[t] = ok ? logit(s[t], dist2(dy, dx), coef) : neg_inf<acc_t>();
      tile_max = s[t] > tile_max ? s[t] : tile_max;
    }
    const acc_t scale = sm.rescale_to(tile_max);
#pragma unroll
    for (int t = 0; t < TK; ++t) s[t] = s[t] == neg_inf<acc_t>() ? static_cast<acc_t>(0) : sm.weight(s[t]);
    for (int c0 = 0; c0 < C; c0 += CK) {
      load_channels(keys, xb, c0, C, N);
      __syncthreads();
      if (q.active) gather_keys(ab, s, admissible, keys.v, c0, C, N, scale);
      __syncthreads();
    }
    __syncthreads();  // the next load_keys overwrites what this tile read (with C = 0 nothing else syncs)
  }

  if (!q.active) return;
  const acc_t inv = sm.inv_l();  // 0 without weight: out 0, also where an admissible x was inf (0 * inf)
  for (int c = 0; c < C; ++c)
    out[(q.b * C + c) * N + q.p] = static_cast<scalar_t>(inv == static_cast<acc_t>(0) ? inv : ab[c * N] * inv);
  lse[q.b * N + q.p] = sm.lse();
}

// dx (B, C, H, W) and df (B, D, H, W): zeros on entry, accumulated in acc_t. delta (B, H, W) is
// g_j . out_j; partials gets one dsigma partial per block, summed by sum_partials_kernel.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kMaxThreads)
    backward_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ x, const scalar_t* __restrict__ f,
                    const acc_t* __restrict__ sigma, const bool* __restrict__ key_mask, const acc_t* __restrict__ lse,
                    const acc_t* __restrict__ delta, int C, int D, int H, int W, int radius, acc_t* __restrict__ dx,
                    acc_t* __restrict__ df, acc_t* __restrict__ partials) {
  constexpr int TK = KeyTile<acc_t>::TK;
  __shared__ KeyTile<acc_t> keys;
  __shared__ acc_t red[kMaxThreads];
  const QueryTile q = query_tile(H, W, radius);
  const int64_t N = static_cast<int64_t>(H) * W;
  const scalar_t* gb = g + q.b * C * N;
  const scalar_t* xb = x + q.b * C * N;
  const scalar_t* fb = f + q.b * D * N;
  const bool* mb = key_mask == nullptr ? nullptr : key_mask + q.b * N;
  const acc_t* lb = lse + q.b * N;
  const acc_t* db = delta + q.b * N;
  const acc_t coef = dist_coef(*sigma);
  // This thread's pixel p: as a key (key_mask), as a query (lse, Delta).
  const bool p_key = q.active && (mb == nullptr || mb[q.p]);
  const acc_t lse_p = q.active ? lb[q.p] : neg_inf<acc_t>();
  const acc_t delta_p = q.active ? db[q.p] : static_cast<acc_t>(0);
  const bool p_live = lse_p != neg_inf<acc_t>();  // p has weight as a query (see dscore)
  acc_t dsig = 0;                                 // sum of dS(q, p) |s_p - s_q|^2 over this thread's keys q

  for (int k0 = 0; k0 < q.nk; k0 += TK) {
    load_keys(keys, q, k0, W, mb, lb, db);
    __syncthreads();
    acc_t fpq[TK], wx[TK], wf[TK];  // f_p . f_q; g_p . x_q then dx's weights; g_q . x_p then df's
#pragma unroll
    for (int t = 0; t < TK; ++t) fpq[t] = wx[t] = wf[t] = 0;
    for (int d0 = 0; d0 < D; d0 += CK) {
      load_channels(keys, fb, d0, D, N);
      __syncthreads();
      if (q.active) dot_keys(fpq, keys.v, fb + q.p, d0, D, N);
      __syncthreads();
    }
    for (int c0 = 0; c0 < C; c0 += CK) {
      load_channels(keys, xb, c0, C, N);
      __syncthreads();
      if (q.active) dot_keys(wx, keys.v, gb + q.p, c0, C, N);
      __syncthreads();
      load_channels(keys, gb, c0, C, N);
      __syncthreads();
      if (q.active) dot_keys(wf, keys.v, xb + q.p, c0, C, N);
      __syncthreads();
    }
    // The pairs of each sum, as in the CPU kernel: p as the key of a query q with weight (dx; df),
    // q as the key of p if p has weight (df).
    uint32_t p_key_of_q = 0, in_df = 0;
#pragma unroll
    for (int t = 0; t < TK; ++t) {
      const int dy = keys.y[t] - q.y, dx = keys.x[t] - q.x;
      if (q.active && keys.pix[t] >= 0 && in_window(dy, dx, radius)) {
        const bool a = p_key && keys.lse[t] != neg_inf<acc_t>(), b = keys.key[t] && p_live;
        p_key_of_q |= static_cast<uint32_t>(a) << t;
        in_df |= static_cast<uint32_t>(a || b) << t;
        const int d2 = dist2(dy, dx);
        const PairGrad<acc_t> pg = pair_grad(logit(fpq[t], d2, coef), p_key, keys.key[t], lse_p, keys.lse[t], wx[t],
                                             wf[t], delta_p, keys.delta[t]);
        wx[t] = pg.a;
        wf[t] = pg.ds;
        dsig += pg.ds_query * static_cast<acc_t>(d2);
      } else {
        wx[t] = wf[t] = 0;
      }
    }
    for (int c0 = 0; c0 < C; c0 += CK) {
      load_channels(keys, gb, c0, C, N);
      __syncthreads();
      if (q.active) gather_keys(dx + q.b * C * N + q.p, wx, p_key_of_q, keys.v, c0, C, N, static_cast<acc_t>(1));
      __syncthreads();
    }
    for (int d0 = 0; d0 < D; d0 += CK) {
      load_channels(keys, fb, d0, D, N);
      __syncthreads();
      if (q.active) gather_keys(df + q.b * D * N + q.p, wf, in_df, keys.v, d0, D, N, static_cast<acc_t>(1));
      __syncthreads();
    }
    __syncthreads();  // the next load_keys overwrites what this tile read
  }

  const acc_t total = block_sum(dsig, red);
  if (thread_rank() == 0) partials[blockIdx.y * gridDim.x + blockIdx.x] = total;
}

// dsigma = (sum of the n partials, in a fixed order) / sigma^3. One block of kMaxThreads.
template <typename acc_t>
__global__ void __launch_bounds__(kMaxThreads)
    sum_partials_kernel(const acc_t* __restrict__ partials, int64_t n, const acc_t* __restrict__ sigma,
                        acc_t* __restrict__ dsigma) {
  __shared__ acc_t red[kMaxThreads];
  acc_t v = 0;
  for (int64_t i = thread_rank(); i < n; i += block_threads()) v += partials[i];
  const acc_t total = block_sum(v, red);
  if (thread_rank() == 0) *dsigma = total * dsigma_factor(*sigma);
}

}  // namespace cuda
}  // namespace lam
