"""The CMake build for C++ users (CMakeLists.txt): configure, build (conftest.py's cmake_build,
which the test of examples/segment shares) and ctest in a temporary directory (the ctests check the
CPU operators against a naive loop, and run the CUDA kernels emulated on CPU threads), then load the
library with torch.ops.load_library in a fresh interpreter. CPU-only: setup.py already compiles the
.cu files, and nvcc would add minutes to CI. Here (pytest rather than a Makefile target) so that
`make test` and a plain `pytest` run it, and a machine without cmake skips it with the reason."""

import os
import subprocess
import sys

import pytest
from build_env import cmake_unavailable, run_checked

pytestmark = pytest.mark.skipif(cmake_unavailable() is not None, reason=str(cmake_unavailable()))


def test_ctest(cmake_build):
    out = run_checked(["ctest", "--output-on-failure"], cwd=cmake_build)
    assert "100% tests passed" in out and "out of 2" in out, out


# The library registers the lam_ops namespace, which lam_ops._C registers too: load it where
# lam_ops is not imported. radius None is a dense softmax over all pixels, written out here.
_LOAD = """
import sys, torch
torch.ops.load_library(sys.argv[1])
torch.manual_seed(0)
x, f = torch.randn(2, 3, 4, 5, dtype=torch.float64), torch.randn(2, 6, 4, 5, dtype=torch.float64)
out, lse = torch.ops.lam_ops.forward(x, f, torch.tensor(1.5, dtype=torch.float64), None, None)
ys, xs = torch.meshgrid(torch.arange(4.0), torch.arange(5.0), indexing="ij")
s = torch.stack([ys.flatten(), xs.flatten()], 1).double()
logits = f.flatten(2).transpose(1, 2) @ f.flatten(2) - torch.cdist(s, s) ** 2 / (2 * 1.5**2)  # (B, key, query)
want = torch.einsum("bci,bij->bcj", x.flatten(2), logits.softmax(1)).view_as(x)
torch.testing.assert_close(out, want, atol=1e-12, rtol=1e-10)
torch.testing.assert_close(lse, logits.logsumexp(1).view(2, 4, 5), atol=1e-12, rtol=1e-10)
assert torch._C._dispatch_has_kernel_for_dispatch_key("lam_ops::backward", "CPU")
print("ok")
"""


def test_library_loads_with_torch_ops(cmake_build):
    library = next(p for p in cmake_build.iterdir() if p.name.startswith("liblam_ops."))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", _LOAD, str(library)], capture_output=True, text=True, env=env, cwd=cmake_build
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-6000:]
