"""LocalAggregation and its guidance branch."""

import pytest
import torch

import lam_ops
from lam_ops import LocalAggregation, PatchEmbed


def test_patch_embed_pads_sizes_that_are_not_multiples_of_the_patch():
    embed = PatchEmbed(embed_dim=8)
    assert embed(torch.randn(2, 3, 32, 40)).shape == (2, 8, 8, 10)
    f = embed(torch.randn(2, 3, 33, 38))
    assert f.shape == (2, 8, 9, 10)


@pytest.mark.parametrize("similarity", ["both", "features", "position"])
@pytest.mark.parametrize("radius", [2, None])
def test_output_has_the_logits_shape_and_dtype(similarity, radius):
    lam = LocalAggregation(embed_dim=8, radius=radius, similarity=similarity)
    logits = torch.randn(2, 5, 9, 10)
    out = lam(logits, torch.randn(2, 3, 35, 38))
    assert out.shape == logits.shape and out.dtype == logits.dtype
    assert torch.isfinite(out).all()


def test_matches_the_functional_operator_on_the_guidance_features():
    lam = LocalAggregation(embed_dim=8, radius=3, sigma=2.0)
    logits, image = torch.randn(1, 4, 8, 8), torch.randn(1, 3, 32, 32)
    f = lam.embed(image)
    want = lam_ops.local_aggregate(logits, f, 2.0, 3, backend="reference")
    torch.testing.assert_close(lam(logits, image), want, atol=1e-5, rtol=1e-4)


def test_ablations_change_the_weights():
    torch.manual_seed(0)
    logits, image = torch.randn(1, 4, 8, 8), torch.randn(1, 3, 32, 32)
    outs = {
        s: LocalAggregation(embed_dim=8, radius=3, similarity=s, sigma=1.0)(logits, image)
        for s in ("both", "features", "position")
    }
    # position only: the weights depend on the distance alone, identical for every image
    other = LocalAggregation(embed_dim=8, radius=3, similarity="position", sigma=1.0)(logits, torch.randn(1, 3, 32, 32))
    torch.testing.assert_close(outs["position"], other)
    assert not torch.allclose(outs["both"], outs["features"]) and not torch.allclose(outs["both"], outs["position"])


def test_learnable_sigma_gets_a_gradient_and_stays_positive():
    lam = LocalAggregation(embed_dim=8, radius=3, sigma=2.0, learnable_sigma=True)
    logits, image = torch.randn(2, 4, 8, 8), torch.randn(2, 3, 32, 32)
    lam(logits, image).square().sum().backward()
    assert lam.log_sigma.grad is not None and lam.log_sigma.grad != 0
    # sigma = exp(log_sigma): any step, however large, keeps it > 0
    with torch.no_grad():
        lam.log_sigma -= 10.0
    assert 0 < lam.sigma < 1e-3
    assert torch.isfinite(lam(logits, image)).all()


def test_fixed_sigma_is_a_buffer():
    lam = LocalAggregation(embed_dim=8, sigma=6.0)
    assert "log_sigma" not in dict(lam.named_parameters()) and "log_sigma" in dict(lam.named_buffers())
    torch.testing.assert_close(lam.sigma, torch.tensor(6.0))


@pytest.mark.skipif("cpp" not in lam_ops.available_backends("cpu"), reason="lam_ops._C is not built")
@pytest.mark.parametrize("backend", ["auto", "cpp"])  # cpp: a named backend without half kernels (the demo's config)
def test_bfloat16_autocast_on_cpu_runs_the_fused_kernel_in_float32(monkeypatch, backend):
    from lam_ops.backends import BACKENDS

    ran = []
    cpp, reference = BACKENDS["cpp"], BACKENDS["reference"]
    monkeypatch.setattr(cpp, "forward", lambda x, *a, forward=cpp.forward: ran.append(x.dtype) or forward(x, *a))
    monkeypatch.setattr(reference, "forward", lambda *a: pytest.fail("the dense reference ran"))
    lam = LocalAggregation(embed_dim=8, radius=2, backend=backend)
    logits, image = torch.randn(1, 4, 8, 8), torch.randn(1, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = lam(logits.bfloat16(), image)
    assert out.dtype == torch.bfloat16 and ran == [torch.float32]
    torch.testing.assert_close(out.float(), lam(logits.bfloat16().float(), image), atol=0.05, rtol=0.05)


def test_double_computes_in_float64():
    torch.manual_seed(0)
    lam = LocalAggregation(embed_dim=8, radius=3, sigma=2.0).double()
    logits, image = torch.randn(1, 4, 8, 8, dtype=torch.float64), torch.randn(1, 3, 32, 32, dtype=torch.float64)
    out = lam(logits, image)
    want = lam_ops.local_aggregate(logits, lam.embed(image), lam.sigma, 3, backend="reference")
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, want, atol=1e-12, rtol=1e-10)  # float32 compute misses by ~1e-7


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sigma=0.0), "sigma"),
        (dict(radius=-2), "radius"),
        (dict(radius=True), "radius"),
        (dict(radius=2.0), "radius"),
        (dict(radius=2**63), "radius"),  # was an OverflowError at the first forward
        (dict(sigma=float("nan")), "sigma"),
        (dict(similarity="colour"), "similarity"),
        (dict(backend="gpu"), "backend"),
        (dict(similarity="features", learnable_sigma=True), "learnable_sigma"),
    ],
)
def test_bad_options_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LocalAggregation(**kwargs)


class _Head(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 4, stride=4)
        self.lam = LocalAggregation(embed_dim=8, radius=2, learnable_sigma=True)

    def forward(self, image):
        return self.lam(self.conv(image), image)


def test_torch_compile_fullgraph_matches_eager_forward_and_backward():
    torch.manual_seed(0)
    model = _Head()
    image = torch.randn(2, 3, 24, 28)
    compiled = torch.compile(model, fullgraph=True)
    eager_out = model(image)
    eager_grads = torch.autograd.grad(eager_out.square().sum(), list(model.parameters()))
    comp_out = compiled(image)
    comp_grads = torch.autograd.grad(comp_out.square().sum(), list(model.parameters()))
    torch.testing.assert_close(comp_out, eager_out, atol=1e-5, rtol=1e-4)
    for a, b in zip(comp_grads, eager_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)
