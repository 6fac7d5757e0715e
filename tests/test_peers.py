"""The benchmark peers (benchmarks/peers.py) compute lam_ops' operator: values and gradients against
the reference backend, so that bench_lam compares implementations of the same thing."""

import sys
from pathlib import Path

import pytest
import torch
from lam_cases import EDGE_CASES, TOLERANCES, Case, make_inputs, run_with_grads, tolerance_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import peers  # noqa: E402

TRAINABLE = [name for name, p in peers.PEERS.items() if p.trainable]


def peer_with_grads(name, case, dtype, seed=0):
    """out and (dx, df, dsigma) for the same inputs and output gradient as lam_cases.run_with_grads."""
    x, f, sigma, key_mask = make_inputs(case, dtype, seed=seed)
    out = peers.PEERS[name].fn(x, f, sigma, case.radius, key_mask)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    dx, df, dsigma = torch.autograd.grad(out, (x, f, sigma), g.to(out.dtype))
    return {"out": out, "dx": dx, "df": df, "dsigma": dsigma}


def assert_close_to_reference(got, case, dtype):
    want = run_with_grads(case, "reference", torch.float64)
    tol = TOLERANCES[dtype]
    for name, value in got.items():
        w = want[name].detach()
        t = tolerance_for(name, w, tol)
        torch.testing.assert_close(
            value.detach().to(torch.float64), w, **t, msg=lambda m, name=name: f"{case} {name}: {m}"
        )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("case", EDGE_CASES, ids=str)
@pytest.mark.parametrize("name", TRAINABLE)
def test_trainable_peer_matches_reference(name, case, dtype):
    assert_close_to_reference(peer_with_grads(name, case, dtype), case, dtype)


def test_offset_loop_gradcheck():
    # its backward is written by hand
    for case in (Case(2, 3, 4, 5, 6, 1, "sparse"), Case(1, 2, 3, 4, 5, None, "random")):
        x, f, sigma, key_mask = make_inputs(case, torch.float64)
        fn = lambda x, f, sigma, r=case.radius, m=key_mask: peers.offset_loop(x, f, sigma, r, m)
        assert torch.autograd.gradcheck(fn, (x, f, sigma))


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.skipif(p.unavailable() is not None, reason=f"{n}: {p.unavailable()}"))
        for n, p in peers.PEERS.items()
    ],
)
def test_python_float_sigma(name):
    case = Case(1, 3, 4, 6, 7, 2)
    x, f, _, _ = make_inputs(case, requires_grad=False)
    want = run_with_grads(case, "reference", torch.float64)["out"]
    torch.testing.assert_close(peers.PEERS[name].fn(x, f, 1.5, 2).double(), want, **TOLERANCES[torch.float32])


# FlexAttention compiles once per shape (seconds each): borders, r = 0, a window larger than the
# image, radius None, key masks with key-less queries and an empty image, odd sizes, 1x1.
FLEX_CASES = [EDGE_CASES[i] for i in (0, 3, 5, 6, 7, 9, 10)]


@pytest.mark.parametrize("case", FLEX_CASES, ids=str)
def test_flex_forward_matches_reference(case):
    # FlexAttention on CPU runs float32 (and half) only
    x, f, sigma, key_mask = make_inputs(case, torch.float32, requires_grad=False)
    out = peers.flex(x, f, sigma, case.radius, key_mask)
    want = run_with_grads(case, "reference", torch.float64)["out"]
    torch.testing.assert_close(out.double(), want, **TOLERANCES[torch.float32])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention has no backward on CPU; needs a CUDA device")
@pytest.mark.parametrize("case", FLEX_CASES, ids=str)
def test_flex_gradients_match_reference_on_cuda(case):
    x, f, sigma, key_mask = make_inputs(case, torch.float32, device="cuda")
    out = peers.flex(x, f, sigma, case.radius, key_mask)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    dx, df, dsigma = torch.autograd.grad(out, (x, f, sigma), g.to(out).cuda())
    got = {k: v.cpu() for k, v in dict(out=out, dx=dx, df=df, dsigma=dsigma).items()}
    assert_close_to_reference(got, case, torch.float32)


NATTEN_MISSING = peers.natten_unavailable()
# NATTEN needs a window of at least 3 x 3 pixels: the edge cases with r >= 1 on images >= 2 x 2.
NATTEN_CASES = [c for c in FLEX_CASES if (c.radius is None or c.radius >= 1) and min(c.H, c.W) >= 2]


@pytest.mark.skipif(NATTEN_MISSING is not None, reason=f"natten: {NATTEN_MISSING}")
@pytest.mark.parametrize("case", NATTEN_CASES + [Case(2, 21, 16, 11, 13, 4, "random")], ids=str)
def test_natten_forward_matches_reference(case):
    x, f, sigma, key_mask = make_inputs(case, torch.float32, requires_grad=False)
    out = peers.natten_peer(x, f, sigma, case.radius, key_mask)
    want = run_with_grads(case, "reference", torch.float64)["out"]
    torch.testing.assert_close(out.double(), want, **TOLERANCES[torch.float32])


def test_flex_backward_is_still_refused_on_cpu():
    # bench_lam declares flex and natten forward-only on CPU (peers.Peer.no_backward_on) rather
    # than probing, because a failed compiled backward leaves torch.compile on the unfused path.
    from torch.nn.attention.flex_attention import flex_attention

    assert all("cpu" in peers.PEERS[n].no_backward_on for n in ("flex", "natten"))
    q = torch.randn(1, 1, 8, 4, requires_grad=True)
    with pytest.raises(NotImplementedError, match="backward on CPU"):
        flex_attention(q, q, q).sum().backward()
