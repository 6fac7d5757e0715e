"""BLPSeg's network: forward and backward for every ablation option, at tiny sizes; the release's
network (parameter counts from the spec, key names, PPM, heads, initialisation); the backbone
factory on saved state dicts; `blpseg info`."""

import hashlib
import http.server
import io
import pathlib
import shutil
import threading
import zipfile

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from blpseg import cli
from blpseg.config import load_config
from blpseg.data.formats import class_names
from blpseg.engine.builders import model_from_config
from blpseg.models import BLPSeg, build_backbone, pretrained
from blpseg.models.decoder import PPM

ROOT = pathlib.Path(__file__).resolve().parents[1]

K = 3
TINY = dict(backbone="resnet18", channels=16, embed_dim=8, lam_backend="auto")


def inputs(B=2, H=36, W=44, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(B, 3, H, W, generator=g)
    target = torch.randint(0, K + 1, (B, H, W), generator=g)
    target[:, :, :4] = 255  # padding
    return image, target


OPTIONS = {
    "lam_off": dict(lam=False),
    "both_fixed_global": dict(similarity="both", radius=None),
    "both_learnable_radius2": dict(similarity="both", learnable_sigma=True, radius=2),
    "features_only": dict(similarity="features"),
    "position_only_learnable": dict(similarity="position", learnable_sigma=True),
    "keys_labeled": dict(key_mask="labeled"),
    "keys_unlabeled": dict(key_mask="unlabeled", radius=3),
}


@pytest.mark.parametrize("name", OPTIONS)
def test_forward_backward(name):
    torch.manual_seed(0)
    model = BLPSeg(K, **TINY, **OPTIONS[name]).train()
    image, target = inputs()
    out = model(image, target)
    assert out["seg"].shape == (2, K, 36, 44) and out["scrib"].shape == (2, K + 1, 36, 44)
    (out["seg"].square().mean() + out["scrib"].square().mean()).backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    if OPTIONS[name].get("learnable_sigma"):
        assert model.lam.log_sigma.grad.abs() > 0
    model.eval()
    with torch.no_grad():
        out = model(image)
    assert set(out) == {"seg"} and torch.isfinite(out["seg"]).all()


def test_scribble_head_does_not_train_the_backbone():
    model = BLPSeg(K, **TINY).train()
    image, target = inputs()
    model(image, target)["scrib"].sum().backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is None for p in model.seg_head.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.scrib_head.parameters())


def test_key_mask_changes_the_aggregation():
    torch.manual_seed(0)
    model = BLPSeg(K, **TINY, key_mask="labeled").eval()
    image, target = inputs(B=1)
    with torch.no_grad():
        masked = model(image, target)["seg"]
        unmasked = model(image)["seg"]  # no target (inference): every pixel is a key
    assert not torch.allclose(masked, unmasked)


def test_lam_changes_the_logits():
    torch.manual_seed(0)
    with_lam = BLPSeg(K, **TINY).eval()
    without = BLPSeg(K, **TINY, lam=False).eval()
    without.load_state_dict({k: v for k, v in with_lam.state_dict().items() if not k.startswith("lam.")})
    image, _ = inputs(B=1)
    with torch.no_grad():
        assert not torch.allclose(with_lam(image)["seg"], without(image)["seg"])


def test_bad_options_name_the_argument():
    with pytest.raises(ValueError, match="backbone"):
        BLPSeg(K, backbone="vgg16")
    with pytest.raises(ValueError, match="key_mask"):
        BLPSeg(K, **TINY, key_mask="scribbled")
    with pytest.raises(ValueError, match="key_mask needs"):
        BLPSeg(K, **TINY, lam=False, key_mask="labeled")
    with pytest.raises(ValueError, match="num_classes"):
        BLPSeg(1, **TINY)


def test_the_network_defaults_are_the_configs():
    # Seen: BLPSeg() defaulted to resnet101 while the config's default is resnet101_deepstem. The
    # config schema holds every default: BLPSeg takes exactly model.*, with the same defaults.
    import dataclasses
    import inspect

    from blpseg.config import ModelConfig

    parameters = dict(inspect.signature(BLPSeg).parameters)
    del parameters["num_classes"]
    assert {k: p.default for k, p in parameters.items()} == dataclasses.asdict(ModelConfig())
    # radius None (the exact LAM) reaches LocalAggregation, whose own default is 24
    assert BLPSeg(K, **TINY).lam.radius is None and BLPSeg(K, **TINY, radius=5).lam.radius == 5


# ------------------------------------------------- the release's network, by arithmetic from its spec


def conv(cin, cout, k=1, bias=False):
    return cin * cout * k * k + (cout if bias else 0)


def bn(c):
    return 2 * c


def bottleneck(cin, planes, downsample):
    out = 4 * planes
    n = conv(cin, planes) + bn(planes) + conv(planes, planes, 3) + bn(planes) + conv(planes, out) + bn(out)
    return n + (conv(cin, out) + bn(out) if downsample else 0)


def resnet101_stages(cin):
    n = 0
    for planes, blocks in ((64, 3), (128, 4), (256, 23), (512, 3)):
        n += bottleneck(cin, planes, True) + sum(bottleneck(4 * planes, planes, False) for _ in range(blocks - 1))
        cin = 4 * planes
    return n


DEEPSTEM = conv(3, 64, 3) + bn(64) + conv(64, 64, 3) + bn(64) + conv(64, 128, 3) + bn(128)


def release_counts(K, C=256, D=256, c5=2048, lateral=(256, 512, 1024)):
    return {
        "backbone": DEEPSTEM + resnet101_stages(128),
        "ppm": 4 * (conv(c5, C) + bn(C)) + conv(c5 + 4 * C, C) + bn(C),
        "fpn": sum(conv(c, C) + bn(C) for c in lateral) + 3 * (conv(C, C, 3) + bn(C)) + conv(4 * C, C, 3) + bn(C),
        "seg_head": 2 * conv(C, C) + conv(C, K, bias=True),
        "scrib_head": 2 * conv(C, C) + conv(C, K + 1, bias=True),
        # the guidance branch: Conv 4x4 stride 4 (3 -> D), LayerNorm(D), Conv 1x1 (D -> D); sigma fixed
        "lam": conv(3, D, 4, bias=True) + 2 * D + conv(D, D, bias=True),
    }


def test_the_resnet_arithmetic_gives_torchvisions_published_count():
    # torchvision documents ResNet-101 at 44,549,160 parameters: the 7x7 stem, the stages, the classifier
    assert conv(3, 64, 7) + bn(64) + resnet101_stages(64) + conv(2048, 1000, bias=True) == 44_549_160


@pytest.mark.parametrize("config,K", [("voc_scribble", 21), ("context_scribble", 60)])
def test_paper_configs_build_the_releases_network(config, K):
    cfg = load_config(str(ROOT / "configs" / f"{config}.yaml"))
    assert len(class_names(cfg["data"])) == K
    model = model_from_config(cfg["model"], K, pretrained=False)
    assert model.parameter_counts() == release_counts(K)
    assert sum(p.numel() for p in model.parameters()) == sum(release_counts(K).values())


def test_info_prints_the_counts_and_the_total_last(capsys):
    assert cli.main(["info", "--config", str(ROOT / "configs" / "voc_scribble.yaml")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == f"total parameters: {sum(release_counts(21).values())}"
    assert any(line.split()[:2] == ["ppm", f"{release_counts(21)['ppm']:,}"] for line in lines)
    assert cli.main(["info", "--config", str(ROOT / "configs" / "voc_scribble.yaml"), "model.backbone=vgg"]) == 1
    assert "backbone" in capsys.readouterr().err


def test_deepstem_keys_are_the_releases():
    net = build_backbone("resnet101_deepstem")
    bn_keys = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    stem = {"conv1.0.weight", "conv1.3.weight", "conv1.6.weight"}
    stem |= {f"{m}.{k}" for m in ("conv1.1", "conv1.4", "bn1") for k in bn_keys}
    layers = {k for k in torchvision.models.resnet101().state_dict() if k.startswith("layer")}
    assert set(net.state_dict()) == stem | layers
    assert net.layer1[0].conv1.weight.shape == (64, 128, 1, 1)  # layer1 takes the stem's 128 channels
    assert net.bn1.momentum == 0.1
    feats = net(torch.randn(1, 3, 64, 96))
    assert [f.shape[1] for f in feats] == list(net.channels) == [256, 512, 1024, 2048]
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3)]  # not dilated


def test_deepstem_loads_a_pytorch_encoding_style_file(tmp_path):
    ref = build_backbone("resnet101_deepstem")
    for p in ref.parameters():
        nn.init.normal_(p)
    # as PyTorch-Encoding ships it: with the classifier, without BN num_batches_tracked counters
    state = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    state |= {"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}
    torch.save(state, tmp_path / "enc.pth")
    net = build_backbone("resnet101_deepstem", str(tmp_path / "enc.pth"))
    for key in ("conv1.0.weight", "conv1.4.running_var", "layer3.22.conv2.weight"):
        torch.testing.assert_close(net.state_dict()[key], ref.state_dict()[key])
    # torchvision's 7x7 stem (its layers are the same: left out to keep the file small)
    stem7 = {k: v for k, v in torchvision.models.resnet101().state_dict().items() if not k.startswith("layer")}
    torch.save(stem7 | {k: v for k, v in state.items() if k.startswith("layer")}, tmp_path / "torchvision.pth")
    with pytest.raises(ValueError, match="torchvision.pth"):
        build_backbone("resnet101_deepstem", str(tmp_path / "torchvision.pth"))


def test_ppm_branches_have_no_relu_and_upsample_with_aligned_corners():
    torch.manual_seed(0)
    ppm = PPM(8, 4).eval()
    seen = {}
    ppm.bottleneck.register_forward_hook(lambda m, inp, out: seen.update(x=inp[0]))
    x = torch.randn(2, 8, 5, 7)
    ppm(x)

    def expected(align):
        return torch.cat(
            [x] + [F.interpolate(b(x), (5, 7), mode="bilinear", align_corners=align) for b in ppm.branches], 1
        )

    torch.testing.assert_close(seen["x"], expected(True))
    assert not torch.allclose(seen["x"], expected(False))
    assert (seen["x"][:, 8:] < 0).any()  # no ReLU after the branches' BN
    conv, norm, relu = ppm.bottleneck[0]
    assert conv.kernel_size == (1, 1) and isinstance(relu, nn.ReLU)
    assert isinstance(ppm.bottleneck[1], nn.Dropout2d) and ppm.bottleneck[1].p == 0.1


def test_heads_and_initialisation_follow_the_release(tmp_path):
    ref = torchvision.models.resnet18()
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    torch.manual_seed(0)
    model = BLPSeg(K, backbone="resnet18", pretrained=str(tmp_path / "r18.pth"), channels=256, embed_dim=64)
    for head in (model.seg_head, model.scrib_head):
        convs = [m for m in head if isinstance(m, nn.Conv2d)]
        assert [c.bias is not None for c in convs] == [False, False, True]
        assert not any(isinstance(m, nn.BatchNorm2d) for m in head)
        assert (convs[-1].bias == 0).all()  # the release's are PyTorch's default: a documented difference
    outside = [model.decoder, model.seg_head, model.scrib_head, model.lam]
    for m in (m for part in outside for m in part.modules()):
        if isinstance(m, nn.BatchNorm2d):
            assert (m.weight == 1).all() and (m.bias == 0).all()
        if isinstance(m, nn.Conv2d) and m.weight.numel() >= 4096:  # enough weights for a std estimate
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
            assert abs(m.weight.std().item() / (2 / fan_out) ** 0.5 - 1) < 0.1, m
    # the backbone keeps its weights
    torch.testing.assert_close(model.backbone.conv1.weight, ref.conv1.weight)


# ------------------------------------------------------------------------ the backbone factory


@pytest.mark.parametrize("name,c5", [("resnet18", 512), ("resnet50", 2048), ("resnet101", 2048)])
def test_torchvision_backbones_return_c2_to_c5(name, c5):
    net = build_backbone(name)
    feats = net(torch.randn(1, 3, 64, 96))
    expansion = 1 if name == "resnet18" else 4
    assert [f.shape[1] for f in feats] == list(net.channels) == [64 * expansion * 2**i for i in range(4)]
    assert feats[-1].shape[1] == c5
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3)]


def test_torchvision_weights_load_from_a_local_file(tmp_path):
    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)  # with the classifier, as torchvision ships it
    net = build_backbone("resnet18", str(path))
    torch.testing.assert_close(net.conv1.weight, ref.conv1.weight)
    torch.testing.assert_close(net.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)
    assert set(net.state_dict()) == {k for k in ref.state_dict() if not k.startswith("fc.")}


@pytest.mark.parametrize("name", ["resnet18", "timm:resnet10t"])
def test_weights_errors_name_the_file(tmp_path, name):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_backbone(name, str(tmp_path / "nope.pth"))
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ValueError, match="wrong.pth"):
        build_backbone(name, str(wrong))
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt.pth"):
        build_backbone(name, str(corrupt))
    pickled = tmp_path / "pickled.pth"
    torch.save({"conv1.weight": nn.Conv2d(1, 1, 1)}, pickled)  # a module, not tensors: weights_only refuses
    with pytest.raises(ValueError, match="pickled.pth"):
        build_backbone(name, str(pickled))


TIMM_MODELS = {"timm:resnet10t": (64, 128, 256, 512), "timm:convnext_atto": (40, 80, 160, 320)}


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_timm_backbones_pick_strides_4_to_32_and_load_weights(tmp_path, name):
    import timm

    torch.manual_seed(0)
    ref = timm.create_model(name.removeprefix("timm:"), pretrained=False)  # with its classifier
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    net = build_backbone(name, str(tmp_path / "w.pth"))
    feats = net(torch.randn(1, 3, 64, 96))
    assert tuple(f.shape[1] for f in feats) == net.channels == TIMM_MODELS[name]
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    # every parameter of the feature extractor is the file's (timm renames modules, not values)
    loaded = list(ref.parameters())
    assert all(any(p.shape == q.shape and torch.equal(p, q) for q in loaded) for p in net.parameters())
    other = next(n for n in TIMM_MODELS if n != name)
    torch.save(timm.create_model(other.removeprefix("timm:")).state_dict(), tmp_path / "other.pth")
    with pytest.raises(ValueError, match="other.pth"):
        build_backbone(name, str(tmp_path / "other.pth"))


def test_the_decoder_takes_its_channels_from_a_timm_backbone():
    model = BLPSeg(K, backbone="timm:convnext_atto", channels=16, embed_dim=8).train()
    assert [seq[0].in_channels for seq in model.decoder.lateral] == [40, 80, 160]
    assert model.decoder.ppm.branches[0][1].in_channels == 320
    image, target = inputs()
    out = model(image, target)
    out["seg"].square().mean().backward()
    assert out["seg"].shape == (2, K, 36, 44)
    assert all(p.grad is not None for p in model.backbone.parameters())


def test_backbone_names_are_checked():
    with pytest.raises(ValueError, match="backbone"):
        build_backbone("vgg16")
    with pytest.raises(ValueError, match="no model 'resnet_nope'"):
        build_backbone("timm:resnet_nope")
    with pytest.raises(ValueError, match="stride"):  # a ViT has stride-16 features only
        build_backbone("timm:vit_tiny_patch16_224")


# ==== issue 20: weights by name
# model.pretrained=imagenet for the three backbone kinds, without a network: the files are served
# from 127.0.0.1 (as a download site, and as the Hugging Face hub answers), the caches are tmp_path.


def test_the_paper_configs_start_from_imagenet_and_the_demos_need_no_network():
    pretrained_of = lambda name: load_config(str(ROOT / "configs" / f"{name}.yaml"))["model"]["pretrained"]
    assert pretrained_of("voc_scribble") == pretrained_of("context_scribble") == "imagenet"
    assert pretrained_of("synthetic") is None and pretrained_of("synthetic_folder") is None  # make demo, demo-folder
    assert pretrained_of("own_data") is None  # a CPU machine may have no network


class WeightServer:
    """Files (`files`: URL path -> bytes) served over HTTP on 127.0.0.1 in a thread. HEAD and GET
    answer as the Hugging Face hub does (X-Repo-Commit, ETag: the content's SHA-256 unless `etags`
    says otherwise); `requests` logs (method, path); a path in `truncate` sends half its bytes
    under the full Content-Length; stop() closes the port (connections are then refused: no network)."""

    def __init__(self):
        self.files, self.etags, self.requests, self.truncate = {}, {}, [], set()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            timeout = 10  # a stuck connection cannot hold a test

            def log_message(self, *args):
                pass

            def _head(self):
                server.requests.append((self.command, self.path))
                data = server.files.get(self.path)
                self.send_response(404 if data is None else 200)
                self.send_header("Content-Length", str(len(data or b"")))
                if data is not None:
                    self.send_header("X-Repo-Commit", "0" * 40)
                    etag = server.etags.get(self.path) or hashlib.sha256(data).hexdigest()
                    self.send_header("ETag", f'"{etag}"')
                self.end_headers()
                return data

            def do_HEAD(self):
                self._head()

            def do_GET(self):
                data = self._head()
                if data is not None:
                    self.wfile.write(data[: len(data) // 2] if self.path in server.truncate else data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def gets(self) -> int:
        """Downloads of the files (the hub client also asks the endpoint for other things)."""
        return sum(method == "GET" and path in self.files for method, path in self.requests)

    def stop(self):
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.thread.join(timeout=10)
        self.httpd.server_close()


@pytest.fixture
def server():
    s = WeightServer()
    yield s
    s.stop()


def saved(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def tiny_run(tmp_path) -> list[str]:
    """Overrides of configs/synthetic.yaml for a run of seconds in tmp_path."""
    return [
        *(f"out_dir={tmp_path / 'run'}", f"data.root={tmp_path / 'data'}", "device=cpu", "data.crop=32"),
        *("data.synthetic.num_train=2", "data.synthetic.num_val=1", "train.batch_size=2"),
        *("model.channels=16", "model.embed_dim=8", "model.lam_backend=auto"),
    ]


def no_temporaries(folder) -> bool:
    return not [p for p in pathlib.Path(folder).rglob("*") if ".partial" in p.name or p.suffix == ".zip"]


@pytest.fixture
def torchvision_imagenet(server, tmp_path, monkeypatch):
    """resnet18's IMAGENET1K_V1 as a random state_dict on the server, named as torchvision names its
    files (name-<SHA-256 prefix>.pth); TORCH_HOME in tmp_path. Returns (state, its URL, cache file)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.manual_seed(0)
    state = torchvision.models.resnet18().state_dict()
    data = saved(state)
    name = f"resnet18-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    server.files["/" + name] = data
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    monkeypatch.setattr(weights.value, "url", f"{server.url}/{name}")
    return state, weights.url, tmp_path / "torch" / "hub" / "checkpoints" / name


def test_torchvision_imagenet_downloads_once_and_is_verified(server, torchvision_imagenet):
    state, url, cached = torchvision_imagenet
    served = url.removeprefix(server.url)
    net = build_backbone("resnet18", "imagenet")
    assert torch.equal(net.conv1.weight, state["conv1.weight"]) and server.gets() == 1
    assert torch.equal(net.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])
    assert cached.read_bytes() == server.files[served]
    assert torch.equal(build_backbone("resnet18", "imagenet").conv1.weight, state["conv1.weight"])
    assert server.gets() == 1  # the cache, not the network
    # a corrupt cached file is never loaded: deleted and downloaded again
    cached.write_bytes(cached.read_bytes()[:-10] + b"0123456789")
    assert torch.equal(build_backbone("resnet18", "imagenet").conv1.weight, state["conv1.weight"])
    assert server.gets() == 2 and cached.read_bytes() == server.files[served]
    # a partial download fails its hash check: an error naming the URL and the cache file, nothing left
    cached.unlink()
    server.truncate.add(served)
    with pytest.raises(pretrained.WeightsUnavailable) as e:
        build_backbone("resnet18", "imagenet")
    assert url in str(e.value) and str(cached) in str(e.value) and "invalid hash" in str(e.value)
    assert not cached.exists() and no_temporaries(cached.parent)


def test_offline_imagenet_is_an_error_naming_the_url_and_the_cache_file(server, torchvision_imagenet, tmp_path, capsys):
    _, url, cached = torchvision_imagenet
    server.stop()
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"a corrupt file where the weights go")
    synthetic = str(ROOT / "configs" / "synthetic.yaml")
    assert cli.main(["train", "--config", synthetic, *tiny_run(tmp_path), "model.pretrained=imagenet"]) == 1
    err = capsys.readouterr().err
    assert "blpseg train: error: could not download torchvision's IMAGENET1K_V1 weights of resnet18" in err
    assert f"from {url}" in err and f"put it at {cached}" in err and "Traceback" not in err
    assert not cached.exists()  # the corrupt file was not used, nor left as if complete


def test_a_resumed_run_reads_no_initial_weights(server, torchvision_imagenet, tmp_path, capsys):
    # its checkpoint holds the weights: resuming on a machine without the initial ones works
    server.stop()
    synthetic, run = str(ROOT / "configs" / "synthetic.yaml"), tiny_run(tmp_path)
    assert cli.main(["train", "--config", synthetic, *run, "train.iters=1"]) == 0
    resume = ["--resume", str(tmp_path / "run" / "last.pt"), "model.pretrained=imagenet", "train.iters=2"]
    assert cli.main(["train", "--config", synthetic, *resume, *run]) == 0, capsys.readouterr().err


@pytest.fixture
def deepstem_site(server, tmp_path, monkeypatch):
    """Serves zips as PyTorch-Encoding does at our DEEPSTEM_URL; TORCH_HOME in tmp_path. Returns
    (publish(state) -> the .pth's bytes, pinned as DEEPSTEM_SHA1; the cache file)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(pretrained, "DEEPSTEM_URL", f"{server.url}/encoding/models/resnet101s-03a0f310.zip")

    def publish(state, pin=True):
        data = saved(state)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("resnet101s-03a0f310.pth", data)
        server.files["/encoding/models/resnet101s-03a0f310.zip"] = buf.getvalue()
        if pin:
            monkeypatch.setattr(pretrained, "DEEPSTEM_SHA1", hashlib.sha1(data).hexdigest())
        return data

    return publish, tmp_path / "torch" / "hub" / "checkpoints" / "resnet101s-03a0f310.pth"


def test_deepstem_imagenet_is_the_verified_content_of_the_releases_zip(server, deepstem_site):
    publish, cached = deepstem_site
    torch.manual_seed(0)
    ref = build_backbone("resnet101_deepstem")
    for p in ref.parameters():
        nn.init.normal_(p)
    state = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    data = publish(state | {"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)})
    net = build_backbone("resnet101_deepstem", "imagenet")
    assert torch.equal(net.conv1[6].weight, state["conv1.6.weight"]) and server.gets() == 1
    assert torch.equal(net.layer3[22].conv2.weight, state["layer3.22.conv2.weight"])
    # extracted into torch.hub's cache, as the release's model_zoo.load_url leaves it; no zip kept
    assert cached.read_bytes() == data and no_temporaries(cached.parent)
    assert pretrained.deepstem_file() == str(cached) and server.gets() == 1
    cached.write_bytes(b"corrupt")
    assert pretrained.deepstem_file() == str(cached) and server.gets() == 2 and cached.read_bytes() == data


def test_deepstem_bad_downloads_name_the_url_and_leave_nothing(server, deepstem_site):
    publish, cached = deepstem_site
    url = pretrained.DEEPSTEM_URL
    publish({"w": torch.arange(10.0)})
    publish({"w": torch.arange(11.0)}, pin=False)  # a zip whose content is not the pinned file
    with pytest.raises(pretrained.WeightsUnavailable, match="SHA-1") as e:
        pretrained.deepstem_file()
    assert url in str(e.value) and f"unzip it into {cached.parent}" in str(e.value) and cached.name in str(e.value)
    assert not cached.exists() and no_temporaries(cached.parent)
    publish({"w": torch.arange(12.0)})
    server.truncate.add(url.removeprefix(server.url))  # a partial zip
    with pytest.raises(pretrained.WeightsUnavailable, match="zip"):
        pretrained.deepstem_file()
    assert not cached.exists() and no_temporaries(cached.parent)
    server.truncate.clear()
    server.stop()
    with pytest.raises(pretrained.WeightsUnavailable) as e:
        pretrained.deepstem_file()
    assert url in str(e.value) and str(cached.parent) in str(e.value) and not cached.exists()


@pytest.fixture
def hf_hub(server, tmp_path, monkeypatch):
    """The Hugging Face hub's answers from `server`, its cache in tmp_path; timm's resnet10t
    (default tag c3_in1k) published as a random model.safetensors. Returns (state, URL path)."""
    from huggingface_hub import constants
    from safetensors.torch import save

    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # what the client writes besides the cache (a registry it fetches from the endpoint) stays here too
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(tmp_path / "hf_home" / "harnesses.json"), raising=False)
    import timm

    torch.manual_seed(0)
    state = timm.create_model("resnet10t").state_dict()
    path = "/timm/resnet10t.c3_in1k/resolve/main/model.safetensors"
    server.files[path] = save(state)
    return state, path


def test_timm_imagenet_comes_from_the_hub_cache_and_is_verified(server, hf_hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    state, path = hf_hub
    loaded = lambda: build_backbone("timm:resnet10t", "imagenet").net.state_dict()
    assert torch.equal(loaded()["conv1.0.weight"], state["conv1.0.weight"]) and server.gets() == 1
    blobs = list((tmp_path / "hf" / "models--timm--resnet10t.c3_in1k" / "blobs").iterdir())
    assert [b.name for b in blobs] == [hashlib.sha256(server.files[path]).hexdigest()]
    asked = len(server.requests)
    assert torch.equal(loaded()["layer4.0.conv2.weight"], state["layer4.0.conv2.weight"])
    assert len(server.requests) == asked  # the cache, not the network
    # a corrupt blob (the hub names it by its SHA-256 but does not check it) is deleted and fetched again
    blobs[0].write_bytes(blobs[0].read_bytes()[:-10] + b"0123456789")
    assert torch.equal(loaded()["conv1.0.weight"], state["conv1.0.weight"]) and server.gets() == 2
    assert blobs[0].read_bytes() == server.files[path]
    # no network (the server is gone), then HF_HUB_OFFLINE=1: the cache serves it
    server.stop()
    assert torch.equal(loaded()["conv1.0.weight"], state["conv1.0.weight"])
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert torch.equal(loaded()["conv1.0.weight"], state["conv1.0.weight"])
    # offline and not cached: the error names the URL and the hub's cache folder (without
    # HF_HUB_OFFLINE the same, after the hub client's 25 s of retries)
    shutil.rmtree(tmp_path / "hf")
    with pytest.raises(pretrained.WeightsUnavailable) as e:
        loaded()
    folder = tmp_path / "hf" / "models--timm--resnet10t.c3_in1k"
    assert f"{server.url}/timm/resnet10t.c3_in1k/resolve/main/model.safetensors" in str(e.value)
    assert str(folder) in str(e.value) and "hf download timm/resnet10t.c3_in1k" in str(e.value)


def test_timm_imagenet_refuses_what_it_cannot_use(server, hf_hub, tmp_path):
    state, path = hf_hub
    sha = server.etags[path] = hashlib.sha256(server.files[path]).hexdigest()
    server.files[path] = server.files[path][:-10] + b"0123456789"  # other bytes than the hub names
    with pytest.raises(pretrained.WeightsUnavailable, match="integrity"):
        build_backbone("timm:resnet10t", "imagenet")
    assert server.gets() == 1 and not list((tmp_path / "hf").rglob(sha))  # refused and deleted
    assert not list((tmp_path / "hf").rglob("model.safetensors"))
    with pytest.raises(ValueError, match="no pretrained weights"):
        pretrained.timm_file("botnet50ts_256")
    with pytest.raises(ValueError, match="normalised with mean"):  # CLIP's statistics, not ImageNet's
        pretrained.timm_file("convnext_base.clip_laion2b")
