"""Inputs and comparisons shared by the tests of every LAM backend against the reference
(tests/) and by the user's check of an install (`python -m lam_ops.check`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lam_ops.functional import local_aggregate_with_lse


@dataclass(frozen=True)
class Case:
    B: int
    C: int
    D: int
    H: int
    W: int
    radius: int | None
    mask: str | None = None  # None, "random", "sparse" (some queries see no key), "empty" (a whole image)
    sigma: float = 1.5
    contiguous: bool = True

    def __str__(self):
        return f"B{self.B}C{self.C}D{self.D}_{self.H}x{self.W}_r{self.radius}_{self.mask}_s{self.sigma}" + (
            "" if self.contiguous else "_strided"
        )


def make_inputs(case: Case, dtype=torch.float32, device="cpu", seed=0, requires_grad=True):
    """(x, f, sigma, key_mask); f is scaled so that the softmax is neither flat nor one-hot."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(case.B, case.C, case.H, case.W, generator=g, dtype=torch.float64)
    f = torch.randn(case.B, case.D, case.H, case.W, generator=g, dtype=torch.float64) / case.D**0.25
    if not case.contiguous:  # channels-last storage: same values, other strides
        x = x.to(memory_format=torch.channels_last)
        f = f.to(memory_format=torch.channels_last)
    x = x.to(dtype=dtype, device=device).requires_grad_(requires_grad)
    f = f.to(dtype=dtype, device=device).requires_grad_(requires_grad)
    sigma = torch.tensor(case.sigma, dtype=torch.float64 if dtype == torch.float64 else torch.float32, device=device)
    sigma.requires_grad_(requires_grad)
    key_mask = None
    if case.mask is not None:
        p = {"random": 0.6, "sparse": 0.08, "empty": 0.5}[case.mask]
        key_mask = torch.rand(case.B, case.H, case.W, generator=g) < p
        if case.mask == "empty":
            key_mask[0] = False
        key_mask = key_mask.to(device)
    return x, f, sigma, key_mask


def run_with_grads(case: Case, backend: str, dtype=torch.float32, device="cpu", seed=0):
    """out, lse and the gradients (dx, df, dsigma) of a fixed random projection of out."""
    x, f, sigma, key_mask = make_inputs(case, dtype, device, seed)
    out, lse = local_aggregate_with_lse(x, f, sigma, case.radius, key_mask, backend=backend)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    dx, df, dsigma = torch.autograd.grad(out, (x, f, sigma), g.to(out.dtype).to(device))
    return {"out": out, "lse": lse, "dx": dx, "df": df, "dsigma": dsigma}


TOLERANCES = {
    torch.float64: dict(atol=1e-10, rtol=1e-9),
    torch.float32: dict(atol=2e-5, rtol=2e-4),
    torch.float16: dict(atol=2e-2, rtol=2e-2),
    torch.bfloat16: dict(atol=6e-2, rtol=5e-2),
}


def tolerance_for(name: str, want: torch.Tensor, tol: dict) -> dict:
    """The tolerance of result `name` given the expected value: dsigma sums over every pair, so
    its absolute tolerance scales with its magnitude; the other results use `tol` as it is."""
    if name != "dsigma":
        return tol
    return dict(tol, atol=tol["atol"] * max(1.0, float(want.detach().abs().max())))


def assert_matches_reference(case: Case, backend: str, dtype=torch.float32, device="cpu", seed=0, tol=None):
    """Compares values, lse and every gradient of `backend` with the reference backend's, computed
    in float64 on the same inputs (so that the tolerance measures the backend's error alone)."""
    got = run_with_grads(case, backend, dtype, device, seed)
    want = run_with_grads(case, "reference", torch.float64, "cpu", seed)
    tol = tol or TOLERANCES[dtype]
    for name, w in want.items():
        g = got[name].detach().cpu().to(torch.float64)
        t = tolerance_for(name, w, tol)
        torch.testing.assert_close(
            g, w.detach(), **t, equal_nan=False, msg=lambda m, name=name: f"{case} {backend} {name}: {m}"
        )
