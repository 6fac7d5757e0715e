// The offset-major CPU kernels of windowed radii (lam_offsets.cpp), called by lam_cpu.cpp.
#pragma once

#include <ATen/ATen.h>

namespace lam {

// Whether the offset-major kernels run radius `radius` (>= 0) on H x W images of D features; else the
// tiled ones.
bool use_offset_kernels(int64_t H, int64_t W, int64_t D, int radius);

// x (B, C, H, W), f (B, D, H, W) in any strides; key_mask undefined or (B, H, W) bool. Writes out
// (B, C, H, W) and lse (B, H, W), both contiguous.
template <typename T>
void offset_forward(const at::Tensor& x, const at::Tensor& f, const at::Tensor& key_mask, T sigma, int radius,
                    at::Tensor& out, at::Tensor& lse);

// Writes dx and df (contiguous, x's and f's shapes); returns dsigma.
template <typename T>
T offset_backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& f, const at::Tensor& key_mask,
                  const at::Tensor& out, const at::Tensor& lse, T sigma, int radius, at::Tensor& dx, at::Tensor& df);

}  // namespace lam
