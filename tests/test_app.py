"""The viewer (``desertmind app``) through Gradio's Python client: a real server in this
process, answering the same calls the page makes."""

from __future__ import annotations

import html
import os
import re
import shutil
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from desertmind.app import viewer
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


def _shares(legend: dict) -> dict[str, float]:
    """The legend's classes in the order shown, with their pixel shares (the labels of the
    class toggles: "Sky · 41.2%")."""
    rows = [re.fullmatch(r"(.+) · ([\d.]+)%", label) for label, _ in legend["choices"]]
    return {html.unescape(m[1]): float(m[2]) for m in rows}


def test_predict_shows_image_and_overlay_with_one_legend_by_share(served, synth_root):
    client, _ = served
    path = next((synth_root / "val" / "Color_Images").iterdir())
    image = read_image(path)
    original, overlay, legend = client.predict(handle_file(str(path)), False, 0, 0.5,
                                               list(CLASS_NAMES), api_name="/predict")
    np.testing.assert_array_equal(read_image(original), image)  # the image beside it
    drawn = read_image(overlay)
    assert drawn.shape == image.shape  # at the image's own size
    assert not np.array_equal(drawn, image)
    shares = _shares(legend)
    assert sorted(shares) == sorted(CLASS_NAMES)  # one legend: every class, with its toggle
    assert list(shares.values()) == sorted(shares.values(), reverse=True)  # most pixels first
    assert sum(shares.values()) == pytest.approx(100, abs=0.1)
    assert legend["value"] == list(CLASS_NAMES)  # the toggles keep what the user chose
    # opacity 0 is the image itself; hiding every class leaves it untouched too
    for opacity, shown in ((0.0, list(CLASS_NAMES)), (1.0, [])):
        _, plain, legend = client.predict(handle_file(str(path)), False, 0, opacity, shown,
                                          api_name="/predict")
        np.testing.assert_array_equal(read_image(plain), image)
    assert legend["value"] == []


def test_tta_and_window_switches_reach_the_model(served, synth_root, monkeypatch):
    client, _ = served
    calls = []
    real = Predictor.predict

    def spy(self, image, options=None):
        calls.append((options.tta_flip, options.sliding_window))
        return real(self, image, options)

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
    assert table["headers"] == ["rank", "image", "mIoU", *CLASS_NAMES]
    names = {p.stem for p in (synth_root / "val" / "Color_Images").iterdir()}
    assert {r[1] for r in rows} == names and [r[0] for r in rows] == [1, 2, 3, 4]
    scores = [r[2] for r in rows]
    assert scores == sorted(scores)
    for row in rows:  # 3 decimals throughout; the mean of the per-class IoUs shown
        values = [v for v in row[2:] if v is not None and not np.isnan(v)]
        assert all(round(v, 3) == v for v in values)
        assert np.mean(values[1:]) == pytest.approx(row[2], abs=2e-3)
    *views, caption = client.predict(rows[-1][1], api_name="/show")
    assert len(views) == 4 and rows[-1][1] in caption
    shown = float(re.search(r"mean IoU ([\d.]+)", caption)[1])
    assert shown == pytest.approx(scores[-1], abs=1e-3)
    image, truth = read_image(views[0]), read_image(views[1])
    assert image.shape == truth.shape == (32, 48, 3)  # the checkpoint's evaluation size


def _raw_call(url: str, api: str, data: list) -> str:
    """One API call as a remote client makes it, by hand over HTTP: the FileData it names is a
    path on the server. (``gradio_client`` on this machine would upload any local path it is
    given, which is the client reading its own file, not the server serving one.)"""
    posted = httpx.post(f"{url}gradio_api/call/{api}", json={"data": data}, timeout=30)
    posted.raise_for_status()
    with httpx.stream("GET", f"{url}gradio_api/call/{api}/{posted.json()['event_id']}",
                      timeout=60) as stream:
        return "".join(stream.iter_text())


def test_a_server_file_that_was_never_uploaded_is_refused(served, synth_root, tmp_path):
    client, _ = served
    secret = tmp_path / "private" / "secret.png"
    secret.parent.mkdir()
    cv2.imwrite(str(secret), np.full((40, 60, 3), 123, np.uint8))
    from gradio.utils import get_upload_folder

    # a file in Gradio's shared cache folder that this server never received (another app's)
    cached = Path(get_upload_folder()) / f"not-ours-{os.getpid()}" / "other.png"
    cached.parent.mkdir(parents=True)
    shutil.copy(secret, cached)
    sample = next((synth_root / "val" / "Color_Images").iterdir())
    try:
        for path in (secret, cached, sample):  # even the split's own images, by path
            answer = _raw_call(client.src, "predict", [
                {"path": str(path), "meta": {"_type": "gradio.FileData"}}, False, 0, 0.0,
                list(CLASS_NAMES)])
            assert answer.startswith("event: error"), answer[:300]
            # the message (ours, or Gradio's own refusal); Gradio 6.0 sends none over /call
            assert "data: null" in answer or re.search(
                "not a file uploaded to this viewer|not uploaded by a user", answer), answer[:300]
    finally:
        shutil.rmtree(cached.parent)
    # the same image uploaded is answered; the split's own are picked by name
    _, plain, _ = client.predict(handle_file(str(secret)), False, 0, 0.0, list(CLASS_NAMES),
                                 api_name="/predict")
    np.testing.assert_array_equal(read_image(plain), read_image(secret))
    _, picked, _, cleared = client.predict(sample.stem, False, 0, 0.0, list(CLASS_NAMES),
                                           api_name="/predict_sample")
    np.testing.assert_array_equal(read_image(picked), read_image(sample))
    assert cleared is None
    with pytest.raises(AppError, match="not in the list of choices|not an image of val"):
        client.predict(str(secret), False, 0, 0.0, list(CLASS_NAMES),
                       api_name="/predict_sample")


@pytest.mark.parametrize("window, message", [
    (1, "model.evaluation.sliding_window=1: a window is at least 16 pixels"),  # the CLI's message
    (15, "model.evaluation.sliding_window=15: a window is at least 16 pixels"),
])
def test_options_the_cli_refuses_are_refused_by_the_api(served, synth_root, window, message):
    client, _ = served
    path = str(next((synth_root / "val" / "Color_Images").iterdir()))
    with pytest.raises(AppError, match=message):
        client.predict(handle_file(path), False, window, 0.5, list(CLASS_NAMES),
                       api_name="/predict")


@pytest.mark.parametrize("cap, value, window", [
    ("MAX_WINDOWS", 4, 16),  # 15 windows of 16 px over the checkpoint's 32x48
    ("MAX_FORWARD_PIXELS", 3000, 0),  # a flipped 32x48 image is 3072 pixels
])
def test_one_request_cannot_ask_for_unbounded_work(served, synth_root, monkeypatch, cap,
                                                   value, window):
    client, _ = served
    calls = []
    monkeypatch.setattr(Predictor, "predict", lambda self, *a: calls.append(a))
    monkeypatch.setattr(viewer, cap, value)  # the server answers in this process
    path = str(next((synth_root / "val" / "Color_Images").iterdir()))
    with pytest.raises(AppError, match="more than this viewer answers in one request"):
        client.predict(handle_file(path), True, window, 0.5, list(CLASS_NAMES),
                       api_name="/predict")
    assert calls == []  # refused before any forward pass


@pytest.mark.parametrize("same", [False, True], ids=["mixed", "identical"])
def test_twenty_concurrent_requests_are_all_answered(served, synth_root, same):
    """Identical requests have identical results, which Gradio's cache stores under one
    content-addressed name: handed arrays, it rewrote that file in place while a client was
    downloading it, and the client got an empty image (seen in CI)."""
    client, _ = served
    paths = sorted((synth_root / "val" / "Color_Images").iterdir())
    jobs = [client.submit(handle_file(str(paths[0 if same else i % len(paths)])),
                          not same and i % 2 == 0, 0, 0.5, list(CLASS_NAMES),
                          api_name="/predict") for i in range(20)]
    results = [job.result(timeout=120) for job in jobs]
    for i, (_, overlay, legend) in enumerate(results):
        expected = read_image(paths[0 if same else i % len(paths)]).shape
        assert read_image(overlay).shape == expected  # a whole PNG, never an empty file
        assert sum(_shares(legend).values()) == pytest.approx(100, abs=0.1)
