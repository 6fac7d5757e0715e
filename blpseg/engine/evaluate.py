"""Evaluation over a data set: mIoU, per-class IoU and boundary precision, split across processes."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..data.transforms import denormalize
from .distributed import SINGLE_PROCESS, Dist, all_reduce_sum
from .inference import dense_crf, predict_probs, to_size
from .metrics import BoundaryPrecision, confusion_matrix, iou_from_confusion


@torch.no_grad()
def evaluate(
    model: nn.Module, dataset, num_classes: int, cfg: dict, d: Dist = SINGLE_PROCESS, progress: bool = True
) -> dict:
    """`cfg` is a resolved config's eval section: scales, flip, crf (bool or CRF parameters), boundary_bins.
    An image resized for the network (data.resize, EvalTransform) is predicted (and refined by the
    CRF) at that size, and the probabilities scaled back to its mask's size, which the metrics use."""
    was_training = model.training
    model.eval()
    scales, flip, crf = cfg["scales"], cfg["flip"], cfg["crf"]
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    bp = BoundaryPrecision(cfg["boundary_bins"])
    indices = range(d.rank, len(dataset), d.world_size)
    for i in tqdm(indices, desc="eval", unit="image", disable=not (progress and d.is_main)):
        item = dataset[i]
        image, target = item["image"][None].to(d.device), item["target"]
        probs = predict_probs(model, image, scales, flip)[0].cpu()
        if crf:
            rgb = (denormalize(item["image"]).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            probs = torch.from_numpy(dense_crf(rgb, probs.numpy(), **(crf if isinstance(crf, dict) else {})))
        pred = to_size(probs, target.shape).argmax(0)
        cm += confusion_matrix(pred, target, num_classes)
        bp.update(pred.numpy(), target.numpy())
    cm = all_reduce_sum(cm.to(d.device), d).cpu()
    counts = all_reduce_sum(torch.from_numpy(np.stack([bp.correct, bp.total])).to(d.device), d).cpu().numpy()
    bp.correct, bp.total = counts
    model.train(was_training)
    return {**iou_from_confusion(cm), "boundary_precision": bp.result(), "confusion": cm.tolist()}


def format_table(result: dict, class_names) -> str:
    rows = [f"{'class':<16}{'IoU':>8}"]
    rows += [f"{name:<16}{100 * v:>8.2f}" for name, v in zip(class_names, result["iou"], strict=True)]
    rows.append(f"{'mIoU':<16}{100 * result['miou']:>8.2f}")
    rows.append(f"{'pixel acc.':<16}{100 * result['pixel_acc']:>8.2f}")
    bands = " ".join(f"{100 * v:.1f}" for v in result["boundary_precision"])
    rows.append(f"precision by relative boundary distance (boundary -> centre): {bands}")
    return "\n".join(rows)
