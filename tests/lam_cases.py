"""Inputs and comparisons shared by the tests of every LAM backend against the reference (the
shared part lives in lam_ops/testing.py, which `python -m lam_ops.check` uses too)."""

import itertools
import math

import torch

from lam_ops.functional import local_aggregate_with_lse
from lam_ops.testing import TOLERANCES, Case, assert_matches_reference, make_inputs, run_with_grads, tolerance_for

__all__ = [
    "EDGE_CASES",
    "NONFINITE_CASES",
    "assert_nonfinite_case_matches_the_contract",
    "TOLERANCES",
    "Case",
    "assert_matches_reference",
    "make_inputs",
    "run_with_grads",
    "tolerance_for",
]

# The edge cases every backend is tested on: borders, r = 0, windows larger than the image, radius None,
# key masks (with queries that see no key), B = 1, odd sizes, non-contiguous inputs.
EDGE_CASES = [
    Case(1, 3, 4, 5, 7, 0),
    Case(2, 3, 4, 6, 5, 1),
    Case(2, 5, 3, 7, 9, 2, "random"),
    Case(1, 2, 8, 4, 4, 10),
    Case(2, 3, 4, 5, 6, None),
    Case(2, 3, 4, 5, 6, None, "random"),
    Case(2, 4, 5, 9, 8, 3, "sparse"),
    Case(2, 3, 4, 6, 7, 2, "empty"),
    Case(1, 21, 16, 11, 13, 4, contiguous=False),
    Case(2, 1, 1, 1, 1, 0),
    Case(1, 3, 2, 1, 9, 2),
    Case(1, 6, 4, 8, 8, 3, sigma=0.7),
]


def contract_oracle(x, f, sigma, radius, key_mask, g) -> dict:
    """out, lse and the gradients of sum(g * out) by the contract's formulas (docs/operator.md, "What
    it computes" and "Gradients"), one query at a time over its admissible keys only, in float64
    IEEE arithmetic: the oracle of non-finite inputs, independent of every backend (slow: tiny
    images only)."""
    x, f, g = (t.detach().cpu().double() for t in (x, f, g))
    s = sigma.detach().cpu().double()
    B, C, H, W = x.shape
    big = torch.finfo(torch.float64).max  # the clamps of the contract's "Extreme sigma"
    coef, dcoef = (-0.5 / (s * s)).clamp(min=-big), (1 / (s * s * s)).clamp(max=big)
    out, dx, df = torch.zeros_like(x), torch.zeros_like(x), torch.zeros_like(f)
    lse = torch.full((B, H, W), -math.inf, dtype=torch.float64)
    dsigma = torch.zeros((), dtype=torch.float64)
    for b, qy, qx in itertools.product(range(B), range(H), range(W)):
        keys = [
            (ky, kx)
            for ky, kx in itertools.product(range(H), range(W))
            if (radius is None or max(abs(ky - qy), abs(kx - qx)) <= radius)
            and (key_mask is None or key_mask[b, ky, kx])
        ]
        ky, kx = (torch.tensor([k[n] for k in keys], dtype=torch.long) for n in (0, 1))
        d2 = ((ky - qy) ** 2 + (kx - qx) ** 2).double()
        fq, fk, xk, gq = f[b, :, qy, qx], f[b][:, ky, kx], x[b][:, ky, kx], g[b, :, qy, qx]
        logit = (fk * fq[:, None]).sum(0) + d2 * coef
        if not keys or bool((logit == -math.inf).all()):
            continue  # a query with no key (or no weight): out 0, lse -inf, no gradient
        m = logit.max()
        e = torch.exp(logit - m)
        A = e / e.sum()
        out[b, :, qy, qx] = (A * xk).sum(1)
        lse[b, qy, qx] = m + torch.log(e.sum())
        dS = A * ((gq[:, None] * xk).sum(0) - (gq * out[b, :, qy, qx]).sum())
        dx[b][:, ky, kx] += A * gq[:, None]
        df[b, :, qy, qx] += (dS * fk).sum(1)
        df[b][:, ky, kx] += dS * fq[:, None]
        dsigma += (dS * d2).sum() * dcoef
    return {"out": out, "lse": lse, "dx": dx, "df": df, "dsigma": dsigma}


# A NaN or an infinity planted in one channel of x or f, at a pixel that is a key of its neighbours'
# windows, or masked out (its only role then is its own query's: f); a window of radius 1 (the
# pixel outside most windows) or the whole image; sigma 1.5, or so small (1e-200) that every pair at
# a distance has weight 0 (logit -inf from d2 = 2 on), and a query next to the planted pixel, whose
# own pixel and nearest keys are masked out, has no weight at all (zero gradients, not 0 * NaN).
NONFINITE_CASES = [
    dict(tensor=t, value=v, masked=m, radius=r, sigma=s)
    for t, v, m, r, s in itertools.product(
        ("x", "f"), (math.nan, math.inf, -math.inf), (False, True), (1, None), (1.5, 1e-200)
    )
]


def nonfinite_case_id(case: dict) -> str:
    masked = "_masked" if case["masked"] else ""
    return f"{case['tensor']}={case['value']}{masked}_r{case['radius']}_s{case['sigma']:g}"


def assert_nonfinite_case_matches_the_contract(case: dict, backend: str, device="cpu"):
    """Runs `backend` in float64 on a 1 x 2 x 3 x 5 x 6 input with a non-finite entry planted at
    (2, 3), and checks out, lse, dx, df and dsigma against contract_oracle: the same entries
    non-finite (NaN and infinities are not told apart: the order of a sum decides between inf and
    NaN), the finite ones equal to rounding (at sigma 1e-200: out and lse)."""
    inputs = make_inputs(Case(1, 2, 3, 5, 6, case["radius"], sigma=case["sigma"]), torch.float64, device, 0, False)
    x, f, sigma, _ = inputs
    key_mask = torch.ones(1, 5, 6, dtype=torch.bool, device=device)
    key_mask[0, 4, 0] = False  # a key mask in every case: masked keys are left out, whatever their values
    if case["sigma"] < 1e-100:  # query (1, 2), diagonal to (2, 3), without weight: no key at d2 < 2
        key_mask[0, 1, 1:4] = key_mask[0, 0:3, 2] = False
    key_mask[0, 2, 3] = not case["masked"]
    (x if case["tensor"] == "x" else f)[0, 1, 2, 3] = case["value"]
    x, f, sigma = (t.requires_grad_() for t in (x, f, sigma))
    out, lse = local_aggregate_with_lse(x, f, sigma, case["radius"], key_mask, backend=backend)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(device)
    got = dict(zip(("dx", "df", "dsigma"), torch.autograd.grad(out, (x, f, sigma), g), strict=True))
    got.update(out=out, lse=lse)
    want = contract_oracle(x, f, sigma, case["radius"], key_mask, g)
    for name, w in want.items():
        r = got[name].detach().cpu().double()
        where = f"{backend} {nonfinite_case_id(case)} {name}"
        assert torch.equal(torch.isfinite(r), torch.isfinite(w)), (
            f"{where}: non-finite where the contract has finite values, or the other way round:\n"
            f"{torch.isfinite(r).int()}\nwanted\n{torch.isfinite(w).int()}"
        )
        if case["sigma"] < 1e-100 and name not in ("out", "lse"):
            # the gradients of a query whose own pixel is masked out keep no digits at this sigma
            # (logits of -1e308 recomputed from lse: the property tests' conditioning)
            continue
        ok = torch.isfinite(w)
        torch.testing.assert_close(
            r[ok], w[ok], **TOLERANCES[torch.float64], msg=lambda m, where=where: f"{where}: {m}"
        )
