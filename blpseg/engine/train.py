"""The training loop: AdamW with poly decay, bfloat16 or float16 autocast, the BLP and scribble
losses, the self-training switch, DDP, metrics, atomic checkpoints and resuming."""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from typing import Callable, Optional

import torch
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader
from tqdm import tqdm

from lam_ops import available_backends

from ..config import RESUME_MAY_CHANGE, class_names, dump, fixed_differences, resolve
from ..data.folder import build_split
from ..data.prepare import prepare_data
from ..data.transforms import EvalTransform, TrainTransform
from ..losses import ScribbleLoss, build_seg_loss, pseudo_labels
from ..models import build_model
from . import distributed
from .checkpoint import load_checkpoint, remove_stale_temporaries, save_checkpoint
from .evaluate import evaluate, format_table
from .logger import MetricLogger
from .sampler import ResumableSampler


AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def amp_dtype(value) -> Optional[torch.dtype]:
    """train.amp: false, true (bfloat16: no loss scaling needed), or 'bfloat16' / 'float16'
    (float16, as the authors' release trained, for GPUs without bfloat16: with a GradScaler)."""
    if value is False or value is None:
        return None
    if value is True:
        return torch.bfloat16
    if value in AMP_DTYPES:
        return AMP_DTYPES[value]
    raise ValueError(f"train.amp: expected true, false, 'bfloat16' or 'float16', got {value!r}")


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on norms, biases and log sigma (decay would pull sigma towards 1)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train(cfg: dict, resume: Optional[str] = None, on_step: Optional[Callable[[int, float], None]] = None) -> dict:
    """Trains as `cfg` (a config mapping, resolved here) says; `resume` is a checkpoint to continue
    from, whose fixed settings (config.RESUME_MAY_CHANGE lists the others) must equal the config's.
    `on_step(iteration, loss)` is called after every step. Returns the final validation result (or
    None), the run folder and the checkpoint holding the final weights."""
    cfg = resolve(cfg)
    d = distributed.setup(cfg["device"], cfg["threads"])
    try:
        return _train(cfg, d, resume, on_step)
    finally:
        distributed.cleanup()


def _train(cfg, d, resume, on_step) -> dict:
    names = class_names(cfg)
    K = len(names)
    dc, tc, lc = cfg["data"], cfg["train"], cfg["loss"]
    out_dir, seed = cfg["out_dir"], cfg["seed"]
    state = _resume_state(resume, cfg, names) if resume else None
    prepare_data(cfg, d)
    torch.manual_seed(seed)
    train_set = build_split(dc, "train", K, TrainTransform(dc["crop"], dc["scale"]), seed)
    val_set = build_split(dc, "val", K, EvalTransform()) if dc["val"] is not None else None
    model = build_model(K, **cfg["model"]).to(d.device)
    optimizer = torch.optim.AdamW(param_groups(model, tc["weight_decay"]), lr=tc["lr"])
    sampler = ResumableSampler(len(train_set), tc["batch_size"], seed, d.rank, d.world_size)
    total = int(tc["iters"] or tc["epochs"] * sampler.batches_per_epoch)
    power = tc["poly_power"]
    scheduler = LambdaLR(optimizer, lambda it: (1 - min(it, total) / total) ** power)
    dtype = amp_dtype(tc["amp"])
    scaler = torch.amp.GradScaler(d.device.type, enabled=dtype == torch.float16)
    start = 0
    if state is not None:
        if int(state["iteration"]) > total:
            raise ValueError(
                f"{resume} has trained {state['iteration']} iterations, more than the {total} this config runs "
                f"(train.iters, or train.epochs x {sampler.batches_per_epoch} batches): raise train.epochs or "
                f"train.iters to continue it, or evaluate it with `blpseg eval --checkpoint {resume}`"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start = int(state["iteration"])
    net = distributed.wrap(model, d)
    seg_loss = build_seg_loss(lc["seg"], **lc["seg_options"])
    scrib_loss = ScribbleLoss(K, lc["unlabeled_weight"]).to(d.device)
    st_from, st_threshold = lc["self_training_from"], lc["pseudo_threshold"]
    ckpt_path = os.path.join(out_dir, "last.pt")
    ckpt_every = int(tc["checkpoint_every"] or sampler.batches_per_epoch)
    eval_every, log_every = int(tc["eval_every"] or 0), tc["log_every"]
    logger = MetricLogger(out_dir, d.is_main, start=start)
    if d.is_main:
        os.makedirs(out_dir, exist_ok=True)
        for path in remove_stale_temporaries(out_dir):
            tqdm.write(f"removed {path}, left by a checkpoint write that was interrupted")
        with open(os.path.join(out_dir, "config.yaml"), "w") as fh:
            fh.write(dump(cfg))
        if dc["val"] is not None and val_set is None:
            tqdm.write(f"{dc['root']} has no validation images (masks/ of images without scribbles): no evaluation")
        tqdm.write(
            f"training {total} iterations from {start} on {d.world_size} x {d.device}; "
            f"LAM backends here: {', '.join(available_backends(d.device))}; run folder: {out_dir}"
        )

    bar = tqdm(total=total, initial=start, desc="train", unit="it", disable=not d.is_main, dynamic_ncols=True)
    data_iter, result, tic = None, None, time.perf_counter()
    for it in range(start, total):
        epoch, b = divmod(it, sampler.batches_per_epoch)
        if data_iter is None or b == 0:
            sampler.set_epoch(epoch, b)
            train_set.set_epoch(epoch)
            loader = DataLoader(
                train_set, tc["batch_size"], sampler=sampler, num_workers=dc["workers"], drop_last=True,
                pin_memory=d.device.type == "cuda", persistent_workers=False,
            )  # fmt: skip
            data_iter = iter(loader)
        batch = next(data_iter)
        image = batch["image"].to(d.device, non_blocking=True)
        target = batch["target"].to(d.device, non_blocking=True)
        # the step's random numbers (the PPM's dropout) depend only on (seed, iteration), as the
        # samples do on (seed, epoch, index): a resumed run draws what the uninterrupted one drew
        # (seeded after the batch: a new DataLoader iterator draws from the stream)
        torch.manual_seed(seed * 2**32 + it)
        net.train()
        with torch.autocast(d.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            out = net(image, target)
        seg_target = target
        if st_from is not None and it >= st_from:
            seg_target = pseudo_labels(out["seg"], target, st_threshold, batch["classes"].to(d.device))
        loss_seg = seg_loss(out["seg"], out["scrib"], seg_target)
        loss_scrib = scrib_loss(out["scrib"], target)
        loss = loss_seg + loss_scrib
        values = distributed.all_reduce_sum(torch.stack([loss_seg.detach(), loss_scrib.detach()]).float(), d)
        values = (values / d.world_size).tolist()
        if not all(map(math.isfinite, values)):
            raise FloatingPointError(
                f"training stopped at iteration {it}: the loss is not finite (seg {values[0]}, scribble "
                f"{values[1]}); the last good checkpoint is {ckpt_path}. Lower train.lr or check the data."
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()  # scales only for float16
        scaler.step(optimizer)
        scaler.update()
        with warnings.catch_warnings():
            # a float16 step skipped for overflow looks to torch like a scheduler stepped before the
            # optimizer; the poly schedule follows iterations either way
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            scheduler.step()
        bar.update(1)
        done = it + 1
        if done % log_every == 0 or done == total:
            row = {"loss": sum(values), "loss_seg": values[0], "loss_scrib": values[1], "lr": scheduler.get_last_lr()[0]}
            if model.lam is not None:
                row["sigma"] = float(model.lam.sigma)
            row["sec_per_iter"] = (time.perf_counter() - tic) / log_every
            tic = time.perf_counter()
            logger.log("train", done, row)
            bar.set_postfix(loss=f"{row['loss']:.3f}")
        if d.is_main and (done % ckpt_every == 0 or done == total):
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "iteration": done,
                     "config": cfg, "class_names": list(names)}  # fmt: skip
            save_checkpoint(state, ckpt_path)
        if val_set is not None and (done == total or (eval_every and done % eval_every == 0)):
            result = evaluate(model, val_set, K, cfg["eval"], d, progress=False)
            logger.log("val", done, {"miou": result["miou"], "pixel_acc": result["pixel_acc"],
                                     **{f"iou/{n}": v for n, v in zip(names, result["iou"])}})  # fmt: skip
            if d.is_main:
                tqdm.write(f"iteration {done}: val mIoU {100 * result['miou']:.2f}")
        if on_step is not None:
            on_step(done, sum(values))
    bar.close()
    logger.close()
    if start == total:  # a finished run resumed: nothing to train, its evaluation (again) and files
        ckpt_path = ckpt_path if os.path.isfile(ckpt_path) else resume
        if val_set is not None:
            result = evaluate(model, val_set, K, cfg["eval"], d, progress=False)
    if d.is_main and result is not None:
        with open(os.path.join(out_dir, "val.json"), "w") as fh:
            json.dump(result, fh, indent=1)
        tqdm.write(format_table(result, names))
    return {"val": result, "out_dir": out_dir, "checkpoint": ckpt_path}


def _resume_state(resume: str, cfg: dict, names) -> dict:
    """The checkpoint to resume from, if what it fixes equals `cfg`; else an error listing the keys."""
    state = load_checkpoint(resume)
    changed = fixed_differences(resolve(state["config"]), cfg)
    if tuple(state.get("class_names", names)) != tuple(names):
        changed.append(f"class names: {state['class_names']} -> {list(names)}")
    if changed:
        raise ValueError(
            f"cannot resume from {resume}: it was trained with other settings, which a resumed run cannot change "
            f"({'; '.join(changed)}). Set them back, or train a new run (another out_dir). A resumed run may "
            f"change only {', '.join(RESUME_MAY_CHANGE)}."
        )
    return state
