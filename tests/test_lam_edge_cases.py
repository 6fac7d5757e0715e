"""The contract's "Edge cases and numerics" and "Errors" (docs/operator.md), one test per case seen to
fail: empty sizes, second derivatives, extreme sigma, non-finite values, sigma checked on the
device (eager and torch.compile, no host read), the backward's argument check, half on the CPU."""

import logging
import math
import warnings

import pytest
import torch
from lam_cases import NONFINITE_CASES, assert_nonfinite_case_matches_the_contract, nonfinite_case_id
from torch.utils._python_dispatch import TorchDispatchMode

import lam_ops
from lam_ops import LocalAggregation, local_aggregate, local_aggregate_with_lse

CPU_BACKENDS = [b for b in ("cpp", "reference") if b in lam_ops.available_backends("cpu")]
needs_cpp = pytest.mark.skipif("cpp" not in CPU_BACKENDS, reason="lam_ops._C is not built (pip install -e .)")


def _inputs(B=1, C=3, D=4, H=5, W=6, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, H, W, generator=g, dtype=torch.float64).to(dtype)
    f = (torch.randn(B, D, H, W, generator=g, dtype=torch.float64) / 2).to(dtype)
    return x, f


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(
    "shape", [(1, 3, 4, 0, 7), (1, 3, 4, 7, 0), (0, 3, 4, 5, 5), (2, 0, 0, 4, 5), (2, 3, 0, 4, 5), (2, 0, 4, 4, 5)]
)
def test_empty_sizes_follow_the_formula(backend, shape):
    """cpp died of SIGFPE on H = 0, W = 0 and C = D = 0. With D = 0 the logits are the distance
    term alone."""
    B, C, D, H, W = shape
    x, f = _inputs(B, C, D, H, W, torch.float64)
    x.requires_grad_(), f.requires_grad_()
    sigma = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    out, lse = local_aggregate_with_lse(x, f, sigma, 2, backend=backend)
    assert out.shape == x.shape and lse.shape == (B, H, W)
    f_or_zero = f if D else torch.zeros(B, 1, H, W, dtype=torch.float64)  # D = 0: as if f = 0
    want_out, want_lse = local_aggregate_with_lse(x, f_or_zero, sigma, 2, backend="reference")
    torch.testing.assert_close(out, want_out)
    torch.testing.assert_close(lse, want_lse)
    grads = torch.autograd.grad(out.sum() + lse.sum(), (x, f, sigma), allow_unused=True, materialize_grads=True)
    assert [g.shape for g in grads] == [x.shape, f.shape, sigma.shape]
    assert all(torch.isfinite(g).all() for g in grads)


@needs_cpp
def test_second_derivative_of_a_fused_backend_raises_and_names_reference():
    """cpp gave all-zero second derivatives with a deprecation warning."""
    x, f = _inputs(dtype=torch.float64)
    x.requires_grad_(), f.requires_grad_()
    out = local_aggregate(x, f, 1.5, 2, backend="cpp")
    (df,) = torch.autograd.grad(out.square().sum(), f, create_graph=True)  # first derivatives: fine
    torch.testing.assert_close(
        df, torch.autograd.grad(local_aggregate(x, f, 1.5, 2, backend="reference").square().sum(), f)[0]
    )
    with pytest.raises(RuntimeError, match=r"backend 'cpp' has no second derivatives.*backend=\"reference\""):
        torch.autograd.grad(df.square().sum(), x)


def _gradcheck_inputs():
    """A small float64 case with a random key mask: (x, f, sigma) requiring grad, and the mask."""
    x, f = _inputs(1, 2, 3, 4, 5, torch.float64)
    sigma = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    key_mask = torch.rand(1, 4, 5, generator=torch.Generator().manual_seed(2)) < 0.6
    return (x.requires_grad_(), f.requires_grad_(), sigma), key_mask


def test_reference_second_derivatives_are_right():
    inputs, key_mask = _gradcheck_inputs()
    fn = lambda x, f, s: local_aggregate(x, f, s, 1, key_mask, backend="reference")
    assert torch.autograd.gradgradcheck(fn, inputs)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(
    "sigma, dtype",
    [
        (1e-20, torch.float32),
        (1e-40, torch.float32),
        (1e-160, torch.float64),
        (5e-324, torch.float64),
        (1e-30, torch.float64),
    ],
)
def test_tiny_sigma_gives_x_not_zeros(backend, sigma, dtype):
    """The own pixel's distance term is exactly 0 for any sigma: out = x, gradients finite."""
    x, f = _inputs(dtype=dtype)
    x.requires_grad_(), f.requires_grad_()
    s = torch.tensor(sigma, dtype=dtype, requires_grad=True)
    out, lse = local_aggregate_with_lse(x, f, s, 2, backend=backend)
    torch.testing.assert_close(out, x, atol=0, rtol=0)
    torch.testing.assert_close(lse, (f * f).sum(1), rtol=1e-6, atol=1e-6)
    dx, df, ds = torch.autograd.grad(out.square().sum(), (x, f, s))
    torch.testing.assert_close(dx, 2 * x, atol=0, rtol=0)
    # df is 0 up to rounding: dS(j, j) = g_j . x_j - g_j . out_j, two dot products summed apart
    torch.testing.assert_close(df, torch.zeros_like(df), atol=1e-12 if dtype == torch.float64 else 1e-5, rtol=0)
    assert ds == 0


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("sigma, dtype", [(1e20, torch.float32), (3e38, torch.float32), (1e300, torch.float64)])
def test_huge_sigma_drops_the_distance_term(backend, sigma, dtype):
    x, f = _inputs(dtype=dtype)
    want = local_aggregate(x, f, 1e8 if dtype == torch.float32 else 1e15, None, backend="reference")
    torch.testing.assert_close(local_aggregate(x, f, sigma, None, backend=backend), want)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_tiny_sigma_without_own_key_is_zero_or_the_nearest_keys(backend):
    """A query that is not its own key: with every admissible key's logit -inf, out 0 and lse -inf."""
    x, f = _inputs(dtype=torch.float32)
    key_mask = torch.zeros(1, 5, 6, dtype=torch.bool)
    key_mask[0, 0, 0] = True
    out, lse = local_aggregate_with_lse(x, f, 1e-30, None, key_mask, backend=backend)
    torch.testing.assert_close(out[0, :, 0, 0], x[0, :, 0, 0], atol=0, rtol=0)
    # (2, 3) is at d2 = 13 from the key: coef * 13 overflows to -inf, no weight left
    assert torch.all(out[0, :, 2, 3] == 0) and lse[0, 2, 3] == -math.inf


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_nan_in_f_reaches_exactly_the_queries_that_use_it(backend):
    """cpp gave that pixel out 0 and lse -inf (and a finite dx)."""
    x, f = _inputs(H=7, W=7)
    f[0, 1, 3, 3] = math.nan
    x.requires_grad_(), f.requires_grad_()
    out, lse = local_aggregate_with_lse(x, f, 1.5, 1, backend=backend)
    reached = torch.zeros(7, 7, dtype=torch.bool)
    reached[2:5, 2:5] = True  # the windows that hold (3, 3)
    assert torch.all(out[0].isnan() == reached) and torch.all(lse[0].isnan() == reached)
    (dx,) = torch.autograd.grad(out.sum(), x)
    assert dx.isnan().any()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("radius", [1, None])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_masked_or_outside_key_never_reaches_an_output(backend, radius, value):
    """A non-finite x and f at a key that key_mask excludes reached every output (cpp and reference);
    a non-finite x outside a window reached the queries of its tile (cpp) or the image (reference)."""
    x, f = _inputs(H=7, W=7)
    x[0, :, 0, 0] = value
    f[0, :, 0, 0] = value
    key_mask = torch.ones(1, 7, 7, dtype=torch.bool)
    key_mask[0, 0, 0] = False
    out = local_aggregate(x, f, 1.5, radius, key_mask, backend=backend)
    own = torch.zeros(1, 3, 7, 7, dtype=torch.bool)
    own[..., 0, 0] = True  # a non-finite f_j reaches its own query's output, as the contract says
    assert torch.isfinite(out[~own]).all()
    # only the window of (0, 0) may see its x when it is admissible
    x, f = _inputs(H=7, W=7)
    x[0, :, 0, 0] = value
    out = local_aggregate(x, f, 1.5, 1, backend=backend)
    window = torch.zeros(7, 7, dtype=torch.bool)
    window[:2, :2] = True
    assert torch.all(torch.isfinite(out[0]) == ~window)


@needs_cpp
def test_cpp_gradients_never_see_a_masked_or_outside_key():
    """The cpp backward's dense products skip pairs that do not relate two pixels."""
    x, f = _inputs(H=9, W=9, dtype=torch.float64)
    x[0, :, 0, 0], f[0, :, 0, 0] = math.inf, math.nan
    key_mask = torch.ones(1, 9, 9, dtype=torch.bool)
    key_mask[0, 0, 0] = False
    x.requires_grad_(), f.requires_grad_()
    out = local_aggregate(x, f, 1.5, 1, key_mask, backend="cpp")
    g = torch.ones_like(out)
    g[..., :3, :3] = 0  # the output of (0, 0) is NaN; nothing near it is differentiated
    dx, df = torch.autograd.grad(out, (x, f), g)
    far = torch.ones(9, 9, dtype=torch.bool)
    far[:2, :2] = False  # (0, 0)'s window: pairs with it carry its NaN
    assert torch.isfinite(dx[0][:, far]).all() and torch.isfinite(df[0][:, far]).all()


class _HostReads(TorchDispatchMode):
    """Records the operators that read a tensor's value on the host (a GPU sync)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten._local_scalar_dense, torch.ops.aten.item, torch.ops.aten.is_nonzero):
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("backend", ["auto"] + CPU_BACKENDS)
def test_no_host_read_in_the_public_api(backend):
    x, f = _inputs()
    x.requires_grad_()
    sigma = torch.tensor(1.5, requires_grad=True)
    lam = LocalAggregation(embed_dim=8, radius=2, learnable_sigma=True, backend=backend)
    with _HostReads() as mode:
        out = local_aggregate(x, f, sigma, 2, backend=backend) + local_aggregate(x, f, 1.5, 2, backend=backend)
        out = out + lam(x, torch.randn(1, 3, 20, 24))
        out.sum().backward()
    assert mode.seen == []


BAD_SIGMAS = [math.nan, 0.0, -1.0, math.inf, -math.inf]


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_bad_sigma_tensor_is_rejected_in_eager_and_compiled(compiled):
    """torch.compile skipped the host check: a NaN sigma gave zeros, a negative one an answer."""
    x, f = _inputs()
    fn = lambda x, f, s: local_aggregate(x, f, s, 2)
    fn = torch.compile(fn, fullgraph=True) if compiled else fn  # fullgraph: no host read either
    fn(x, f, torch.tensor(1.5))
    for value in BAD_SIGMAS:
        with pytest.raises(RuntimeError, match="sigma must be finite and > 0"):
            fn(x, f, torch.tensor(value))


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_module_with_a_bad_learned_sigma_raises(compiled):
    lam = LocalAggregation(embed_dim=8, radius=2, learnable_sigma=True)
    fn = torch.compile(lam, fullgraph=True) if compiled else lam
    logits, image = torch.randn(1, 4, 5, 6), torch.randn(1, 3, 20, 24)
    fn(logits, image)
    with torch.no_grad():
        lam.log_sigma.fill_(math.nan)
    with pytest.raises(RuntimeError, match="sigma must be finite and > 0"):
        fn(logits, image)


@pytest.mark.parametrize("value", BAD_SIGMAS)
def test_bad_sigma_number_is_a_value_error(value):
    x, f = _inputs()
    with pytest.raises(ValueError, match="^sigma must be finite and > 0"):
        local_aggregate(x, f, value, 2)
    with pytest.raises(ValueError, match="^sigma must be finite and > 0"):
        LocalAggregation(sigma=value)


@needs_cpp
@pytest.mark.parametrize(
    "name, bad, match",
    [
        ("lse", torch.zeros(1, 2, 2), "lse must be"),
        ("lse", torch.zeros(1, 5, 6, dtype=torch.float64), "lse must be"),
        ("out", torch.zeros(1, 3, 2, 2), "out must have"),
        ("out", torch.zeros(1, 3, 5, 6, dtype=torch.float64), "out must have"),
        ("grad_out", torch.zeros(1, 3, 5, 7), "grad_out must be"),
    ],
)
def test_cpu_backward_operator_checks_out_and_lse(name, bad, match):
    """torch.ops.lam_ops.backward read a wrongly shaped out or lse out of bounds."""
    x, f = _inputs()
    sigma = torch.tensor(1.5)
    out, lse = torch.ops.lam_ops.forward(x, f, sigma, 2, None)
    args = dict(grad_out=torch.ones_like(out), out=out, lse=lse)
    args[name] = bad
    with pytest.raises(RuntimeError, match=match):
        torch.ops.lam_ops.backward(args["grad_out"], x, f, sigma, 2, None, args["out"], args["lse"])


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_auto_computes_half_on_the_cpu_in_float32_with_the_fused_kernel(dtype, monkeypatch):
    """auto sent half CPU inputs to the dense reference: 9 s and 3 GB at 96 x 96, r = 12."""
    from lam_ops.backends import BACKENDS

    monkeypatch.setattr(BACKENDS["reference"], "forward", lambda *a: pytest.fail("the dense reference ran"))
    x, f = _inputs(H=9, W=8)
    x, f = x.to(dtype).requires_grad_(), f.to(dtype).requires_grad_()
    out = local_aggregate(x, f, 1.5, 3)
    assert out.dtype == dtype
    torch.testing.assert_close(out, local_aggregate(x.float(), f.float(), 1.5, 3, backend="cpp").to(dtype))
    out.float().sum().backward()
    assert x.grad.dtype == dtype and f.grad.dtype == dtype


def test_auto_logs_its_choice_and_warns_on_a_large_dense_fallback(monkeypatch, caplog):
    import lam_ops.functional as functional
    from lam_ops.backends import BACKENDS

    monkeypatch.setattr(functional, "_auto_choices_logged", set())
    x, f = _inputs()
    with caplog.at_level(logging.DEBUG, logger="lam_ops"):
        local_aggregate(x, f, 1.5, 2)
        local_aggregate(x, f, 1.5, 2)
    chosen = CPU_BACKENDS[0]
    assert [r.getMessage() for r in caplog.records] == [
        f"backend='auto' chose '{chosen}' for torch.float32 inputs on cpu, computing in torch.float32"
    ]
    # with no fused kernel, a 64 x 64 image (B (HW)^2 = 2^24 logits) warns; 8 x 8 does not
    for name in ("cpp", "triton", "cuda"):
        monkeypatch.setattr(BACKENDS[name], "unsupported", lambda *a, name=name: f"{name} disabled by the test")
    monkeypatch.setattr(BACKENDS["reference"], "forward", lambda x, *a: (x, x.new_zeros(x.shape[0], *x.shape[2:])))
    with pytest.warns(UserWarning, match=r"fell back to the dense 'reference'.*cpp: cpp disabled by the test"):
        local_aggregate(*_inputs(1, 1, 1, 64, 64), 1.5, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        local_aggregate(*_inputs(1, 1, 1, 8, 8), 1.5, 2)


@needs_cpp
def test_gradient_through_lse_is_not_dropped():
    """The fused backward ignored lse's gradient (local_aggregate_with_lse is public): silently wrong."""
    inputs, key_mask = _gradcheck_inputs()
    fn = lambda x, f, s: local_aggregate_with_lse(x, f, s, 1, key_mask, backend="cpp")
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradcheck(lambda x, f, s: fn(x, f, s)[1], inputs)  # lse alone


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_float32_sigma_with_float64_inputs_and_a_huge_dsigma(backend):
    """Found by the property tests: cpp threw "value cannot be converted to type float without
    overflow" when a float32 sigma's dsigma left float32's range (sigma = 1e-18: 1 / sigma^3)."""
    x, f = _inputs(1, 2, 0, 3, 3, torch.float64)
    key_mask = torch.tensor([[[True, False, True], [True, True, False], [False, False, True]]])
    sigma = torch.tensor(1e-18, requires_grad=True)
    x.requires_grad_()
    out = local_aggregate(x, f, sigma, None, key_mask, backend=backend)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=out.dtype)
    dx, dsigma = torch.autograd.grad(out, (x, sigma), g)
    assert torch.isfinite(dx).all() and dsigma.dtype == torch.float32


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", NONFINITE_CASES, ids=nonfinite_case_id)
def test_nonfinite_inputs_follow_the_contract_oracle(backend, case):
    """reference's gradients broke the contract: a NaN in x gave finite df and dsigma, a NaN in f
    at a masked-out key made every dx NaN (the dense products' 0 * NaN)."""
    assert_nonfinite_case_matches_the_contract(case, backend)
