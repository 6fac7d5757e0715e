"""Property-based tests of the operator (hypothesis): random sizes (zeros included), radii, key
masks, sigma over many decades, non-finite entries and memory layouts; every CPU backend against
the reference, values and gradients, and float64 gradcheck on a sample.

The default profile (tests/conftest.py) runs a bounded, derandomised set of examples;
HYPOTHESIS_PROFILE=long searches much further.
"""

import math
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lam_cases import TOLERANCES, tolerance_for

import lam_ops
from lam_ops import local_aggregate_with_lse

FUSED_CPU = [b for b in lam_ops.available_backends("cpu") if b != "reference"]
pytestmark = pytest.mark.skipif(not FUSED_CPU, reason="no fused CPU backend is built (pip install -e .)")

EPS = {torch.float32: 2.0**-23, torch.float64: 2.0**-52}

# sigma over many decades, and the extremes of each dtype (subnormal, largest finite)
EXTREME_SIGMAS = {
    torch.float32: [1e-45, 1e-38, 1e-20, 1e20, 3.4e38],
    torch.float64: [5e-324, 1e-300, 1e-160, 1e160, 1.7e308],
}


@dataclass
class Example:
    x: torch.Tensor
    f: torch.Tensor
    sigma: torch.Tensor
    radius: int | None
    key_mask: torch.Tensor | None
    finite: bool

    def __repr__(self):
        km = None if self.key_mask is None else f"{int(self.key_mask.sum())}/{self.key_mask.numel()} keys"
        return (
            f"Example(x={tuple(self.x.shape)} {self.x.dtype} strides {self.x.stride()}, D={self.f.shape[1]}, "
            f"sigma={self.sigma.item():.3g} {self.sigma.dtype}, radius={self.radius}, key_mask={km}, "
            f"finite={self.finite})"
        )


def _layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # every other channel of a tensor twice as deep: same values, odd strides
        wide = torch.repeat_interleave(t, 2, dim=1)
        return wide[:, ::2]
    return t


@st.composite
def examples(draw, dtypes=(torch.float32, torch.float64), max_side=7, allow_nonfinite=True):
    dtype = draw(st.sampled_from(dtypes))
    B, C, D = draw(st.integers(0, 2)), draw(st.integers(0, 4)), draw(st.integers(0, 5))
    H, W = draw(st.integers(0, max_side)), draw(st.integers(0, max_side))
    radius = draw(st.one_of(st.none(), st.just(0), st.integers(1, 3), st.integers(max_side, 3 * max_side)))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    # f on a grid of quarters: dot products are exact in any order, so the backends' logits agree
    # to one rounding even where a tiny sigma makes them huge
    f = torch.randint(-6, 7, (B, D, H, W), generator=g).to(torch.float64) / 4
    finite = True
    if allow_nonfinite and draw(st.booleans()) and B * H * W:
        finite = False
        for _ in range(draw(st.integers(1, 3))):
            t = draw(st.sampled_from([t for t in (x, f) if t.shape[1]] or [x]))
            if t.shape[1]:
                b, c = draw(st.integers(0, B - 1)), draw(st.integers(0, t.shape[1] - 1))
                i, j = draw(st.integers(0, H - 1)), draw(st.integers(0, W - 1))
                t[b, c, i, j] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    mask = draw(st.sampled_from([None, "full", "empty", "random"]))
    key_mask = None
    if mask == "full":
        key_mask = torch.ones(B, H, W, dtype=torch.bool)
    elif mask == "empty":
        key_mask = torch.zeros(B, H, W, dtype=torch.bool)
    elif mask == "random":
        key_mask = torch.rand(B, H, W, generator=g) < draw(st.sampled_from([0.1, 0.5, 0.9]))
    if draw(st.booleans()):
        sigma = draw(st.sampled_from(EXTREME_SIGMAS[dtype]))
    else:
        sigma = 10.0 ** draw(st.floats(-20, 20))
    # sigma may be float32 with float64 inputs (used in the accumulation type)
    sigma_dtype = draw(st.sampled_from([dtype, torch.float32])) if sigma < 3e38 and sigma > 1e-38 else dtype
    layout = draw(st.sampled_from(["contiguous", "channels_last", "strided"]))
    x, f = _layout(x.to(dtype), layout), _layout(f.to(dtype), layout)
    return Example(x, f, torch.tensor(sigma, dtype=sigma_dtype), radius, key_mask, finite)


def _conditioning(lse: torch.Tensor, dtype) -> float:
    """The relative error of the weights that the rounding of the logits allows: logits are rounded
    to eps |logit|, and the keys that carry weight have logits within ~100 of their query's lse, so
    a tiny sigma (logits of 1e30) legitimately leaves the backends only a few significant bits where
    a query's own pixel is not admissible. About 4e-5 for ordinary float32 inputs: below TOLERANCES."""
    finite = lse.detach()[torch.isfinite(lse)]
    scale = float(finite.abs().max()) if finite.numel() else 0.0
    return 4 * EPS[dtype] * (scale + 100)


def _assert_close(got: torch.Tensor, want: torch.Tensor, tol: dict, what: str):
    got, want = got.detach().double(), want.detach().double()
    # NaN and +-inf are not told apart (the backends order additions differently: inf + -inf and a
    # weight of 0 * inf may come out as either), but finite must stay finite and non-finite not.
    assert torch.equal(torch.isfinite(got), torch.isfinite(want)), f"{what}: different non-finite entries"
    ok = torch.isfinite(want)
    torch.testing.assert_close(got[ok], want[ok], **tol, msg=lambda m: f"{what}: {m}")


def _tolerance(name: str, want: torch.Tensor, dtype, kappa: float) -> dict:
    base = tolerance_for(name, want, TOLERANCES[dtype])
    scale = float(want.detach()[torch.isfinite(want)].abs().max()) if torch.isfinite(want).any() else 0.0
    return dict(atol=max(base["atol"], kappa * scale), rtol=max(base["rtol"], kappa))


def _run(ex: Example, backend: str, grads: bool):
    x, f = ex.x.detach().clone().requires_grad_(grads), ex.f.detach().clone().requires_grad_(grads)
    sigma = ex.sigma.clone().requires_grad_(grads)
    out, lse = local_aggregate_with_lse(x, f, sigma, ex.radius, ex.key_mask, backend=backend)
    res = {"out": out, "lse": lse}
    if grads:
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=out.dtype)
        res.update(zip(("dx", "df", "dsigma"), torch.autograd.grad(out, (x, f, sigma), g), strict=True))
    return res


@given(examples())
def test_values_match_the_reference(ex):
    want = _run(ex, "reference", grads=False)
    kappa = _conditioning(want["lse"], ex.x.dtype)
    for backend in FUSED_CPU:
        got = _run(ex, backend, grads=False)
        for name in ("out", "lse"):
            assert got[name].shape == want[name].shape and got[name].dtype == want[name].dtype
            _assert_close(got[name], want[name], _tolerance(name, want[name], ex.x.dtype, kappa), f"{backend} {name}")


@given(examples(allow_nonfinite=True))
def test_gradients_match_the_reference(ex):
    want = _run(ex, "reference", grads=True)
    kappa = _conditioning(want["lse"], ex.x.dtype)
    for backend in FUSED_CPU:
        got = _run(ex, backend, grads=True)
        for name in ("out", "dx", "df", "dsigma"):
            if name == "dsigma" and ex.sigma.item() < 1e-2:
                # dsigma = sum dS d2 / sigma^3: where the weights do not underflow (a query whose own
                # pixel is masked, its nearest keys equidistant) the sum is a rounding residual of a
                # true 0, times 1 / sigma^3 > 1e6: no backend has digits to compare, only finiteness.
                assert torch.isfinite(got[name]) == torch.isfinite(want[name]), f"{backend} dsigma"
                continue
            _assert_close(got[name], want[name], _tolerance(name, want[name], ex.x.dtype, kappa), f"{backend} {name}")


@given(examples(allow_nonfinite=True))
def test_masked_and_outside_keys_never_reach_an_output(ex):
    """Poisoning every key that no query may use (masked out) changes no output, in any backend:
    its x nowhere; its f only its own query's output, so the keys' outputs are compared."""
    if ex.key_mask is None:
        return
    keep = ex.key_mask[:, None]
    poisoned = torch.where(keep, ex.x, math.nan), torch.where(keep, ex.f, math.inf)
    for backend in FUSED_CPU + ["reference"]:
        a = local_aggregate_with_lse(ex.x, ex.f, ex.sigma, ex.radius, ex.key_mask, backend=backend)
        b = local_aggregate_with_lse(*poisoned, ex.sigma, ex.radius, ex.key_mask, backend=backend)
        for name, u, v in zip(("out", "lse"), a, b, strict=True):
            u, v = (t.movedim(1, -1)[ex.key_mask] if name == "out" else t[ex.key_mask] for t in (u, v))
            assert torch.equal(u.isnan(), v.isnan()), f"{backend} {name}: a masked key's NaN reached an output"
            ok = ~u.isnan()  # equal up to the order of the sums (cpp sums such blocks apart)
            torch.testing.assert_close(u[ok], v[ok], **TOLERANCES[ex.x.dtype])


@settings(max_examples=20)
@given(examples(dtypes=(torch.float64,), max_side=4, allow_nonfinite=False))
def test_float64_gradcheck(ex):
    sigma = ex.sigma
    if not (1e-2 < sigma.item() < 1e3) or ex.x.numel() == 0 or sigma.dtype != torch.float64:
        sigma = torch.tensor(1.3, dtype=torch.float64)  # gradcheck's finite differences need a moderate sigma
    # gradcheck refuses the stride-0 dimensions of empty tensors: those get fresh ones
    x, f = (t.detach().clone() if t.numel() else torch.empty(t.shape, dtype=t.dtype) for t in (ex.x, ex.f))
    x, f = x.requires_grad_(), f.requires_grad_()
    for backend in FUSED_CPU:
        fn = lambda x, f, s, backend=backend: local_aggregate_with_lse(x, f, s, ex.radius, ex.key_mask, backend=backend)
        # the lse of a query without keys is -inf (constant): compare the finite outputs only
        finite = lambda x, f, s, fn=fn: tuple(torch.where(torch.isfinite(t), t, 0) for t in fn(x, f, s))
        assert torch.autograd.gradcheck(finite, (x, f, sigma.clone().requires_grad_()), fast_mode=True)
