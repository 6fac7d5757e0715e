// Helpers of the C++ tests: load the operator library the way torch.ops.load_library does,
// call its operators through the dispatcher, compare tensors.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <tuple>

namespace lam_test {

using Forward = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                   std::optional<int64_t>, const std::optional<at::Tensor>&);
using Backward = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                                const at::Tensor&, std::optional<int64_t>,
                                                                const std::optional<at::Tensor>&, const at::Tensor&,
                                                                const at::Tensor&);

// dlopen runs the library's TORCH_LIBRARY registrations, as torch.ops.load_library does.
inline void load_library(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s path/to/liblam_ops.so\n", argv[0]);
    std::exit(2);
  }
  if (dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL) == nullptr) {
    std::fprintf(stderr, "cannot load %s: %s\n", argv[1], dlerror());
    std::exit(2);
  }
}

inline c10::TypedOperatorHandle<Forward> forward_op() {
  return c10::Dispatcher::singleton().findSchemaOrThrow("lam_ops::forward", "").typed<Forward>();
}
inline c10::TypedOperatorHandle<Backward> backward_op() {
  return c10::Dispatcher::singleton().findSchemaOrThrow("lam_ops::backward", "").typed<Backward>();
}

inline int failures = 0;

// Reports (and counts) a mismatch beyond atol + rtol |want|; -inf matches -inf.
inline void expect_close(const std::string& what, const at::Tensor& got_, const at::Tensor& want_, double atol,
                         double rtol) {
  const at::Tensor got = got_.to(at::kDouble).cpu(), want = want_.to(at::kDouble).cpu();
  bool ok = got.sizes() == want.sizes();
  double worst = 0;
  if (ok) {
    const at::Tensor both_inf = at::isinf(got) & at::isinf(want) & (got == want);
    const at::Tensor err = at::where(both_inf, at::zeros_like(got), (got - want).abs() - rtol * want.abs());
    worst = err.numel() ? err.max().item<double>() : 0.0;
    ok = !at::isnan(err).any().item<bool>() && worst <= atol;
  }
  if (!ok) {
    ++failures;
    std::fprintf(stderr, "FAIL %s: max error %g (atol %g, rtol %g)\n", what.c_str(), worst, atol, rtol);
  }
}

}  // namespace lam_test
