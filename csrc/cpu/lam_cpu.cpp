// CPU kernels of the lam_ops operators: a per-pixel loop over lam/math.h.
// Parallel over (batch, row); every output element is written by one thread, so the backward is
// a gather with no atomics, and dsigma is reduced from per-row partials in a fixed order.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "lam/checks.h"
#include "lam/math.h"

namespace lam {
namespace {

template <typename T>
T dot(const T* a, const T* b, int64_t n, int64_t sa, int64_t sb) {
  T s = 0;
  for (int64_t k = 0; k < n; ++k) s += a[k * sa] * b[k * sb];
  return s;
}

template <typename T>
void forward_kernel(const at::Tensor& x, const at::Tensor& f, T sigma, int radius, const bool* mask,
                    at::Tensor& out, at::Tensor& lse) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), D = f.size(1), N = H * W;
  const T* xp = x.data_ptr<T>();
  const T* fp = f.data_ptr<T>();
  T* op = out.data_ptr<T>();
  T* lp = lse.data_ptr<T>();
  const T coef = dist_coef(sigma);
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> acc(C);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / H;
      const int y = static_cast<int>(row % H);
      const T* xb = xp + b * C * N;
      const T* fb = fp + b * D * N;
      const bool* mb = mask ? mask + b * N : nullptr;
      for (int xq = 0; xq < W; ++xq) {
        const int64_t j = y * W + xq;
        const Window w = window(y, xq, H, W, radius);
        OnlineSoftmax<T> sm;
        std::fill(acc.begin(), acc.end(), T(0));
        for (int yi = w.y0; yi < w.y1; ++yi) {
          for (int xi = w.x0; xi < w.x1; ++xi) {
            const int64_t i = yi * W + xi;
            if (mb && !mb[i]) continue;
            T scale;
            const T p = sm.push(logit(dot(fb + i, fb + j, D, N, N), dist2(yi - y, xi - xq), coef), scale);
            for (int64_t c = 0; c < C; ++c) acc[c] = acc[c] * scale + p * xb[c * N + i];
          }
        }
        const T inv = sm.inv_l();
        for (int64_t c = 0; c < C; ++c) op[(b * C + c) * N + j] = acc[c] * inv;
        lp[b * N + j] = sm.lse();
      }
    }
  });
}

template <typename T>
void backward_kernel(const at::Tensor& g, const at::Tensor& x, const at::Tensor& f, T sigma, int radius,
                     const bool* mask, const at::Tensor& out, const at::Tensor& lse, at::Tensor& dx,
                     at::Tensor& df, T& dsigma) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), D = f.size(1), N = H * W;
  const T* gp = g.data_ptr<T>();
  const T* xp = x.data_ptr<T>();
  const T* fp = f.data_ptr<T>();
  const T* op = out.data_ptr<T>();
  const T* lp = lse.data_ptr<T>();
  T* dxp = dx.data_ptr<T>();
  T* dfp = df.data_ptr<T>();
  const T coef = dist_coef(sigma);

  // Delta_j = g_j . out_j
  std::vector<T> delta(B * N);
  at::parallel_for(0, B * N, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t bj = begin; bj < end; ++bj) {
      const int64_t b = bj / N, j = bj % N;
      delta[bj] = dot(gp + b * C * N + j, op + b * C * N + j, C, N, N);
    }
  });

  std::vector<T> dsig_rows(B * H, T(0));
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / H;
      const int y = static_cast<int>(row % H);
      const T* gb = gp + b * C * N;
      const T* xb = xp + b * C * N;
      const T* fb = fp + b * D * N;
      const T* lb = lp + b * N;
      const T* db = delta.data() + b * N;
      const bool* mb = mask ? mask + b * N : nullptr;
      T* dxb = dxp + b * C * N;
      T* dfb = dfp + b * D * N;
      T dsig = 0;
      for (int xq = 0; xq < W; ++xq) {
        const int64_t p = y * W + xq;  // this pixel, as query j and as key i
        const bool p_admissible = !mb || mb[p];
        const Window w = window(y, xq, H, W, radius);
        for (int yq = w.y0; yq < w.y1; ++yq) {
          for (int xo = w.x0; xo < w.x1; ++xo) {
            const int64_t q = yq * W + xo;  // the other pixel of the pair
            const int d2 = dist2(yq - y, xo - xq);
            const bool q_admissible = !mb || mb[q];
            if (!p_admissible && !q_admissible) continue;
            const PairGrad<T> pg = pair_grad(logit(dot(fb + p, fb + q, D, N, N), d2, coef), p_admissible,
                                             q_admissible, lb[p], lb[q], dot(gb + p, xb + q, C, N, N),
                                             dot(gb + q, xb + p, C, N, N), db[p], db[q]);
            for (int64_t c = 0; c < C; ++c) dxb[c * N + p] += pg.a * gb[c * N + q];
            for (int64_t k = 0; k < D; ++k) dfb[k * N + p] += pg.ds * fb[k * N + q];
            dsig += pg.ds_query * static_cast<T>(d2);
          }
        }
      }
      dsig_rows[row] = dsig;
    }
  });
  T total = 0;
  for (T v : dsig_rows) total += v;
  dsigma = total * dsigma_factor(sigma);
}

std::tuple<at::Tensor, at::Tensor> forward_cpu(const at::Tensor& x_, const at::Tensor& f_, const at::Tensor& sigma,
                                               std::optional<int64_t> radius,
                                               const std::optional<at::Tensor>& key_mask) {
  check_forward_args(x_, f_, sigma, radius, key_mask);
  TORCH_CHECK(x_.scalar_type() == at::kFloat || x_.scalar_type() == at::kDouble,
              "lam_ops cpp backend: x must be float32 or float64, got ", x_.scalar_type());
  const at::Tensor x = x_.contiguous(), f = f_.contiguous();
  const at::Tensor km = key_mask.has_value() ? key_mask->contiguous() : at::Tensor();
  at::Tensor out = at::empty_like(x);
  at::Tensor lse = at::empty({x.size(0), x.size(2), x.size(3)}, x.options().dtype(lse_dtype(x.scalar_type())));
  const int r = kernel_radius(radius, x.size(2), x.size(3));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lam_forward_cpu", [&] {
    forward_kernel<scalar_t>(x, f, static_cast<scalar_t>(sigma.item<double>()), r,
                             km.defined() ? km.data_ptr<bool>() : nullptr, out, lse);
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cpu(const at::Tensor& grad_out, const at::Tensor& x_,
                                                            const at::Tensor& f_, const at::Tensor& sigma,
                                                            std::optional<int64_t> radius,
                                                            const std::optional<at::Tensor>& key_mask,
                                                            const at::Tensor& out, const at::Tensor& lse) {
  check_forward_args(x_, f_, sigma, radius, key_mask);
  TORCH_CHECK(grad_out.sizes() == x_.sizes(), "lam_ops: grad_out must have x's shape");
  const at::Tensor x = x_.contiguous(), f = f_.contiguous(), g = grad_out.contiguous().to(x.scalar_type());
  const at::Tensor o = out.contiguous(), l = lse.contiguous();
  const at::Tensor km = key_mask.has_value() ? key_mask->contiguous() : at::Tensor();
  at::Tensor dx = at::zeros_like(x), df = at::zeros_like(f);
  const int r = kernel_radius(radius, x.size(2), x.size(3));
  double dsigma = 0;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lam_backward_cpu", [&] {
    scalar_t ds = 0;
    backward_kernel<scalar_t>(g, x, f, static_cast<scalar_t>(sigma.item<double>()), r,
                              km.defined() ? km.data_ptr<bool>() : nullptr, o, l, dx, df, ds);
    dsigma = static_cast<double>(ds);
  });
  return {dx, df, at::scalar_tensor(dsigma, sigma.options())};
}

}  // namespace

TORCH_LIBRARY_IMPL(lam_ops, CPU, m) {
  m.impl("forward", &forward_cpu);
  m.impl("backward", &backward_cpu);
}

}  // namespace lam
