"""The CUDA kernels (backend "cuda"): present in every build made where a toolkit is found, and
checked on a GPU against the reference and against the cpp backend on the same inputs. Without a
GPU only the build test runs; the kernels' index math still runs on CPU threads in the ctest
test_cuda_emulated (tests/test_cmake.py)."""

import pytest
import torch
from build_env import cuda_mode, cuda_toolkit
from lam_cases import EDGE_CASES, TOLERANCES, Case, assert_matches_reference, make_inputs, run_with_grads, tolerance_for

import lam_ops
from lam_ops.backends import BACKENDS
from lam_ops.backends.extension import _IMPORT_ERROR, OPS

_GPU_UNAVAILABLE = BACKENDS["cuda"].unavailable("cuda")
requires_gpu = pytest.mark.skipif(_GPU_UNAVAILABLE is not None, reason=f"backend cuda cannot run: {_GPU_UNAVAILABLE}")

# More than one key tile and channel chunk per block (C, D > 32), several blocks per image.
LARGER_CASES = [Case(2, 35, 40, 19, 23, 3, "random"), Case(1, 5, 8, 33, 29, None, "sparse")]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def test_extension_has_cuda_kernels_when_a_toolkit_is_found():
    """Fails (not skips) when a toolkit is there and LAM_OPS_CUDA != 0, but the build lacks CUDA."""
    home, mode = cuda_toolkit(), cuda_mode()
    if mode == "0" or home is None:
        pytest.skip(f"a CPU-only build is expected here (CUDA toolkit: {home}, LAM_OPS_CUDA={mode})")
    if _IMPORT_ERROR is not None:
        pytest.skip(f"lam_ops._C is not built: {_IMPORT_ERROR}")
    registered = set(torch._C._dispatch_get_all_op_names())
    assert set(OPS) <= registered, f"lam_ops._C did not register {sorted(set(OPS) - registered)}"
    missing = [name for name in OPS if not torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA")]
    assert not missing, (
        f"lam_ops._C has no CUDA kernel for {missing}, although a CUDA toolkit is at {home} and "
        f"LAM_OPS_CUDA={mode}: rebuild (pip install -e .), or set LAM_OPS_CUDA=0 for a CPU-only build"
    )


@requires_gpu
@pytest.mark.parametrize(
    "case, dtype",
    [(c, d) for c in EDGE_CASES for d in DTYPES] + [(c, d) for c in LARGER_CASES for d in DTYPES[:2]],
    ids=str,
)
def test_matches_reference(case, dtype):
    """Half inputs only on the small cases: with C, D ~ 40 the rounding of the inputs alone (not
    the kernel) exceeds the bfloat16 tolerance of the reference comparison; see the next test."""
    assert_matches_reference(case, "cuda", dtype, device="cuda")


# The kernel's own error on half inputs (float32 accumulation, out and gradients rounded once);
# float64 on the same rounded inputs needs atol = rtol of 3.2e-4 (float16) and 3.1e-3 (bfloat16)
# when the kernel is emulated by the cpp backend in float32: a 5x margin.
HALF_TOLERANCES = {torch.float16: dict(atol=2e-3, rtol=2e-3), torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2)}


@requires_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", EDGE_CASES + LARGER_CASES, ids=str)
def test_half_matches_cpp_on_the_same_values(case, dtype):
    x, f, sigma, key_mask = make_inputs(case, dtype, "cuda", requires_grad=False)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(dtype).cuda()
    out, lse = torch.ops.lam_ops.forward(x, f, sigma, case.radius, key_mask)
    got = dict(zip(("out", "lse"), (out, lse), strict=True))
    got.update(
        zip(
            ("dx", "df", "dsigma"),
            torch.ops.lam_ops.backward(g, x, f, sigma, case.radius, key_mask, out, lse),
            strict=True,
        )
    )
    cpu = lambda t: None if t is None else t.cpu().double()
    x, f, sigma, key_mask, g = map(cpu, (x, f, sigma, key_mask, g))
    key_mask = None if key_mask is None else key_mask.bool()
    want = dict(zip(("out", "lse"), torch.ops.lam_ops.forward(x, f, sigma, case.radius, key_mask), strict=True))
    # Delta_j = g_j . out_j from the same rounded out as the kernel's.
    want.update(
        zip(
            ("dx", "df", "dsigma"),
            torch.ops.lam_ops.backward(g, x, f, sigma, case.radius, key_mask, cpu(out), want["lse"]),
            strict=True,
        )
    )
    tol = HALF_TOLERANCES[dtype]
    for name, w in want.items():
        t = tolerance_for(name, w, tol)
        torch.testing.assert_close(cpu(got[name]), w, **t, msg=lambda m, name=name: f"{case} {name}: {m}")


@requires_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", EDGE_CASES + LARGER_CASES, ids=str)
def test_matches_cpp(case, dtype):
    """The same math (lam/math.h) in another order: agreement to rounding."""
    got = run_with_grads(case, "cuda", dtype, "cuda")
    want = run_with_grads(case, "cpp", dtype, "cpu")
    tol = dict(atol=1e-12, rtol=1e-10) if dtype == torch.float64 else TOLERANCES[torch.float32]
    for name, w in want.items():
        t = tolerance_for(name, w, tol)
        torch.testing.assert_close(got[name].cpu(), w, **t, msg=lambda m, name=name: f"{case} {name}: {m}")


@requires_gpu
@pytest.mark.parametrize(
    "case", [Case(2, 3, 4, 5, 6, 1, "sparse"), Case(1, 2, 3, 4, 5, None, "random"), Case(1, 3, 2, 9, 10, 2)], ids=str
)
def test_gradcheck(case):
    x, f, sigma, key_mask = make_inputs(case, torch.float64, "cuda")
    fn = lambda x, f, sigma: lam_ops.local_aggregate(x, f, sigma, case.radius, key_mask, backend="cuda")
    assert torch.autograd.gradcheck(fn, (x, f, sigma))


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bitwise_deterministic(dtype):
    for case in LARGER_CASES:
        a, b = run_with_grads(case, "cuda", dtype, "cuda"), run_with_grads(case, "cuda", dtype, "cuda")
        for name in a:
            assert torch.equal(a[name], b[name]), f"{case} {name}"


@requires_gpu
def test_no_host_synchronisation():
    """sigma is read on the device: the operators never wait for the GPU."""
    x, f, sigma, key_mask = make_inputs(LARGER_CASES[0], torch.float32, "cuda", requires_grad=False)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    xg = x.detach().clone().requires_grad_()
    try:
        out, lse = torch.ops.lam_ops.forward(x, f, sigma, 3, key_mask)
        torch.ops.lam_ops.backward(torch.ones_like(out), x, f, sigma, 3, key_mask, out, lse)
        # and through the public API: sigma as a tensor (checked on the device) and as a float
        for s in (sigma, 1.5):
            lam_ops.local_aggregate(xg, f, s, 3, key_mask, backend="cuda").sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@requires_gpu
def test_rejects_sigma_on_another_device():
    x, f, _, _ = make_inputs(Case(1, 2, 3, 4, 5, 1), torch.float32, "cuda", requires_grad=False)
    with pytest.raises(RuntimeError, match="sigma"):
        torch.ops.lam_ops.forward(x, f, torch.tensor(1.0), 1, None)


@requires_gpu
def test_operators_pass_opcheck():
    """torch.compile's view of the CUDA operators: schema, fake kernels, autograd registration and
    AOT dispatch with dynamic shapes, on CUDA tensors."""
    x, f, sigma, key_mask = make_inputs(Case(1, 3, 4, 5, 6, 1, "random"), torch.float32, "cuda")
    out, lse = torch.ops.lam_ops.forward(x, f, sigma, 1, key_mask)
    torch.library.opcheck(torch.ops.lam_ops.forward, (x, f, sigma, 1, key_mask))
    args = (torch.randn_like(out), x.detach(), f.detach(), sigma.detach(), 1, key_mask, out.detach(), lse)
    torch.library.opcheck(torch.ops.lam_ops.backward, args)


@requires_gpu
@pytest.mark.parametrize("shape", [(0, 3, 4, 5, 6), (2, 3, 4, 0, 6), (2, 3, 4, 5, 0), (2, 0, 4, 5, 6), (2, 3, 0, 5, 6)])
def test_empty_sizes(shape):
    B, C, D, H, W = shape
    x = torch.randn(B, C, H, W, device="cuda", requires_grad=True)
    f = torch.randn(B, D, H, W, device="cuda", requires_grad=True)
    sigma = torch.tensor(1.5, device="cuda", requires_grad=True)
    out, lse = lam_ops.local_aggregate_with_lse(x, f, sigma, 1, backend="cuda")
    want, want_lse = lam_ops.local_aggregate_with_lse(
        x.detach().cpu().double(), f.detach().cpu().double(), 1.5, 1, backend="reference"
    )
    torch.testing.assert_close(out.cpu().double(), want, **TOLERANCES[torch.float32])
    torch.testing.assert_close(lse.cpu().double(), want_lse, **TOLERANCES[torch.float32])
    dx, df, dsigma = torch.autograd.grad((out * torch.randn_like(out)).sum(), (x, f, sigma))
    assert dx.shape == x.shape and df.shape == f.shape and torch.isfinite(dsigma)


@requires_gpu
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_masked_nonfinite_keys_never_influence_anything(value):
    x, f, sigma, _ = make_inputs(Case(1, 2, 3, 9, 9, 2), torch.float32, "cuda", requires_grad=False)
    key_mask = torch.ones(1, 9, 9, dtype=torch.bool, device="cuda")
    key_mask[0, 4, 0] = False
    runs = []
    for planted in (False, True):
        xv = x.clone()
        if planted:
            xv[0, :, 4, 0] = value
        out, lse = torch.ops.lam_ops.forward(xv, f, sigma, 2, key_mask)
        runs.append((out, lse, *torch.ops.lam_ops.backward(torch.ones_like(out), xv, f, sigma, 2, key_mask, out, lse)))
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


@requires_gpu
@pytest.mark.parametrize("sigma", [1e-20, 1e-30, 1e19, 3e38])
def test_extreme_sigma(sigma):
    x, f, s, _ = make_inputs(Case(1, 3, 4, 5, 6, 2, sigma=sigma), torch.float32, "cuda")
    out = lam_ops.local_aggregate(x, f, s, 2, backend="cuda")
    grads = torch.autograd.grad(out.sum(), (x, f, s))
    assert all(torch.isfinite(t).all() for t in (out, *grads))
    if sigma < 1:
        assert torch.equal(out, x.detach()) and grads[2] == 0


@requires_gpu
def test_second_derivatives_raise_naming_the_reference():
    x, f, sigma, _ = make_inputs(Case(1, 2, 3, 4, 5, 1), torch.float32, "cuda")
    (dx,) = torch.autograd.grad(
        lam_ops.local_aggregate(x, f, sigma, 1, backend="cuda").pow(2).sum(), (x,), create_graph=True
    )
    with pytest.raises(RuntimeError, match="reference"):
        torch.autograd.grad(dx.sum(), (f,))


_DIGEST = """
import hashlib, sys, torch
sys.path.insert(0, sys.argv[1])
from lam_cases import Case, run_with_grads
h = hashlib.sha256()
for dtype in (torch.float32, torch.bfloat16):
    for name, t in run_with_grads(Case(2, 21, 64, 33, 29, 6, "random"), sys.argv[2], dtype, "cuda").items():
        h.update(t.detach().float().cpu().numpy().tobytes())
print(h.hexdigest())
"""


@requires_gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_bitwise_deterministic_across_processes(backend):
    """docs/operator.md: bitwise equal results across processes on one machine and build (triton's
    configuration is a fixed rule, not timed)."""
    import os
    import subprocess
    import sys

    if BACKENDS[backend].unavailable("cuda") is not None:
        pytest.skip(BACKENDS[backend].unavailable("cuda"))
    tests = os.path.dirname(__file__)
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "LAM_OPS_TRITON_AUTOTUNE")}
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(tests), env.get("PYTHONPATH", "")])
    digests = [
        subprocess.run(
            [sys.executable, "-c", _DIGEST, tests, backend],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        ).stdout
        for _ in range(2)
    ]
    assert digests[0] == digests[1] and len(digests[0].strip()) == 64


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_runs_on_xs_device_not_the_current_one(backend):
    if BACKENDS[backend].unavailable("cuda") is not None:
        pytest.skip(BACKENDS[backend].unavailable("cuda"))
    case = Case(1, 3, 4, 9, 10, 2, "random")
    want = run_with_grads(case, backend, torch.float32, "cuda:0")
    with torch.cuda.device(0):
        got = run_with_grads(case, backend, torch.float32, "cuda:1")
    for name in want:
        assert got[name].device == torch.device("cuda:1")
        assert torch.equal(got[name].cpu(), want[name].cpu()), name
