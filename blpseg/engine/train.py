"""The training loop: builds a run from the config (engine/builders.py), runs its steps
(engine/step.py), logs metrics, writes atomic checkpoints, evaluates, resumes, and trains under DDP."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

import torch
from tqdm import tqdm

from lam_ops import available_backends

from ..config import RESUME_MAY_CHANGE, class_differences, class_names, dump, fixed_differences, resolve
from ..data.folder import build_split
from ..data.prepare import prepare_data
from ..data.transforms import EvalTransform, TrainTransform
from . import distributed
from .builders import amp_dtype, batches, build_losses, build_optimization, model_from_config
from .checkpoint import load_checkpoint, remove_stale_temporaries, save_checkpoint
from .evaluate import evaluate, format_table
from .logger import MetricLogger
from .sampler import ResumableSampler
from .step import NonFiniteLoss, TrainStep


def train(cfg: dict, resume: str | None = None, on_step: Callable[[int, float], None] | None = None) -> dict:
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
    dc, tc = cfg["data"], cfg["train"]
    out_dir, seed = cfg["out_dir"], cfg["seed"]
    state = _resume_state(resume, cfg, names) if resume else None
    prepare_data(cfg, d)
    torch.manual_seed(seed)
    train_set = build_split(dc, "train", K, TrainTransform(dc["crop"], dc["scale"]), seed)
    val_set = build_split(dc, "val", K, EvalTransform()) if dc["val"] is not None else None
    model = model_from_config(cfg["model"], K, d.device)
    sampler = ResumableSampler(len(train_set), tc["batch_size"], seed, d.rank, d.world_size)
    total = int(tc["iters"] or tc["epochs"] * sampler.batches_per_epoch)
    optimization = build_optimization(model, tc, total, d.device)
    start = 0
    if state is not None:
        if int(state["iteration"]) > total:
            raise ValueError(
                f"{resume} has trained {state['iteration']} iterations, more than the {total} this config runs "
                f"(train.iters, or train.epochs x {sampler.batches_per_epoch} batches): raise train.epochs or "
                f"train.iters to continue it, or evaluate it with `blpseg eval --checkpoint {resume}`"
            )
        model.load_state_dict(state["model"])
        optimization.load_state_dict(state)
        start = int(state["iteration"])
    step = TrainStep(
        distributed.wrap(model, d), build_losses(cfg["loss"], K, d.device), optimization, amp_dtype(tc["amp"]), d
    )
    ckpt_path = os.path.join(out_dir, "last.pt")
    ckpt_every = int(tc["checkpoint_every"] or sampler.batches_per_epoch)
    eval_every, log_every = int(tc["eval_every"] or 0), tc["log_every"]
    logger = MetricLogger(out_dir, d.is_main, start=start)
    if d.is_main:
        _open_run_folder(cfg, val_set)
        tqdm.write(
            f"training {total} iterations from {start} on {d.world_size} x {d.device}; "
            f"LAM backends here: {', '.join(available_backends(d.device))}; run folder: {out_dir}"
        )

    bar = tqdm(total=total, initial=start, desc="train", unit="it", disable=not d.is_main, dynamic_ncols=True)
    data = batches(train_set, sampler, start, tc["batch_size"], dc["workers"], d.device)
    result, tic = None, time.perf_counter()
    for it in range(start, total):
        batch = next(data)
        # the step's random numbers (the PPM's dropout) depend only on (seed, iteration), as the
        # samples do on (seed, epoch, index): a resumed run draws what the uninterrupted one drew
        # (seeded after the batch: a new DataLoader iterator draws from the stream)
        torch.manual_seed(seed * 2**32 + it)
        try:
            values = step(batch, it)
        except NonFiniteLoss as e:
            last = ckpt_path if os.path.isfile(ckpt_path) else resume
            saved = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
            raise FloatingPointError(
                f"training stopped at iteration {it}: {e}; {saved}. Lower train.lr or check the data."
            ) from None
        bar.update(1)
        done = it + 1
        if done % log_every == 0 or done == total:
            row = _train_row(values, optimization, model, (time.perf_counter() - tic) / log_every)
            tic = time.perf_counter()
            logger.log("train", done, row)
            bar.set_postfix(loss=f"{row['loss']:.3f}")
        if d.is_main and (done % ckpt_every == 0 or done == total):
            state = {
                "model": model.state_dict(),
                **optimization.state_dict(),
                "iteration": done,
                "config": cfg,
                "class_names": list(names),
            }
            save_checkpoint(state, ckpt_path)
        if val_set is not None and (done == total or (eval_every and done % eval_every == 0)):
            result = _evaluate(model, val_set, names, cfg, d, logger, done)
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


def _open_run_folder(cfg: dict, val_set) -> None:
    """Creates the run folder, removes the temporaries of interrupted checkpoint writes, and writes
    the config that runs."""
    out_dir, dc = cfg["out_dir"], cfg["data"]
    os.makedirs(out_dir, exist_ok=True)
    for path in remove_stale_temporaries(out_dir):
        tqdm.write(f"removed {path}, left by a checkpoint write that was interrupted")
    with open(os.path.join(out_dir, "config.yaml"), "w") as fh:
        fh.write(dump(cfg))
    if dc["val"] is not None and val_set is None:
        tqdm.write(f"{dc['root']} has no validation images (masks/ of images without scribbles): no evaluation")


def _train_row(values: list[float], optimization, model, sec_per_iter: float) -> dict:
    """A train.csv row: the step's losses, the learning rate, the LAM's sigma, the time per step."""
    row = {
        "loss": sum(values),
        "loss_seg": values[0],
        "loss_scrib": values[1],
        "lr": optimization.scheduler.get_last_lr()[0],
    }
    if model.lam is not None:
        row["sigma"] = float(model.lam.sigma)
    row["sec_per_iter"] = sec_per_iter
    return row


def _evaluate(model, val_set, names, cfg: dict, d, logger: MetricLogger, done: int) -> dict:
    """Evaluates on the validation set and logs it to val.csv (and the console)."""
    result = evaluate(model, val_set, len(names), cfg["eval"], d, progress=False)
    logger.log(
        "val",
        done,
        {
            "miou": result["miou"],
            "pixel_acc": result["pixel_acc"],
            **{f"iou/{n}": v for n, v in zip(names, result["iou"], strict=True)},
        },
    )
    if d.is_main:
        tqdm.write(f"iteration {done}: val mIoU {100 * result['miou']:.2f}")
    return result


def _resume_state(resume: str, cfg: dict, names) -> dict:
    """The checkpoint to resume from, if what it fixes equals `cfg`; else an error listing the keys."""
    state = load_checkpoint(resume)
    if "iteration" not in state:  # e.g. an imported release model: weights without a training state
        raise ValueError(
            f"{resume} holds a model but no training state to resume (optimiser, iteration): it is not a "
            "checkpoint written by train"
        )
    changed = fixed_differences(resolve(state["config"]), cfg) + class_differences(
        state.get("class_names", names), names
    )
    if changed:
        raise ValueError(
            f"cannot resume from {resume}: it was trained with other settings, which a resumed run cannot change "
            f"({'; '.join(changed)}). Set them back, or train a new run (another out_dir). A resumed run may "
            f"change only {', '.join(RESUME_MAY_CHANGE)}."
        )
    return state
