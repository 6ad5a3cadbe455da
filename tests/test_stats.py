"""check-data statistics against a count done here, the cache, and class-weight formulas."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import desertmind.data.stats as stats
from desertmind.cli.main import main
from desertmind.data.classes import RAW_IDS
from desertmind.data.imageio import read_image, read_mask, write_png


def _count(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    pixels, images = np.zeros(10, np.int64), np.zeros(10, np.int64)
    for m in (root / split / "Segmentation").glob("*.png"):
        mask = read_mask(m)
        for i, raw in enumerate(RAW_IDS):
            n = int((mask == raw).sum())
            pixels[i] += n
            images[i] += n > 0
    return pixels, images


def test_check_data_figures_match_a_direct_count(synth_root: Path, tmp_path: Path, capsys):
    out = tmp_path / "s.json"
    assert main(["check-data", str(synth_root), "--stats", str(out), "--workers", "2"]) == 0
    data = json.loads(out.read_text())
    for split, n in (("train", 8), ("val", 4)):
        s = data["splits"][split]
        pixels, images = _count(synth_root, split)
        assert s["n_images"] == n and s["sizes"] == {"80x48": n}
        assert s["class_pixels"] == pixels.tolist()
        assert s["class_images"] == images.tolist()
        np.testing.assert_allclose(s["pixel_share"], pixels / pixels.sum())
        np.testing.assert_allclose(s["image_share"], images / n)
        assert s["problems"] == [] and s["unknown_values"] == {}
    text = capsys.readouterr().out
    share = data["splits"]["train"]["pixel_share"][9]
    assert f"{share:.2%}" in text and "Flowers" in text


def test_unknown_values_are_counted_and_fail_only_when_strict(data_copy: Path, capsys):
    masks = sorted((data_copy / "val" / "Segmentation").iterdir())
    for p in masks[:2]:
        m = read_mask(p)
        m[0, :7] = 4242
        write_png(p, m)
    assert main(["check-data", str(data_copy), "--splits", "val", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "4242: 14 px in 2 file(s)" in out and "--strict makes them a problem" in out
    assert main(["check-data", str(data_copy), "--splits", "val", "--strict"]) == 1
    out = capsys.readouterr().out
    assert "a problem under --strict" in out and "no problems found" not in out


def test_second_scan_of_unchanged_data_reads_no_file(data_copy: Path, monkeypatch):
    first = stats.scan(data_copy, ["train", "val"], workers=1)
    monkeypatch.setattr(stats, "scan_split", lambda *a, **k: pytest.fail("rescanned"))
    assert stats.scan(data_copy, ["train", "val"])["splits"] == first["splits"]
    # a changed file invalidates its split only
    p = next((data_copy / "val" / "Segmentation").iterdir())
    os.utime(p, ns=(1, 1))
    calls = []
    monkeypatch.setattr(stats, "scan_split", lambda r, s, w=None: calls.append(s) or
                        first["splits"][s])
    stats.scan(data_copy, ["train", "val"])
    assert calls == ["val"]


def _split(pixels, presence) -> dict:
    return {"split": "train", "class_pixels": pixels, "class_presence_pixels": presence}


def test_inverse_log_weights_follow_the_study_formula():
    pixels = [50, 0, 10, 5, 5, 1, 4, 5, 400, 520]
    w = stats.class_weights(_split(pixels, [1] * 10), "inverse_log")
    f = np.array(pixels) / 1000
    raw = 1 / np.log(1.02 + f)
    present = f > 0
    expected = np.where(present, raw / raw[present].mean(), 0)
    np.testing.assert_allclose(w, expected)
    assert w[present].mean() == pytest.approx(1.0) and w[1] == 0
    assert w[5] > w[0] > w[9]  # rarer classes weigh more


def test_median_frequency_weights():
    pixels = [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    presence = [100] * 5 + [200] * 5
    w = stats.class_weights(_split(pixels, presence), "median_frequency")
    freq = np.array(pixels) / np.array(presence)
    np.testing.assert_allclose(w, np.median(freq) / freq)
    assert stats.class_weights(_split(pixels, presence), "none") is None
    with pytest.raises(ValueError, match="inverse_log"):
        stats.class_weights(_split(pixels, presence), "balanced")


def test_check_data_puts_two_splits_side_by_side(tmp_path: Path, capsys):
    from desertmind.data.synth import generate

    root = generate(tmp_path / "d", n_train=4, n_val=0, height=40, width=64, n_shifted=4)
    assert main(["check-data", str(root), "--splits", "train", "test_shifted",
                 "--workers", "1"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("splits side by side"):].splitlines()
    assert table[1].split() == ["train", "test_shifted"]
    for split, column in (("train", 2), ("test_shifted", 3)):
        pixels = np.concatenate([read_image(p).reshape(-1, 3)
                                 for p in (root / split / "Color_Images").glob("*.png")])
        expected = "/".join(f"{v:.0f}" for v in pixels.mean(0))
        assert table[2].split()[column] == expected  # mean RGB over every pixel
    logs = next(line for line in table if line.strip().startswith("Logs"))
    assert logs.split()[-1] == "0.00%"  # absent from the shifted desert


def test_a_scan_that_cannot_be_saved_is_still_reported(synth_root: Path, tmp_path: Path,
                                                       capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")  # its "folder" cannot be created: like an unwritable HOME
    with pytest.warns(UserWarning, match="cannot save the statistics"):
        code = main(["check-data", str(synth_root), "--workers", "1",
                     "--stats", str(blocker / "stats.json")])
    assert code == 0
    out = capsys.readouterr().out
    assert "[train] 8 images" in out and "statistics not saved" in out
    with pytest.warns(UserWarning, match="cannot save the statistics"):  # class weights too
        scanned = stats.scan(synth_root, ["train"], blocker / "s.json")
    dm_weights = stats.class_weights(scanned["splits"]["train"], "inverse_log")
    assert dm_weights is not None and np.isfinite(dm_weights).all()
