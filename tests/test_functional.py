"""local_aggregate's contract: argument errors, backend choice, and the reference backend itself."""

import math

import pytest
import torch
from lam_cases import EDGE_CASES, Case, make_inputs

import lam_ops
from lam_ops.backends.reference import reference_forward, window_mask


def _inputs(B=2, C=3, D=4, H=5, W=6):
    return torch.randn(B, C, H, W), torch.randn(B, D, H, W)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(x=torch.randn(3, 5, 6)), r"^x must"),
        (dict(x=torch.ones(2, 3, 5, 6, dtype=torch.int64)), r"^x must"),
        (dict(f=torch.randn(2, 4, 5)), r"^f must"),
        (dict(f=torch.randn(2, 4, 5, 7)), r"^f must be \(B, D, H, W\)"),
        (dict(f=torch.randn(1, 4, 5, 6)), r"^f must be \(B, D, H, W\)"),
        (dict(f=torch.randn(2, 4, 5, 6, dtype=torch.float64)), r"^f must have x's dtype"),
        (dict(sigma=0.0), r"^sigma must be finite and > 0"),
        (dict(sigma=-1.0), r"^sigma must be finite and > 0"),
        (dict(sigma=math.inf), r"^sigma must be finite and > 0"),
        (dict(sigma=math.nan), r"^sigma must be finite and > 0"),
        (dict(sigma=torch.tensor([1.0])), r"^sigma must be a float or a 0-dim"),
        (dict(sigma=torch.tensor(1)), r"^sigma must be a float or a 0-dim"),
        (dict(sigma="1"), r"^sigma must be a float"),
        (dict(radius=-1), r"^radius must be"),
        (dict(radius=1.5), r"^radius must be"),
        (dict(radius=True), r"^radius must be"),
        (dict(radius=2**63), r"^radius must be at most 2\*\*63 - 1"),  # was OverflowError or RuntimeError
        (dict(radius=10**30), r"^radius must be at most 2\*\*63 - 1"),
        (dict(key_mask=torch.ones(2, 5, 6)), r"^key_mask must be a bool"),
        (dict(key_mask=torch.ones(2, 6, 5, dtype=torch.bool)), r"^key_mask must be \(B, H, W\)"),
        (dict(key_mask=torch.ones(5, 6, dtype=torch.bool)), r"^key_mask must be \(B, H, W\)"),
        (dict(backend="fast"), r"^backend must be one of"),
    ],
)
def test_bad_input_names_the_argument(change, match):
    x, f = _inputs()
    args = dict(x=x, f=f, sigma=1.0, radius=2, key_mask=None, backend="auto")
    args.update(change)
    with pytest.raises(ValueError, match=match):
        lam_ops.local_aggregate(**args)


def test_named_backend_that_cannot_run_says_why():
    x, f = _inputs()
    with pytest.raises(RuntimeError, match=r"backend 'cuda' cannot run this input: .+"):
        lam_ops.local_aggregate(x, f, 1.0, backend="cuda")
    if "cpp" in lam_ops.available_backends("cpu"):
        with pytest.raises(RuntimeError, match=r"backend 'cpp' cannot run this input: .*torch.bfloat16"):
            lam_ops.local_aggregate(x.bfloat16(), f.bfloat16(), 1.0, backend="cpp")


def test_available_backends():
    cpu = lam_ops.available_backends("cpu")
    assert "reference" in cpu and "cuda" not in cpu
    if not torch.cuda.is_available():
        assert lam_ops.available_backends("cuda") == []


def test_auto_picks_a_fused_kernel_when_built_and_falls_back_to_reference():
    from lam_ops.functional import select_backend

    x, f = _inputs()
    sigma = torch.tensor(1.0)
    fused = "cpp" in lam_ops.available_backends("cpu")
    assert select_backend("auto", x, f, sigma, 2, None).name == ("cpp" if fused else "reference")
    # half on the CPU: the fused kernel (in float32), never the dense reference while cpp is built
    assert select_backend("auto", x.bfloat16(), f.bfloat16(), sigma, 2, None).name == ("cpp" if fused else "reference")


def test_sigma_float_and_tensor_agree_and_only_a_tensor_that_requires_grad_gets_one():
    x, f = _inputs()
    a = lam_ops.local_aggregate(x, f, 1.3, 2)
    s = torch.tensor(1.3, requires_grad=True)
    b = lam_ops.local_aggregate(x, f, s, 2)
    torch.testing.assert_close(a, b)
    b.sum().backward()
    assert s.grad is not None and torch.isfinite(s.grad)


def _naive(x, f, sigma, radius, key_mask):
    """The contract's formula as four nested loops: the oracle of the oracle."""
    B, C, H, W = x.shape
    out = torch.zeros_like(x)
    for b in range(B):
        for yj in range(H):
            for xj in range(W):
                logits, values = [], []
                for yi in range(H):
                    for xi in range(W):
                        near = radius is None or (abs(yi - yj) <= radius and abs(xi - xj) <= radius)
                        if near and (key_mask is None or key_mask[b, yi, xi]):
                            d2 = (yi - yj) ** 2 + (xi - xj) ** 2
                            logits.append(f[b, :, yi, xi] @ f[b, :, yj, xj] - d2 / (2 * sigma**2))
                            values.append(x[b, :, yi, xi])
                if logits:
                    a = torch.softmax(torch.stack(logits), 0)
                    out[b, :, yj, xj] = (a[:, None] * torch.stack(values)).sum(0)
    return out


@pytest.mark.parametrize("case", [c for c in EDGE_CASES if c.H * c.W <= 64], ids=str)
def test_reference_matches_the_formula(case):
    x, f, sigma, key_mask = make_inputs(case, torch.float64, requires_grad=False)
    out, lse = reference_forward(x, f, sigma, case.radius, key_mask)
    torch.testing.assert_close(out, _naive(x, f, float(sigma), case.radius, key_mask))
    if key_mask is not None:  # queries with no admissible key in their window: out 0, lse -inf
        admissible = window_mask(case.H, case.W, case.radius, "cpu") & key_mask.flatten(1)[:, None, :]
        empty = ~admissible.any(-1).view_as(lse)
        # the "empty" mask blanks a whole image: its queries are keyless, so this check can fail
        assert empty.any() or case.mask != "empty"
        assert torch.all(lse[empty] == -math.inf) and torch.all(out.permute(0, 2, 3, 1)[empty] == 0)
        assert torch.all(torch.isfinite(lse[~empty]))


def test_reference_gradients_are_zero_not_nan_for_queries_without_keys():
    case = Case(2, 3, 4, 6, 7, 1, "empty")
    x, f, sigma, key_mask = make_inputs(case, torch.float64)
    out = lam_ops.local_aggregate(x, f, sigma, case.radius, key_mask, backend="reference")
    assert torch.all(out[0] == 0)
    grads = torch.autograd.grad(out.square().sum(), (x, f, sigma))
    assert all(torch.isfinite(g).all() for g in grads)
    assert torch.all(grads[0][0] == 0) and torch.all(grads[1][0] == 0)


def test_reference_gradcheck():
    case = Case(1, 2, 3, 4, 5, 1, "random")
    x, f, sigma, key_mask = make_inputs(case, torch.float64)
    fn = lambda x, f, s: lam_ops.local_aggregate(x, f, s, case.radius, key_mask, backend="reference")
    assert torch.autograd.gradcheck(fn, (x, f, sigma))


def test_window_is_clipped_not_shifted():
    # With r = 0 every pixel sees only itself: out == x whatever f and sigma.
    x, f = _inputs()
    torch.testing.assert_close(lam_ops.local_aggregate(x, f, 0.5, 0), x)
    # A radius at least the image size is the global operator, up to the largest one.
    for radius in (6, 2**63 - 1):
        torch.testing.assert_close(lam_ops.local_aggregate(x, f, 2.0, radius), lam_ops.local_aggregate(x, f, 2.0, None))
