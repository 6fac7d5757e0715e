// ctest: the CUDA kernels of csrc/cuda/lam_kernels.cuh, unchanged, run on CPU threads against the
// CPU operators, so that CPU-only CI checks their indexing, tiling, masks, chunking over channels
// and key tiles, half conversions and barriers. One std::thread per CUDA thread, one std::barrier
// per __syncthreads, the blocks of a launch one after the other (so a block's __shared__ memory
// can be a static). A missing barrier may show up as a mismatch and a divergent one as a hang
// (ctest's timeout); what only a GPU shows (warp execution, nvcc's code, speed) is not checked.
#include <barrier>
#include <thread>
#include <vector>

#include <ATen/OpMathType.h>

#include "lam/checks.h"
#include "lam_ops_test.h"

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
thread_local dim3 threadIdx, blockIdx;
dim3 blockDim, gridDim;
std::barrier<>* block_barrier;
inline void __syncthreads() { block_barrier->arrive_and_wait(); }
#define __global__
#define __device__
#define __shared__ static
#define __launch_bounds__(n)

#include "cuda/lam_kernels.cuh"

using namespace lam_test;
namespace cu = lam::cuda;

namespace {

template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, Args... args) {
  gridDim = grid;
  blockDim = block;
  const unsigned n = block.x * block.y;
  for (unsigned by = 0; by < grid.y; ++by)
    for (unsigned bx = 0; bx < grid.x; ++bx) {
      std::barrier<> barrier(n);
      block_barrier = &barrier;
      std::vector<std::thread> threads;
      for (unsigned t = 0; t < n; ++t)
        threads.emplace_back([&, t] {
          blockIdx = dim3(bx, by);
          threadIdx = dim3(t % block.x, t / block.x);
          kernel(args...);
        });
      for (auto& th : threads) th.join();
    }
}

// What csrc/cuda/lam_cuda.cpp and lam_kernels.cu do around the kernels, on CPU tensors.
template <typename scalar_t>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> run_kernels(const at::Tensor& x,
                                                                                   const at::Tensor& f,
                                                                                   const at::Tensor& sigma, int r,
                                                                                   const at::Tensor& mask,
                                                                                   const at::Tensor& g) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
  const int B = x.size(0), C = x.size(1), D = f.size(1), H = x.size(2), W = x.size(3);
  const bool* mp = mask.defined() ? mask.data_ptr<bool>() : nullptr;
  const at::Tensor sig = sigma.to(acc_type);
  const cu::Launch geo = cu::launch_geometry(B, H, W, r);

  at::Tensor out = at::zeros_like(x), lse = at::empty({B, H, W}, x.options().dtype(acc_type));
  at::Tensor acc = acc_type == x.scalar_type() ? out : at::zeros(x.sizes(), x.options().dtype(acc_type));
  launch(cu::forward_kernel<scalar_t, acc_t>, geo.grid, geo.block, x.data_ptr<scalar_t>(), f.data_ptr<scalar_t>(),
         sig.data_ptr<acc_t>(), mp, C, D, H, W, r, acc.data_ptr<acc_t>(), out.data_ptr<scalar_t>(),
         lse.data_ptr<acc_t>());

  const at::Tensor delta = (g.to(acc_type) * out.to(acc_type)).sum(1).contiguous();
  at::Tensor dx = at::zeros(x.sizes(), x.options().dtype(acc_type)),
             df = at::zeros(f.sizes(), f.options().dtype(acc_type));
  at::Tensor partials = at::empty({int64_t(geo.grid.x) * geo.grid.y}, x.options().dtype(acc_type));
  at::Tensor dsigma = at::empty({}, x.options().dtype(acc_type));
  launch(cu::backward_kernel<scalar_t, acc_t>, geo.grid, geo.block, g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
         f.data_ptr<scalar_t>(), sig.data_ptr<acc_t>(), mp, lse.data_ptr<acc_t>(), delta.data_ptr<acc_t>(), C, D, H, W,
         r, dx.data_ptr<acc_t>(), df.data_ptr<acc_t>(), partials.data_ptr<acc_t>());
  launch(cu::sum_partials_kernel<acc_t>, dim3(1), dim3(cu::kMaxThreads), partials.data_ptr<acc_t>(), partials.numel(),
         sig.data_ptr<acc_t>(), dsigma.data_ptr<acc_t>());
  return {out, lse, dx.to(x.scalar_type()), df.to(f.scalar_type()), dsigma};
}

struct Case {
  int64_t B, C, D, H, W;
  std::optional<int64_t> radius;
  bool mask;
};

// The kernels on x, f, g rounded to `dtype`, the CPU operators in float64 on the same rounded
// values and (for Delta = g . out) the kernels' own rounded out: the difference is the kernels'
// error alone.
void check(const Case& k, at::ScalarType dtype, double tol) {
  const std::string name = std::string(c10::toString(dtype)) + " B" + std::to_string(k.B) + "C" + std::to_string(k.C) +
                           "D" + std::to_string(k.D) + "_" + std::to_string(k.H) + "x" + std::to_string(k.W) + "_r" +
                           (k.radius ? std::to_string(*k.radius) : "None") + (k.mask ? "_mask" : "");
  const auto opts = at::TensorOptions().dtype(dtype);
  const at::Tensor x = at::randn({k.B, k.C, k.H, k.W}).to(dtype), g = at::randn({k.B, k.C, k.H, k.W}).to(dtype);
  const at::Tensor f = (at::randn({k.B, k.D, k.H, k.W}) / std::pow(double(k.D), 0.25)).to(dtype);
  const at::Tensor sigma = at::scalar_tensor(1.5, at::kFloat);
  at::Tensor mask;
  if (k.mask) {
    mask = at::rand({k.B, k.H, k.W}) < 0.6;
    mask[0].slice(0, 0, 2).fill_(false);  // some queries see no key at all
  }
  const int r = lam::kernel_radius(k.radius, k.H, k.W);
  at::Tensor out, lse, dx, df, dsigma;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "emulated", [&] {
    std::tie(out, lse, dx, df, dsigma) = run_kernels<scalar_t>(x, f, sigma, r, mask, g);
  });

  const auto d = [](const at::Tensor& t) { return t.to(at::kDouble); };
  const std::optional<at::Tensor> m = k.mask ? std::optional<at::Tensor>(mask) : std::nullopt;
  const at::Tensor s64 = sigma.to(at::kDouble);
  auto [want_out, want_lse] = forward_op().call(d(x), d(f), s64, k.radius, m);
  auto [want_dx, want_df, want_dsigma] = backward_op().call(d(g), d(x), d(f), s64, k.radius, m, d(out), want_lse);
  expect_close(name + " out", out, want_out, tol, tol);
  expect_close(name + " lse", lse, want_lse, tol, tol);
  expect_close(name + " dx", dx, want_dx, tol, tol);
  expect_close(name + " df", df, want_df, tol, tol);
  expect_close(name + " dsigma", dsigma, want_dsigma, tol * std::max(1.0, want_dsigma.abs().item<double>()), tol);
}

// The edge cases of docs/operator.md on the kernels themselves (float32).
bool same(const at::Tensor& a, const at::Tensor& b) { return a.sizes() == b.sizes() && at::equal(a, b); }

void expect(bool ok, const std::string& what) {
  if (!ok) {
    ++failures;
    std::fprintf(stderr, "FAIL %s\n", what.c_str());
  }
}

// A NaN or Inf at a masked-out key changes nothing (x acts only as a key); a non-finite x reaches
// exactly the queries whose window holds it.
void check_nonfinite_keys() {
  const at::Tensor x = at::randn({1, 2, 9, 9}), f = at::randn({1, 3, 9, 9}) / 1.3, g = at::randn({1, 2, 9, 9});
  const at::Tensor sigma = at::scalar_tensor(1.5, at::kFloat);
  at::Tensor mask = at::ones({1, 9, 9}, at::kBool);
  mask[0][4][0] = false;
  const auto clean = run_kernels<float>(x, f, sigma, 2, mask, g);
  for (const double v : {NAN, INFINITY, -INFINITY}) {
    at::Tensor xb = x.clone();
    xb.select(3, 0).select(2, 4).fill_(v);  // x[0, :, 4, 0]
    const auto got = run_kernels<float>(xb, f, sigma, 2, mask, g);
    expect(same(std::get<0>(got), std::get<0>(clean)) && same(std::get<1>(got), std::get<1>(clean)) &&
               same(std::get<2>(got), std::get<2>(clean)) && same(std::get<3>(got), std::get<3>(clean)) &&
               same(std::get<4>(got), std::get<4>(clean)),
           "a masked key's non-finite x changed a result: " + std::to_string(v));
    const auto open = run_kernels<float>(xb, f, sigma, 2, at::Tensor(), g);
    at::Tensor reach = at::zeros({9, 9}, at::kBool);
    reach.slice(0, 2, 7).slice(1, 0, 3).fill_(true);  // the windows (r = 2) that hold pixel (4, 0)
    expect(same(at::isfinite(std::get<0>(open)[0]).all(0), reach.logical_not()),
           "an admissible non-finite x reached other queries than those that admit it: " + std::to_string(v));
  }
}

// The non-finite cases of tests/lam_cases.py (NONFINITE_CASES), in which the CPU operators match the
// contract's oracle (tests/test_lam_edge_cases.py): a NaN or an infinity in one channel of x or f
// at pixel (2, 3), admissible or masked out, radius 1 or None, sigma 1.5 or 1e-200 (with a query
// without weight next to it). The kernels give the same non-finite entries, and the same finite
// values (at sigma 1e-200 out and lse only: the gradients of a query whose own pixel is masked out
// keep no digits there).
void check_nonfinite_like_cpu() {
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  const at::Tensor x0 = at::randn({1, 2, 5, 6}, opts), f0 = at::randn({1, 3, 5, 6}, opts) / 1.3;
  const at::Tensor g = at::randn({1, 2, 5, 6}, opts);
  const char* names[] = {"out", "lse", "dx", "df", "dsigma"};
  for (const bool in_f : {false, true})
    for (const double v : {NAN, INFINITY, -INFINITY})
      for (const bool masked : {false, true})
        for (const std::optional<int64_t> radius : {std::optional<int64_t>(1), std::optional<int64_t>()})
          for (const double sv : {1.5, 1e-200}) {
            at::Tensor x = x0.clone(), f = f0.clone();
            (in_f ? f : x)[0][1][2][3].fill_(v);
            at::Tensor mask = at::ones({1, 5, 6}, at::kBool);
            mask[0][4][0].fill_(false);
            if (sv < 1e-100) {  // query (1, 2): no key at d2 < 2
              mask[0][1].slice(0, 1, 4).fill_(false);
              mask[0].select(1, 2).slice(0, 0, 3).fill_(false);
            }
            mask[0][2][3].fill_(!masked);
            const at::Tensor sigma = at::scalar_tensor(sv, opts);
            const auto got = run_kernels<double>(x, f, sigma, lam::kernel_radius(radius, 5, 6), mask, g);
            auto [out, lse] = forward_op().call(x, f, sigma, radius, mask);
            auto [dx, df, dsigma] = backward_op().call(g, x, f, sigma, radius, mask, out, lse);
            const at::Tensor have[] = {std::get<0>(got), std::get<1>(got), std::get<2>(got), std::get<3>(got),
                                       std::get<4>(got)};
            const at::Tensor want[] = {out, lse, dx, df, dsigma};
            char name[96];
            std::snprintf(name, sizeof name, "%s=%g%s r%s sigma %g ", in_f ? "f" : "x", v, masked ? " masked" : "",
                          radius ? std::to_string(*radius).c_str() : "None", sv);
            for (int k = 0; k < 5; ++k) {
              const at::Tensor ok = at::isfinite(want[k]);
              expect(same(at::isfinite(have[k]), ok),
                     name + std::string(names[k]) + ": other non-finite entries than the CPU's");
              if (sv > 1e-100 || k < 2)
                expect_close(name + std::string(names[k]), have[k].masked_select(ok), want[k].masked_select(ok), 1e-10,
                             1e-9);
            }
          }
}

// B, H, W, C or D = 0 run and give the formula's result (D = 0: the distance term alone).
void check_empty_sizes() {
  const int64_t shapes[][5] = {{0, 3, 4, 5, 6}, {2, 3, 4, 0, 6}, {2, 3, 4, 5, 0}, {2, 0, 4, 5, 6}, {2, 3, 0, 5, 6}};
  for (const auto& s : shapes) {
    const at::Tensor x = at::randn({s[0], s[1], s[3], s[4]}), f = at::randn({s[0], s[2], s[3], s[4]});
    const at::Tensor g = at::randn_like(x), sigma = at::scalar_tensor(1.5, at::kFloat);
    const int r = lam::kernel_radius(1, s[3], s[4]);
    const auto got = run_kernels<float>(x, f, sigma, r, at::Tensor(), g);
    const auto d = [](const at::Tensor& t) { return t.to(at::kDouble); };
    auto [want_out, want_lse] = forward_op().call(d(x), d(f), sigma.to(at::kDouble), 1, std::nullopt);
    const std::string name = "empty " + std::to_string(s[0]) + "," + std::to_string(s[1]) + "," + std::to_string(s[2]) +
                             "," + std::to_string(s[3]) + "," + std::to_string(s[4]);
    expect_close(name + " out", std::get<0>(got), want_out, 2e-5, 2e-5);
    expect_close(name + " lse", std::get<1>(got), want_lse, 2e-5, 2e-5);
    expect(std::get<2>(got).sizes() == x.sizes() && std::get<3>(got).sizes() == f.sizes() &&
               at::isfinite(std::get<4>(got)).item<bool>(),
           name + " gradients");
  }
}

// The own pixel's distance term is exactly 0 at any sigma: at a tiny sigma out = x (every other
// key underflows) and dsigma = 0, never NaN; at a huge one nothing overflows.
void check_extreme_sigma() {
  const at::Tensor x = at::randn({1, 3, 5, 6}), f = at::randn({1, 4, 5, 6}) / 1.4, g = at::randn_like(x);
  for (const double sv : {1e-20, 1e-30, 1e19, 3e38}) {
    const auto got = run_kernels<float>(x, f, at::scalar_tensor(sv, at::kFloat), 2, at::Tensor(), g);
    bool finite = true;
    for (const at::Tensor& t : {std::get<0>(got), std::get<2>(got), std::get<3>(got), std::get<4>(got)})
      finite = finite && at::isfinite(t).all().item<bool>();
    expect(finite, "a non-finite result at sigma " + std::to_string(sv));
    if (sv < 1) expect(same(std::get<0>(got), x) && std::get<4>(got).item<float>() == 0.0f, "tiny sigma: out != x");
  }
}

}  // namespace

int main(int argc, char** argv) {
  load_library(argc, argv);
  at::manual_seed(0);
  // Border tiles (sizes not multiples of 8), r = 0, windows wider than a tile, radius None (more
  // keys than a key tile), more channels than a staged chunk (C, D > 32), masks, B = 2.
  const Case cases[] = {
      {1, 3, 4, 5, 7, 0, false}, {2, 3, 5, 9, 11, 1, true},           {1, 35, 33, 10, 9, 2, false},
      {2, 4, 3, 9, 12, 5, true}, {2, 2, 3, 7, 9, std::nullopt, true}, {1, 3, 40, 12, 17, std::nullopt, false},
      {1, 1, 1, 1, 1, 0, false}, {1, 2, 2, 1, 19, 3, false},
  };
  for (const Case& k : cases) {
    check(k, at::kDouble, 1e-10);
    check(k, at::kFloat, 2e-5);
  }
  // Half inputs: float32 accumulation, out and the gradients rounded once, to 16 bits.
  for (const Case& k : {cases[1], cases[2], cases[4]}) {
    check(k, at::kHalf, 2e-3);
    check(k, at::kBFloat16, 1.6e-2);
  }
  check_nonfinite_keys();
  check_nonfinite_like_cpu();
  check_empty_sizes();
  check_extreme_sigma();
  if (failures) return 1;
  std::printf("lam_ops CUDA kernels (emulated on CPU threads) match the CPU operators\n");
  return 0;
}
