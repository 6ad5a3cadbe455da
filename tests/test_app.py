"""The viewer (``desertmind app``) through Gradio's Python client: a real server in this
process, answering the same calls the page makes."""

from __future__ import annotations

import html
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from desertmind.app.viewer import launch  # switches analytics off before importing Gradio
from desertmind.cli.main import main
from desertmind.data.classes import CLASS_NAMES
from desertmind.data.imageio import read_image
from desertmind.inference.predictor import Predictor


@pytest.fixture(scope="module")
def served(synth_root: Path, tmp_path_factory, phase_args):
    """A tiny phase-1 checkpoint served with the synthetic root: (client, checkpoint)."""
    logs = tmp_path_factory.mktemp("app") / "logs"
    assert main(["fit", *phase_args("phase1", synth_root, logs),
                 "--trainer.enable_progress_bar", "false"]) == 0
    ckpt = logs / "phase1" / "checkpoints" / "best.ckpt"
    page, url = launch(ckpt, str(synth_root), block=False)
    yield Client(url, verbose=False, download_files=str(tmp_path_factory.mktemp("dl"))), ckpt
    page.close()


def _shares(legend: str) -> dict[str, float]:
    rows = re.findall(r"<td>([^<]+)</td><td[^>]*>([\d.]+)%</td>", legend)
    return {html.unescape(name): float(share) for name, share in rows}


def test_predict_draws_the_overlay_with_a_legend(served, synth_root):
    client, _ = served
    path = next((synth_root / "val" / "Color_Images").iterdir())
    image = read_image(path)
    overlay, legend, = client.predict(handle_file(str(path)), False, 0, 0.5, list(CLASS_NAMES),
                                      api_name="/predict")
    drawn = read_image(overlay)
    assert drawn.shape == image.shape  # at the image's own size
    assert not np.array_equal(drawn, image)
    shares = _shares(legend)
    assert list(shares) == list(CLASS_NAMES)
    assert sum(shares.values()) == pytest.approx(100, abs=0.1)
    # opacity 0 is the image itself; hiding every class leaves it untouched too
    for opacity, shown in ((0.0, list(CLASS_NAMES)), (1.0, [])):
        plain, _ = client.predict(handle_file(str(path)), False, 0, opacity, shown,
                                  api_name="/predict")
        np.testing.assert_array_equal(read_image(plain), image)


def test_tta_and_window_switches_reach_the_model(served, synth_root, monkeypatch):
    client, _ = served
    calls = []
    real = Predictor.predict

    def spy(self, image, tta_flip=False, window=None):
        calls.append((tta_flip, window))
        return real(self, image, tta_flip, window)

    # the server answers in this process: the spy sees what each switch hands the model
    monkeypatch.setattr(Predictor, "predict", spy)
    path = str(next((synth_root / "val" / "Color_Images").iterdir()))
    for flip, window in ((False, 0), (True, 0), (False, 24)):
        client.predict(handle_file(path), flip, window, 1.0, list(CLASS_NAMES),
                       api_name="/predict")
    assert calls == [(False, None), (True, None), (False, 24)]


@pytest.mark.parametrize("content, message", [
    (b"this is not an image", "cannot decode image"),
    ("huge", "MP accepted"),
    ("tiny", "too small"),
])
def test_a_bad_upload_gets_a_message_and_the_server_goes_on(served, synth_root, tmp_path,
                                                           content, message):
    client, _ = served
    bad = tmp_path / "upload.png"
    if content == "huge":
        cv2.imwrite(str(bad), np.zeros((5000, 5001, 3), np.uint8))
    elif content == "tiny":
        cv2.imwrite(str(bad), np.zeros((8, 8, 3), np.uint8))
    else:
        bad.write_bytes(content)
    with pytest.raises(AppError, match=message) as error:
        client.predict(handle_file(str(bad)), False, 0, 0.5, list(CLASS_NAMES),
                       api_name="/predict")
    assert "upload.png" in str(error.value) and "/tmp/gradio" not in str(error.value)
    good = next((synth_root / "val" / "Color_Images").iterdir())
    assert client.predict(handle_file(str(good)), False, 0, 0.5, list(CLASS_NAMES),
                          api_name="/predict")


def test_browse_ranks_the_split_worst_first_and_shows_any_image(served, synth_root):
    client, _ = served
    table, chosen = client.predict(api_name="/score")
    rows = table["data"]
    names = {p.stem for p in (synth_root / "val" / "Color_Images").iterdir()}
    assert {r[1] for r in rows} == names and [r[0] for r in rows] == [1, 2, 3, 4]
    scores = [r[2] for r in rows]
    assert scores == sorted(scores)
    *views, caption = client.predict(rows[-1][1], api_name="/show")
    assert len(views) == 4 and rows[-1][1] in caption
    assert float(caption.rsplit(" ", 1)[1]) == pytest.approx(scores[-1], abs=1e-3)
    image, truth = read_image(views[0]), read_image(views[1])
    assert image.shape == truth.shape == (32, 48, 3)  # the checkpoint's evaluation size
