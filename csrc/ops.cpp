// The operator schema, defined once. Kernels register per dispatch key in cpu/ and cuda/;
// Python (lam_ops/backends/extension.py) registers the autograd formula and the fake kernels.
#include <torch/library.h>

TORCH_LIBRARY(lam_ops, m) {
  // out: (B, C, H, W) like x; lse: (B, H, W) float32 (float64 for float64 x), the per-query
  // log-sum-exp (-inf for a
  // query with no admissible key). radius None = the whole image.
  m.def("forward(Tensor x, Tensor f, Tensor sigma, int? radius, Tensor? key_mask) -> (Tensor out, Tensor lse)");
  // Gradients of the contract (docs/operator.md), gather form; dsigma is 0-dim, sigma's dtype.
  m.def(
      "backward(Tensor grad_out, Tensor x, Tensor f, Tensor sigma, int? radius, Tensor? key_mask, "
      "Tensor out, Tensor lse) -> (Tensor dx, Tensor df, Tensor dsigma)");
}
