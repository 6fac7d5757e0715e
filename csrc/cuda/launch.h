// The kernel launches of lam_kernels.cu, called by lam_cuda.cpp: raw pointers and a stream, so
// that nvcc compiles no ATen header (they cost more than the kernels: half the CUDA build time).
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>

namespace lam {
namespace cuda {

struct Sizes {
  int B, C, D, H, W;
  int radius;  // < 0: the whole image
};

// out (B, C, H, W), lse (B, H, W); acc (B, C, H, W) zeros, may be out when scalar_t is acc_t.
template <typename scalar_t, typename acc_t>
void launch_forward(const scalar_t* x, const scalar_t* f, const acc_t* sigma, const bool* key_mask, Sizes s, acc_t* acc,
                    scalar_t* out, acc_t* lse, cudaStream_t stream);

// How many dsigma partials launch_backward needs.
int64_t backward_partials(Sizes s);

// dx, df zeros on entry (acc_t); delta (B, H, W) = g_j . out_j; dsigma a single acc_t.
template <typename scalar_t, typename acc_t>
void launch_backward(const scalar_t* g, const scalar_t* x, const scalar_t* f, const acc_t* sigma, const bool* key_mask,
                     const acc_t* lse, const acc_t* delta, Sizes s, acc_t* dx, acc_t* df, acc_t* partials,
                     acc_t* dsigma, cudaStream_t stream);

}  // namespace cuda
}  // namespace lam
