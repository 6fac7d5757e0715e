// Launches of the kernels of lam_kernels.cuh, instantiated for every dtype of the CUDA backend.
// Launch errors are checked by the caller (lam_cuda.cpp), which holds the ATen machinery.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "lam_kernels.cuh"
#include "launch.h"

namespace lam {
namespace cuda {

template <typename scalar_t, typename acc_t>
void launch_forward(const scalar_t* x, const scalar_t* f, const acc_t* sigma, const bool* key_mask, Sizes s, acc_t* acc,
                    scalar_t* out, acc_t* lse, cudaStream_t stream) {
  if (static_cast<int64_t>(s.B) * s.H * s.W == 0) return;
  const Launch geo = launch_geometry(s.B, s.H, s.W, s.radius);
  forward_kernel<scalar_t, acc_t>
      <<<geo.grid, geo.block, 0, stream>>>(x, f, sigma, key_mask, s.C, s.D, s.H, s.W, s.radius, acc, out, lse);
}

int64_t backward_partials(Sizes s) {
  if (static_cast<int64_t>(s.B) * s.H * s.W == 0) return 0;
  const Launch geo = launch_geometry(s.B, s.H, s.W, s.radius);
  return static_cast<int64_t>(geo.grid.x) * geo.grid.y;
}

template <typename scalar_t, typename acc_t>
void launch_backward(const scalar_t* g, const scalar_t* x, const scalar_t* f, const acc_t* sigma, const bool* key_mask,
                     const acc_t* lse, const acc_t* delta, Sizes s, acc_t* dx, acc_t* df, acc_t* partials,
                     acc_t* dsigma, cudaStream_t stream) {
  const int64_t n = backward_partials(s);
  if (n > 0) {
    const Launch geo = launch_geometry(s.B, s.H, s.W, s.radius);
    backward_kernel<scalar_t, acc_t><<<geo.grid, geo.block, 0, stream>>>(g, x, f, sigma, key_mask, lse, delta, s.C, s.D,
                                                                         s.H, s.W, s.radius, dx, df, partials);
  }
  sum_partials_kernel<acc_t><<<1, kMaxThreads, 0, stream>>>(partials, n, sigma, dsigma);
}

#define LAM_INSTANTIATE(scalar_t, acc_t)                                                                            \
  template void launch_forward<scalar_t, acc_t>(const scalar_t*, const scalar_t*, const acc_t*, const bool*, Sizes, \
                                                acc_t*, scalar_t*, acc_t*, cudaStream_t);                           \
  template void launch_backward<scalar_t, acc_t>(const scalar_t*, const scalar_t*, const scalar_t*, const acc_t*,   \
                                                 const bool*, const acc_t*, const acc_t*, Sizes, acc_t*, acc_t*,    \
                                                 acc_t*, acc_t*, cudaStream_t);
LAM_INSTANTIATE(float, float)
LAM_INSTANTIATE(double, double)
LAM_INSTANTIATE(c10::Half, float)
LAM_INSTANTIATE(c10::BFloat16, float)
#undef LAM_INSTANTIATE

}  // namespace cuda
}  // namespace lam
