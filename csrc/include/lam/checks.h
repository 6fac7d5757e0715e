// Argument checks of the operator, shared by the CPU and CUDA registrations (host code only).
// Python validates first with friendlier messages; these guard direct C++ / torch.ops callers.
#pragma once

#include <ATen/ATen.h>
#include <optional>

namespace lam {

// The saved log-sum-exp: float32, float64 for float64 inputs (gradcheck needs it).
inline at::ScalarType lse_dtype(at::ScalarType x_dtype) { return x_dtype == at::kDouble ? at::kDouble : at::kFloat; }

inline void check_forward_args(const at::Tensor& x, const at::Tensor& f, const at::Tensor& sigma,
                               std::optional<int64_t> radius, const std::optional<at::Tensor>& key_mask) {
  TORCH_CHECK(x.dim() == 4, "lam_ops: x must be (B, C, H, W), got ", x.dim(), " dims");
  TORCH_CHECK(f.dim() == 4, "lam_ops: f must be (B, D, H, W), got ", f.dim(), " dims");
  TORCH_CHECK(f.size(0) == x.size(0) && f.size(2) == x.size(2) && f.size(3) == x.size(3),
              "lam_ops: f must match x in batch and spatial size: x ", x.sizes(), ", f ", f.sizes());
  TORCH_CHECK(f.scalar_type() == x.scalar_type(), "lam_ops: f dtype ", f.scalar_type(), " differs from x dtype ",
              x.scalar_type());
  TORCH_CHECK(f.device() == x.device(), "lam_ops: f is on ", f.device(), ", x on ", x.device());
  TORCH_CHECK(sigma.dim() == 0 && at::isFloatingType(sigma.scalar_type()),
              "lam_ops: sigma must be a 0-dim floating tensor, got ", sigma.sizes(), " ", sigma.scalar_type());
  TORCH_CHECK(sigma.device() == x.device(), "lam_ops: sigma is on ", sigma.device(), ", x on ", x.device());
  TORCH_CHECK(!radius.has_value() || *radius >= 0, "lam_ops: radius must be >= 0 or None, got ", *radius);
  if (key_mask.has_value()) {
    const auto& km = *key_mask;
    TORCH_CHECK(km.scalar_type() == at::kBool, "lam_ops: key_mask must be bool, got ", km.scalar_type());
    TORCH_CHECK(km.dim() == 3 && km.size(0) == x.size(0) && km.size(1) == x.size(2) && km.size(2) == x.size(3),
                "lam_ops: key_mask must be (B, H, W) = (", x.size(0), ", ", x.size(2), ", ", x.size(3), "), got ",
                km.sizes());
    TORCH_CHECK(km.device() == x.device(), "lam_ops: key_mask is on ", km.device(), ", x on ", x.device());
  }
}

// The backward's extra arguments, checked by both devices: the kernels read out and lse at x's
// shape, so a wrong one would be an out-of-bounds read.
inline void check_backward_args(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& f,
                                const at::Tensor& sigma, std::optional<int64_t> radius,
                                const std::optional<at::Tensor>& key_mask, const at::Tensor& out,
                                const at::Tensor& lse) {
  check_forward_args(x, f, sigma, radius, key_mask);
  TORCH_CHECK(grad_out.sizes() == x.sizes() && at::isFloatingType(grad_out.scalar_type()),
              "lam_ops: grad_out must be a floating tensor of x's shape ", x.sizes(), ", got ", grad_out.sizes(), " ",
              grad_out.scalar_type());
  TORCH_CHECK(out.sizes() == x.sizes() && out.scalar_type() == x.scalar_type(), "lam_ops: out must have x's shape ",
              x.sizes(), " and dtype ", x.scalar_type(), ", got ", out.sizes(), " ", out.scalar_type());
  const at::ScalarType acc_type = lse_dtype(x.scalar_type());
  TORCH_CHECK(lse.dim() == 3 && lse.size(0) == x.size(0) && lse.size(1) == x.size(2) && lse.size(2) == x.size(3) &&
                  lse.scalar_type() == acc_type,
              "lam_ops: lse must be (B, H, W) = (", x.size(0), ", ", x.size(2), ", ", x.size(3), ") ", acc_type,
              ", got ", lse.sizes(), " ", lse.scalar_type());
  TORCH_CHECK(grad_out.device() == x.device() && out.device() == x.device() && lse.device() == x.device(),
              "lam_ops: grad_out, out and lse must be on x's device ", x.device());
}

// Kernels take radius < 0 as the whole image; a radius covering the image is the same thing.
inline int kernel_radius(std::optional<int64_t> radius, int64_t H, int64_t W) {
  if (!radius.has_value() || *radius >= std::max(H, W) - 1) return -1;
  return static_cast<int>(*radius);
}

}  // namespace lam
