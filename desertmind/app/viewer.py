"""``desertmind app``: a local Gradio page to look at what a trained model does.

Two tabs, built from the checkpoint alone:

- **Predict**: upload an image (or pick one of the split's) and see the prediction over it,
  with a legend of class colours and pixel shares, an opacity slider, per-class toggles, and
  TTA (horizontal flip) and sliding-window switches. Opacity and toggles re-draw the overlay
  without predicting again.
- **Browse** (with ``--data.root``): every image of a labelled split scored by the model,
  worst mean IoU first; choosing one shows image, ground truth, prediction and error map.

A bad upload (not an image, too large, too small) is answered with a message in the page;
the server keeps running. Gradio's analytics are switched off, and nothing is fetched from the
network.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

import numpy as np

from desertmind.data.classes import CLASS_NAMES, CLASSES
from desertmind.data.datamodule import OffroadDataModule
from desertmind.data.imageio import read_image
from desertmind.data.layout import Sample, list_images
from desertmind.data.palette import colorize, error_map, overlay
from desertmind.errors import ConfigError, DesertMindError
from desertmind.inference.predictor import Predictor, check_image, class_shares
from desertmind.reports.analysis import SplitRanking

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
try:
    import gradio as gr
except ImportError as e:  # an optional extra
    raise ConfigError("desertmind app needs Gradio: pip install 'desertmind[app]'") from e

TITLE = "desertmind viewer"


def legend_html(shares: dict[str, float] | None = None,
                shown: list[str] | None = None) -> str:
    """The class legend: colour swatch, name and (after a prediction) pixel share."""
    rows = []
    for c in CLASSES:
        r, g, b = c.color
        share = "" if shares is None else f"{shares[c.name] * 100:.1f}%"
        faded = "" if shown is None or c.name in shown else "opacity:0.35;"
        rows.append(
            f'<tr class="dm-legend-row" style="{faded}"><td><span style="display:inline-block;'
            f'width:1.2em;height:1.2em;background:rgb({r},{g},{b});border:1px solid #444">'
            f'</span></td><td>{html.escape(c.name)}</td><td style="text-align:right">{share}'
            "</td></tr>")
    return ('<table id="dm-legend"><thead><tr><th></th><th>class</th><th>pixels</th></tr>'
            f"</thead><tbody>{''.join(rows)}</tbody></table>")


def _message(error: Exception) -> str:
    return str(error) if isinstance(error, DesertMindError) else f"{type(error).__name__}: {error}"


def _error(message: str) -> gr.Error:
    """A message shown in the page until the user closes it (the request fails, the server
    goes on)."""
    return gr.Error(message, duration=None)


class Viewer:
    """The page's state and handlers; :meth:`build` assembles the Gradio Blocks."""

    def __init__(self, ckpt: str | Path, root: str | None = None, split: str | None = None,
                 device: str = "cpu") -> None:
        self.ckpt = Path(ckpt)
        self.predictor = Predictor(ckpt, device)
        data = self.predictor.settings.data
        self.split = split or data.get("val_dir") or "val"
        self.root = Path(root) if root else None
        self.samples: list[Sample] = []
        if self.root is not None:
            folder = self.root / self.split / "Color_Images"
            self.samples = list_images(folder)  # names the folder when it is missing or empty
        self.ranking: SplitRanking | None = None

    # Predict tab -------------------------------------------------------------------------
    def load_image(self, path: str | None) -> np.ndarray:
        if not path:
            raise _error("upload an image or pick one first")
        name = Path(path).name  # the upload's own name, not Gradio's cache folder
        try:
            return check_image(read_image(path), name)
        except DesertMindError as e:
            raise _error(_message(e).replace(path, name)) from e

    def predict(self, path: str | None, tta_flip: bool, window: float | None,
                opacity: float, shown: list[str]):
        image = self.load_image(path)
        try:
            pred = self.predictor.predict(image, bool(tta_flip), int(window or 0) or None)
        except DesertMindError as e:
            raise _error(_message(e)) from e
        state = {"image": image, "pred": pred}
        return (self.draw(state, opacity, shown),
                legend_html(class_shares(pred), shown), state)

    def draw(self, state: dict | None, opacity: float, shown: list[str]) -> np.ndarray | None:
        if not state:
            return None
        classes = [CLASS_NAMES.index(n) for n in shown]
        return overlay(state["image"], state["pred"], float(opacity), classes)

    def redraw(self, state: dict | None, opacity: float, shown: list[str]):
        shares = class_shares(state["pred"]) if state else None
        return self.draw(state, opacity, shown), legend_html(shares, shown)

    def pick(self, name: str | None) -> str | None:
        by_name = {s.name: s for s in self.samples}
        return str(by_name[name].image) if name in by_name else None

    # Browse tab --------------------------------------------------------------------------
    def score_split(self, progress=gr.Progress()):  # noqa: B008 - Gradio's own convention
        dm = OffroadDataModule(str(self.root), val_dir=self.split, num_workers=0,
                               image_size=self.predictor.image_size, pin_memory=False)
        try:
            dm.setup("validate")
        except DesertMindError as e:
            raise _error(_message(e)) from e
        self.ranking = SplitRanking(
            self.predictor.module, dm.datasets["val"],
            progress=lambda done, total: progress(done / total, desc="scoring images"))
        rows = [[i + 1, s.name, None if np.isnan(s.miou) else round(s.miou, 4)]
                for i, s in enumerate(self.ranking.scores)]
        choices = [s.name for s in self.ranking.scores]
        return rows, gr.update(choices=choices, value=choices[0] if choices else None)

    def show(self, name: str | None):
        if self.ranking is None or not name:
            return None, None, None, None, ""
        score = next(s for s in self.ranking.scores if s.name == name)
        image, target, pred = self.ranking.render(score.index)
        return (image, colorize(target), colorize(pred), error_map(pred, target),
                f"**{html.escape(name)}**: mean IoU {score.miou:.3f}")

    # Page ------------------------------------------------------------------------------------
    def build(self) -> gr.Blocks:
        s = self.predictor.settings
        size = self.predictor.image_size
        about = (f"`{self.ckpt}`: {s.network['arch']} {s.network['backbone']}, evaluated at "
                 f"{'full size' if size is None else f'{size[0]}x{size[1]}'}")
        with gr.Blocks(title=TITLE, analytics_enabled=False) as page:
            gr.Markdown(f"## {TITLE}\n{about}")
            with gr.Tab("Predict"):
                with gr.Row():
                    with gr.Column(scale=1):
                        # a File, not an Image: Gradio's Image decodes uploads itself and
                        # answers a bad file with an internal message; here the package's
                        # reader says what is wrong with it
                        upload = gr.File(label="image file", file_types=["image"],
                                         type="filepath", elem_id="dm-input")
                        if self.samples:
                            picker = gr.Dropdown([x.name for x in self.samples], value=None,
                                                 label=f"or pick an image of {self.split}")
                            picker.change(self.pick, picker, upload)
                        tta = gr.Checkbox(False, label="TTA: horizontal flip")
                        window = gr.Number(0, minimum=0, precision=0,
                                           label="sliding window (pixels; 0: off)")
                        run = gr.Button("Predict", variant="primary", elem_id="dm-predict")
                    with gr.Column(scale=2):
                        shown_img = gr.Image(label="prediction overlay", interactive=False,
                                             elem_id="dm-overlay", format="png", height=480)
                        opacity = gr.Slider(0, 1, 0.5, step=0.05, label="opacity")
                        shown = gr.CheckboxGroup(list(CLASS_NAMES), value=list(CLASS_NAMES),
                                                 label="classes shown")
                        legend = gr.HTML(legend_html(), elem_id="dm-legend-box")
                state = gr.State(None)
                inputs = [upload, tta, window, opacity, shown]
                run.click(self.predict, inputs, [shown_img, legend, state], api_name="predict")
                upload.upload(self.predict, inputs, [shown_img, legend, state])
                for control in (opacity, shown):
                    control.change(self.redraw, [state, opacity, shown], [shown_img, legend],
                                   api_name=False)
            if self.root is not None:
                with gr.Tab(f"Browse {self.split}"):
                    gr.Markdown("Every image of the split scored by this model, worst mean IoU "
                                "first (the seed's per-image rule).")
                    score = gr.Button("Score the split", elem_id="dm-score")
                    table = gr.Dataframe(headers=["rank", "image", "mIoU"], interactive=False,
                                         label="images, worst first")
                    chosen = gr.Dropdown([], label="image")
                    caption = gr.Markdown()
                    with gr.Row():
                        views = [gr.Image(label=label, interactive=False, format="png",
                                          height=240)
                                 for label in ("image", "ground truth", "prediction",
                                               "error map (red: wrong)")]
                    score.click(self.score_split, None, [table, chosen], api_name="score")
                    chosen.change(self.show, chosen, [*views, caption], api_name="show")
        return page


def launch(ckpt: str | Path, root: str | None = None, split: str | None = None,
           host: str = "127.0.0.1", port: int | None = None, device: str = "cpu",
           block: bool = True) -> tuple[gr.Blocks, str]:
    """Build the page and serve it; returns the Blocks and the local URL. With
    ``block=False`` the server runs in a thread and this returns at once (tests)."""
    page = Viewer(ckpt, root, split, device).build()
    _, url, _ = page.launch(server_name=host, server_port=port, prevent_thread_lock=True,
                            show_error=True, quiet=True, footer_links=["api"])
    print(f"desertmind app: serving {ckpt} at {url} (Ctrl+C to stop)", flush=True)
    if block:
        page.block_thread()
    return page, url
