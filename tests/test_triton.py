"""The triton backend against the reference: on CPU tensors under the Triton interpreter, and the
same tests on CUDA tensors (plus larger shapes) where a GPU exists.

triton reads TRITON_INTERPRET when it decorates a kernel, its own standard library (tl.sum,
tl.max, ...) included, i.e. at `import triton`: the mode is fixed per process. So the interpreter
runs of this module happen in a subprocess started with TRITON_INTERPRET=1
(test_interpreter_subprocess), which leaves every other test module of this process compiled.
The interpreter runs each program in Python: shapes stay small.
"""

import math
import os
import subprocess
import sys

import pytest
import torch

import lam_ops
from lam_cases import EDGE_CASES, TOLERANCES, Case, assert_matches_reference, make_inputs, run_with_grads
from lam_ops.backends.triton import ops

pytestmark = pytest.mark.skipif(ops._IMPORT_ERROR is not None, reason=f"triton is not installed ({ops._IMPORT_ERROR})")

INTERPRETED = ops._IMPORT_ERROR is None and ops.INTERPRETED
NO_GPU = "needs a CUDA GPU (the interpreter subprocess runs the same test on CPU tensors)"
IN_SUBPROCESS = "runs in the interpreter subprocess (test_interpreter_subprocess)"

# What EDGE_CASES leaves out: the paper's channel counts (C = 21 / 60, D = 3 / 16 / 64, padded in
# registers), a key mask with a global window, and queries on several tiles in both directions.
CHANNEL_CASES = [
    Case(1, 21, 3, 6, 7, 1, "random"),
    Case(1, 60, 64, 5, 9, 3),
    Case(2, 21, 16, 9, 10, None, "sparse"),
    Case(1, 5, 64, 10, 9, 0, "random"),
]
# Shapes the interpreter is too slow for: several tiles of every tile size, windows that span
# tiles, the authors' D = 256.
GPU_CASES = [
    Case(2, 21, 256, 48, 40, 18, "random"),
    Case(1, 60, 256, 33, 47, None),
    Case(2, 21, 64, 64, 64, 6, "sparse", contiguous=False),
    Case(3, 7, 16, 17, 129, 2),
]


def _cuda():
    if INTERPRETED:
        pytest.skip("this process interprets the kernels; CUDA tensors are tested compiled, in a plain run")
    if not torch.cuda.is_available():
        pytest.skip(NO_GPU)
    return "cuda"


@pytest.fixture
def cuda():
    return _cuda()


@pytest.fixture(params=["cpu" if INTERPRETED else "cuda"])
def device(request):
    """CPU tensors in the interpreter subprocess, CUDA tensors in a plain run."""
    return "cpu" if INTERPRETED else _cuda()


def test_interpreter_subprocess():
    if INTERPRETED:
        pytest.skip("this is the interpreter run")
    env = dict(os.environ, TRITON_INTERPRET="1")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
        env=env, cwd=os.path.dirname(os.path.dirname(__file__)), capture_output=True, text=True, timeout=1200,
    )
    assert run.returncode == 0, f"the interpreter run of {__file__} failed:\n{run.stdout[-20000:]}\n{run.stderr[-5000:]}"
    print(run.stdout.strip().splitlines()[-1])


# float64 runs under the interpreter only (TritonBackend.unsupported says why).
FULL_PRECISION = [torch.float32, torch.float64] if INTERPRETED else [torch.float32]


@pytest.mark.parametrize("dtype", FULL_PRECISION, ids=str)
@pytest.mark.parametrize("case", EDGE_CASES + CHANNEL_CASES, ids=str)
def test_matches_reference(case, dtype, device):
    assert_matches_reference(case, "triton", dtype, device)


# bfloat16: Delta_j = g_j . out_j is formed from out as stored (bfloat16, like the operator's output),
# and one ulp of out moves df by up to |g| ulp; the shared bfloat16 atol (6e-2) is a little under
# that on C = 21 (max error 0.076 at |df| <= 5.5, rms 0.009), hence atol 0.1 for bfloat16 here.
HALF_TOLERANCES = {torch.float16: TOLERANCES[torch.float16], torch.bfloat16: dict(TOLERANCES[torch.bfloat16], atol=0.1)}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", EDGE_CASES + CHANNEL_CASES[:1], ids=str)
def test_half_precision_matches_reference(case, dtype, device):
    assert_matches_reference(case, "triton", dtype, device, tol=HALF_TOLERANCES[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", GPU_CASES, ids=str)
def test_large_shapes_match_reference(case, dtype, cuda):
    tol = HALF_TOLERANCES.get(dtype, TOLERANCES[dtype])
    assert_matches_reference(case, "triton", dtype, cuda, tol=tol)


def test_gradcheck(device):
    if device == "cuda":
        pytest.skip("float64 runs under the interpreter only")
    case = Case(1, 2, 3, 4, 5, 1, "sparse")
    x, f, sigma, key_mask = make_inputs(case, torch.float64, device)
    fn = lambda x, f, sigma: lam_ops.local_aggregate(x, f, sigma, case.radius, key_mask, backend="triton")
    # fast_mode checks random projections of the Jacobian: a few interpreted calls, not hundreds.
    assert torch.autograd.gradcheck(fn, (x, f, sigma), fast_mode=True)


def test_queries_without_keys_get_zeros_not_nan(device):
    case = Case(2, 21, 3, 5, 6, 2)
    x, f, sigma, _ = make_inputs(case, device=device)
    key_mask = torch.zeros(2, 5, 6, dtype=torch.bool, device=device)
    key_mask[1, 0, 0] = True  # image 1: only queries within 2 pixels of (0, 0) see a key
    out, lse = lam_ops.local_aggregate_with_lse(x, f, sigma, case.radius, key_mask, backend="triton")
    dx, df, dsigma = torch.autograd.grad(out, (x, f, sigma), torch.ones_like(out))
    seen = torch.zeros(2, 5, 6, dtype=torch.bool, device=device)
    seen[1, :3, :3] = True
    assert torch.equal(out.permute(1, 0, 2, 3)[:, ~seen], torch.zeros_like(out.permute(1, 0, 2, 3)[:, ~seen]))
    assert torch.all(lse[~seen] == -math.inf) and torch.all(torch.isfinite(lse[seen]))
    assert torch.all(torch.isfinite(dx)) and torch.all(torch.isfinite(df)) and torch.isfinite(dsigma)
    assert torch.count_nonzero(dx[0]) == 0 and torch.count_nonzero(df[0]) == 0
    # Image 1: the only key gets every weight, so out = x at (0, 0) wherever it is seen.
    assert torch.allclose(out[1][:, :3, :3], x[1, :, 0, 0, None, None].expand(-1, 3, 3))


def test_gradient_of_a_broadcast_grad_out(device):
    # out.sum() sends an expanded (stride 0) grad_out: the kernels read it through its strides.
    case = Case(1, 3, 5, 6, 5, 2, "random")
    got = {}
    for backend, dev, dtype in (("triton", device, torch.float32), ("reference", "cpu", torch.float64)):
        x, f, sigma, key_mask = make_inputs(case, dtype, dev)
        out = lam_ops.local_aggregate(x, f, sigma, case.radius, key_mask, backend=backend)
        got[backend] = [g.cpu().double() for g in torch.autograd.grad(out.sum(), (x, f, sigma))]
    for a, b in zip(got["triton"], got["reference"]):
        torch.testing.assert_close(a, b, **TOLERANCES[torch.float32])


def test_inputs_are_read_through_their_strides(device):
    # Sliced channels, channels-last features and a transposed mask: the same bits as contiguous copies.
    case = Case(2, 3, 4, 6, 7, 2, "random")
    x, f, sigma, key_mask = make_inputs(case, device=device, requires_grad=False)
    views = (
        torch.stack([x, torch.zeros_like(x)], 2).flatten(1, 2)[:, ::2],
        f.to(memory_format=torch.channels_last),
        key_mask.transpose(1, 2).contiguous().transpose(1, 2),
    )
    runs = []
    for xv, fv, mv in (views, (x, f, key_mask)):
        xv, fv = xv.requires_grad_(), fv.requires_grad_()
        out = lam_ops.local_aggregate(xv, fv, sigma, case.radius, mv, backend="triton")
        runs.append((out, *torch.autograd.grad(out, (xv, fv), torch.ones_like(out).to(memory_format=torch.channels_last))))
    assert not views[0].is_contiguous() and not views[2].is_contiguous()
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_backward_is_bitwise_deterministic(device):
    case = Case(2, 21, 16, 9, 11, 3, "random")
    a, b = run_with_grads(case, "triton", device=device), run_with_grads(case, "triton", device=device)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_torch_compile_traces_without_graph_breaks(device):
    case = Case(1, 3, 4, 5, 6, 1, "random")
    x, f, sigma, key_mask = make_inputs(case, device=device)
    call = lambda x, f, sigma: lam_ops.local_aggregate(x, f, sigma, case.radius, key_mask, backend="triton")
    want = call(x, f, sigma)
    want_grads = torch.autograd.grad(want.sum(), (x, f, sigma))
    # Interpreted kernels run eagerly only (AOT tracing needs compiled ones): dynamo alone on the CPU.
    torch._dynamo.reset()
    compiled = torch.compile(call, backend="eager" if device == "cpu" else "inductor", fullgraph=True)
    out = compiled(x, f, sigma)
    grads = torch.autograd.grad(out.sum(), (x, f, sigma))
    torch.testing.assert_close(out, want)
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g, w)


def test_operators_pass_opcheck(device):
    case = Case(1, 3, 4, 4, 5, 1, "random")
    x, f, sigma, key_mask = make_inputs(case, device=device)
    out, lse = torch.ops.lam_ops.triton_forward(x, f, sigma, 1, key_mask)
    # AOT dispatch traces through the kernels, which only compiled (GPU) kernels allow.
    tests = ("test_schema", "test_autograd_registration", "test_faketensor") + (() if device == "cpu" else ("test_aot_dispatch_dynamic",))
    torch.library.opcheck(torch.ops.lam_ops.triton_forward, (x, f, sigma, 1, key_mask), test_utils=tests)
    g = torch.randn_like(out)
    torch.library.opcheck(
        torch.ops.lam_ops.triton_backward, (g, x.detach(), f.detach(), sigma.detach(), 1, key_mask, out.detach(), lse), test_utils=tests
    )


def test_autocast_leaves_the_dtypes_alone(device):
    # The operator casts nothing (LAM_SPEC: errors): under autocast it runs the inputs' dtype.
    case = Case(1, 3, 4, 5, 6, 2)
    for dtype in (torch.float32,) if device == "cpu" else (torch.float32, torch.float16):
        x, f, sigma, _ = make_inputs(case, dtype, device)
        want = lam_ops.local_aggregate(x, f, sigma, case.radius, backend="triton")
        with torch.autocast(device, dtype=torch.bfloat16 if device == "cpu" else torch.float16):
            out = lam_ops.local_aggregate(x, f, sigma, case.radius, backend="triton")
            grads = torch.autograd.grad(out.sum(), (x, f, sigma))
        assert out.dtype == dtype and torch.equal(out, want)
        assert [g.dtype for g in grads] == [dtype, dtype, sigma.dtype]


@pytest.mark.parametrize("dtype, arch", [("fp32", 80), ("fp16", 90), ("bf16", 90)])
def test_kernels_compile_for_gpus(dtype, arch):
    """Triton's own compiler and ptxas, no GPU needed: catches what the interpreter lets through
    (types, layouts, lowering) for A100 and H100, with C = 21, D = 256 (64 for float32) and a key mask."""
    if INTERPRETED:
        pytest.skip("this process interprets the kernels")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.autotuner import Autotuner

    acc = "*fp32"
    pointers = dict(x=f"*{dtype}", f=f"*{dtype}", g=f"*{dtype}", out=f"*{dtype}", dx=f"*{dtype}", df=f"*{dtype}",
                    sigma=acc, lse=acc, delta=acc, dsig=acc, mask="*i1")
    # float32's exact (FMA) tl.dot takes long to compile at D = 256: D = 64 checks its lowering.
    blocks = dict(BLOCK_C=32, BLOCK_D=64 if dtype == "fp32" else 256, HAS_MASK=True, UPCAST=False)
    blocks["PRECISION"] = "ieee" if dtype == "fp32" else "tf32"
    for kernel, constexprs in (
        (ops.FORWARD, dict(blocks, **ops.FORWARD.configs[0].kwargs)),
        (ops.BACKWARD, dict(blocks, **ops.BACKWARD.configs[0].kwargs)),
        (ops.DELTA, dict(BLOCK_C=32, **ops.DELTA_TILES)),
    ):
        fn = kernel.fn if isinstance(kernel, Autotuner) else kernel
        signature = {a: pointers.get(a, "i32") for a in fn.arg_names if a not in constexprs}
        compiled = triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", arch, 32))
        assert compiled.asm["cubin"], fn.__name__


def test_capability_check_says_why():
    x, f, sigma, _ = make_inputs(Case(1, 3, 4, 5, 6, 1))
    backend = lam_ops.functional.BACKENDS["triton"]
    if INTERPRETED:
        assert "triton" in lam_ops.available_backends("cpu")
        assert backend.unsupported(x, f, sigma, 1, None) is None
    else:
        assert "TRITON_INTERPRET=1" in backend.unsupported(x, f, sigma, 1, None)
        assert "triton" not in lam_ops.available_backends("cpu")
        with pytest.raises(RuntimeError, match=r"backend 'triton' cannot run this input: .*TRITON_INTERPRET=1"):
            lam_ops.local_aggregate(x, f, sigma, 1, backend="triton")
        x = x.cuda() if torch.cuda.is_available() else x
    if backend.unavailable(x.device) is None:
        if not INTERPRETED:
            assert "float64 only under the interpreter" in backend.unsupported(x.double(), f.double(), sigma.double(), 1, None)
        assert "float8" in backend.unsupported(x.to(torch.float8_e4m3fn), f.to(torch.float8_e4m3fn), sigma, 1, None)
        wide = torch.zeros(1, ops.MAX_CHANNELS + 1, 5, 6, device=x.device)
        assert f"<= {ops.MAX_CHANNELS}" in backend.unsupported(wide, f, sigma, 1, None)
    assert "CUDA" in backend.unavailable(torch.device("meta"))


def test_auto_picks_triton_on_a_gpu(cuda):
    assert lam_ops.available_backends("cuda")[0] == "triton"


def test_auto_never_picks_the_interpreter():
    from lam_ops.functional import select_backend

    x = torch.randn(1, 2, 3, 3)
    assert select_backend("auto", x, x, torch.tensor(1.0), 1, None).name in ("cpp", "reference")
