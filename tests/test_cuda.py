"""The CUDA kernels (backend "cuda"): present in every build made where a toolkit is found, and
checked on a GPU against the reference and against the cpp backend on the same inputs. Without a
GPU only the build test runs; the kernels' index math still runs on CPU threads in the ctest
test_cuda_emulated (tests/test_cmake.py)."""

import pytest
import torch

import lam_ops
from build_env import cuda_mode, cuda_toolkit
from lam_cases import EDGE_CASES, TOLERANCES, Case, assert_matches_reference, make_inputs, run_with_grads, tolerance_for
from lam_ops.backends import BACKENDS
from lam_ops.backends.compiled import _IMPORT_ERROR, OPS

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
    got = dict(zip(("out", "lse"), (out, lse)))
    got.update(zip(("dx", "df", "dsigma"), torch.ops.lam_ops.backward(g, x, f, sigma, case.radius, key_mask, out, lse)))
    cpu = lambda t: None if t is None else t.cpu().double()
    x, f, sigma, key_mask, g = map(cpu, (x, f, sigma, key_mask, g))
    key_mask = None if key_mask is None else key_mask.bool()
    want = dict(zip(("out", "lse"), torch.ops.lam_ops.forward(x, f, sigma, case.radius, key_mask)))
    # Delta_j = g_j . out_j from the same rounded out as the kernel's.
    want.update(zip(("dx", "df", "dsigma"), torch.ops.lam_ops.backward(g, x, f, sigma, case.radius, key_mask, cpu(out), want["lse"])))
    tol = HALF_TOLERANCES[dtype]
    for name, w in want.items():
        t = tolerance_for(name, w, tol)
        torch.testing.assert_close(cpu(got[name]), w, **t, msg=lambda m: f"{case} {name}: {m}")


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
        torch.testing.assert_close(got[name].cpu(), w, **t, msg=lambda m: f"{case} {name}: {m}")


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
