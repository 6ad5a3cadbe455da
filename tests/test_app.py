"""The viewer (``desertmind app``) through Gradio's Python client: a real server in this
process, answering the same calls the page makes."""

from __future__ import annotations

import html
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
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
from desertmind.data.imageio import read_image, read_mask
from desertmind.data.palette import colorize
from desertmind.inference.predictor import Predictor


@pytest.fixture(scope="module")
def served(synth_root: Path, tmp_path_factory, phase1_run):
    """The shared phase-1 checkpoint served with the synthetic root: (client, checkpoint)."""
    ckpt, _, _ = phase1_run
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
    original, overlay, legend, *_ = client.predict(handle_file(str(path)), False, 0, 0.5,
                                               list(CLASS_NAMES), api_name="/predict")
    np.testing.assert_array_equal(read_image(original), image)  # the image beside it
    drawn = read_image(overlay)
    assert drawn.shape == image.shape  # at the image's own size
    assert not np.array_equal(drawn, image)
    shares = _shares(legend)
    assert sorted(shares) == sorted(CLASS_NAMES)  # one legend: every class, with its toggle
    assert list(shares.values()) == sorted(shares.values(), reverse=True)  # most pixels first
    # each share is rounded to 0.1: the sum is 100 within half a step per class shown
    assert sum(shares.values()) == pytest.approx(100, abs=0.05 * len(shares) + 1e-9)
    assert legend["value"] == list(CLASS_NAMES)  # the toggles keep what the user chose
    # opacity 0 is the image itself; hiding every class leaves it untouched too
    for opacity, shown in ((0.0, list(CLASS_NAMES)), (1.0, [])):
        _, plain, legend, *_ = client.predict(handle_file(str(path)), False, 0, opacity, shown,
                                          api_name="/predict")
        np.testing.assert_array_equal(read_image(plain), image)
    assert legend["value"] == []


def test_tta_and_window_switches_reach_the_model(served, synth_root, monkeypatch):
    client, _ = served
    calls = []
    real = Predictor.predict_with_confidence

    def spy(self, image, options=None):
        calls.append((options.tta_flip, options.sliding_window))
        return real(self, image, options)

    # the server answers in this process: the spy sees what each switch hands the model
    monkeypatch.setattr(Predictor, "predict_with_confidence", spy)
    path = str(next((synth_root / "val" / "Color_Images").iterdir()))
    for flip, window in ((False, 0), (True, 0), (False, 24)):
        client.predict(handle_file(path), flip, window, 1.0, list(CLASS_NAMES),
                       api_name="/predict")
    assert calls == [(False, None), (True, None), (False, 24)]


@pytest.mark.parametrize("content, message", [
    (b"this is not an image", "cannot decode image"),
    ("huge", "larger than the 25 MP"),
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
    # refused at the upload (not an image, over the pixel limit) or by the handler (too small)
    with pytest.raises((AppError, httpx.HTTPStatusError)) as error:
        client.predict(handle_file(str(bad)), False, 0, 0.5, list(CLASS_NAMES),
                       api_name="/predict")
    said = error.value.response.text if isinstance(error.value, httpx.HTTPStatusError) \
        else str(error.value)
    assert message in said and "upload.png" in said and "/tmp/" not in said
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

    # a file in this viewer's own cache folder that this server never received
    cached = Path(get_upload_folder()) / f"not-ours-{os.getpid()}" / "other.png"
    cached.parent.mkdir(parents=True)
    shutil.copy(secret, cached)
    sample = next((synth_root / "val" / "Color_Images").iterdir())
    try:
        # even the split's own images, by path; and a relative path
        for path in (secret, cached, sample, Path("relative.png")):
            answer = _raw_call(client.src, "predict", [
                {"path": str(path), "meta": {"_type": "gradio.FileData"}}, False, 0, 0.0,
                list(CLASS_NAMES)])
            assert answer.startswith("event: error"), answer[:300]
            assert os.getcwd() not in answer  # where the server runs is not told
            # ours, or none: Gradio's own refusal names server paths, so the viewer sends
            # only its own messages (show_error off); Gradio 6.0 sends none over /call
            assert re.search(r'data: (null|\{"error": null\})', answer) or re.search(
                "not a file uploaded to this viewer|not uploaded by a user", answer), answer[:300]
    finally:
        shutil.rmtree(cached.parent)
    # the same image uploaded is answered; the split's own are picked by name
    _, plain, *_ = client.predict(handle_file(str(secret)), False, 0, 0.0, list(CLASS_NAMES),
                                 api_name="/predict")
    np.testing.assert_array_equal(read_image(plain), read_image(secret))
    _, picked, _, *_, cleared = client.predict(sample.stem, False, 0, 0.0, list(CLASS_NAMES),
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


def test_an_absurd_window_is_one_pass_and_a_non_number_one_line(served, synth_root):
    client, ckpt = served
    path = str(next((synth_root / "val" / "Color_Images").iterdir()))
    shown, *_ = client.predict(handle_file(path), False, 1e12, 0.5, list(CLASS_NAMES),
                               api_name="/predict")  # clamped to the image: one pass
    assert Path(shown).is_file()
    import gradio as gr

    with pytest.raises(gr.Error, match="a whole number of pixels"):  # what a raw API may send
        viewer.Viewer(ckpt).options(np.zeros((32, 48, 3), np.uint8), False, float("inf"))


@pytest.mark.parametrize("cap, value, window", [
    ("MAX_WINDOWS", 4, 16),  # 15 windows of 16 px over the checkpoint's 32x48
    ("MAX_FORWARD_PIXELS", 3000, 0),  # a flipped 32x48 image is 3072 pixels
])
def test_one_request_cannot_ask_for_unbounded_work(served, synth_root, monkeypatch, cap,
                                                   value, window):
    client, _ = served
    calls = []
    monkeypatch.setattr(Predictor, "predict_with_confidence",
                        lambda self, *a: calls.append(a))
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
    for i, (_, overlay, legend, *_) in enumerate(results):
        expected = read_image(paths[0 if same else i % len(paths)]).shape
        assert read_image(overlay).shape == expected  # a whole PNG, never an empty file
        shares = _shares(legend)  # each rounded to 0.1: within half a step per class
        assert sum(shares.values()) == pytest.approx(100, abs=0.05 * len(shares) + 1e-9)


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` and holds no pixel data: what a
    decompression bomb's header looks like (a real one is a few MB of zeros that inflate to
    gigabytes); only the header may be read."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)) + b"\x00\x00\x00\x00IEND\xaeB`\x82")


def _upload(url: str, name: str, content: bytes) -> httpx.Response:
    """A raw upload to Gradio's route, as any remote client can send it."""
    return httpx.post(f"{url}gradio_api/upload", files={"files": (name, content)}, timeout=30)


def _viewer_files(client) -> list[Path]:
    from gradio.utils import get_upload_folder

    return [p for p in Path(get_upload_folder()).rglob("*") if p.is_file()]


def test_a_decompression_bomb_is_refused_from_its_header(served, synth_root):
    client, _ = served
    bomb = _png_header(20000, 20000)
    assert _upload(client.src, "6k.png", _png_header(6000, 5000)).text.startswith(
        "6k.png: 6000x5000 pixels (30 MP), larger than the 25 MP")
    start = time.monotonic()
    answer = _upload(client.src, "bomb.png", bomb)
    assert answer.status_code == 415, answer.text
    assert re.match(r"bomb.png: over \d+ MP, larger than the 25 MP", answer.text), answer.text
    assert time.monotonic() - start < 5  # nothing decoded
    assert not any(p.name == "bomb.png" for p in _viewer_files(client))  # and nothing kept


def test_uploads_are_images_only_and_bounded(served, synth_root, monkeypatch):
    client, _ = served
    from desertmind.app import uploads

    answer = _upload(client.src, "data.bin", os.urandom(4096))
    assert answer.status_code == 415 and "data.bin: cannot decode image" in answer.text
    assert not any(p.name == "data.bin" for p in _viewer_files(client))
    # a request larger than one file may be is refused before it is stored
    monkeypatch.setattr(uploads, "MAX_REQUEST_BYTES", 2048)
    answer = _upload(client.src, "big.png", b"\0" * 10_000)
    assert answer.status_code == 413
    monkeypatch.setattr(uploads, "MAX_REQUEST_BYTES", 32 * 2**20)
    # the folder keeps at most its budget: the oldest uploads go first
    image = next((synth_root / "val" / "Color_Images").iterdir()).read_bytes()
    monkeypatch.setattr(uploads, "MAX_TOTAL_BYTES", 3 * len(image))
    paths = []
    for i in range(6):
        answer = _upload(client.src, f"frame{i}.png", image)
        assert answer.status_code == 200, answer.text
        paths += answer.json()
    total = sum(p.stat().st_size for p in _viewer_files(client))
    assert total <= 3 * len(image)
    assert Path(paths[-1]).is_file() and not Path(paths[0]).exists()


def test_files_of_gradios_shared_folder_are_not_served(served, tmp_path):
    """Another Gradio app's files live in the shared temp folder; this viewer has its own."""
    client, ckpt = served
    shared = Path(tempfile.gettempdir()) / "gradio" / f"other-app-{os.getpid()}"
    shared.mkdir(parents=True, exist_ok=True)
    try:
        cv2.imwrite(str(shared / "other.png"), np.zeros((20, 20, 3), np.uint8))
        answer = httpx.get(f"{client.src}gradio_api/file={shared / 'other.png'}", timeout=30)
        assert answer.status_code in (403, 404), answer.status_code
    finally:
        shutil.rmtree(shared)
    page = httpx.get(client.src, timeout=30).text
    assert str(ckpt.resolve().parent) not in page  # the checkpoint's folder is not shown


@pytest.mark.slow
def test_a_terminated_viewer_leaves_no_folder(served, synth_root, tmp_path):
    _, ckpt = served
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    port = 7800 + os.getpid() % 150
    # the served checkpoint is the stand-in network's: the child builds it too
    code = ("import sys, tests.stand_in; from desertmind.cli.main import main;"
            " sys.exit(main(sys.argv[1:]))")
    proc = subprocess.Popen([sys.executable, "-c", code, "app", "--ckpt_path", str(ckpt),
                             "--port", str(port)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=Path(__file__).parents[1])
    try:
        for line in proc.stdout:
            if "serving" in line:
                break
        assert list(tmp_path.glob("desertmind-viewer-*"))
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert not list(tmp_path.glob("desertmind-viewer-*"))


def test_a_busy_port_or_an_impossible_one_is_one_line(served, monkeypatch, capsys):
    client, ckpt = served
    # a second viewer in this process takes GRADIO_TEMP_DIR for itself: given back after
    monkeypatch.setenv("GRADIO_TEMP_DIR", os.environ["GRADIO_TEMP_DIR"])
    port = int(client.src.rstrip("/").rsplit(":", 1)[1])
    with pytest.raises(viewer.ConfigError, match=f"cannot serve at 127.0.0.1:{port}: the port"):
        launch(ckpt, port=port, block=False)
    with pytest.raises(SystemExit) as e:
        main(["app", "--ckpt_path", str(ckpt), "--port", "99999"])
    assert e.value.code == 2 and "at most 65535" in capsys.readouterr().err


def test_confidence_view_and_a_picked_images_ground_truth_and_ious(served, synth_root):
    """The confidence view draws the predicted class's probability; a picked image of the
    split comes with its mask, its error map and its per-class IoU; an upload with none."""
    from desertmind.app.viewer import VIEWS, confidence_overlay, sample_ious
    from desertmind.data.classes import remap

    client, ckpt = served
    sample = sorted((synth_root / "val" / "Color_Images").iterdir())[0]
    image = read_image(sample)
    _, classes, *_ = client.predict(handle_file(str(sample)), False, 0, 1.0,
                                    list(CLASS_NAMES), VIEWS[0], api_name="/predict")
    _, sure, _, truth, errors, ious = client.predict(handle_file(str(sample)), False, 0, 1.0,
                                                      list(CLASS_NAMES), VIEWS[1],
                                                      api_name="/predict")
    pred, confidence = Predictor(ckpt).predict_with_confidence(image)
    assert 0 <= confidence.min() and confidence.max() <= 1 and confidence.shape == pred.shape
    np.testing.assert_array_equal(read_image(sure), confidence_overlay(image, confidence, 1.0))
    assert not np.array_equal(read_image(sure), read_image(classes))
    assert truth is None and errors is None and not ious  # an upload has no mask
    _, _, _, truth, errors, ious, _ = client.predict(sample.stem, False, 0, 0.5,
                                                      list(CLASS_NAMES), VIEWS[0],
                                                      api_name="/predict_sample")
    target = remap(read_mask(synth_root / "val" / "Segmentation" / sample.name))
    np.testing.assert_array_equal(read_image(truth), colorize(target))
    assert read_image(errors).shape == image.shape
    assert ious == sample_ious(pred, target) and "mean IoU" in ious
