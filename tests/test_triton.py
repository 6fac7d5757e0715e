"""The triton backend against the reference: on CPU tensors under the Triton interpreter, and the
same tests on CUDA tensors (plus larger shapes) where a GPU exists.

triton reads TRITON_INTERPRET when it decorates a kernel, its own standard library (tl.sum,
tl.max, ...) included, i.e. at `import triton`: the mode is fixed per process. So the interpreter
runs of this module happen in a subprocess started with TRITON_INTERPRET=1
(test_interpreter_subprocess), which leaves every other test module of this process compiled.
The interpreter runs each program in Python: shapes stay small.
"""

import contextlib
import math
import os
import subprocess
import sys
import tempfile

import pytest
import torch
from lam_cases import (
    EDGE_CASES,
    NONFINITE_CASES,
    TOLERANCES,
    Case,
    assert_matches_reference,
    assert_nonfinite_case_matches_the_contract,
    make_inputs,
    nonfinite_case_id,
    run_with_grads,
)

import lam_ops
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
        env=env,
        cwd=os.path.dirname(os.path.dirname(__file__)),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert run.returncode == 0, (
        f"the interpreter run of {__file__} failed:\n{run.stdout[-20000:]}\n{run.stderr[-5000:]}"
    )
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
    for a, b in zip(got["triton"], got["reference"], strict=True):
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
        runs.append(
            (out, *torch.autograd.grad(out, (xv, fv), torch.ones_like(out).to(memory_format=torch.channels_last)))
        )
    assert not views[0].is_contiguous() and not views[2].is_contiguous()
    for a, b in zip(*runs, strict=True):
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
    for g, w in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(g, w)


def test_operators_pass_opcheck(device):
    case = Case(1, 3, 4, 4, 5, 1, "random")
    x, f, sigma, key_mask = make_inputs(case, device=device)
    out, lse = torch.ops.lam_ops.triton_forward(x, f, sigma, 1, key_mask)
    # AOT dispatch traces through the kernels, which only compiled (GPU) kernels allow.
    tests = ("test_schema", "test_autograd_registration", "test_faketensor") + (
        () if device == "cpu" else ("test_aot_dispatch_dynamic",)
    )
    torch.library.opcheck(torch.ops.lam_ops.triton_forward, (x, f, sigma, 1, key_mask), test_utils=tests)
    g = torch.randn_like(out)
    torch.library.opcheck(
        torch.ops.lam_ops.triton_backward,
        (g, x.detach(), f.detach(), sigma.detach(), 1, key_mask, out.detach(), lse),
        test_utils=tests,
    )


def test_autocast_leaves_the_dtypes_alone(device):
    # The operator casts nothing (docs/operator.md, errors): under autocast it runs the inputs' dtype.
    case = Case(1, 3, 4, 5, 6, 2)
    for dtype in (torch.float32,) if device == "cpu" else (torch.float32, torch.float16):
        x, f, sigma, _ = make_inputs(case, dtype, device)
        want = lam_ops.local_aggregate(x, f, sigma, case.radius, backend="triton")
        with torch.autocast(device, dtype=torch.bfloat16 if device == "cpu" else torch.float16):
            out = lam_ops.local_aggregate(x, f, sigma, case.radius, backend="triton")
            grads = torch.autograd.grad(out.sum(), (x, f, sigma))
        assert out.dtype == dtype and torch.equal(out, want)
        assert [g.dtype for g in grads] == [dtype, dtype, sigma.dtype]


# Every D bucket of the rule (BLOCK_D <= 64, 128, 256; the authors' D = 256) on A100 (sm_80) and
# H100 (sm_90), with C = 21 and a key mask; float16 lowers like bfloat16 (one sample of it).
FIT_CASES = [
    ("fp32", torch.float32, 64, 80),
    ("fp32", torch.float32, 64, 90),
    ("fp32", torch.float32, 128, 80),
    ("fp32", torch.float32, 128, 90),
    ("fp32", torch.float32, 256, 80),
    ("fp32", torch.float32, 256, 90),
    ("bf16", torch.bfloat16, 64, 90),
    ("bf16", torch.bfloat16, 128, 80),
    ("bf16", torch.bfloat16, 128, 90),
    ("bf16", torch.bfloat16, 256, 90),
    ("fp16", torch.float16, 256, 80),
]
# Shared memory per block (opt-in maximum): sm_80 163 KiB, sm_90 227 KiB.
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}


def _compile_report(kernel, constexprs, options, dtype, arch):
    """Compiles `kernel` for sm_`arch` with triton's own compiler, then its PTX with triton's ptxas
    -v (no GPU needed): (registers, bytes of spill stores, bytes of shared memory)."""
    import re

    import triton
    import triton.backends.nvidia
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    acc = "*fp32"
    pointers = dict(
        x=f"*{dtype}",
        f=f"*{dtype}",
        g=f"*{dtype}",
        out=f"*{dtype}",
        dx=f"*{dtype}",
        df=f"*{dtype}",
        sigma=acc,
        lse=acc,
        delta=acc,
        dsig=acc,
        mask="*i1",
        nonfinite_f="*i32",
    )
    signature = {a: pointers.get(a, "i32") for a in kernel.arg_names if a not in constexprs}
    compiled = triton.compile(
        ASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", arch, 32), options=options
    )
    ptx = compiled.asm["ptx"]
    ptxas = os.path.join(os.path.dirname(triton.backends.nvidia.__file__), "bin", "ptxas")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as fh:
            fh.write(ptx)
        target = re.search(r"^\.target\s+(\S+)", ptx, re.M)[1]
        report = subprocess.run(
            [ptxas, "-v", f"-arch={target}", src, "-o", os.path.join(tmp, "k.cubin")],
            capture_output=True,
            text=True,
            check=True,
        ).stderr
    regs = int(re.search(r"Used (\d+) registers", report)[1])
    spills = int(re.search(r"(\d+) bytes spill stores", report)[1])
    return regs, spills, compiled.metadata.shared


@pytest.mark.parametrize("name, dtype, D, arch", FIT_CASES, ids=lambda v: str(v))
def test_chosen_configurations_fit_the_gpus(name, dtype, D, arch):
    """The fixed configuration compiles for sm_80 / sm_90 without register spills and within
    shared memory (the compiler's report), for the forward and the backward."""
    if INTERPRETED:
        pytest.skip("this process interprets the kernels")
    for kind, kernel in (("forward", ops.kernels.lam_forward_kernel), ("backward", ops.kernels.lam_backward_kernel)):
        config = dict(ops.TILES, **ops.LAUNCH[kind])
        tiles = {k: v for k, v in config.items() if k.isupper()}
        options = {k: v for k, v in config.items() if not k.isupper()}
        constexprs = dict(
            BLOCK_C=32,
            BLOCK_D=D,
            HAS_MASK=True,
            UPCAST=False,
            I64=False,
            **tiles,
            PRECISION="ieee" if name == "fp32" else "tf32",
        )
        regs, spills, shared = _compile_report(kernel, constexprs, options, name, arch)
        print(f"{kind} {name} D={D} sm_{arch} {config}: {regs} registers, {spills} B spilled, {shared} B shared")
        assert spills == 0, f"{kind} {config} spills registers on sm_{arch} ({regs} registers, {spills} B spill stores)"
        assert shared <= SHARED_LIMIT[arch], f"{kind} {config} needs {shared} B of shared memory on sm_{arch}"


def test_wide_offsets_and_the_delta_kernel_compile():
    """The 64-bit offset variant (I64) and the Delta kernel lower for sm_90."""
    if INTERPRETED:
        pytest.skip("this process interprets the kernels")
    constexprs = dict(BLOCK_C=32, BLOCK_D=64, HAS_MASK=True, UPCAST=False, I64=True, PRECISION="tf32", **ops.TILES)
    _compile_report(ops.kernels.lam_forward_kernel, constexprs, dict(ops.LAUNCH["forward"]), "bf16", 90)
    _compile_report(ops.kernels.lam_delta_kernel, dict(BLOCK_C=32, I64=True, TH=8, TW=32), {}, "bf16", 90)


def test_configuration_is_a_fixed_rule():
    """Determinism across processes: one configuration, timed by nothing, unless
    LAM_OPS_TRITON_AUTOTUNE=1 (checked in a fresh process: the choice is made at import)."""
    if INTERPRETED:
        assert ops._launch_config() == ops.INTERPRETER_TILES
        return
    for kind, kernel in (("forward", ops.FORWARD), ("backward", ops.BACKWARD)):
        (config,) = kernel.configs  # a single configuration: triton's autotuner times nothing
        launch = dict(num_warps=config.num_warps, num_stages=config.num_stages, maxnreg=config.maxnreg)
        assert config.kwargs == ops.TILES and launch == ops.LAUNCH[kind]
    assert not ops.AUTOTUNE and ops._launch_config() == {}
    probe = "from lam_ops.backends.triton import ops; print(len(ops.FORWARD.configs), ops.AUTOTUNE)"
    env = dict(os.environ, **{ops.AUTOTUNE_ENV: "1"})
    env.pop("TRITON_INTERPRET", None)
    run = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert run.stdout.split() == [str(len(ops.FORWARD_CONFIGS)), "True"], run.stderr[-3000:]


def test_sizes_and_strides_are_not_specialised_on():
    """A new image size reuses the compiled kernels: triton specialises an int argument on being 1
    and on divisibility by 16, which H, W and the outer strides change with the image."""
    for kernel in (ops.kernels.lam_forward_kernel, ops.kernels.lam_backward_kernel, ops.kernels.lam_delta_kernel):
        names = (
            kernel.kwargs["do_not_specialize"]
            if INTERPRETED
            else [p.name for p in kernel.params if p.do_not_specialize]
        )
        varying = [
            a for a in kernel.arg_names if a in ("H", "W", "R") or (a[0] == "s" and a[-1] in "bch" and len(a) == 3)
        ]
        assert len(varying) >= 5 and set(varying) <= set(names), (kernel.arg_names, names)


def test_version_shims():
    """Each shim of ops.py is a no-op where the installed version does not need it."""
    import triton
    from triton.runtime import interpreter

    patched = getattr(interpreter._patch_lang_tensor, "lam_ops_shim", False)
    assert patched == (INTERPRETED and triton.__version__ < "3.8"), triton.__version__


def test_launches_are_guarded_with_xs_device():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(1, 2, 3, 3, device="cuda:1")
    guard = ops._device_guard(x)
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    assert isinstance(ops._device_guard(torch.empty(1)), contextlib.nullcontext)


def test_64_bit_offsets_where_an_image_exceeds_2_31_elements():
    # Expanded (stride 0) and meta tensors: the sizes, without the memory.
    assert not ops.needs_int64(torch.empty(2, 256, 512, 512, device="meta"))
    assert ops.needs_int64(torch.empty(1, 256, 2048, 4096, device="meta"))  # 2^31 elements in one image
    assert ops.needs_int64(
        torch.empty(2, 2, 2, 2, device="meta").as_strided((2, 2, 2, 2), (2**32, 2**31, 1, 1))
    )  # channel 1 at 2^31
    assert not ops.needs_int64(torch.empty(1, 1, 1, 1).expand(4, 256, 1024, 1024)[:, :1])


def test_grid_limit_is_checked_with_a_clear_error():
    ops.check_grid(65536, 8, 8, dict(TH=8, TW=8))  # a batch over CUDA's 65535 grid rows is fine
    with pytest.raises(ValueError, match="grid limit.*split the batch"):
        ops.check_grid(2**20, 4096, 4096, dict(TH=8, TW=8))


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
            assert "float64 only under the interpreter" in backend.unsupported(
                x.double(), f.double(), sigma.double(), 1, None
            )
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


# Edge cases and numerics (docs/operator.md): in the interpreter on CPU tensors, compiled on a GPU.


@pytest.mark.parametrize(
    "shape", [(0, 3, 4, 5, 6), (2, 3, 4, 0, 6), (2, 3, 4, 5, 0), (2, 0, 4, 5, 6), (2, 3, 0, 5, 6), (1, 0, 0, 3, 4)]
)
def test_empty_sizes(shape, device):
    """B, H, W, C or D = 0: the formula's result, never a crash (with D = 0 the logits are the
    distance term alone, with C = 0 lse still is)."""
    B, C, D, H, W = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, C, H, W, generator=g).to(device).requires_grad_()
    f = torch.randn(B, D, H, W, generator=g).to(device).requires_grad_()
    sigma = torch.tensor(1.5, device=device, requires_grad=True)
    out, lse = lam_ops.local_aggregate_with_lse(x, f, sigma, 1, backend="triton")
    want, want_lse = lam_ops.local_aggregate_with_lse(
        x.detach().cpu().double(), f.detach().cpu().double(), 1.5, 1, backend="reference"
    )
    assert out.shape == x.shape and lse.shape == (B, H, W)
    torch.testing.assert_close(out.cpu().double(), want, **TOLERANCES[torch.float32])
    torch.testing.assert_close(lse.cpu().double(), want_lse, **TOLERANCES[torch.float32])
    dx, df, dsigma = torch.autograd.grad((out * torch.randn_like(out)).sum(), (x, f, sigma), allow_unused=True)
    assert dx.shape == x.shape and df.shape == f.shape and torch.isfinite(dsigma)


def _planted(device, x_val=None, f_val=None, masked=False):
    """A 1 x 2 x 3 x 9 x 9 input, radius 2, with x and/or f at pixel (4, 0) set to a value."""
    case = Case(1, 2, 3, 9, 9, 2)
    x, f, sigma, _ = make_inputs(case, device=device, requires_grad=False)
    key_mask = torch.ones(1, 9, 9, dtype=torch.bool, device=device)
    if masked:
        key_mask[0, 4, 0] = False
    if x_val is not None:
        x[0, :, 4, 0] = x_val
    if f_val is not None:
        f[0, :, 4, 0] = f_val
    return x.requires_grad_(), f.requires_grad_(), sigma.requires_grad_(), key_mask


def _all_results(x, f, sigma, key_mask, backend="triton"):
    out, lse = lam_ops.local_aggregate_with_lse(x, f, sigma, 2, key_mask, backend=backend)
    g = torch.ones_like(out)
    return (out, lse, *torch.autograd.grad(out, (x, f, sigma), g))


@pytest.mark.parametrize("value", [math.nan, -math.inf])
def test_nonfinite_x_reaches_exactly_the_queries_that_admit_it(value, device):
    # Pixel (4, 0) with radius 2 is in the windows of the rows 2..6, columns 0..2 only.
    out, lse, dx, df, dsigma = _all_results(*_planted(device, x_val=value))
    reach = torch.zeros(9, 9, dtype=torch.bool)
    reach[2:7, 0:3] = True
    bad = ~torch.isfinite(out[0].cpu()).all(0)
    assert torch.equal(bad, reach), bad
    clean = _all_results(*_planted(device))
    assert torch.equal(out[0][:, ~reach.to(device)], clean[0][0][:, ~reach.to(device)])
    assert torch.equal(lse, clean[1]) and torch.equal(dx, clean[2])  # x enters neither lse nor dx


@pytest.mark.parametrize("what", ["x", "f"])
def test_masked_nonfinite_keys_never_influence_anything(what, device):
    vals = dict(x_val=math.nan) if what == "x" else dict(f_val=math.inf)
    got = _all_results(*_planted(device, masked=True, **vals))
    want = _all_results(*_planted(device, masked=True))
    if what == "x":  # x acts only as a key: nothing may change, gradients included
        for name, a, b in zip(("out", "lse", "dx", "df", "dsigma"), got, want, strict=True):
            assert torch.equal(a, b), name
        return
    # f at (4, 0) is still that pixel's own query: its out and lse (and the gradients that flow
    # through them) are non-finite by the formula; every other pixel's out and lse are untouched.
    keep = torch.ones(9, 9, dtype=torch.bool, device=device)
    keep[4, 0] = False
    assert torch.equal(got[0][0][:, keep], want[0][0][:, keep]) and torch.equal(got[1][0][keep], want[1][0][keep])
    assert not torch.isfinite(got[1][0, 4, 0])


@pytest.mark.parametrize("case", NONFINITE_CASES, ids=nonfinite_case_id)
def test_nonfinite_inputs_follow_the_contract_oracle(case, device):
    """The same oracle as the CPU backends' (tests/test_lam_edge_cases.py). triton gave a finite df
    where a non-finite f met a pair of weight 0 (it zeroed such f), and NaN gradients for a query
    without weight next to a non-finite x."""
    if device == "cuda":
        pytest.skip("float64 runs under the interpreter only")
    assert_nonfinite_case_matches_the_contract(case, "triton", device)


@pytest.mark.parametrize("sigma", [1e-20, 1e-30, 1e19, 3e38])
def test_extreme_sigma(sigma, device):
    """The own pixel's distance term is exactly 0 (never -inf * 0): at a tiny sigma every other
    key's weight underflows and out = x; at a huge one the distances vanish; nothing overflows. A
    query whose own pixel is masked out averages its nearest keys, as on the CPU backends: triton
    did not clamp -1 / (2 sigma^2) to a finite value, so it gave such a query 0 (docs/operator.md,
    "Extreme sigma")."""
    case = Case(1, 3, 4, 5, 6, 2, "random", sigma=sigma)
    x, f, s, key_mask = make_inputs(case, device=device)
    out, lse, dx, df, dsigma = _all_results(x, f, s, key_mask)
    for t in (out, dx, df, dsigma):
        assert torch.isfinite(t).all()
    own = key_mask[:, None].expand_as(x)
    if sigma < 1:  # the own pixel is admissible where key_mask is set: out = x there
        torch.testing.assert_close(out[own], x.detach()[own], atol=0, rtol=0)
    # float32 on the CPU: the same clamped coefficient, hence the same nearest keys
    cpu = [t.detach().cpu().requires_grad_(t.requires_grad) if t.is_floating_point() else t.cpu() for t in (x, f, s)]
    want = _all_results(*cpu, key_mask.cpu(), backend="reference")
    torch.testing.assert_close(out.cpu(), want[0], **TOLERANCES[torch.float32])


def test_second_derivatives_raise_naming_the_reference(device):
    x, f, sigma, key_mask = make_inputs(Case(1, 2, 3, 4, 5, 1), device=device)
    out = lam_ops.local_aggregate(x, f, sigma, 1, key_mask, backend="triton")
    (dx,) = torch.autograd.grad(out.pow(2).sum(), (x,), create_graph=True)
    with pytest.raises(RuntimeError, match='backend="reference"|backend=.reference.'):
        torch.autograd.grad(dx.sum(), (f,))


def test_wide_offsets_give_the_same_bits(device, monkeypatch):
    case = Case(2, 3, 4, 6, 7, 2, "random")
    want = run_with_grads(case, "triton", device=device)
    monkeypatch.setattr(ops, "needs_int64", lambda *tensors: True)
    got = run_with_grads(case, "triton", device=device)
    for name in want:
        assert torch.equal(got[name], want[name]), name


def test_torch_compile_with_dynamic_sizes(device):
    """Symbolic sizes through the fake kernels: one compiled graph serves several image sizes."""
    torch._dynamo.reset()
    call = lambda x, f, sigma: lam_ops.local_aggregate(x, f, sigma, 1, backend="triton")
    compiled = torch.compile(call, backend="eager" if device == "cpu" else "inductor", fullgraph=True, dynamic=True)
    for H, W in ((4, 5), (6, 7), (5, 9)):
        x, f, sigma, _ = make_inputs(Case(1, 3, 4, H, W, 1, "random"), device=device)
        out = compiled(x, f, sigma)
        grads = torch.autograd.grad(out.sum(), (x, f, sigma))
        want = call(x, f, sigma)
        torch.testing.assert_close(out, want)
        for g, w in zip(grads, torch.autograd.grad(want.sum(), (x, f, sigma)), strict=True):
            torch.testing.assert_close(g, w)
