"""BLPSeg: backbone -> PPM + UPerNet decoder -> segmentation head -> LAM, plus the scribble head
that reads the decoder output detached (it estimates which pixels an annotator would scribble and
never trains the backbone)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from lam_ops import LocalAggregation

from ..config import ModelConfig
from .backbone import build_backbone
from .decoder import UPerNetDecoder
from .heads import Head

KEY_MASKS = (None, "labeled", "unlabeled")
# Bumped whenever a config trains a different network than before (ablation run folders hash it, so
# runs of an older network are not taken for finished ones). 2: the release's PPM, heads and init.
NETWORK_VERSION = 2
# The defaults are the config schema's (config.ModelConfig holds every default): a BLPSeg built
# here is the network a config that leaves model.* out trains.
DEFAULTS = ModelConfig()


class BLPSeg(nn.Module):
    """Args:
    num_classes: K (background included).
    backbone, pretrained: a name for `build_backbone` (resnet18/50/101, resnet101_deepstem,
        timm:<model>) and its weights: "imagenet" (downloaded once), a local file, or None.
    channels: decoder and head width (256).
    lam: apply the Local Aggregation Module to the segmentation logits (False: Table III "w/o").
    similarity, sigma, learnable_sigma, radius, embed_dim, lam_backend: LocalAggregation's options;
        radius=None, the exact global LAM as the paper's, where LocalAggregation's own default is 24
        (the operator library's choice for its users: docs/operator.md).
    key_mask: None (aggregate from every pixel), "labeled" or "unlabeled" (aggregate only from
        scribbled / unscribbled pixels, Table V). Needs the target, so it applies in training.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = DEFAULTS.backbone,
        pretrained: str | None = DEFAULTS.pretrained,
        channels: int = DEFAULTS.channels,
        lam: bool = DEFAULTS.lam,
        similarity: str = DEFAULTS.similarity,
        sigma: float = DEFAULTS.sigma,
        learnable_sigma: bool = DEFAULTS.learnable_sigma,
        radius: int | None = DEFAULTS.radius,
        embed_dim: int = DEFAULTS.embed_dim,
        lam_backend: str = DEFAULTS.lam_backend,
        key_mask: str | None = DEFAULTS.key_mask,
    ):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        if key_mask not in KEY_MASKS:
            raise ValueError(f"key_mask must be one of {KEY_MASKS}, got {key_mask!r}")
        if key_mask is not None and not lam:
            raise ValueError("key_mask needs the LAM (lam=True)")
        self.num_classes = num_classes
        self.key_mask = key_mask
        self.backbone = build_backbone(backbone, pretrained)
        self.decoder = UPerNetDecoder(self.backbone.channels, channels)
        self.seg_head = Head(channels, num_classes, channels)
        self.scrib_head = Head(channels, num_classes + 1, channels)
        self.lam = None
        if lam:
            self.lam = LocalAggregation(
                in_chans=3,
                embed_dim=embed_dim,
                patch_size=4,
                sigma=sigma,
                learnable_sigma=learnable_sigma,
                radius=radius,
                similarity=similarity,
                backend=lam_backend,
            )
        self._init_weights()

    def _init_weights(self) -> None:
        """Outside the backbone, as the release: convs Kaiming-normal (fan_out, relu), BN weight 1
        and bias 0; conv biases start at 0 here, where the release leaves PyTorch's default uniform
        ones (docs/reproduction.md, "Training differences")."""
        for part in (self.decoder, self.seg_head, self.scrib_head, self.lam):
            for m in part.modules() if part is not None else ():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part: backbone, ppm, fpn (laterals, FPN convs, fusion), the heads, lam."""

        def count(*modules):
            return sum(p.numel() for m in modules if m is not None for p in m.parameters())

        d = self.decoder
        return {
            "backbone": count(self.backbone),
            "ppm": count(d.ppm),
            "fpn": count(d.lateral, d.fpn, d.fuse),
            "seg_head": count(self.seg_head),
            "scrib_head": count(self.scrib_head),
            "lam": count(self.lam),
        }

    def forward(self, image: Tensor, target: Tensor | None = None, scribble_head: bool | None = None) -> dict:
        """image (B, 3, H, W) -> {"seg": (B, K, H, W) logits, "scrib": (B, K+1, H, W) logits}.
        "scrib" is computed when `scribble_head` (default: in training). `target` (B, H, W), with K
        for unscribbled pixels, is only read for the key mask."""
        size = image.shape[-2:]
        feat = self.decoder(self.backbone(image))
        seg = self.seg_head(feat)
        if self.lam is not None:
            seg = self.lam(seg, image, self._key_mask(target, seg.shape[-2:]))
        out = {"seg": F.interpolate(seg, size=size, mode="bilinear", align_corners=False)}
        if self.training if scribble_head is None else scribble_head:
            scrib = self.scrib_head(feat.detach())
            out["scrib"] = F.interpolate(scrib, size=size, mode="bilinear", align_corners=False)
        return out

    def _key_mask(self, target: Tensor | None, size) -> Tensor | None:
        if self.key_mask is None or target is None:
            return None
        t = F.interpolate(target[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()
        return t < self.num_classes if self.key_mask == "labeled" else t == self.num_classes
