"""The page: open a photo (an upload, or one of the data folder's images/), see the model's
prediction as an overlay, scribble per class with the checkpoint's colours, save the scribbles into
the data folder and see its data summary. A photo is opened in a page of its own (?photo=NAME for
the data folder's, ?upload=ID for an upload kept in uploads.py's store): gradio's editor (6.31),
given a second photo of a real size by the server in one page, shows it but no longer sends the
strokes drawn on it (docs/app.md, Decisions); a fresh page's first photo is sent. Every handler
turns a bad request (an unreadable photo, a refused save) into a message on the page (gr.Error),
never a traceback; the server keeps running."""

from __future__ import annotations

import functools
import html
import os

import gradio as gr  # the app extra: blpseg.cli imports this module once gradio is found
import numpy as np

from ..data.io import read_image
from ..engine.inference import predict_image
from ..engine.overlay import overlay
from . import data
from .scribbles import add_strokes, class_colours, layers_to_scribble, paint
from .uploads import UploadStore

ERRORS = (OSError, ValueError, RuntimeError)  # what reading a user's photo or writing a file may raise
# opens a photo in a new page: the list's choice as ?photo=NAME, a kept upload as ?upload=ID
OPEN_IN_NEW_PAGE = """(n) => {
    if (!n) return;
    const u = new URL(window.location);
    u.searchParams.delete("photo"); u.searchParams.delete("upload"); u.searchParams.set("%s", n);
    window.location.assign(u);
}"""


def _text(message: str) -> str:
    """A message for gr.Error, which renders HTML: file names and URL parameters are the user's text."""
    return html.escape(message, quote=False)


def _user_errors(fn):
    """Runs a handler; a bad file or a refused save becomes gr.Error (a message on the page)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except ERRORS as e:
            raise gr.Error(_text(str(e)), print_exception=False) from None

    return wrapper


def _legend(names, colours) -> str:
    swatches = "".join(
        f'<span style="display:inline-block;margin:2px 10px 2px 0"><span style="display:inline-block;width:14px;'
        f'height:14px;background:{c};border:1px solid #888;vertical-align:middle"></span> {i}: {html.escape(n)}</span>'
        for i, (n, c) in enumerate(zip(names, colours, strict=True))
    )
    return f'<div id="class-legend">{swatches}</div>'


def build_page(model, cfg: dict, names, device, root: str | None, uploads: UploadStore):
    """The gr.Blocks of the page for a loaded checkpoint (engine/checkpoint.py load_model), a data
    folder (None: no saving) and the store its uploads are kept in until the page stops."""
    colours = class_colours(len(names))
    PROGRESS = gr.Progress()  # gradio's marker for a handler's progress bar (one instance serves all)
    brush = lambda c: gr.Brush(colors=colours, default_color=colours[c], color_mode="fixed", default_size=6)

    def read_photo(path: str, shown_name: str):
        try:
            return read_image(path)
        except ERRORS as e:  # name the file as the user knows it, not the server's temporary copy
            raise gr.Error(_text(str(e).replace(path, shown_name)), print_exception=False) from None

    def open_photo(path: str, shown_name: str, from_data: bool, alpha: float, progress):
        """A photo of the data folder keeps its name there; an upload's name is made safe."""
        progress(0, desc="reading the photo")
        image = read_photo(path, shown_name)
        progress(0.2, desc="predicting")
        pred = predict_image(model, image, cfg, device).argmax(0).numpy().astype(np.uint8)
        name = os.path.splitext(shown_name)[0] if from_data else data.safe_name(shown_name)
        info, saved, background = f"{name}: {image.shape[1]}x{image.shape[0]} px", None, image
        if from_data:  # its saved scribble painted under the strokes; a save adds the strokes to it
            saved = _saved_scribble(name, image.shape[:2])
        if saved is not None:
            background = paint(image, saved, len(names))
            info += f"; its saved scribble ({int((saved < len(names)).sum())} px) is painted in, new strokes add to it"
        photo = {"name": name, "path": path if from_data else None, "image": image, "pred": pred, "saved": saved}
        editor = {"background": background, "layers": [], "composite": None}
        return photo, editor, overlay(image, pred, names, alpha), info

    def _saved_scribble(name: str, shape):
        """root/scribbles/NAME.png, or None: where there is none, and where it cannot be read or does
        not fit the photo (then with a warning on the page: a save would replace it)."""
        try:
            saved = data.saved_scribble(root, name)
            if saved is not None and saved.shape != tuple(shape):
                raise ValueError(f"it is {saved.shape[1]}x{saved.shape[0]} px, the photo {shape[1]}x{shape[0]}")
            return saved
        except ERRORS as e:
            gr.Warning(_text(f"the saved scribble of {name} is left out (a save replaces it): {e}"))
            return None

    @_user_errors
    def on_upload(file, progress=PROGRESS):
        """A readable upload is kept and its id returned (the page then opens ?upload=ID); a bad one
        gets its message here, in the page the user is on."""
        if file is None:
            return gr.skip()
        name = os.path.basename(file)
        progress(0, desc="reading the photo")
        read_photo(file, name)
        data.safe_name(name)  # a name that cannot be saved is refused now, not at the save
        return uploads.add(file, name)

    @_user_errors
    def on_load(alpha, request: gr.Request, progress=PROGRESS):
        name, upload_id = request.query_params.get("photo"), request.query_params.get("upload")
        if upload_id:
            kept = uploads.get(upload_id)
            if kept is None:
                raise gr.Error(
                    f"the upload {_text(repr(upload_id))} is no longer on the server (the page was restarted, or "
                    f"{uploads.max_uploads} later uploads replaced it): upload the photo again",
                    print_exception=False,
                )
            return *open_photo(*kept, False, alpha, progress), gr.skip()
        if not name:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        path = data.photos(root).get(name)
        if path is None:
            where = f"{root}/images" if root else "the page: it has no data folder (--data-root)"
            raise gr.Error(
                f"no photo {_text(repr(name))} in {_text(where)}: choose one in the list", print_exception=False
            )
        return *open_photo(path, os.path.basename(path), True, alpha, progress), gr.update(value=name)

    def on_alpha(photo, alpha):
        if photo is None:
            return gr.skip()
        return overlay(photo["image"], photo["pred"], names, alpha)

    @_user_errors
    def on_save(photo, edited, overwrite, progress=PROGRESS):
        if root is None:
            raise gr.Error("no data folder: start the page with --data-root to save scribbles", print_exception=False)
        if photo is None:
            raise gr.Error("open a photo first", print_exception=False)
        strokes = layers_to_scribble((edited or {}).get("layers") or [], len(names), photo["image"].shape[:2])
        if (strokes == 255).all():
            raise gr.Error("nothing scribbled: draw with a class's brush first", print_exception=False)
        scribble = add_strokes(photo["saved"], strokes)
        progress(0, desc="saving")
        written = data.save(root, photo["name"], photo["image"], scribble, names, photo["path"], overwrite)
        counts = ", ".join(
            f"{names[c]} {n}" for c, n in zip(*np.unique(scribble[scribble != 255], return_counts=True), strict=True)
        )
        progress(0.5, desc="counting the scribbles")
        message = f"saved {', '.join(written)} (scribbled pixels: {counts})"
        return message, data.summary_text(root, names), gr.update(choices=list(data.photos(root)))

    with gr.Blocks(title="BLPSeg scribbles") as page:
        gr.Markdown(
            "## BLPSeg: scribble on a photo, see the model's prediction\n"
            "Open a photo, pick a class, draw over it, save: the scribble goes into the data folder "
            f"(`{html.escape(root) if root else 'none: start with --data-root'}`) in the folder format."
        )
        photo = gr.State(None)
        with gr.Row():
            # a button rather than gr.File: it stays ready for the next photo after a refused one
            upload = gr.UploadButton("upload a photo", file_types=["image"], type="filepath", elem_id="upload")
            upload_id = gr.Textbox(visible="hidden", elem_id="upload-id")  # the kept upload, for the new page
            choose = gr.Dropdown(
                choices=list(data.photos(root)), value=None, label="or a photo of the data folder", elem_id="choose"
            )
        info = gr.Textbox(label="photo", interactive=False, elem_id="info")
        with gr.Row():
            with gr.Column():
                klass = gr.Radio(
                    choices=[(f"{i}: {n}", i) for i, n in enumerate(names)],
                    value=min(1, len(names) - 1),
                    label="brush: class",
                    elem_id="brush-class",
                )
                gr.HTML(_legend(names, colours))
                editor = gr.ImageEditor(
                    label="scribbles (brush of the chosen class; the eraser removes)",
                    type="numpy",
                    image_mode="RGBA",
                    sources=(),
                    transforms=(),
                    layers=False,
                    brush=brush(min(1, len(names) - 1)),
                    eraser=gr.Eraser(default_size=12),
                    elem_id="editor",
                )
            with gr.Column():
                alpha = gr.Slider(0, 1, value=0.5, step=0.05, label="overlay opacity", elem_id="alpha")
                shown = gr.Image(label="prediction", type="numpy", interactive=False, elem_id="overlay")
        with gr.Row():
            overwrite = gr.Checkbox(label="overwrite an existing scribble", value=False, elem_id="overwrite")
            save = gr.Button("save scribbles", variant="primary", elem_id="save")
        status = gr.Textbox(label="saved", interactive=False, elem_id="status")
        summary = gr.Textbox(
            label="data summary", value=data.summary_text(root, names), lines=8, interactive=False, elem_id="summary"
        )

        outputs = [photo, editor, shown, info]
        # each photo in a page of its own, its first update (see the module's docstring)
        upload.upload(on_upload, upload, upload_id).success(None, upload_id, None, js=OPEN_IN_NEW_PAGE % "upload")
        choose.input(None, choose, None, js=OPEN_IN_NEW_PAGE % "photo")
        page.load(on_load, [alpha], [*outputs, choose])
        alpha.release(on_alpha, [photo, alpha], shown)
        klass.change(lambda c: gr.update(brush=brush(c)), klass, editor)
        save.click(on_save, [photo, editor, overwrite], [status, summary, choose])
    return page
