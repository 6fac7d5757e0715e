"""A trained checkpoint as a file that runs without blpseg (docs/deployment.md):

- `.pt2`: torch.export, compiled by AOTInductor into a package that
  `torch._inductor.aoti_load_package` (Python, with `import lam_ops`) or libtorch's
  `AOTIModelPackageLoader` (C++, with the lam_ops library loaded) runs. The LAM stays the fused
  `lam_ops::forward` operator, called from the package.
- `.onnx`: torch.onnx (dynamo), run by onnxruntime. ONNX has no LAM operator: it is written with
  standard operators in its dense form (B x HW x HW weights, see `lam_onnx`).

Both take a normalised image (B, 3, H, W) float32 (ImageNet mean and std, as `blpseg predict`)
and return the segmentation logits (B, K, H, W); batch, height and width are dynamic. Each export is
checked against the checkpoint's own forward at two sizes before it is written.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD

FORMATS = (".pt2", ".onnx")
# The smallest height and width a .pt2 takes: torch.export treats a size of 1 as special, so the
# package is traced for networks whose stride-32 features have at least 2 cells, and its compiled
# code is wrong (NaN) below. The package itself refuses smaller images (`Segmenter`).
MIN_SIDE = 33
# The outputs must equal the checkpoint's logits to this, relative to their largest magnitude.
TOLERANCE = 1e-3


class Segmenter(nn.Module):
    """image (B, 3, H, W) -> the segmentation logits (B, K, H, W), in eval mode.

    `check_size`: the graph asserts H, W >= MIN_SIDE on its input. An AOTInductor package checks
    nothing else about its inputs unless AOTI_RUNTIME_CHECK_INPUTS=1 is set, and a shape guard
    that torch.export turns into a range constraint is not checked either: a tensor assert is the
    check that stays in the compiled code."""

    def __init__(self, model: nn.Module, check_size: bool):
        super().__init__()
        self.model = model
        self.check_size = check_size

    def forward(self, image: Tensor) -> Tensor:
        if self.check_size:
            H, W = image.shape[-2:]
            side = torch.stack([torch.scalar_tensor(H), torch.scalar_tensor(W)])
            torch._assert_async(
                (side >= MIN_SIDE).all(), f"blpseg: the image's height and width must be >= {MIN_SIDE} pixels"
            )
        return self.model(image, scribble_head=False)["seg"]


class AdaptiveAvgPool2d(nn.Module):
    """nn.AdaptiveAvgPool2d as two averaging matrices built from the input's size: Inductor
    lowers the adaptive pooling of a dynamic-size input with the traced size fixed (it guards on
    it, and an AOTInductor package does not check guards), so a package returned wrong values at
    every other size. Equal to the original up to float rounding (the bins are the same:
    [floor(i n / k), ceil((i + 1) n / k)))."""

    def __init__(self, output_size: tuple[int, int]):
        super().__init__()
        self.output_size = output_size

    def forward(self, x: Tensor) -> Tensor:
        (kh, kw), (H, W) = self.output_size, x.shape[-2:]
        return torch.einsum("bchw,ih,jw->bcij", x, _bins(H, kh, x), _bins(W, kw, x))


def _bins(n, k: int, like: Tensor) -> Tensor:
    """(k, n): row i averages the inputs of output bin i."""
    i = torch.arange(k, device=like.device)
    start, end = (i * n) // k, ((i + 1) * n + k - 1) // k
    pos = torch.arange(n, device=like.device)
    inside = (pos >= start[:, None]) & (pos < end[:, None])
    return inside.to(like.dtype) / (end - start)[:, None].to(like.dtype)


def _replace_adaptive_pools(model: nn.Module) -> None:
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.AdaptiveAvgPool2d):
                size = child.output_size
                size = (size, size) if isinstance(size, int) else tuple(size)
                if any(s is None for s in size):
                    raise ValueError(f"cannot export {name}: an adaptive pooling that keeps an input size ({size})")
                setattr(module, name, AdaptiveAvgPool2d(size))


def prepare(model: nn.Module, device: torch.device) -> nn.Module:
    """The model to trace: in eval mode, adaptive pools replaced, and its LAMs on the fused
    compiled backend (`cpp` on the CPU, `cuda`): a package calls that operator, never a
    Python-defined one (triton) nor the dense reference."""
    from lam_ops import LocalAggregation
    from lam_ops.backends import BACKENDS

    backend = "cuda" if device.type == "cuda" else "cpp"
    why = BACKENDS[backend].unavailable(device)
    lams = [m for m in model.modules() if isinstance(m, LocalAggregation)]
    if lams and why is not None:
        raise ValueError(f"the .pt2 calls the fused lam_ops operator on {device.type}, which cannot run: {why}")
    for lam in lams:
        lam.backend = backend
    _replace_adaptive_pools(model)
    return model.eval()


def trace(model: nn.Module, example: Tensor, check_size: bool) -> torch.export.ExportedProgram:
    """torch.export with dynamic batch, height and width (traced at batch 2: a size-1 dimension
    would be fixed). Refuses a network whose code fixes a size."""
    dim = torch.export.Dim.DYNAMIC
    shapes = {"image": {0: torch.export.Dim("batch", min=1), 2: dim, 3: dim}}
    try:
        with torch.no_grad():
            return torch.export.export(Segmenter(model, check_size), (example,), dynamic_shapes=shapes)
    except Exception as e:  # torch.export's UserError and unsupported-operation errors alike
        raise ValueError(f"torch.export cannot trace this network with dynamic sizes: {e}") from e


def export_checkpoint(
    checkpoint: str, out: str, height: int, width: int, device: str = "cpu", log: Callable = print
) -> dict:
    """Writes `out` (.pt2 or .onnx) from a training checkpoint, traced and checked at height x
    width and at a second size; returns what was checked ({"sizes": [...], "max_error": ...})."""
    from .checkpoint import load_model

    suffix = os.path.splitext(out)[1].lower()
    if suffix not in FORMATS:
        raise ValueError(f"--out must end in {' or '.join(FORMATS)}, got {out!r}")
    if min(height, width) < MIN_SIDE:
        raise ValueError(f"--height and --width must be >= {MIN_SIDE}, got {height}x{width}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    if device == "cuda" and suffix == ".onnx":
        raise ValueError("--device cuda is for .pt2; an .onnx file runs on any onnxruntime provider")
    model, cfg, names, dev = load_model(checkpoint, [f"device={device}"])
    model = prepare(model, dev)
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(2, 3, height, width, generator=gen).to(dev)
    metadata = {
        "blpseg.classes": ",".join(names),
        "blpseg.mean": ",".join(map(str, IMAGENET_MEAN)),
        "blpseg.std": ",".join(map(str, IMAGENET_STD)),
        "blpseg.min_side": str(MIN_SIDE if suffix == ".pt2" else 1),
        "blpseg.device": dev.type,
        "blpseg.checkpoint": os.path.abspath(checkpoint),
    }
    log(f"tracing {cfg['model']['backbone']} with torch.export")
    program = trace(model, example, check_size=suffix == ".pt2")
    tmp = _temporary(out)
    os.makedirs(os.path.dirname(tmp), exist_ok=True)
    try:
        if suffix == ".pt2":
            log("compiling with AOTInductor (minutes for a ResNet-101 on 2 cores)")
            run = _write_pt2(program, tmp, metadata)
        else:
            log("converting to ONNX")
            run = _write_onnx(program, tmp, metadata)
        log("checking the export against the checkpoint")
        sizes = [(height, width), (height + 33, width + 17)]  # the second: no multiple of any stride
        error = max(check_equal(run, model, torch.randn(1, 3, h, w, generator=gen).to(dev)) for h, w in sizes)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return {"sizes": sizes, "max_error": error}


def check_equal(run: Callable, model: nn.Module, image: Tensor) -> float:
    """The largest difference between run(image) and the model's logits, relative to their
    largest magnitude; ValueError above TOLERANCE or for another shape."""
    with torch.no_grad():
        want = model(image, scribble_head=False)["seg"]
    got = run(image)
    if got.shape != want.shape:
        raise ValueError(
            f"the export returned {tuple(got.shape)} logits for a {tuple(image.shape)} image, not {tuple(want.shape)}"
        )
    error = ((got.to(want) - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()
    if not error <= TOLERANCE:
        raise ValueError(
            f"the export's logits differ from the checkpoint's at {tuple(image.shape[-2:])}: {error:.2e} of their "
            f"largest magnitude (tolerance {TOLERANCE}); nothing written"
        )
    return error


def _temporary(out: str) -> str:
    """A file beside `out`, with its suffix (AOTInductor requires .pt2), renamed to `out` once complete."""
    folder, name = os.path.split(os.path.abspath(out))
    stem, suffix = os.path.splitext(name)
    return os.path.join(folder, f".{stem}.tmp{os.getpid()}{suffix}")


def inductor_configs(metadata: dict) -> dict:
    """AOTInductor's options for a package that runs elsewhere: x86-64 code vectorised for AVX2
    (Inductor would pick this machine's widest ISA, e.g. AVX-512, which another CPU may lack), and
    no lower-bound check of the dynamic sizes under AOTI_RUNTIME_CHECK_INPUTS=1 (it would refuse a
    batch of 1, traced at 2 but correct; the image size has its own check, see Segmenter)."""
    configs = {"aot_inductor.metadata": metadata}
    if platform.machine().lower() in ("x86_64", "amd64"):
        configs["cpp.simdlen"] = 256
    if hasattr(torch._inductor.config.aot_inductor, "check_lowerbound"):  # not in every supported torch
        configs["aot_inductor.check_lowerbound"] = False
    return configs


def _write_pt2(program, path: str, metadata: dict) -> Callable:
    torch._inductor.aoti_compile_and_package(program, package_path=path, inductor_configs=inductor_configs(metadata))
    package = torch._inductor.aoti_load_package(path)
    return lambda image: package(image)


def _write_onnx(program, path: str, metadata: dict) -> Callable:
    try:
        import onnxruntime  # noqa: F401  (checked first: without it, the export cannot be checked)
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"the .onnx export needs onnx, onnxscript and onnxruntime: pip install 'blpseg[export]' ({e})"
        ) from e
    onnx_program = torch.onnx.export(
        program,
        custom_translation_table={torch.ops.lam_ops.forward.default: lam_onnx},
        input_names=["image"],
        output_names=["logits"],
        dynamo=True,
        verbose=False,
    )
    onnx_program.model.metadata_props.update(metadata)
    onnx_program.save(path, external_data=False)
    return onnx_runner(path)


def onnx_runner(path: str) -> Callable:
    """A function running the .onnx at `path` in onnxruntime (CPU) on a torch tensor."""
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return lambda image: torch.from_numpy(session.run(None, {"image": image.cpu().numpy()})[0])


def lam_onnx(x, f, sigma, radius=None, key_mask=None):
    """lam_ops::forward in standard ONNX operators (onnxscript), the dense form of the contract
    (docs/operator.md): for each image, the (HW, HW) logits f_i . f_j - |s_i - s_j|^2 / (2 sigma^2),
    masked to the square window |dy|, |dx| <= radius, softmax over the keys i, then the weighted
    sum of x. Several B x (HW)^2 tensors live at once (docs/deployment.md says how much memory);
    non-finite x is not summed apart as the fused kernels do."""
    from onnxscript import opset18 as op

    if key_mask is not None:  # a key mask needs the training target: an eval-mode network has none
        raise ValueError("the ONNX export of the LAM takes no key mask")
    shape = op.Shape(x)
    B, C, H, W = (op.Slice(shape, [i], [i + 1]) for i in range(4))
    D = op.Slice(op.Shape(f), [1], [2])
    N = op.Mul(H, W)
    keys = op.Reshape(f, op.Concat(B, D, N, axis=0))
    logits = op.MatMul(op.Transpose(keys, perm=[0, 2, 1]), keys)  # (B, key, query)
    n = op.Range(op.Constant(value_int=0), op.Squeeze(N), op.Constant(value_int=1))
    width = op.Squeeze(W)
    # pixel coordinates in x's dtype before the (HW)^2 differences (exact: integers far below 2^24)
    ys, xs = op.CastLike(op.Div(n, width), x), op.CastLike(op.Mod(n, width), x)
    dy = op.Sub(op.Unsqueeze(ys, [1]), op.Unsqueeze(ys, [0]))
    dx = op.Sub(op.Unsqueeze(xs, [1]), op.Unsqueeze(xs, [0]))
    dist2 = op.Add(op.Mul(dy, dy), op.Mul(dx, dx))
    s = op.CastLike(sigma, x)
    logits = op.Add(logits, op.Mul(dist2, op.Div(op.CastLike(op.Constant(value_float=-0.5), x), op.Mul(s, s))))
    if radius is not None:
        r = op.CastLike(op.Constant(value_int=radius), x)
        inside = op.And(op.LessOrEqual(op.Abs(dy), r), op.LessOrEqual(op.Abs(dx), r))
        logits = op.Where(inside, logits, op.CastLike(op.Constant(value_float=float("-inf")), x))
    weights = op.Softmax(logits, axis=1)
    out = op.Reshape(op.MatMul(op.Reshape(x, op.Concat(B, C, N, axis=0)), weights), shape)
    lse = op.Reshape(op.ReduceLogSumExp(logits, [1], keepdims=0), op.Concat(B, H, W, axis=0))
    return out, lse
