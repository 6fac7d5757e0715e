"""The fused C++ CPU kernels (backend "cpp") against the reference."""

import pytest
import torch

import lam_ops
from lam_cases import EDGE_CASES, Case, assert_matches_reference, make_inputs, run_with_grads

pytestmark = pytest.mark.skipif(
    "cpp" not in lam_ops.available_backends("cpu"), reason="lam_ops._C is not built (pip install -e .)"
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", EDGE_CASES, ids=str)
def test_matches_reference(case, dtype):
    assert_matches_reference(case, "cpp", dtype)


@pytest.mark.parametrize("case", [Case(2, 3, 4, 5, 6, 1, "sparse"), Case(1, 2, 3, 4, 5, None, "random")], ids=str)
def test_gradcheck(case):
    x, f, sigma, key_mask = make_inputs(case, torch.float64)
    fn = lambda x, f, sigma: lam_ops.local_aggregate(x, f, sigma, case.radius, key_mask, backend="cpp")
    assert torch.autograd.gradcheck(fn, (x, f, sigma))


def test_backward_is_bitwise_deterministic():
    case = Case(2, 21, 16, 12, 11, 3, "random")
    a, b = run_with_grads(case, "cpp"), run_with_grads(case, "cpp")
    for name in a:
        assert torch.equal(a[name], b[name]), name
