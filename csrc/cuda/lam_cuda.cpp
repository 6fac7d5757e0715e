// CUDA registration of the lam_ops operators: argument checks, allocation, and the launches of
// lam_kernels.cu (host compiler only: see launch.h). float32 and float64 compute in their own
// type; float16 and bfloat16 accumulate in float32 (at::opmath_type); lse is float32 (float64
// for float64 inputs).
// sigma stays on the device and is read by the kernels: no host synchronisation.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>

#include "lam/checks.h"
#include "launch.h"

namespace lam {
namespace {

const bool* mask_ptr(const at::Tensor& key_mask) { return key_mask.defined() ? key_mask.data_ptr<bool>() : nullptr; }

// Kernel index math is 32-bit within an image and the batch is gridDim.y.
void check_sizes(const at::Tensor& x) {
  TORCH_CHECK(x.size(0) <= 65535, "lam_ops cuda: x batch size must be at most 65535, got ", x.size(0));
  TORCH_CHECK(x.size(2) * x.size(3) <= std::numeric_limits<int>::max(), "lam_ops cuda: x has too many pixels, ",
              x.size(2), " x ", x.size(3));
}

std::tuple<at::Tensor, at::Tensor> forward_cuda(const at::Tensor& x_, const at::Tensor& f_, const at::Tensor& sigma,
                                                std::optional<int64_t> radius,
                                                const std::optional<at::Tensor>& key_mask) {
  check_forward_args(x_, f_, sigma, radius, key_mask);
  check_sizes(x_);
  const c10::cuda::CUDAGuard guard(x_.device());
  const at::Tensor x = x_.contiguous(), f = f_.contiguous();
  const at::Tensor km = key_mask.has_value() ? key_mask->contiguous() : at::Tensor();
  const int B = x.size(0), C = x.size(1), D = f.size(1), H = x.size(2), W = x.size(3);
  const at::ScalarType acc_type = lse_dtype(x.scalar_type());
  const at::Tensor sig = sigma.to(acc_type);  // a device-side cast at most
  at::Tensor out = at::zeros_like(x);
  at::Tensor lse = at::empty({B, H, W}, x.options().dtype(acc_type));
  // The unnormalised output: out itself, or a float32 buffer for half inputs.
  at::Tensor acc = acc_type == x.scalar_type() ? out : at::zeros(x.sizes(), x.options().dtype(acc_type));
  const cuda::Sizes sizes{B, C, D, H, W, kernel_radius(radius, H, W)};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lam_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    cuda::launch_forward<scalar_t, acc_t>(x.data_ptr<scalar_t>(), f.data_ptr<scalar_t>(), sig.data_ptr<acc_t>(),
                                          mask_ptr(km), sizes, acc.data_ptr<acc_t>(), out.data_ptr<scalar_t>(),
                                          lse.data_ptr<acc_t>(), stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cuda(const at::Tensor& grad_out, const at::Tensor& x_,
                                                             const at::Tensor& f_, const at::Tensor& sigma,
                                                             std::optional<int64_t> radius,
                                                             const std::optional<at::Tensor>& key_mask,
                                                             const at::Tensor& out, const at::Tensor& lse) {
  check_backward_args(grad_out, x_, f_, sigma, radius, key_mask, out, lse);
  check_sizes(x_);
  const at::ScalarType acc_type = lse_dtype(x_.scalar_type());
  const c10::cuda::CUDAGuard guard(x_.device());
  const at::Tensor x = x_.contiguous(), f = f_.contiguous(), g = grad_out.contiguous().to(x.scalar_type());
  const at::Tensor l = lse.contiguous();
  const at::Tensor km = key_mask.has_value() ? key_mask->contiguous() : at::Tensor();
  const int B = x.size(0), C = x.size(1), D = f.size(1), H = x.size(2), W = x.size(3);
  const at::Tensor sig = sigma.to(acc_type);
  const at::Tensor delta = (g.to(acc_type) * out.to(acc_type)).sum(1).contiguous();  // Delta_j = g_j . out_j
  at::Tensor dx = at::zeros(x.sizes(), x.options().dtype(acc_type));
  at::Tensor df = at::zeros(f.sizes(), f.options().dtype(acc_type));
  const cuda::Sizes sizes{B, C, D, H, W, kernel_radius(radius, H, W)};
  at::Tensor partials = at::empty({cuda::backward_partials(sizes)}, x.options().dtype(acc_type));
  at::Tensor dsigma = at::empty({}, x.options().dtype(acc_type));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lam_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    cuda::launch_backward<scalar_t, acc_t>(g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), f.data_ptr<scalar_t>(),
                                           sig.data_ptr<acc_t>(), mask_ptr(km), l.data_ptr<acc_t>(),
                                           delta.data_ptr<acc_t>(), sizes, dx.data_ptr<acc_t>(), df.data_ptr<acc_t>(),
                                           partials.data_ptr<acc_t>(), dsigma.data_ptr<acc_t>(), stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {dx.to(x.scalar_type()), df.to(f.scalar_type()), dsigma.to(sigma.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(lam_ops, CUDA, m) {
  m.impl("forward", &forward_cuda);
  m.impl("backward", &backward_cuda);
}

}  // namespace lam
