# Transcribed from MIT-licensed code: github.com/YudeWang/BLPSeg, Copyright (c) 2023 Hibercraft,
# and (the PPM) github.com/arvijj/icam, Copyright (c) 2022 Arvi Jonnarth. Their licence's notice:
#
# Permission is hereby granted, free of charge, to any person obtaining a copy of this software and
# associated documentation files (the "Software"), to deal in the Software without restriction,
# including without limitation the rights to use, copy, modify, merge, publish, distribute,
# sublicense, and/or sell copies of the Software, and to permit persons to whom the Software is
# furnished to do so, subject to the following conditions: The above copyright notice and this
# permission notice shall be included in all copies or substantial portions of the Software.
# THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT
# NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
# NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM,
# DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT
# OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.

"""A transcription of the authors' released network, the reference that tests/test_blpseg_release.py
compares `blpseg import-release` against: their module and parameter names, their forward.

Where it came from (licence above): github.com/YudeWang/BLPSeg, commit 61866a1: lib/net/blpseg.py
(BLPSeg, UPerNetDecoder, PatchEmbed) and lib/net/backbone/resnet.py (ResNet with deep_base=True,
Bottleneck). lib/net/operators/PPM.py is not in the copy of the
repository that was read; its PPM is that of the same code base as kept in github.com/arvijj/icam
(lib/net/operators/PPM.py, commit d1b679e): branches `stages.{i}` = pooling, 1x1 conv, norm, then
`bottleneck` = 1x1 conv, norm, ReLU, Dropout2d(0.1) over [the pooled branches, the input], the
order a colleague measured with the release's own code.

What was changed, none of it in what the forward computes in eval mode:
- SynchronizedBatchNorm2d (the release's lib/net/sync_batchnorm, CSAIL's; in eval it calls
  F.batch_norm with the running statistics) -> nn.BatchNorm2d, which computes the same in eval,
  with the three buffers of the synchronised one (`_tmp_running_mean`, `_tmp_running_var`,
  `_running_iter`) registered so the state_dict holds the release's keys;
- no CUDA calls: the distance matrix is built on the logits' device;
- BLPSeg.forward returns the logits of both heads, upsampled as the release's training path does
  (the release returns the segmentation logits alone when given no scribbles; its losses and
  pseudo labels are left out, but the CrossEntropyLoss, whose class weights are a buffer of the
  state_dict, is kept);
- the ResNet's block counts are a parameter (the release's resnet101: [3, 4, 23, 3]) and no
  ImageNet weights are loaded;
- build_distance_buffer takes the grid (the release's: 96 x 96, its 384 px crop at stride 4);
- `cfg` is a namespace of the keys the network reads; code style (spaces, names of locals).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

RESNET101_BLOCKS = (3, 4, 23, 3)
BN_MOM = 0.1  # the backbone's; the decoder's norms keep the synchronised BN's default


class SynchronizedBatchNorm2d(nn.BatchNorm2d):
    def __init__(self, num_features, eps=1e-5, momentum=0.001, affine=True):
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine)
        self.register_buffer("_tmp_running_mean", torch.zeros(num_features))
        self.register_buffer("_tmp_running_var", torch.ones(num_features))
        self.register_buffer("_running_iter", torch.ones(1))


def release_config(num_classes: int = 21, sigma: float = 6.0, ppm_dim: int = 256) -> SimpleNamespace:
    return SimpleNamespace(
        MODEL_NUM_CLASSES=num_classes,
        MODEL_PPM_DIM=ppm_dim,
        MODEL_LAM_SIGMA=sigma,
        LOSS_UNLABEL_CLASS_W=0.02,
    )


# ---------------------------------------------------------------- lib/net/backbone/resnet.py


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, dilation=1, downsample=None, previous_dilation=1, norm_layer=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = norm_layer(planes, momentum=BN_MOM, affine=True)
        self.conv2 = nn.Conv2d(
            planes, planes, kernel_size=3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = norm_layer(planes, momentum=BN_MOM, affine=True)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = norm_layer(planes * 4, momentum=BN_MOM, affine=True)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        residual = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            residual = self.downsample(x)
        out += residual
        return self.relu(out)


class ResNet(nn.Module):
    """deep_base=True, dilated=False: the release's configuration."""

    def __init__(self, block, layers, norm_layer=nn.BatchNorm2d):
        super().__init__()
        self.inplanes = 128
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=3, stride=2, padding=1, bias=False),
            norm_layer(64, momentum=BN_MOM, affine=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, kernel_size=3, stride=1, padding=1, bias=False),
            norm_layer(64, momentum=BN_MOM, affine=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, 128, kernel_size=3, stride=1, padding=1, bias=False),
        )
        self.bn1 = norm_layer(self.inplanes, momentum=BN_MOM, affine=True)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layernorm = nn.LayerNorm(self.inplanes)  # read only by forward(return_embed=True), never called so
        self.layer1 = self._make_layer(block, 64, layers[0], norm_layer=norm_layer)
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2, norm_layer=norm_layer)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2, norm_layer=norm_layer)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2, norm_layer=norm_layer)
        self.num_features = [256, 512, 1024, 2048]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2.0 / n))
            elif isinstance(m, norm_layer):
                m.weight.data.fill_(1)
                m.bias.data.zero_()

    def _make_layer(self, block, planes, blocks, stride=1, dilation=1, norm_layer=None):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                norm_layer(planes * block.expansion, momentum=BN_MOM, affine=True),
            )
        layers = [
            block(
                self.inplanes,
                planes,
                stride,
                dilation=1,
                downsample=downsample,
                previous_dilation=dilation,
                norm_layer=norm_layer,
            )
        ]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(
                block(self.inplanes, planes, dilation=dilation, previous_dilation=dilation, norm_layer=norm_layer)
            )
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        l1 = self.layer1(x)
        l2 = self.layer2(l1)
        l3 = self.layer3(l2)
        l4 = self.layer4(l3)
        return [l1, l2, l3, l4]


# ---------------------------------------------------------------- lib/net/operators/PPM.py


class PPM(nn.Module):
    def __init__(self, features, out_features=512, sizes=(1, 2, 3, 6), norm_layer=nn.BatchNorm2d):
        super().__init__()
        self.stages = nn.ModuleList([self._make_stage(features, out_features, size, norm_layer) for size in sizes])
        self.bottleneck = nn.Sequential(
            nn.Conv2d(features + len(sizes) * out_features, out_features, kernel_size=1, padding=0, bias=False),
            norm_layer(out_features),
            nn.ReLU(),
            nn.Dropout2d(0.1),
        )

    def _make_stage(self, features, out_features, size, norm_layer):
        prior = nn.AdaptiveAvgPool2d(output_size=(size, size))
        conv = nn.Conv2d(features, out_features, kernel_size=1, bias=False)
        return nn.Sequential(prior, conv, norm_layer(out_features))

    def forward(self, feats):
        h, w = feats.size(2), feats.size(3)
        priors = [
            F.interpolate(stage(feats), size=(h, w), mode="bilinear", align_corners=True) for stage in self.stages
        ] + [feats]
        return self.bottleneck(torch.cat(priors, 1))


# ---------------------------------------------------------------- lib/net/blpseg.py


def _head(inplane, outputs):
    return nn.Sequential(
        nn.Conv2d(inplane, inplane, kernel_size=1, bias=False),
        nn.ReLU(inplace=True),
        nn.Conv2d(inplane, inplane, kernel_size=1, bias=False),
        nn.ReLU(inplace=True),
        nn.Conv2d(inplane, outputs, kernel_size=1, bias=True),
    )


class BLPSeg(nn.Module):
    def __init__(self, cfg, norm_layer=SynchronizedBatchNorm2d, blocks=RESNET101_BLOCKS):
        super().__init__()
        self.cfg = cfg
        inplane = cfg.MODEL_PPM_DIM
        self.backbone = ResNet(Bottleneck, blocks, norm_layer=norm_layer)
        feature_inplanes = self.backbone.num_features
        self.ppm = PPM(feature_inplanes[-1], inplane, norm_layer=norm_layer)
        self.decoder = UPerNetDecoder(feature_inplanes, inplane, norm_layer)
        self.seg_head = _head(inplane, cfg.MODEL_NUM_CLASSES)
        self.scribble_head = _head(inplane, cfg.MODEL_NUM_CLASSES + 1)
        self.embed_proj = PatchEmbed(patch_size=4, in_chans=3, embed_dim=inplane)
        backbone_modules = set(self.backbone.modules())
        for m in self.modules():
            if m not in backbone_modules:
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if isinstance(m, norm_layer):
                    nn.init.constant_(m.weight, 1)
                    nn.init.constant_(m.bias, 0)
        weight = torch.ones(cfg.MODEL_NUM_CLASSES + 1)
        weight[-1] = cfg.LOSS_UNLABEL_CLASS_W
        self.CELoss = nn.CrossEntropyLoss(ignore_index=255, weight=weight)

    def build_distance_buffer(self, grid=(96, 96)):
        self.distance_prob = nn.Parameter(
            self.get_distance(grid, sigma=self.cfg.MODEL_LAM_SIGMA).float().cpu(), requires_grad=False
        )

    def local_aggregation(self, shallow_feat, seg_pred):
        n, c, h, w = seg_pred.size()
        feat_prob = self.get_feat_prob(shallow_feat, (h, w), sigma=1)
        dis_prob = self.get_dis_prob((h, w), sigma=self.cfg.MODEL_LAM_SIGMA, device=seg_pred.device)
        sim = feat_prob * dis_prob
        sim = sim / (torch.sum(sim, dim=1, keepdim=True) + 1e-7)
        return torch.einsum("nca,nab->ncb", seg_pred.flatten(2), sim).view(n, -1, h, w)

    def forward(self, x):
        """(segmentation logits, scribble-head logits), both at the input's size."""
        H, W = x.size()[-2:]
        backbone_out = self.backbone(x)
        backbone_out.append(self.ppm(backbone_out[-1]))
        decoder_out = self.decoder(backbone_out)
        shallow_feat = self.embed_proj(x)
        seg_pred = self.seg_head(decoder_out)
        seg_pred = self.local_aggregation(shallow_feat, seg_pred)
        seg_pred = F.interpolate(seg_pred, (H, W), mode="bilinear")
        scrib_pred = self.scribble_head(decoder_out.detach())
        scrib_pred = F.interpolate(scrib_pred, (H, W), mode="bilinear")
        return seg_pred, scrib_pred

    @torch.no_grad()
    def get_dis_prob(self, size, sigma=6, device="cpu"):
        if self.training:
            return self.distance_prob.detach()
        return self.get_distance(size, sigma, device).float().detach()

    def get_feat_prob(self, feat, size, sigma=1):
        if feat.shape[-2] == size[0] and feat.shape[-1] == size[1]:
            feat = feat.flatten(2)
        else:
            feat = F.interpolate(feat, size, mode="bilinear").flatten(2)
        return torch.einsum("nca,ncb->nab", feat, feat).softmax(dim=1)

    @torch.no_grad()
    def get_distance(self, size, sigma=6, device="cpu"):
        h, w = size
        grid_h, grid_w = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        coord = torch.stack([grid_h, grid_w]).flatten(1).transpose(0, 1).contiguous().float()  # HW x 2
        delta = torch.cdist(coord, coord, p=2) ** 2
        delta = torch.exp(-delta / (2 * sigma**2))
        return delta.unsqueeze(0)


class UPerNetDecoder(nn.Module):
    def __init__(self, feature_inplanes, inplane, norm_layer):
        super().__init__()
        self.lateral_convs = nn.ModuleList()
        self.fpn_convs = nn.ModuleList()
        for i in range(3):
            self.lateral_convs.append(
                nn.Sequential(
                    nn.Conv2d(feature_inplanes[i], inplane, kernel_size=1, bias=False),
                    norm_layer(inplane),
                    nn.ReLU(inplace=True),
                )
            )
            self.fpn_convs.append(
                nn.Sequential(
                    nn.Conv2d(inplane, inplane, kernel_size=3, padding=1, bias=False),
                    norm_layer(inplane),
                    nn.ReLU(inplace=True),
                )
            )
        self.fpn_bottleneck = nn.Sequential(
            nn.Conv2d(inplane * 4, inplane, kernel_size=3, padding=1, bias=False),
            norm_layer(inplane),
            nn.ReLU(inplace=True),
        )
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if isinstance(m, norm_layer):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, conv_out):
        laterals = [lateral_conv(conv_out[i]) for i, lateral_conv in enumerate(self.lateral_convs)]
        laterals.append(conv_out[-1])  # the PPM's output
        levels = len(laterals)
        for i in range(levels - 1, 0, -1):
            prev_shape = laterals[i - 1].shape[2:]
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=prev_shape, mode="bilinear", align_corners=False
            )
        fpn_outs = [self.fpn_convs[i](laterals[i]) for i in range(levels - 1)]
        fpn_outs.append(laterals[-1])
        for i in range(levels - 1, 0, -1):
            fpn_outs[i] = F.interpolate(fpn_outs[i], size=fpn_outs[0].shape[2:], mode="bilinear", align_corners=False)
        return self.fpn_bottleneck(torch.cat(fpn_outs, dim=1))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size=4, in_chans=3, embed_dim=96, norm_layer=nn.LayerNorm):
        super().__init__()
        self.patch_size = (patch_size, patch_size)
        self.embed_dim = embed_dim
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else None
        self.conv = nn.Conv2d(embed_dim, embed_dim, kernel_size=1, bias=True)

    def forward(self, x):
        _, _, H, W = x.size()
        if W % self.patch_size[1] != 0:
            x = F.pad(x, (0, self.patch_size[1] - W % self.patch_size[1]))
        if H % self.patch_size[0] != 0:
            x = F.pad(x, (0, 0, 0, self.patch_size[0] - H % self.patch_size[0]))
        x = self.proj(x)
        if self.norm is not None:
            Wh, Ww = x.size(2), x.size(3)
            x = x.flatten(2).transpose(1, 2)
            x = self.norm(x)
            x = x.transpose(1, 2).view(-1, self.embed_dim, Wh, Ww)
        return self.conv(x)
