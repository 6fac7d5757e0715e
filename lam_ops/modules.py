"""LocalAggregation: BLPSeg's LAM as a module that owns its guidance branch and sigma."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backends import BACKENDS
from .functional import HALF_DTYPES, check_backend_name, check_radius, check_sigma_value, local_aggregate

SIMILARITIES = ("both", "features", "position")

# The "features only" ablation drops the distance term: with this sigma, |s_i - s_j|^2 / (2 sigma^2)
# is below float32 resolution for any image that fits in memory, and the contract keeps sigma finite.
_NO_POSITION_SIGMA = 1e8


class PatchEmbed(nn.Module):
    """The authors' guidance branch: Conv k x k stride k (3 -> D), LayerNorm over channels, Conv 1x1.
    An image whose size is not a multiple of k is zero-padded at the bottom and right first."""

    def __init__(self, in_chans: int = 3, embed_dim: int = 256, patch_size: int = 4):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)
        self.out = nn.Conv2d(embed_dim, embed_dim, kernel_size=1)

    def forward(self, image: Tensor) -> Tensor:
        H, W = image.shape[-2:]
        p = self.patch_size
        image = F.pad(image, (0, (-W) % p, 0, (-H) % p))
        f = self.proj(image)
        f = self.norm(f.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.out(f)


class LocalAggregation(nn.Module):
    """Aggregates logits with weights from the image's low-level features and pixel distance.

    Args:
        in_chans, embed_dim, patch_size: the guidance branch (authors: 3, 256, 4).
        sigma: the Gaussian bandwidth in units of the logits' grid (authors: 6 on the stride-4 grid).
        learnable_sigma: learn sigma (paper Table IV); it is kept > 0 by learning its logarithm.
        radius: window half size on the logits' grid; None is the authors' exact global operator.
            The default 24 = 4 sigma: measured on a trained model's LAM inputs (results/lam_fidelity),
            its argmax differs from the global operator's on one pixel in four images (2e-5; relative
            L2 error 5e-5), where 3 sigma flips 1.7e-4 of them: the feature term lets far pixels with
            similar features outweigh the distance term, so 3 sigma of the Gaussian alone is not enough.
        similarity: "both" (features and position, the paper's LAM), "features" or "position"
            (paper Table III).
        backend: as in `local_aggregate`.
    """

    def __init__(
        self,
        in_chans: int = 3,
        embed_dim: int = 256,
        patch_size: int = 4,
        sigma: float = 6.0,
        learnable_sigma: bool = False,
        radius: int | None = 24,
        similarity: str = "both",
        backend: str = "auto",
    ):
        super().__init__()
        check_sigma_value(sigma)
        check_radius(radius)
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
        check_backend_name(backend)
        if similarity == "features" and learnable_sigma:
            raise ValueError("learnable_sigma needs the position term: similarity='features' has none")
        self.radius = radius
        self.similarity = similarity
        self.backend = backend
        self.embed = PatchEmbed(in_chans, embed_dim, patch_size) if similarity != "position" else None
        log_sigma = torch.tensor(math.log(_NO_POSITION_SIGMA if similarity == "features" else sigma))
        if learnable_sigma:
            self.log_sigma = nn.Parameter(log_sigma)
        else:
            self.register_buffer("log_sigma", log_sigma)

    @property
    def sigma(self) -> Tensor:
        return self.log_sigma.exp()

    def guidance(self, image: Tensor, size: tuple[int, int]) -> Tensor:
        """Guidance features f at `size`, the logits' resolution."""
        if self.embed is None:  # position only: f = 0 leaves the distance term alone
            return image.new_zeros((image.shape[0], 1) + tuple(size))
        f = self.embed(image)
        if tuple(f.shape[-2:]) != tuple(size):
            f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
        return f

    def forward(self, logits: Tensor, image: Tensor, key_mask: Tensor | None = None) -> Tensor:
        # Computed in the logits' dtype (a float64 model with float64 logits in float64; under
        # autocast, f follows the logits); sigma is used in the accumulation type whatever its dtype.
        # Half logits on a device without half kernels (the CPU) are computed in float32 by the
        # fused kernel and returned in their dtype: by backend="auto" itself (local_aggregate), and
        # here for a named backend that has no half kernels there (cpp under autocast), which the
        # function, casting nothing for a named backend, would refuse.
        f = self.guidance(image, logits.shape[-2:]).to(logits.dtype)
        x, sigma = logits, self.sigma
        upcast = (
            x.dtype in HALF_DTYPES
            and self.backend != "auto"
            and BACKENDS[self.backend].unsupported(x, f, sigma, self.radius, key_mask) is not None
        )
        with torch.autocast(device_type=logits.device.type, enabled=False):
            if upcast:
                return local_aggregate(x.float(), f.float(), sigma, self.radius, key_mask, self.backend).to(x.dtype)
            return local_aggregate(x, f, sigma, self.radius, key_mask, self.backend)

    def extra_repr(self) -> str:
        return f"radius={self.radius}, similarity={self.similarity!r}, backend={self.backend!r}"
