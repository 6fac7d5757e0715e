// ctest: the CPU operators of the CMake-built library against the contract (docs/operator.md),
// written as a naive loop (forward, lse) and central differences (every gradient), float64; and
// the float exp the CPU kernels use.
#include <algorithm>
#include <cmath>
#include <limits>

#include "lam/math.h"
#include "lam_ops_test.h"

using namespace lam_test;

namespace {

struct Case {
  int64_t B, C, D, H, W;
  std::optional<int64_t> radius;
  bool mask;
};

// out_j = sum_i softmax_i(f_i . f_j - |s_i - s_j|^2 / (2 sigma^2)) x_i over the admissible i in
// the clipped window of j; out_j = 0 and lse_j = -inf where there is none.
std::tuple<at::Tensor, at::Tensor> naive_forward(const at::Tensor& x, const at::Tensor& f, double sigma,
                                                 std::optional<int64_t> radius, const std::optional<at::Tensor>& mask) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t r = radius.value_or(H + W);
  at::Tensor out = at::zeros_like(x), lse = at::full({B, H, W}, -std::numeric_limits<double>::infinity(), x.options());
  auto X = x.accessor<double, 4>(), F = f.accessor<double, 4>(), O = out.accessor<double, 4>();
  auto L = lse.accessor<double, 3>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t yj = 0; yj < H; ++yj)
      for (int64_t xj = 0; xj < W; ++xj) {
        std::vector<std::pair<int64_t, double>> keys;  // (pixel, logit)
        for (int64_t yi = 0; yi < H; ++yi)
          for (int64_t xi = 0; xi < W; ++xi) {
            if (std::abs(yi - yj) > r || std::abs(xi - xj) > r) continue;
            if (mask && !mask->accessor<bool, 3>()[b][yi][xi]) continue;
            double s = 0;
            for (int64_t d = 0; d < f.size(1); ++d) s += F[b][d][yi][xi] * F[b][d][yj][xj];
            const double d2 = double((yi - yj) * (yi - yj) + (xi - xj) * (xi - xj));
            keys.push_back({yi * W + xi, s - d2 / (2 * sigma * sigma)});
          }
        if (keys.empty()) continue;
        double m = -std::numeric_limits<double>::infinity(), z = 0;
        for (auto& k : keys) m = std::max(m, k.second);
        for (auto& k : keys) z += std::exp(k.second - m);
        L[b][yj][xj] = m + std::log(z);
        for (auto& k : keys)
          for (int64_t c = 0; c < C; ++c)
            O[b][c][yj][xj] += std::exp(k.second - m) / z * X[b][c][k.first / W][k.first % W];
      }
  return {out, lse};
}

void check(const Case& k) {
  const std::string name = "B" + std::to_string(k.B) + "C" + std::to_string(k.C) + "D" + std::to_string(k.D) + "_" +
                           std::to_string(k.H) + "x" + std::to_string(k.W) + "_r" +
                           (k.radius ? std::to_string(*k.radius) : "None") + (k.mask ? "_mask" : "");
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  const at::Tensor x = at::randn({k.B, k.C, k.H, k.W}, opts), f = at::randn({k.B, k.D, k.H, k.W}, opts) * 0.7;
  const at::Tensor g = at::randn({k.B, k.C, k.H, k.W}, opts);
  const double sigma = 1.3;
  std::optional<at::Tensor> mask;
  if (k.mask) {
    mask = at::rand({k.B, k.H, k.W}, opts) < 0.5;
    (*mask)[0].fill_(false);  // an image with no admissible key: zeros, no NaN
  }
  const at::Tensor sig = at::scalar_tensor(sigma, opts);
  auto [out, lse] = forward_op().call(x, f, sig, k.radius, mask);
  auto [want_out, want_lse] = naive_forward(x, f, sigma, k.radius, mask);
  expect_close(name + " out", out, want_out, 1e-12, 1e-10);
  expect_close(name + " lse", lse, want_lse, 1e-12, 1e-10);

  // Every gradient against central differences of L = sum(g * out).
  auto [dx, df, dsigma] = backward_op().call(g, x, f, sig, k.radius, mask, out, lse);
  const auto loss = [&](const at::Tensor& x_, const at::Tensor& f_, double s) {
    return (g * std::get<0>(naive_forward(x_, f_, s, k.radius, mask))).sum().item<double>();
  };
  const double h = 1e-6;
  auto numeric = [&](const at::Tensor& t, const at::Tensor& grad, int which) {
    at::Tensor num = at::empty_like(grad);
    auto flat = t.view(-1);
    for (int64_t e = 0; e < flat.numel(); ++e) {
      const double v = flat[e].item<double>();
      flat[e].fill_(v + h);
      const double up = which == 0 ? loss(t, f, sigma) : loss(x, t, sigma);
      flat[e].fill_(v - h);
      const double down = which == 0 ? loss(t, f, sigma) : loss(x, t, sigma);
      flat[e].fill_(v);
      num.view(-1)[e].fill_((up - down) / (2 * h));
    }
    return num;
  };
  expect_close(name + " dx", dx, numeric(x.clone(), dx, 0), 1e-7, 1e-6);
  expect_close(name + " df", df, numeric(f.clone(), df, 1), 1e-7, 1e-6);
  const double dsig_num = (loss(x, f, sigma + h) - loss(x, f, sigma - h)) / (2 * h);
  expect_close(name + " dsigma", dsigma, at::scalar_tensor(dsig_num, opts), 1e-7, 1e-6);
}

// lam::exp_poly, the kernels' float exp on the CPU: relative error against exp in double over the
// softmax's range, exactly 0 below expf's normal range, NaN kept.
void check_exp_poly() {
  double worst = 0;
  for (int i = 0; i <= 1000000; ++i) {
    const float v = -87.0f * static_cast<float>(i) / 1000000.0f;
    const double want = std::exp(static_cast<double>(v));
    worst = std::max(worst, std::abs(lam::exp_poly(v) - want) / want);
  }
  const float inf = std::numeric_limits<float>::infinity();
  const bool edges = lam::exp_poly(0.0f) == 1.0f && lam::exp_poly(-87.5f) == 0.0f && lam::exp_poly(-inf) == 0.0f &&
                     std::isnan(lam::exp_poly(std::numeric_limits<float>::quiet_NaN()));
  if (worst > 2e-7 || !edges) {
    std::printf("FAIL exp_poly: worst relative error %g (want <= 2e-7), edge values %s\n", worst,
                edges ? "ok" : "wrong");
    ++failures;
  }
}

}  // namespace

int main(int argc, char** argv) {
  load_library(argc, argv);
  at::manual_seed(0);
  check_exp_poly();
  check({1, 2, 3, 4, 5, 0, false});
  check({2, 3, 2, 4, 5, 1, true});
  check({1, 2, 3, 3, 4, std::nullopt, false});
  check({2, 1, 2, 3, 3, 5, true});
  if (failures) return 1;
  std::printf("lam_ops CPU operators match the naive loop and central differences\n");
  return 0;
}
