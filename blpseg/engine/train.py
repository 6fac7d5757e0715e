"""The training loop: builds a run from the config (engine/builders.py), runs its steps
(engine/step.py), logs metrics, writes atomic checkpoints, evaluates, resumes, and trains under DDP,
in a run folder that it holds alone (engine/run_folder.py)."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable

import torch
from tqdm import tqdm

from lam_ops import available_backends

from ..config import RESUME_MAY_CHANGE, check_device, class_differences, dump, fixed_differences, resolve
from ..data.formats import build_split, class_names
from ..data.prepare import prepare_data
from ..data.summary import data_summary, format_summary, markdown, no_val_reason
from ..data.transforms import EvalTransform, TrainTransform, resized
from ..files import atomic_write
from . import distributed, run_folder
from .builders import amp_dtype, batches, build_losses, build_optimization, model_from_config
from .checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint, saved_config
from .evaluate import evaluate, format_table
from .inference import check_scales
from .logger import MetricLogger
from .sampler import ResumableSampler
from .step import NonFiniteLoss, TrainStep


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: the iterations done, and the last checkpoint written (or resumed
    from) and its iteration, or None."""

    def __init__(self, iteration: int, checkpoint: str | None, checkpoint_iteration: int):
        kept = f"{checkpoint} holds iteration {checkpoint_iteration}" if checkpoint else "no checkpoint was written"
        super().__init__(f"training interrupted at iteration {iteration}; {kept}")
        self.iteration, self.checkpoint, self.checkpoint_iteration = iteration, checkpoint, checkpoint_iteration


def train(
    cfg: dict,
    resume: str | None = None,
    on_step: Callable[[int, float], None] | None = None,
    overwrite: bool = False,
) -> dict:
    """Trains as `cfg` (a config mapping, resolved here) says; `resume` is a checkpoint to continue
    from, whose fixed settings (config.RESUME_MAY_CHANGE lists the others) must equal the config's.
    An out_dir that holds a run is refused unless `resume` is a checkpoint in it or `overwrite`
    (its run files are deleted when training starts); one process at a time trains into a folder.
    `on_step(iteration, loss)` is called after every step. Returns the final validation result (or
    None), the run folder and the checkpoint holding the final weights. Ctrl-C raises
    TrainingInterrupted."""
    cfg = resolve(cfg)
    if resume is not None and overwrite:
        raise ValueError("--resume and --overwrite exclude each other: a resumed run continues its folder's files")
    check_device(cfg)
    d = distributed.setup(cfg["device"], cfg["threads"])
    try:
        with contextlib.ExitStack() as held:
            distributed.on_main(lambda: _claim(held, cfg["out_dir"], resume, overwrite), d)
            return _train(cfg, d, resume, on_step, overwrite)
    finally:
        distributed.cleanup()


def check_batch_size(batch_size: int, d) -> None:
    """A batch norm normalises over the batch, and the PPM's 1x1 pooling branch has one value per
    image: one image per step cannot train (torch: "Expected more than 1 value per channel").
    SyncBatchNorm (DDP on GPUs) pools the processes' images, so there 1 per process is enough."""
    if batch_size * (d.world_size if d.device.type == "cuda" else 1) < 2:
        raise ValueError(
            "train.batch_size=1: the network's batch norms need at least 2 images per step"
            + (" on each process (CPU processes do not share batch statistics)" if d.world_size > 1 else "")
            + "; set train.batch_size=2 or more"
        )


def _claim(held: contextlib.ExitStack, out_dir: str, resume: str | None, overwrite: bool) -> None:
    """Locks the run folder for as long as `held` lasts, then refuses it if the run would write over
    another's files."""
    left = held.enter_context(run_folder.locked(out_dir))
    if left:
        tqdm.write(f"{out_dir}: took over the lock of a run that ended without releasing it ({left})")
    run_folder.check_new_run(out_dir, resume, overwrite)


def _train(cfg, d, resume, on_step, overwrite) -> dict:
    names = class_names(cfg["data"])
    K = len(names)
    dc, tc = cfg["data"], cfg["train"]
    out_dir, seed = cfg["out_dir"], cfg["seed"]
    state = _resume_state(resume, cfg, names) if resume else None
    prepare_data(cfg, d)
    torch.manual_seed(seed)
    transform = TrainTransform(dc["crop"], dc["scale"], resize=dc["resize"], num_classes=K)
    train_set = build_split(dc, "train", K, transform, seed)
    val_set = build_split(dc, "val", K, EvalTransform(dc["resize"])) if dc["val"] is not None else None
    summary = data_summary(train_set, val_set, names, no_val_reason(dc))
    if val_set is not None and val_set.shapes:  # found now, not at the first evaluation
        check_scales(cfg["eval"]["scales"], *min((resized(h, w, dc["resize"]) for h, w in val_set.shapes), key=min))
    # a resumed run's weights are its checkpoint's: the initial ones are neither read nor downloaded
    model = model_from_config(cfg["model"], K, d.device, pretrained=state is None)
    check_batch_size(tc["batch_size"], d)
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
        load_weights(model, state["model"], resume)
        try:
            optimization.load_state_dict(state)
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise CheckpointError(f"cannot resume from {resume}: its optimizer state does not fit ({e})") from None
        start = int(state["iteration"])
    step = TrainStep(
        distributed.wrap(model, d), build_losses(cfg["loss"], K, d.device), optimization, amp_dtype(tc["amp"]), d
    )
    ckpt_path = os.path.join(out_dir, "last.pt")
    ckpt_every = int(tc["checkpoint_every"] or sampler.batches_per_epoch)
    eval_every, log_every = int(tc["eval_every"] or 0), tc["log_every"]
    if d.is_main:
        _open_run_folder(cfg, summary, overwrite)
        tqdm.write(format_summary(summary))
        tqdm.write(
            f"training {total} iterations from {start} on {d.world_size} x {d.device}; "
            f"LAM backends here: {', '.join(available_backends(d.device))}; run folder: {out_dir}"
        )
    logger = MetricLogger(out_dir, d.is_main, start=start)
    logger.text("data", markdown(summary), start)
    bar = tqdm(total=total, initial=start, desc="train", unit="it", disable=not d.is_main, dynamic_ncols=True)
    data = batches(train_set, sampler, start, tc["batch_size"], dc["workers"], d.device)
    result, tic = None, time.perf_counter()
    done, last = start, (resume, start)  # the last checkpoint written (or resumed from) and its iteration
    try:
        for it in range(start, total):
            batch = next(data)
            # the step's random numbers (the PPM's dropout) depend only on (seed, iteration), as the
            # samples do on (seed, epoch, index): a resumed run draws what the uninterrupted one drew
            # (seeded after the batch: a new DataLoader iterator draws from the stream)
            torch.manual_seed(seed * 2**32 + it)
            try:
                values = step(batch, it)
            except NonFiniteLoss as e:
                saved = f"the last good checkpoint is {last[0]}" if last[0] else "no checkpoint was written yet"
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
            if done % ckpt_every == 0 or done == total:
                if d.is_main:
                    state = {
                        "model": model.state_dict(),
                        **optimization.state_dict(),
                        "iteration": done,
                        "config": cfg,
                        "class_names": list(names),
                    }
                    save_checkpoint(state, ckpt_path)
                last = (ckpt_path, done)
            if val_set is not None and (done == total or (eval_every and done % eval_every == 0)):
                result = _evaluate(model, val_set, names, cfg, d, logger, done)
            if on_step is not None:
                on_step(done, sum(values))
        bar.close()
        if start == total and val_set is not None:  # a finished run resumed: nothing to train, its evaluation again
            result = evaluate(model, val_set, K, cfg["eval"], d, progress=False)
        if d.is_main and result is not None:
            with atomic_write(os.path.join(out_dir, "val.json"), "w") as fh:
                json.dump(result, fh, indent=1)
            tqdm.write(format_table(result, names))
    except KeyboardInterrupt:
        raise TrainingInterrupted(done, *last) from None
    finally:  # also when the run stops: the error goes on a line of its own, the metrics are flushed
        bar.close()
        logger.close()
    return {"val": result, "out_dir": out_dir, "checkpoint": last[0]}


def _open_run_folder(cfg: dict, summary: dict, overwrite: bool) -> None:
    """Deletes the previous run's files (`overwrite`) or the temporaries of interrupted writes, and
    writes the config that runs and its data summary. Called once the run is built: a config or
    data error leaves the previous run as it was."""
    out_dir = cfg["out_dir"]
    if overwrite:
        removed = run_folder.clear(out_dir)
        if removed:
            tqdm.write(f"--overwrite: deleted the previous run's {', '.join(map(os.path.basename, removed))}")
    else:
        for path in run_folder.remove_stale_temporaries(out_dir):
            tqdm.write(f"removed {path}, left by a write that was interrupted")
    with atomic_write(os.path.join(out_dir, "config.yaml"), "w") as fh:
        fh.write(dump(cfg))
    with atomic_write(os.path.join(out_dir, "data_summary.json"), "w") as fh:
        json.dump(summary, fh, indent=1)


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
    iteration = state.get("iteration")
    missing = [k for k in ("optimizer", "scheduler") if k not in state]
    if missing or isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 0:
        raise CheckpointError(
            f"cannot resume from {resume}: it holds no training state (its iteration and the optimizer's and "
            f"schedule's state); evaluate it with `blpseg eval --checkpoint {resume}`, or start a new run"
        )
    changed = fixed_differences(saved_config(state, resume), cfg) + class_differences(
        state.get("class_names", names), names
    )
    if changed:
        raise ValueError(
            f"cannot resume from {resume}: it was trained with other settings, which a resumed run cannot change "
            f"({'; '.join(changed)}). Set them back, or train a new run (another out_dir). A resumed run may "
            f"change only {', '.join(RESUME_MAY_CHANGE)}."
        )
    return state
