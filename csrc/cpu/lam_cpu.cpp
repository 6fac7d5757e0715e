// CPU kernels of the lam_ops operators: tiled, flash-attention style, over lam/math.h. They run
// radius=None, and every radius on CPUs without AVX-512; windowed radii otherwise run the offset
// kernels of lam_offsets.cpp (use_offset_kernels says which).
//
// Work unit: a small rectangle of query pixels (a tile) against the rectangle of keys covering the
// union of their windows, cut into key blocks of at most kKeyBlock pixels. Per block, the dot
// products run as small GEMMs (BLAS, single-threaded inside at::parallel_for) on pixel-major copies
// of the tile and the block; the pair-wise math (window/border/key-mask, logits, exp) runs in
// vectorised loops over the block rows of each window (the forward's exp over whole rows, the
// keys outside the window's columns at weight 0; the backward over exactly the window). Nothing
// of size (2r+1)^2 x HW or HW x HW is stored.
//
// Forward: online softmax over the key blocks, saving the per-query log-sum-exp.
// Backward: every pair (a, b) of a tile pixel a and a key pixel b in its window is visited once,
// by a's tile, and used twice: a as query of b (query-side gradients) and a as key of b (key-side
// gradients, valid because b in window(a) iff a in window(b)). All of a's gradients are thus
// gathered by a's tile: no atomics, and each tile's result does not depend on the scheduling.
// dsigma is reduced from per-tile partials in tile order, so the whole backward is bitwise
// reproducible on a machine, and independent of the thread count (BLAS runs single-threaded per
// call).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "lam/checks.h"
#include "lam/math.h"
#include "lam_offsets.h"

namespace lam {
namespace {

// Keys per block: the block's pixel-major features (kKeyBlock x D) and the tile x block score
// matrices stay in L2.
constexpr int kKeyBlock = 1024;

// Dense row-major tile buffers: C = A B, or A B^T when b_transposed, plus C when accumulating;
// A is M x K and C is M x N. ATen's mm runs BLAS, single-threaded inside at::parallel_for.
template <typename T>
at::Tensor matrix(const T* p, int64_t rows, int64_t cols, int64_t row_stride) {
  return at::from_blob(const_cast<T*>(p), {rows, cols}, {row_stride, 1},
                       at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
}

// The longest contraction handed to BLAS in one call. MKL sums a longer one in blocks chosen by the
// calling context (the same product gave other bits with 1 and 2 threads at K = 1000, each call
// single-threaded inside at::parallel_for): split here, in a fixed order, the result does not
// depend on the thread count.
constexpr int64_t kMaxDepth = 256;

template <typename T>
void mm(int64_t M, int64_t N, int64_t K, const T* A, const T* B, bool b_transposed, bool accumulate, T* C) {
  at::Tensor c = matrix(C, M, N, N);
  if (K == 0 && !accumulate) c.zero_();
  for (int64_t k0 = 0; k0 < K; k0 += kMaxDepth) {
    const int64_t k = std::min(kMaxDepth, K - k0);
    const at::Tensor a = matrix(A + k0, M, k, K);
    const at::Tensor b = b_transposed ? matrix(B + k0, N, k, K).t() : matrix(B + k0 * N, k, N, N);
    if (accumulate || k0 > 0)
      c.addmm_(a, b);
    else
      at::mm_out(c, a, b);
  }
}

// A rectangle of pixels, rows [y0, y1) and columns [x0, x1), numbered row-major inside it.
struct Rect {
  int y0, y1, x0, x1;
  int width() const { return x1 - x0; }
  int64_t size() const { return int64_t(y1 - y0) * (x1 - x0); }
};

// Query tiles are squares: the key rectangle of a side-s tile has (s + 2r)^2 pixels, of which each
// query uses (2r + 1)^2, so small tiles waste less GEMM work on pairs outside the windows, while
// large ones amortise the gather and BLAS's packing of the key block over more queries. Measured
// (B 2, C 21, 96 x 96): sides 4, 5, 6 and 8 are within 10% of each other at D = 16 and 256 and
// r = 6 to 18; 4 wastes less at r <= 2. The global operator (radius < 0) has no such waste.
int tile_side(int radius) { return radius >= 0 && radius <= 2 ? 4 : 8; }

struct Tiling {
  int H, W, radius, side, rows, cols;

  Tiling(int H_, int W_, int radius_)
      : H(H_), W(W_), radius(radius_), side(tile_side(radius_)), rows((H_ + side - 1) / side),
        cols((W_ + side - 1) / side) {}

  int64_t count() const { return int64_t(rows) * cols; }
  int64_t max_tile() const { return int64_t(side) * side; }

  // The largest key block of any tile (sizes the scratch buffers).
  int64_t max_block() const {
    const int64_t keys = radius < 0 ? int64_t(H) * W : int64_t(imin(H, side + 2 * radius)) * imin(W, side + 2 * radius);
    return std::min<int64_t>(keys, kKeyBlock);
  }

  Rect tile(int64_t t) const {
    const int y = static_cast<int>(t / cols) * side, x = static_cast<int>(t % cols) * side;
    return {y, imin(y + side, H), x, imin(x + side, W)};
  }

  // Tiles per parallel chunk: about 1M multiply-adds of work, so that tiny problems (gradcheck)
  // run inline rather than paying for waking threads.
  int64_t grain(int64_t channels) const {
    const Rect q = tile(0);  // not empty: callers return early on empty images
    return std::max<int64_t>(1, (int64_t(1) << 20) / (q.size() * keys(q).size() * std::max<int64_t>(1, channels)));
  }

  // The union of the windows of the tile's pixels.
  Rect keys(const Rect& q) const {
    if (radius < 0) return {0, H, 0, W};
    return {imax(q.y0 - radius, 0), imin(q.y1 + radius, H), imax(q.x0 - radius, 0), imin(q.x1 + radius, W)};
  }
};

// Calls fn(block) for sub-rectangles of `keys` of at most kKeyBlock pixels, in a fixed order.
template <typename F>
void for_each_key_block(const Rect& keys, F&& fn) {
  const int bw = imin(keys.width(), kKeyBlock);
  const int bh = imax(1, kKeyBlock / bw);
  for (int y = keys.y0; y < keys.y1; y += bh)
    for (int x = keys.x0; x < keys.x1; x += bw) fn(Rect{y, imin(y + bh, keys.y1), x, imin(x + bw, keys.x1)});
}

// The part of the window of pixel (y, x) inside a key block.
Rect window_in(int y, int x, const Rect& block, const Tiling& tiling) {
  const Window w = window(y, x, tiling.H, tiling.W, tiling.radius);
  return {imax(w.y0, block.y0), imin(w.y1, block.y1), imax(w.x0, block.x0), imin(w.x1, block.x1)};
}

// The pair loops below run over one row of a key block at a time, as plain loops over arrays so
// that they vectorise: exp_ is branch-free on the CPU, and key-mask bits are held as T (1 or 0)
// because GCC does not vectorise loads of bool next to float arithmetic. With GCC on x86-64 Linux
// they are also compiled for AVX2 + FMA and picked at load time by the CPU (function
// multiversioning): the build stays portable and still uses the wider vectors where they exist.
// Sums are reduced in vector lanes: reproducible on a machine, independent of the thread count.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && defined(__x86_64__) && defined(__linux__)
#define LAM_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define LAM_CPU_CLONES
#endif

// The max of a row of logits, and how many of them are NaN (a max drops NaN; the contract wants a
// NaN logit, from a non-finite f, to reach its query's output).
template <typename T>
struct RowMax {
  T max, nans;
};

// Logits of query (y, x) over the n keys of one block row at vertical offset dy, whose first key
// is at horizontal offset dx0, of which [lo, hi) are in the window's columns: dot + coef d2 there
// where the key is admissible, -inf elsewhere (a select, so that a non-finite dot of a masked or
// outside key is dropped, never multiplied by 0).
template <typename T>
LAM_CPU_CLONES RowMax<T> row_logits(T* s, const T* admissible, int n, int lo, int hi, int dy, int dx0, T coef) {
  std::fill(s, s + lo, neg_inf<T>());
  std::fill(s + hi, s + n, neg_inf<T>());
  T row_max = neg_inf<T>(), nans = 0;
#pragma omp simd reduction(max : row_max) reduction(+ : nans)
  for (int k = lo; k < hi; ++k) {
    const T v = admissible[k] != T(0) ? logit(s[k], dist2(dy, dx0 + k), coef) : neg_inf<T>();
    s[k] = v;
    row_max = v > row_max ? v : row_max;
    nans += v != v ? T(1) : T(0);
  }
  return {row_max, nans};
}

// Whether n values are all finite: inf * 0 and NaN * 0 are NaN, and a sum of products vectorises.
template <typename T>
LAM_CPU_CLONES bool all_finite(const T* v, int64_t n) {
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t k = 0; k < n; ++k) sum += v[k] * T(0);
  return sum == sum;
}

// p = exp(s - m) over n logits; returns sum p.
template <typename T>
LAM_CPU_CLONES T softmax_weights(const T* s, T m, int64_t n, T* p) {
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t k = 0; k < n; ++k) {
    p[k] = exp_(s[k] - m);
    sum += p[k];
  }
  return sum;
}

// The pairs of tile pixel a (log-sum-exp lse_a, Delta delta_a, key-mask bit AKey: a template
// parameter, as GCC does not vectorise a select on a loop-invariant bool) with the n keys b of one
// block row at vertical offset dy (the first at horizontal offset dx0), all in a's window, each
// seen from both sides (pair_grad). Per key, the row arrays hold f_a . f_b (s), key-mask bit, lse
// and Delta of b, g_a . x_b (gx) and x_a . g_b (xg); writes A(a, b) to p and dS to ds, and
// returns the row's sum of dS(b, a) d2.
template <bool AKey, typename T>
LAM_CPU_CLONES T row_pair_grads(T lse_a, T delta_a, int n, int dy, int dx0, T coef, const T* s, const T* key,
                                const T* lse, const T* delta, const T* gx, const T* xg, T* p, T* ds) {
  T dsig = 0;
#pragma omp simd reduction(+ : dsig)
  for (int k = 0; k < n; ++k) {
    const int d2 = dist2(dy, dx0 + k);
    const PairGrad<T> pg = pair_grad(logit(s[k], d2, coef), AKey, key[k] != T(0), lse_a, lse[k], gx[k], xg[k],
                                     delta_a, delta[k]);
    p[k] = pg.a;
    ds[k] = pg.ds;
    dsig += pg.ds_query * static_cast<T>(d2);
  }
  return dsig;
}

// Calls fn(q, y, x) for the pixels of a rectangle, q numbering them row-major.
template <typename F>
void for_each_pixel(const Rect& r, F&& fn) {
  int64_t q = 0;
  for (int y = r.y0; y < r.y1; ++y)
    for (int x = r.x0; x < r.x1; ++x) fn(q++, y, x);
}

// Copies the pixels of r from a pixel-major image (W columns, `width` values per pixel) into a
// dense (r.size() x width) buffer.
template <typename T>
void gather(const T* img, int W, int64_t width, const Rect& r, T* dst) {
  const int64_t row = r.width() * width;
  for (int y = r.y0; y < r.y1; ++y, dst += row) std::memcpy(dst, img + (int64_t(y) * W + r.x0) * width, sizeof(T) * row);
}

// The key-mask bits of r's pixels as T (1: admissible; all 1 without a mask).
template <typename T>
void gather_mask(const bool* mask, int W, const Rect& r, T* dst) {
  if (!mask) {
    std::fill(dst, dst + r.size(), T(1));
    return;
  }
  for_each_pixel(r, [&](int64_t k, int y, int x) { dst[k] = mask[int64_t(y) * W + x] ? T(1) : T(0); });
}

// Writes a (r.size() x width) pixel-major tile buffer, times a per-pixel factor when given, into
// a channel-major (width x H x W) image.
template <typename T>
void scatter(const T* src, int64_t width, const Rect& r, int W, int64_t N, T* img, const T* factor = nullptr) {
  for_each_pixel(r, [&](int64_t q, int y, int x) {
    const T s = factor ? factor[q] : T(1);
    T* p = img + int64_t(y) * W + x;
    for (int64_t c = 0; c < width; ++c) p[c * N] = src[q * width + c] * s;
  });
}

// Scratch buffers of one thread, from the ATen allocator (64-byte aligned: BLAS may pick its code
// path by alignment, and a fixed path keeps results reproducible).
template <typename T>
class Scratch {
 public:
  T* take(int64_t n) {
    bufs_.push_back(at::empty({n}, at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value)));
    return bufs_.back().template data_ptr<T>();
  }

 private:
  std::vector<at::Tensor> bufs_;
};

// One image of the batch, pixel-major (N x C, N x D); mask, lse and delta are per pixel.
template <typename T>
struct Image {
  const T* x;
  const T* f;
  const bool* mask;  // null: every key admissible
  const T* g;        // backward only: grad_out, and below lse and Delta = g . out
  const T* lse;
  const T* delta;
};

// ---------------------------------------------------------------------------------------------
// Forward

template <typename T>
struct ForwardTile {
  const Tiling& tiling;
  int64_t C, D;
  T coef;
  T *fq, *fk, *xk, *s, *p, *acc, *inv_l;
  T* mk;  // key-mask bits as T
  std::vector<OnlineSoftmax<T>> sm;

  ForwardTile(const Tiling& t, int64_t C_, int64_t D_, T coef_, Scratch<T>& scratch)
      : tiling(t), C(C_), D(D_), coef(coef_), sm(t.max_tile()) {
    const int64_t Q = t.max_tile(), K = t.max_block();
    fq = scratch.take(Q * D);
    fk = scratch.take(K * D);
    xk = scratch.take(K * C);
    s = scratch.take(Q * K);
    p = scratch.take(Q * K);
    acc = scratch.take(Q * C);
    inv_l = scratch.take(Q);
    mk = scratch.take(K);
  }

  void run(const Image<T>& im, const Rect& tile, T* out, T* lse) {
    const int64_t Q = tile.size();
    gather(im.f, tiling.W, D, tile, fq);
    std::fill(acc, acc + Q * C, T(0));
    std::fill(sm.begin(), sm.begin() + Q, OnlineSoftmax<T>());
    for_each_key_block(tiling.keys(tile), [&](const Rect& block) { absorb(im, tile, block); });
    for_each_pixel(tile, [&](int64_t q, int y, int x) {
      inv_l[q] = sm[q].inv_l();
      lse[int64_t(y) * tiling.W + x] = sm[q].lse();
    });
    for (int64_t q = 0; q < Q; ++q)  // no weight at all: 0, even where an admissible x was inf
      if (inv_l[q] == T(0)) std::fill(acc + q * C, acc + (q + 1) * C, T(0));
    scatter(acc, C, tile, tiling.W, int64_t(tiling.H) * tiling.W, out, inv_l);
  }

 private:
  // One online-softmax step of every query of the tile over one key block.
  void absorb(const Image<T>& im, const Rect& tile, const Rect& block) {
    const int64_t Q = tile.size(), K = block.size();
    const int bw = block.width();
    gather(im.f, tiling.W, D, block, fk);
    gather(im.x, tiling.W, C, block, xk);
    gather_mask(im.mask, tiling.W, block, mk);
    mm(Q, K, D, fq, fk, true, false, s);  // f_j . f_i
    for_each_pixel(tile, [&](int64_t q, int y, int x) {
      T* sq = s + q * K;
      T* pq = p + q * K;
      std::fill(pq, pq + K, T(0));
      // whole block rows of the window: logits outside its columns are -inf, their weight 0
      const Rect w = window_in(y, x, block, tiling);
      const int lo = imin(w.x0 - block.x0, bw), hi = imax(lo, w.x1 - block.x0);
      T block_max = neg_inf<T>(), nans = 0;
      for (int yk = w.y0; yk < w.y1; ++yk) {
        const int64_t row = int64_t(yk - block.y0) * bw;
        const RowMax<T> r = row_logits(sq + row, mk + row, bw, lo, hi, yk - y, block.x0 - x, coef);
        block_max = std::max(block_max, r.max);
        nans += r.nans;
      }
      if (block_max == neg_inf<T>()) {  // no admissible key with a weight here: the row of p stays 0
        if (nans != T(0)) sm[q].add(std::numeric_limits<T>::quiet_NaN());  // all NaN: lse and out NaN
        return;
      }
      const T scale = sm[q].rescale_to(block_max);
      if (scale != T(1))
        for (int64_t c = 0; c < C; ++c) acc[q * C + c] *= scale;
      const int64_t first = int64_t(w.y0 - block.y0) * bw;
      sm[q].add(softmax_weights(sq + first, sm[q].m, int64_t(w.y1 - w.y0) * bw, pq + first));
    });
    if (all_finite(xk, K * C)) {
      mm(Q, C, K, p, xk, false, true, acc);  // acc += p x
      return;
    }
    // A non-finite x in the block: the GEMM would add 0 * inf = NaN from keys outside a query's
    // window or masked out, so those (rare) blocks sum over each query's admissible keys alone.
    for_each_pixel(tile, [&](int64_t q, int y, int x) {
      const Rect w = window_in(y, x, block, tiling);
      for (int yk = w.y0; yk < w.y1; ++yk)
        for (int k = (yk - block.y0) * bw + (w.x0 - block.x0), e = k + w.width(); k < e; ++k)
          if (mk[k] != T(0))
            for (int64_t c = 0; c < C; ++c) acc[q * C + c] += p[q * K + k] * xk[k * C + c];
    });
  }
};

template <typename T>
void forward_kernel(const at::Tensor& xt, const at::Tensor& ft, const bool* mask, T sigma, int radius,
                    at::Tensor& out, at::Tensor& lse) {
  const int64_t B = xt.size(0), H = xt.size(1), W = xt.size(2), C = xt.size(3), D = ft.size(3), N = H * W;
  const Tiling tiling(static_cast<int>(H), static_cast<int>(W), radius);
  const int64_t tiles = tiling.count();
  const T* xp = xt.data_ptr<T>();
  const T* fp = ft.data_ptr<T>();
  T* op = out.data_ptr<T>();
  T* lp = lse.data_ptr<T>();
  at::parallel_for(0, B * tiles, tiling.grain(C + D), [&](int64_t begin, int64_t end) {
    Scratch<T> scratch;
    ForwardTile<T> work(tiling, C, D, dist_coef(sigma), scratch);
    for (int64_t bt = begin; bt < end; ++bt) {
      const int64_t b = bt / tiles;
      const Image<T> im{xp + b * N * C, fp + b * N * D, mask ? mask + b * N : nullptr, nullptr, nullptr, nullptr};
      work.run(im, tiling.tile(bt % tiles), op + b * C * N, lp + b * N);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Backward

template <typename T>
struct BackwardTile {
  const Tiling& tiling;
  int64_t C, D;
  T coef;
  // Tile (a): features, values, grad_out, mask, lse, Delta, and its gradients.
  T *fa, *xa, *ga, *la, *da, *dfa, *dxa;
  T* ma;  // key-mask bits as T
  // Key block (b): the same inputs.
  T *fb, *xb, *gb, *lb, *db;
  T* mb;
  // Tile x block: f_a . f_b, g_a . x_b, x_a . g_b; and the outputs dS (both sides) and A(a, b).
  T *s, *gx, *xg, *ds, *pab;

  BackwardTile(const Tiling& t, int64_t C_, int64_t D_, T coef_, Scratch<T>& scratch)
      : tiling(t), C(C_), D(D_), coef(coef_) {
    const int64_t Q = t.max_tile(), K = t.max_block();
    fa = scratch.take(Q * D), xa = scratch.take(Q * C), ga = scratch.take(Q * C);
    la = scratch.take(Q), da = scratch.take(Q), dfa = scratch.take(Q * D), dxa = scratch.take(Q * C);
    ma = scratch.take(Q);
    fb = scratch.take(K * D), xb = scratch.take(K * C), gb = scratch.take(K * C);
    lb = scratch.take(K), db = scratch.take(K);
    mb = scratch.take(K);
    s = scratch.take(Q * K), gx = scratch.take(Q * K), xg = scratch.take(Q * K);
    ds = scratch.take(Q * K), pab = scratch.take(Q * K);
  }

  // Writes the tile's dx and df; returns its sum of dS * d2 over the pairs (query side).
  T run(const Image<T>& im, const Rect& tile, T* dx, T* df) {
    const int64_t Q = tile.size();
    load(im, tile, fa, xa, ga, ma, la, da);
    std::fill(dfa, dfa + Q * D, T(0));
    std::fill(dxa, dxa + Q * C, T(0));
    T dsig = 0;
    for_each_key_block(tiling.keys(tile), [&](const Rect& block) { dsig += absorb(im, tile, block); });
    const int64_t N = int64_t(tiling.H) * tiling.W;
    scatter(dxa, C, tile, tiling.W, N, dx);
    scatter(dfa, D, tile, tiling.W, N, df);
    return dsig;
  }

 private:
  void load(const Image<T>& im, const Rect& r, T* f, T* x, T* g, T* m, T* l, T* d) {
    gather(im.f, tiling.W, D, r, f);
    gather(im.x, tiling.W, C, r, x);
    gather(im.g, tiling.W, C, r, g);
    gather(im.lse, tiling.W, 1, r, l);
    gather(im.delta, tiling.W, 1, r, d);
    gather_mask(im.mask, tiling.W, r, m);
  }

  // Gradient contributions of the pairs (tile pixel a, key b in block); returns sum dS(b, a) d2.
  T absorb(const Image<T>& im, const Rect& tile, const Rect& block) {
    const int64_t Q = tile.size(), K = block.size();
    load(im, block, fb, xb, gb, mb, lb, db);
    mm(Q, K, D, fa, fb, true, false, s);
    mm(Q, K, C, ga, xb, true, false, gx);
    mm(Q, K, C, xa, gb, true, false, xg);
    const int bw = block.width();
    T dsig = 0;
    for_each_pixel(tile, [&](int64_t a, int y, int x) {
      std::fill(ds + a * K, ds + (a + 1) * K, T(0));
      std::fill(pab + a * K, pab + (a + 1) * K, T(0));
      const auto pairs = ma[a] != T(0) ? row_pair_grads<true, T> : row_pair_grads<false, T>;
      const Rect w = window_in(y, x, block, tiling);
      for (int yk = w.y0; yk < w.y1; ++yk) {
        const int64_t k = int64_t(yk - block.y0) * bw + (w.x0 - block.x0);  // the row's first key
        const int64_t b = a * K + k;                                          // and pair
        dsig += pairs(la[a], da[a], w.width(), yk - y, w.x0 - x, coef, s + b, mb + k, lb + k, db + k, gx + b, xg + b,
                      pab + b, ds + b);
      }
    });
    if (all_finite(fb, K * D) && all_finite(gb, K * C)) {
      mm(Q, C, K, pab, gb, false, true, dxa);  // dx_a += sum_b A(a, b) g_b
      mm(Q, D, K, ds, fb, false, true, dfa);   // df_a += sum_b dS f_b, both sides
      return dsig;
    }
    // A non-finite f or grad_out in the block: as in the forward, sum over the pairs that relate a
    // and b alone: a admissible as the key of b for dx; for df, a as the key of b or b as the key
    // of a, each only where that query has weight (a query without any adds no term, not 0 * inf).
    for_each_pixel(tile, [&](int64_t a, int y, int x) {
      const Rect w = window_in(y, x, block, tiling);
      const bool a_live = la[a] != neg_inf<T>();
      for (int yk = w.y0; yk < w.y1; ++yk)
        for (int k = (yk - block.y0) * bw + (w.x0 - block.x0), e = k + w.width(); k < e; ++k) {
          const bool a_as_key = ma[a] != T(0) && lb[k] != neg_inf<T>(), b_as_key = mb[k] != T(0) && a_live;
          if (a_as_key)
            for (int64_t c = 0; c < C; ++c) dxa[a * C + c] += pab[a * K + k] * gb[k * C + c];
          if (a_as_key || b_as_key)
            for (int64_t d = 0; d < D; ++d) dfa[a * D + d] += ds[a * K + k] * fb[k * D + d];
        }
    });
    return dsig;
  }
};

// Delta_j = g_j . out_j, the flash-attention preprocess of the backward.
template <typename T>
at::Tensor delta_of(const at::Tensor& gt, const at::Tensor& outt) {
  at::Tensor delta = at::empty({gt.size(0), gt.size(1), gt.size(2)}, gt.options());
  const int64_t C = gt.size(3);
  const T* g = gt.data_ptr<T>();
  const T* o = outt.data_ptr<T>();
  T* d = delta.data_ptr<T>();
  at::parallel_for(0, delta.numel(), 1024, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      T sum = 0;
      for (int64_t c = 0; c < C; ++c) sum += g[j * C + c] * o[j * C + c];
      d[j] = sum;
    }
  });
  return delta;
}

template <typename T>
T backward_kernel(const at::Tensor& gt, const at::Tensor& xt, const at::Tensor& ft, const bool* mask,
                  const at::Tensor& outt, const at::Tensor& lse, T sigma, int radius, at::Tensor& dx,
                  at::Tensor& df) {
  const int64_t B = xt.size(0), H = xt.size(1), W = xt.size(2), C = xt.size(3), D = ft.size(3), N = H * W;
  const Tiling tiling(static_cast<int>(H), static_cast<int>(W), radius);
  const int64_t tiles = tiling.count();
  const at::Tensor delta = delta_of<T>(gt, outt);
  const T* gp = gt.data_ptr<T>();
  const T* xp = xt.data_ptr<T>();
  const T* fp = ft.data_ptr<T>();
  const T* lp = lse.data_ptr<T>();
  const T* dp = delta.data_ptr<T>();
  T* dxp = dx.data_ptr<T>();
  T* dfp = df.data_ptr<T>();
  std::vector<T> dsig_tiles(B * tiles);
  at::parallel_for(0, B * tiles, tiling.grain(C + D), [&](int64_t begin, int64_t end) {
    Scratch<T> scratch;
    BackwardTile<T> work(tiling, C, D, dist_coef(sigma), scratch);
    for (int64_t bt = begin; bt < end; ++bt) {
      const int64_t b = bt / tiles;
      const Image<T> im{xp + b * N * C, fp + b * N * D, mask ? mask + b * N : nullptr,
                        gp + b * N * C, lp + b * N,     dp + b * N};
      dsig_tiles[bt] = work.run(im, tiling.tile(bt % tiles), dxp + b * C * N, dfp + b * D * N);
    }
  });
  T total = 0;
  for (T v : dsig_tiles) total += v;
  return total * dsigma_factor(sigma);
}

// Pixel-major (B, H, W, channels) copy: a channels-last input is already one.
at::Tensor pixel_major(const at::Tensor& t) { return t.permute({0, 2, 3, 1}).contiguous(); }

void check_dtype(const at::Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "lam_ops cpp backend: x must be float32 or float64, got ", x.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> forward_cpu(const at::Tensor& x, const at::Tensor& f, const at::Tensor& sigma,
                                               std::optional<int64_t> radius,
                                               const std::optional<at::Tensor>& key_mask) {
  check_forward_args(x, f, sigma, radius, key_mask);
  check_dtype(x);
  at::Tensor out = at::empty(x.sizes(), x.options());
  at::Tensor lse = at::empty({x.size(0), x.size(2), x.size(3)}, x.options().dtype(lse_dtype(x.scalar_type())));
  if (lse.numel() == 0) return {out, lse};  // no pixel: nothing to compute (C = D = 0 still runs)
  const at::Tensor km = key_mask.has_value() ? key_mask->contiguous() : at::Tensor();
  const int r = kernel_radius(radius, x.size(2), x.size(3));
  if (r >= 0 && use_offset_kernels(x.size(2), x.size(3), f.size(1), r)) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lam_forward_cpu", [&] {
      offset_forward<scalar_t>(x, f, km, static_cast<scalar_t>(sigma.item<double>()), r, out, lse);
    });
    return {out, lse};
  }
  const at::Tensor xt = pixel_major(x), ft = pixel_major(f);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lam_forward_cpu", [&] {
    forward_kernel<scalar_t>(xt, ft, km.defined() ? km.data_ptr<bool>() : nullptr,
                             static_cast<scalar_t>(sigma.item<double>()), r, out, lse);
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                                                            const at::Tensor& f, const at::Tensor& sigma,
                                                            std::optional<int64_t> radius,
                                                            const std::optional<at::Tensor>& key_mask,
                                                            const at::Tensor& out, const at::Tensor& lse) {
  check_backward_args(grad_out, x, f, sigma, radius, key_mask, out, lse);
  check_dtype(x);
  if (lse.numel() == 0) return {at::zeros_like(x), at::zeros_like(f), at::zeros_like(sigma)};
  const at::Tensor km = key_mask.has_value() ? key_mask->contiguous() : at::Tensor();
  at::Tensor dx = at::empty(x.sizes(), x.options()), df = at::empty(f.sizes(), f.options());
  const int r = kernel_radius(radius, x.size(2), x.size(3));
  double dsigma = 0;
  if (r >= 0 && use_offset_kernels(x.size(2), x.size(3), f.size(1), r)) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lam_backward_cpu", [&] {
      dsigma = static_cast<double>(offset_backward<scalar_t>(
          grad_out, x, f, km, out, lse, static_cast<scalar_t>(sigma.item<double>()), r, dx, df));
    });
  } else {
    const at::Tensor xt = pixel_major(x), ft = pixel_major(f);
    const at::Tensor gt = pixel_major(grad_out.to(x.scalar_type())), outt = pixel_major(out);
    const at::Tensor l = lse.contiguous();
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lam_backward_cpu", [&] {
      dsigma = static_cast<double>(backward_kernel<scalar_t>(gt, xt, ft, km.defined() ? km.data_ptr<bool>() : nullptr,
                                                             outt, l, static_cast<scalar_t>(sigma.item<double>()),
                                                             r, dx, df));
    });
  }
  // Converted as a tensor: a float32 sigma's dsigma out of float32 range becomes inf, where
  // scalar_tensor(double, float32) would throw.
  return {dx, df, at::scalar_tensor(dsigma, sigma.options().dtype(at::kDouble)).to(sigma.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(lam_ops, CPU, m) {
  m.impl("forward", &forward_cpu);
  m.impl("backward", &backward_cpu);
}

}  // namespace lam
