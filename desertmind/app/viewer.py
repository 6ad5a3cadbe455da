"""``desertmind app``: a local Gradio page to look at what a trained model does.

Two tabs, built from the checkpoint alone:

- **Predict**: upload an image (or pick one of the split's: picking predicts) and see the
  image and the prediction over it side by side, small images drawn large; one legend that is
  also the class toggles (colour, pixel share, most first), an opacity slider, and TTA
  (horizontal flip) and sliding-window switches. Opacity and toggles re-draw the overlay
  without predicting again.
- **Browse** (with ``--data.root``): every image of a labelled split scored by the model,
  worst mean IoU first, with each class's IoU; clicking a row (or choosing a name) shows
  image, ground truth, prediction and error map under a colour key.

A bad upload (not an image, too large, too small) is answered with a message in the page;
the server keeps running. Gradio's analytics are switched off, and nothing is fetched from the
network.

What a request may read and cost is bounded (see ``docs/viewer.md``): an image is either a file
this server received through Gradio's upload route in this run (``Blocks.upload_file_set``) or
one of the split's samples chosen by name, never a path the client names; every option is
checked as the CLI checks it, the work of one request is capped before it starts, one request
runs at a time and the queue behind it is bounded.
"""

from __future__ import annotations

import atexit
import hashlib
import html
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from desertmind.app.uploads import MAX_FILE_BYTES, UploadGuard
from desertmind.data.classes import CLASS_NAMES, CLASSES, remap
from desertmind.data.datamodule import OffroadDataModule
from desertmind.data.imageio import read_image, read_mask
from desertmind.data.layout import MASK_DIR, Sample, list_images
from desertmind.data.palette import colorize, error_map, overlay
from desertmind.errors import ConfigError, DesertMindError
from desertmind.files import write_bytes
from desertmind.inference.predictor import Predictor, check_image, class_shares
from desertmind.inference.ranking import SplitRanking
from desertmind.models.prediction import check_window, window_count

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
try:
    import gradio as gr
    from starlette.middleware import Middleware  # Gradio's web framework
except ImportError as e:  # an optional extra
    raise ConfigError("desertmind app needs Gradio: pip install 'desertmind[app]'") from e

TITLE = "desertmind viewer"
#: requests waiting behind the one being answered; more are refused at once ("queue full")
MAX_QUEUE = 32
#: forward passes of one request's sliding window (per flip), and pixels through the network
#: in all: a 960x540 image with flip is 1 MP, a 512 window over it 6 passes
MAX_WINDOWS = 256
MAX_FORWARD_PIXELS = 32_000_000
#: the most images of the shown split a checkpoint's test-time adaptation reads at start-up
ADAPT_IMAGES = 64


def legend_html() -> str:
    """The class colours as a row of swatches (the Browse tab's key to its colour maps)."""
    items = []
    for c in CLASSES:
        r, g, b = c.color
        items.append(f'<span class="dm-key"><span class="dm-swatch" style="background:rgb('
                     f'{r},{g},{b})"></span>{html.escape(c.name)}</span>')
    return f'<div id="dm-key">{"".join(items)}</div>'


def class_choices(shares: dict[str, float] | None = None) -> list[tuple[str, str]]:
    """The legend and its toggles in one: (label, class name) per class, the label with the
    class's pixel share after a prediction, most pixels first."""
    if shares is None:
        return [(name, name) for name in CLASS_NAMES]
    ranked = sorted(CLASS_NAMES, key=lambda n: (-shares[n], CLASS_NAMES.index(n)))
    return [(f"{name} · {shares[name] * 100:.1f}%", name) for name in ranked]


#: each class's colour as a swatch before its toggle (Gradio names a checkbox by its value),
#: and small images drawn large, pixels kept sharp
CSS = "\n".join(
    [f'#dm-classes label:has(input[name="{c.name}"]) span::before {{content:"";'
     f"display:inline-block;width:1em;height:1em;margin-right:0.4em;vertical-align:-0.15em;"
     f"border:1px solid #444;background:rgb{c.color}}}" for c in CLASSES]
    + [".dm-view img {width:100%;height:100%;object-fit:contain;image-rendering:pixelated}",
       ".dm-key {display:inline-block;margin:0 0.9em 0.3em 0;white-space:nowrap}",
       ".dm-swatch {display:inline-block;width:1em;height:1em;margin-right:0.35em;"
       "vertical-align:-0.15em;border:1px solid #444}"])


#: what the prediction panel shows: the classes, or how sure the model is of each pixel
VIEWS = ("classes", "confidence")


def confidence_overlay(image: np.ndarray, confidence: np.ndarray, alpha: float) -> np.ndarray:
    """The image under a heat map of the predicted class's probability (dark purple: unsure,
    yellow: sure; matplotlib's viridis), blended with ``alpha``."""
    from matplotlib import colormaps

    heat = (colormaps["viridis"](np.clip(confidence, 0, 1))[..., :3] * 255).astype(np.float32)
    return np.clip(image * (1 - alpha) + heat * alpha, 0, 255).astype(np.uint8)


def sample_ious(pred: np.ndarray, target: np.ndarray) -> str:
    """A split image's per-class IoU against its mask, as a markdown line (classes in neither
    the mask nor the prediction left out)."""
    import torch

    from desertmind.models.confusion import batched_confusion, iou_from_confusion

    cm = batched_confusion(torch.from_numpy(pred.astype(np.int64))[None],
                           torch.from_numpy(target.astype(np.int64))[None], len(CLASS_NAMES))
    ious = iou_from_confusion(cm[0].double()).tolist()
    present = [(n, v) for n, v in zip(CLASS_NAMES, ious, strict=True) if not np.isnan(v)]
    mean = np.mean([v for _, v in present]) if present else float("nan")
    return (f"**against its mask**: mean IoU {mean:.3f} · "
            + ", ".join(f"{html.escape(n)} {v:.3f}" for n, v in present))


def shown_path(path: Path) -> str:
    """A path as the page may show it: relative to the working folder when it lies under it,
    else its last three parts (``phase3/checkpoints/best.ckpt``): the page never tells a
    client where the server keeps its files."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(Path(*path.parts[-3:]))


def _score(value: float) -> float | None:
    """A score as the page shows it: 3 decimals; None (an empty cell) where there is none."""
    return None if np.isnan(value) else round(float(value), 3)


def _message(error: Exception) -> str:
    return str(error) if isinstance(error, DesertMindError) else f"{type(error).__name__}: {error}"


def _error(message: str) -> gr.Error:
    """A message shown in the page until the user closes it (the request fails, the server
    goes on)."""
    return gr.Error(message, duration=None)


class Viewer:
    """The page's state and handlers; :meth:`build` assembles the Gradio Blocks."""

    def __init__(self, ckpt: str | Path, root: str | None = None, split: str | None = None,
                 device: str = "cpu", *, evaluation: str | None = None) -> None:
        """``evaluation="checkpoint"``: predict and browse with the TTA scales and class
        restriction the checkpoint was trained to be evaluated with; by default, as
        ``validate`` does without options. The page's flip and window switches apply on top."""
        self.ckpt = Path(ckpt)
        self.predictor = Predictor(ckpt, device, evaluation=evaluation)
        data = self.predictor.settings.data
        self.split = split or data.get("val_dir") or "val"
        self.root = Path(root) if root else None
        self.samples: list[Sample] = []
        if self.root is not None:
            folder = self.root / self.split / "Color_Images"
            self.samples = list_images(folder)  # names the folder when it is missing or empty
        if self.predictor.evaluation.options.adapts and self.samples:
            # the checkpoint's test-time adaptation, to the split shown (a bounded sample)
            step = max(1, len(self.samples) // ADAPT_IMAGES)
            chosen = self.samples[::step][:ADAPT_IMAGES]
            self.predictor.adapt([read_image(s.image) for s in chosen], self.split)
        self.ranking: SplitRanking | None = None
        self.page: gr.Blocks | None = None  # set by build: its upload_file_set
        # this viewer's own folder, removed when the process ends (SIGTERM included, see
        # launch): the PNGs handed to Gradio (see png) and Gradio's upload cache, so that
        # no file another app put in Gradio's shared temp folder can be served from here
        self.home = Path(tempfile.mkdtemp(prefix="desertmind-viewer-"))
        atexit.register(shutil.rmtree, self.home, ignore_errors=True)
        self.outputs = self.home / "outputs"
        self.uploads = self.home / "gradio"

    # Predict tab -------------------------------------------------------------------------
    def _uploaded(self, path: str) -> str:
        """``path`` if this server received it through Gradio's upload route, else an error:
        Gradio copies any server file a client names into its cache before a handler runs, so
        the cache alone says nothing about where a file came from."""
        uploads = self.page.upload_file_set if self.page is not None else set()
        if os.path.abspath(path) not in {os.path.abspath(p) for p in uploads}:
            raise _error(f"{Path(path).name}: not a file uploaded to this viewer; upload the "
                         "image (or pick one of the split's by name)")
        return path

    def load_image(self, path: str | None) -> np.ndarray:
        if not path:
            raise _error("upload an image or pick one first")
        self._uploaded(path)
        name = Path(path).name  # the upload's own name, not Gradio's cache folder
        try:
            return check_image(read_image(path), name)
        except DesertMindError as e:
            raise _error(_message(e).replace(path, name)) from e

    def load_sample(self, name: str | None) -> np.ndarray:
        by_name = {s.name: s for s in self.samples}
        if name not in by_name:
            raise _error(f"{name!r}: not an image of {self.split}; pick one from the list")
        try:
            return check_image(read_image(by_name[name].image), name)
        except DesertMindError as e:
            raise _error(_message(e)) from e

    def options(self, image: np.ndarray, tta_flip, window) -> tuple[bool, int | None]:
        """The request's TTA options as the CLI would take them, refused when one request
        would ask for more work than the caps allow (before any of it runs)."""
        try:  # Gradio has made the window a whole number (precision 0), the flip a bool
            size = check_window(int(window or 0) or None)
        except DesertMindError as e:
            raise _error(_message(e)) from e
        except (OverflowError, ValueError, TypeError) as e:  # inf, nan, a raw API's text
            raise _error(f"window {window!r}: a whole number of pixels (at least 16), or "
                         "empty for whole images") from e
        h, w = self.predictor.image_size or image.shape[:2]
        passes = (2 if tta_flip else 1) * len(self.predictor.evaluation.options.tta_scales or [1.0])
        windows = window_count(h, w, size) if size else 1
        pixels = passes * windows * (min(size, h) * min(size, w) if size else h * w)
        if windows > MAX_WINDOWS or pixels > MAX_FORWARD_PIXELS:
            raise _error(f"this request needs {passes * windows} forward passes over "
                         f"{pixels / 1e6:.1f} MP, more than this viewer answers in one request "
                         f"({MAX_WINDOWS} windows, {MAX_FORWARD_PIXELS / 1e6:.0f} MP); use a "
                         "larger window, turn TTA off, or predict it with `desertmind "
                         "predict`")
        return bool(tta_flip), size

    def _predict(self, image: np.ndarray, tta_flip, window, opacity: float,
                 shown: list[str], view: str = VIEWS[0], target: np.ndarray | None = None):
        flip, size = self.options(image, tta_flip, window)
        try:
            pred, confidence = self.predictor.predict_with_confidence(
                image, self.predictor.options(tta_flip=flip, sliding_window=size))
        except DesertMindError as e:
            raise _error(_message(e)) from e
        state = {"image": image, "pred": pred, "confidence": confidence}
        legend = gr.update(choices=class_choices(class_shares(pred)), value=shown)
        truth = (None, None, "") if target is None else (
            self.png(colorize(target)), self.png(error_map(pred, target)),
            sample_ious(pred, target))
        return (self.png(image), self.draw(state, opacity, shown, view), legend, state, *truth)

    def predict(self, path: str | None, tta_flip: bool, window: float | None,
                opacity: float, shown: list[str], view: str = VIEWS[0]):
        """An uploaded image (the ``/predict`` API)."""
        return self._predict(self.load_image(path), tta_flip, window, opacity, shown, view)

    def predict_sample(self, name: str | None, tta_flip: bool, window: float | None,
                       opacity: float, shown: list[str], view: str = VIEWS[0]):
        """One of the split's images, by name (the ``/predict_sample`` API), with its ground
        truth, error map and per-class IoU when its mask is on disk; the upload box is
        cleared so that the Predict button predicts the picked image."""
        image, target = self.load_sample(name), self.load_target(name)
        return (*self._predict(image, tta_flip, window, opacity, shown, view, target), None)

    def predict_current(self, path: str | None, name: str | None, tta_flip: bool,
                        window: float | None, opacity: float, shown: list[str],
                        view: str = VIEWS[0]):
        """The Predict button: the upload if there is one, else the picked image."""
        if path or not name:
            return self._predict(self.load_image(path), tta_flip, window, opacity, shown, view)
        return self._predict(self.load_sample(name), tta_flip, window, opacity, shown, view,
                             self.load_target(name))

    def load_target(self, name: str | None) -> np.ndarray | None:
        """A split image's mask as train ids (None when the split has no mask for it)."""
        sample = {s.name: s for s in self.samples}.get(name)
        if sample is None:
            return None
        mask = self.root / self.split / MASK_DIR / sample.image.name
        if not mask.is_file():
            return None
        try:
            return remap(read_mask(mask))
        except DesertMindError as e:
            raise _error(_message(e)) from e

    def png(self, image: np.ndarray) -> str:
        """An RGB image as a PNG file written whole, named by its content, for Gradio to serve.

        Handed an array, Gradio writes the encoded image in place into its content-addressed
        cache: two requests with the same result (the same image and options, e.g. under 20
        concurrent requests) rewrite one file while a client downloads it, which then gets an
        empty image. A file path is copied into the cache under a temporary name and renamed,
        and an existing copy is reused, never rewritten."""
        ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        if not ok:
            raise _error("could not encode the result as PNG")
        data = buf.tobytes()
        path = self.outputs / hashlib.sha256(data).hexdigest()[:32] / "image.png"
        if not path.is_file():
            write_bytes(path, data)
        return str(path)

    def draw(self, state: dict | None, opacity: float, shown: list[str],
             view: str = VIEWS[0]) -> str | None:
        if not state:
            return None
        if view not in VIEWS:
            raise _error(f"view {view!r}: one of {', '.join(VIEWS)}")
        unknown = sorted(set(shown or []) - set(CLASS_NAMES))
        if unknown:
            raise _error(f"classes shown: unknown class(es) {unknown}; choose from "
                         f"{list(CLASS_NAMES)}")
        try:
            alpha = min(max(float(opacity), 0.0), 1.0)
        except (TypeError, ValueError):
            raise _error(f"opacity={opacity!r}: a number from 0 to 1") from None
        if view == VIEWS[1]:
            return self.png(confidence_overlay(state["image"], state["confidence"], alpha))
        classes = [CLASS_NAMES.index(n) for n in shown or []]
        return self.png(overlay(state["image"], state["pred"], alpha, classes))

    def redraw(self, state: dict | None, opacity: float, shown: list[str],
               view: str = VIEWS[0]):
        return self.draw(state, opacity, shown, view)

    # Browse tab --------------------------------------------------------------------------
    def score_split(self, progress=gr.Progress()):  # noqa: B008 - Gradio's own convention
        if self.ranking is not None:  # scored once per server: a click costs nothing more
            return self._ranking_rows()
        dm = OffroadDataModule(str(self.root), val_dir=self.split, num_workers=0,
                               image_size=self.predictor.image_size, pin_memory=False)
        try:
            dm.setup("validate")
        except DesertMindError as e:
            raise _error(_message(e)) from e
        self.ranking = SplitRanking(
            self.predictor.evaluation, dm.datasets["val"],
            progress=lambda done, total: progress(done / total, desc="scoring images"))
        return self._ranking_rows()

    def _ranking_rows(self):
        rows = [[i + 1, s.name, *(_score(v) for v in (s.miou, *s.iou))]
                for i, s in enumerate(self.ranking.scores)]
        choices = [s.name for s in self.ranking.scores]
        return rows, gr.update(choices=choices, value=choices[0] if choices else None)

    def pick_row(self, event: gr.SelectData):
        """A click on a row of the ranking shows that image (its name is the second column)."""
        row = event.index[0] if isinstance(event.index, list | tuple) else event.index
        if self.ranking is None or not 0 <= int(row) < len(self.ranking.scores):
            raise _error("score the split first, then pick a row")
        return self.ranking.scores[int(row)].name

    def show(self, name: str | None):
        if self.ranking is None or not name:
            return None, None, None, None, ""
        score = next((s for s in self.ranking.scores if s.name == name), None)
        if score is None:
            raise _error(f"{name!r}: not an image of {self.split}; pick one from the list")
        image, target, pred = self.ranking.render(score.index)
        views = (image, colorize(target), colorize(pred), error_map(pred, target))
        present = [f"{n} {v:.3f}" for n, v in zip(CLASS_NAMES, score.iou, strict=True)
                   if not np.isnan(v)]
        return (*(self.png(v) for v in views),
                f"**{html.escape(name)}**: mean IoU {score.miou:.3f} · " + ", ".join(present))

    # Page ------------------------------------------------------------------------------------
    def header(self) -> str:
        """What the page shows: the checkpoint, its network, the size it evaluates at (width x
        height, as everywhere else) and the best validation score of its training run."""
        s = self.predictor.settings
        size = self.predictor.image_size
        at = "full size" if size is None else f"{size[1]}x{size[0]} (width x height)"
        monitor, score, epoch = s.best
        best = ("no validation score saved" if score is None else
                f"{monitor or 'val score'} {score:.3f}"
                + ("" if epoch is None else f" (epoch {epoch})"))
        return (f"## {TITLE}\n**{html.escape(s.network['arch'])}** / "
                f"{html.escape(s.network['backbone'])} · evaluated at {at} · {best}  \n"
                f"`{html.escape(shown_path(self.ckpt))}`")

    def build(self) -> gr.Blocks:
        # Gradio reads its cache folder from the environment when a component is made and
        # when a request is checked: this process's viewer has its own (one viewer a process)
        os.environ["GRADIO_TEMP_DIR"] = str(self.uploads)
        # outputs of earlier requests are dropped from Gradio's cache after an hour
        with gr.Blocks(title=TITLE, analytics_enabled=False,
                       delete_cache=(600, 3600)) as page:
            gr.Markdown(self.header(), elem_id="dm-header")
            with gr.Tab("Predict"):
                with gr.Row():
                    with gr.Column(scale=1, min_width=260):
                        # a File, not an Image: Gradio's Image decodes uploads itself and
                        # answers a bad file with an internal message; here the package's
                        # reader says what is wrong with it
                        upload = gr.File(label="image file", file_types=["image"],
                                         type="filepath", elem_id="dm-input", height=90)
                        picker = gr.Dropdown([x.name for x in self.samples], value=None,
                                             label=f"or pick an image of {self.split}",
                                             visible=bool(self.samples), elem_id="dm-pick")
                        run = gr.Button("Predict", variant="primary", elem_id="dm-predict")
                        # the legend (also the class toggles) high up: visible at 1366x768
                        shown = gr.CheckboxGroup(
                            class_choices(), value=list(CLASS_NAMES), elem_id="dm-classes",
                            label="classes: colour, pixel share (most first); untick to hide")
                        view = gr.Radio(list(VIEWS), value=VIEWS[0], elem_id="dm-view",
                                        label="show: classes, or confidence (the predicted "
                                        "class's probability; dark: unsure)")
                        opacity = gr.Slider(0, 1, 0.5, step=0.05, label="opacity")
                        with gr.Accordion("test-time options", open=False):
                            tta = gr.Checkbox(False, label="TTA: horizontal flip")
                            window = gr.Number(0, minimum=0, precision=0,
                                               label="sliding window (pixels; 0: off)")
                    with gr.Column(scale=3):
                        with gr.Row():
                            original = gr.Image(label="image", interactive=False,
                                                elem_id="dm-original", format="png",
                                                height=420, elem_classes="dm-view")
                            shown_img = gr.Image(label="prediction", interactive=False,
                                                 elem_id="dm-overlay", format="png",
                                                 height=420, elem_classes="dm-view")
                        # a picked image of the split: its mask, the errors and its IoUs
                        with gr.Row():
                            truth = gr.Image(label="ground truth", interactive=False,
                                             elem_id="dm-truth", format="png", height=260,
                                             elem_classes="dm-view")
                            errors = gr.Image(label="error map (red: wrong)",
                                              interactive=False, elem_id="dm-errors",
                                              format="png", height=260, elem_classes="dm-view")
                        ious = gr.Markdown(elem_id="dm-sample-iou")
                state = gr.State(None)
                options = [tta, window, opacity, shown, view]
                drawn = [original, shown_img, shown, state, truth, errors, ious]
                upload.upload(self.predict, [upload, *options], drawn, api_name="predict")
                picker.input(self.predict_sample, [picker, *options], [*drawn, upload],
                             api_name="predict_sample")
                run.click(self.predict_current, [upload, picker, *options], drawn,
                          api_name=False)
                redraw = [state, opacity, shown, view]
                opacity.change(self.redraw, redraw, shown_img, api_name=False)
                shown.input(self.redraw, redraw, shown_img, api_name=False)
                view.input(self.redraw, redraw, shown_img, api_name=False)
            if self.root is not None:
                with gr.Tab(f"Browse {self.split}"):
                    gr.Markdown("Every image of the split scored by this model, worst mean IoU "
                                "first (the study's per-image rule), with each class's IoU in it "
                                "(empty: the class is in neither the ground truth nor the "
                                "prediction). Click a row to see it.")
                    score = gr.Button("Score the split", elem_id="dm-score")
                    table = gr.Dataframe(headers=["rank", "image", "mIoU", *CLASS_NAMES],
                                         interactive=False, elem_id="dm-ranking",
                                         label="images, worst first", max_height=360)
                    chosen = gr.Dropdown([], label="image", elem_id="dm-chosen")
                    caption = gr.Markdown(elem_id="dm-caption")
                    gr.HTML(legend_html())
                    with gr.Row():
                        views = [gr.Image(label=label, interactive=False, format="png",
                                          height=300, elem_classes="dm-view")
                                 for label in ("image", "ground truth", "prediction",
                                               "error map (red: wrong)")]
                    score.click(self.score_split, None, [table, chosen], api_name="score")
                    table.select(self.pick_row, None, chosen, api_name=False)
                    chosen.change(self.show, chosen, [*views, caption], api_name="show")
        # one request at a time (the model is one), and a bounded line behind it
        page.queue(default_concurrency_limit=1, max_size=MAX_QUEUE)
        self.page = page
        return page


def launch(ckpt: str | Path, root: str | None = None, split: str | None = None,
           host: str = "127.0.0.1", port: int | None = None, device: str = "cpu",
           block: bool = True, evaluation: str | None = None) -> tuple[gr.Blocks, str]:
    """Build the page and serve it; returns the Blocks and the local URL. With
    ``block=False`` the server runs in a thread and this returns at once (tests)."""
    viewer = Viewer(ckpt, root, split, device, evaluation=evaluation)
    page = viewer.build()
    guard = Middleware(UploadGuard, folder=viewer.uploads, accepted=page.upload_file_set)
    if block:
        # a SIGTERM (a service manager, kill) ends the process as Ctrl+C does, so that the
        # exit handlers remove the viewer's folder; set before "serving" is said, which a
        # supervisor (or a test) may answer with a SIGTERM at once
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        _, url, _ = page.launch(server_name=host, server_port=port, prevent_thread_lock=True,
                                show_error=False, quiet=True, footer_links=["api"], css=CSS,
                                max_file_size=MAX_FILE_BYTES, app_kwargs={"middleware": [guard]})
    except OSError as e:  # Gradio's words name its environment variables, not our options
        raise ConfigError(f"cannot serve at {host}:{port}: the port is in use or the host is "
                          "not an address of this machine; choose another --port, or --host "
                          "127.0.0.1") from e
    print(f"desertmind app: serving {ckpt} at {url} (Ctrl+C to stop)", flush=True)
    if block:
        page.block_thread()
    return page, url
