"""`blpseg export` (blpseg/engine/export.py, docs/deployment.md): the .pt2 package and the .onnx
file equal the checkpoint's logits at sizes other than the one they were traced at, refuse the
sizes they cannot take, and run without blpseg: the .pt2 with only torch and lam_ops imported, the
.onnx in onnxruntime, the .pt2 in C++ (examples/segment). One tiny network (resnet18, 16 channels,
a LAM of radius 3 on 8 guidance channels) and one export of each format, shared by the tests."""

import os
import subprocess
import sys
import zipfile

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from build_env import ROOT, cmake_unavailable

from blpseg import cli
from blpseg.config import load_config
from blpseg.data.formats import class_names
from blpseg.data.transforms import normalize
from blpseg.engine import export
from blpseg.engine.builders import model_from_config
from blpseg.engine.checkpoint import load_model, save_checkpoint
from lam_ops import local_aggregate

# (batch, height, width): the traced size, a larger one, one that is no multiple of any stride
# (odd, and not a multiple of the LAM's patch of 4), and the smallest the .pt2 takes.
SIZES = [(1, 64, 80), (2, 96, 128), (1, 65, 131), (1, 33, 47)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    overrides = ["model.channels=16", "model.embed_dim=8", "model.radius=3", "device=cpu"]
    cfg = load_config(os.path.join(ROOT, "configs", "synthetic.yaml"), overrides)
    torch.manual_seed(0)
    model = model_from_config(cfg["model"], len(class_names(cfg["data"])), pretrained=False)
    path = str(tmp_path_factory.mktemp("export") / "tiny.pt")
    save_checkpoint({"model": model.state_dict(), "config": cfg}, path)
    return path


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_model(checkpoint, ["device=cpu"])[0]


def logits(model, image):
    with torch.no_grad():
        return model(image, scribble_head=False)["seg"]


def images(sizes=SIZES):
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(b, 3, h, w, generator=gen) for b, h, w in sizes]


def assert_equal_logits(got, want):
    """The issue's 1e-3, relative to the logits' largest magnitude."""
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3 * want.abs().max().item())


def _export(checkpoint, out):
    assert cli.main(["export", "--checkpoint", checkpoint, "--out", out, "--height", "64", "--width", "80"]) == 0
    return out


@pytest.fixture(scope="module")
def pt2(checkpoint, tmp_path_factory):
    return _export(checkpoint, str(tmp_path_factory.mktemp("pt2") / "tiny.pt2"))


@pytest.fixture(scope="module")
def onnx_file(checkpoint, tmp_path_factory):
    return _export(checkpoint, str(tmp_path_factory.mktemp("onnx") / "tiny.onnx"))


def test_the_lam_changes_the_logits(model):
    """Otherwise the exports' equality with the checkpoint would not show that they compute it."""
    image = images()[0]
    lam, model.lam = model.lam, None
    try:
        without = logits(model, image)
    finally:
        model.lam = lam
    assert (logits(model, image) - without).abs().max() > 0.05 * without.abs().max()


# Run in a fresh interpreter that imports torch and lam_ops only: the inputs, then sizes the
# package must refuse (an error, never a wrong-sized answer).
_RUN_PT2 = """
import sys, torch, lam_ops
package = torch._inductor.aoti_load_package(sys.argv[1])
outputs = [package(x) for x in torch.load(sys.argv[2])]
errors = []
for shape in [(1, 3, 32, 64), (1, 3, 64, 20)]:
    try:
        errors.append(f"no error: {tuple(package(torch.zeros(shape)).shape)}")
    except RuntimeError as e:
        errors.append(str(e))
imported = sorted(m for m in sys.modules if m.split(".")[0] == "blpseg")
metadata = package.get_metadata()
torch.save({"outputs": outputs, "errors": errors, "imported": imported, "metadata": metadata}, sys.argv[3])
"""


def test_pt2_equals_the_checkpoint_at_every_size_with_only_torch_and_lam_ops(pt2, model, tmp_path):
    inputs = images()
    torch.save(inputs, tmp_path / "inputs.pt")
    env = {k: v for k, v in os.environ.items() if k != "AOTI_RUNTIME_CHECK_INPUTS"}
    result = subprocess.run(
        [sys.executable, "-c", _RUN_PT2, pt2, tmp_path / "inputs.pt", tmp_path / "out.pt"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-6000:]
    out = torch.load(tmp_path / "out.pt")
    assert out["imported"] == []
    for image, got in zip(inputs, out["outputs"], strict=True):
        assert_equal_logits(got, logits(model, image))
    for error in out["errors"]:
        assert f"height and width must be >= {export.MIN_SIDE}" in error
    assert out["metadata"]["blpseg.classes"] == "background,stripes,dots,plain,speckle"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (and lam_ops' CUDA kernels)")
def test_cuda_pt2_equals_the_checkpoint(checkpoint, tmp_path):
    out = str(tmp_path / "cuda.pt2")
    export.export_checkpoint(checkpoint, out, 64, 80, device="cuda", log=lambda *a: None)
    package = torch._inductor.aoti_load_package(out)
    model = load_model(checkpoint, ["device=cuda", "model.lam_backend=auto"])[0]
    for image in images():
        assert_equal_logits(package(image.cuda()), logits(model, image.cuda()))


def test_pt2_calls_the_fused_lam_operator(pt2):
    """The package's extern kernels (JSON beside its compiled wrapper) name lam_ops::forward: the
    LAM is the fused operator, not a dense copy compiled into the package."""
    with zipfile.ZipFile(pt2) as z:
        texts = [z.read(n).decode() for n in z.namelist() if n.endswith(".json")]
    assert any('"target": "lam_ops::forward"' in t for t in texts)


def test_onnx_equals_the_checkpoint_in_onnxruntime(onnx_file, model):
    proto = onnx.load(onnx_file)
    onnx.checker.check_model(proto)
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}, "a LAM of standard ONNX operators only"
    session = onnxruntime.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])
    (image_input,) = session.get_inputs()
    assert image_input.name == "image" and image_input.shape[1] == 3
    assert all(isinstance(d, str) for d in (image_input.shape[0], *image_input.shape[2:])), image_input.shape
    # ONNX has no size limit of its own: below the .pt2's smallest size too
    for image in images([*SIZES, (1, 32, 32), (1, 20, 28), (1, 1, 1)]):
        (got,) = session.run(["logits"], {"image": image.numpy()})
        assert_equal_logits(torch.from_numpy(got), logits(model, image))


@pytest.mark.parametrize("radius", [None, 1])
def test_lam_onnx_is_the_operator(radius, tmp_path):
    """The dense ONNX form of lam_ops::forward against the fused operator, at a size other than
    the traced one; radius None is the global LAM (the tiny network uses a window)."""

    class Lam(torch.nn.Module):
        def forward(self, x, f):
            return local_aggregate(x, f, 1.5, radius, backend="cpp")

    gen = torch.Generator().manual_seed(0)
    dim = torch.export.Dim.DYNAMIC
    program = torch.export.export(
        Lam(),
        (torch.randn(2, 3, 5, 7, generator=gen), torch.randn(2, 4, 5, 7, generator=gen)),
        dynamic_shapes={"x": {2: dim, 3: dim}, "f": {2: dim, 3: dim}},
    )
    path = str(tmp_path / "lam.onnx")
    torch.onnx.export(
        program, custom_translation_table={torch.ops.lam_ops.forward.default: export.lam_onnx}, dynamo=True
    ).save(path)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    x, f = torch.randn(2, 3, 6, 4, generator=gen), torch.randn(2, 4, 6, 4, generator=gen)
    (got,) = session.run(None, {i.name: t.numpy() for i, t in zip(session.get_inputs(), (x, f), strict=True)})
    torch.testing.assert_close(torch.from_numpy(got), local_aggregate(x, f, 1.5, radius), rtol=1e-5, atol=1e-5)


def test_a_wrong_export_is_never_written(checkpoint, tmp_path, monkeypatch):
    """The check against the checkpoint runs on the temporary file: a failed check leaves no file."""

    def wrong(program, path, metadata):
        open(path, "w").close()
        return lambda image: torch.zeros(1, 5, 64, 64)

    monkeypatch.setattr(export, "_write_onnx", wrong)
    out = tmp_path / "wrong.onnx"
    with pytest.raises(ValueError, match=r"returned \(1, 5, 64, 64\) logits"):
        export.export_checkpoint(checkpoint, str(out), 64, 80, log=lambda *a: None)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["--out", "{tmp}/model.pt"], "--out must end in .pt2 or .onnx"),
        (["--out", "{tmp}/model.pt2", "--height", "20"], "--height"),
        (["--out", "{tmp}/existing.onnx"], "exists: pass --overwrite"),
        (["--out", "{ckpt}"], "would overwrite the input"),
    ],
)
def test_export_errors(args, message, checkpoint, tmp_path, capsys):
    (tmp_path / "existing.onnx").write_bytes(b"mine")
    args = [a.format(tmp=tmp_path, ckpt=checkpoint) for a in args]
    assert cli.main(["export", "--checkpoint", checkpoint, *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("blpseg export: error:") and message in err, err
    assert (tmp_path / "existing.onnx").read_bytes() == b"mine"


def test_export_needs_a_checkpoint(tmp_path, capsys):
    missing = str(tmp_path / "missing.pt")
    assert cli.main(["export", "--checkpoint", missing, "--out", str(tmp_path / "m.pt2")]) == 1
    assert "checkpoint not found" in capsys.readouterr().err


def _ppm(path, rgb):
    h, w, _ = rgb.shape
    path.write_bytes(b"P6\n# made by the test\n%d %d\n255\n" % (w, h) + rgb.tobytes())


def _read_pgm(path):
    data = path.read_bytes()
    magic, w, h, maxval, pixels = data.split(maxsplit=4)
    assert magic == b"P5" and maxval == b"255"
    return np.frombuffer(pixels, dtype=np.uint8).reshape(int(h), int(w))


@pytest.mark.skipif(cmake_unavailable() is not None, reason=str(cmake_unavailable()))
def test_cpp_example_segments_an_image(cmake_build, pt2, model, tmp_path):
    segment = cmake_build / "examples" / "segment" / "segment"
    rgb = np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    _ppm(tmp_path / "image.ppm", rgb)
    run = lambda *args: subprocess.run([segment, pt2, *args], cwd=tmp_path, capture_output=True, text=True)
    result = run("image.ppm", "mask.pgm")
    assert result.returncode == 0, result.stderr[-6000:]
    mask = torch.from_numpy(_read_pgm(tmp_path / "mask.pgm").astype(np.int64))
    want = logits(model, normalize(rgb)[None])[0]
    assert len(want.argmax(0).unique()) > 1  # a mask of one class would show little
    # each pixel's class is the checkpoint's best one, up to the logits' precision (ties)
    chosen = want.gather(0, mask[None])[0]
    assert (want.max(0).values - chosen).max() <= 1e-3 * want.abs().max()

    _ppm(tmp_path / "small.ppm", rgb[:20])
    (tmp_path / "text.ppm").write_text("P3\n1 1\n255\n0 0 0\n")
    for image, message in [("small.ppm", f">= {export.MIN_SIDE}"), ("text.ppm", "not a binary PPM")]:
        result = run(image, "out.pgm")
        assert result.returncode == 1 and "segment: error:" in result.stderr and message in result.stderr
        assert not (tmp_path / "out.pgm").exists()
