"""Pairing and every bad-input case: the error type and the offending file in the message."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from desertmind.cli.main import main
from desertmind.data.dataset import OffroadDataset
from desertmind.data.imageio import read_mask, write_png
from desertmind.data.layout import list_images, list_split, load_pair
from desertmind.errors import DatasetError


def _first(root: Path, split: str = "train", sub: str = "Segmentation") -> Path:
    return sorted((root / split / sub).iterdir())[0]


def test_pairs_images_and_masks_by_file_name(synth_root: Path):
    samples = list_split(synth_root, "train")
    assert len(samples) == 8
    for s in samples:
        assert s.image.parent.name == "Color_Images" and s.mask.parent.name == "Segmentation"
        assert s.image.name == s.mask.name == f"{s.name}.png"


def test_hidden_files_are_not_samples(data_copy: Path):
    (data_copy / "train" / "Color_Images" / ".DS_Store").write_bytes(b"junk")
    assert len(list_split(data_copy, "train")) == 8


def test_uint16_mask_round_trip(tmp_path: Path):
    mask = np.array([[100, 200, 10000], [7100, 65535, 0]], dtype=np.uint16)
    write_png(tmp_path / "m.png", mask)
    back = read_mask(tmp_path / "m.png")
    assert back.dtype == np.uint16 and (back == mask).all()
    # what the pitfall does: a default imread turns the raw ids into 8-bit garbage
    assert cv2.imread(str(tmp_path / "m.png")).dtype == np.uint8


def test_missing_root_says_how_to_get_data(tmp_path: Path):
    with pytest.raises(DatasetError, match="desertmind synth") as e:
        list_split(tmp_path / "nope", "train")
    assert str(tmp_path / "nope") in str(e.value)


def test_missing_split_folder(synth_root: Path):
    with pytest.raises(DatasetError, match="split folder not found") as e:
        list_split(synth_root, "test_public_80")
    assert "test_public_80" in str(e.value) and "train" in str(e.value)


def test_missing_mask_folder_is_an_error_only_for_labelled_splits(data_copy: Path):
    import shutil

    shutil.rmtree(data_copy / "val" / "Segmentation")
    with pytest.raises(DatasetError, match="Segmentation"):
        list_split(data_copy, "val")
    assert all(s.mask is None for s in list_split(data_copy, "val", require_masks=False))


def test_image_without_mask_gives_count_and_names(data_copy: Path):
    m1, m2 = sorted((data_copy / "train" / "Segmentation").iterdir())[:2]
    m1.unlink()
    m2.unlink()
    with pytest.raises(DatasetError, match="2 image") as e:
        list_split(data_copy, "train")
    assert m1.stem in str(e.value) and m2.stem in str(e.value)


def test_mask_without_image(data_copy: Path):
    img = _first(data_copy, sub="Color_Images")
    img.unlink()
    with pytest.raises(DatasetError, match="1 mask") as e:
        list_split(data_copy, "train")
    assert img.stem in str(e.value)


def test_empty_split(data_copy: Path):
    for p in (data_copy / "val" / "Color_Images").iterdir():
        p.unlink()
    with pytest.raises(DatasetError, match="empty"):
        list_split(data_copy, "val")


@pytest.mark.parametrize(
    ("bad", "found"),
    [
        (lambda m: (m // 100).astype(np.uint8), "uint8"),  # an 8-bit mask
        (lambda m: np.dstack([m, m, m]), "(48, 80, 3)"),  # a colourised mask
    ],
)
def test_mask_that_is_not_single_channel_uint16(data_copy: Path, bad, found):
    path = _first(data_copy)
    write_png(path, bad(read_mask(path)))
    with pytest.raises(DatasetError, match="single-channel 16-bit") as e:
        load_pair(list_split(data_copy, "train")[0])
    assert str(path) in str(e.value) and found in str(e.value)


def test_image_and_mask_of_different_sizes(data_copy: Path):
    path = _first(data_copy)
    write_png(path, read_mask(path)[:40, :70])
    with pytest.raises(DatasetError, match="70x40") as e:
        OffroadDataset(list_split(data_copy, "train"))[0]
    assert str(path) in str(e.value)


@pytest.mark.parametrize("sub", ["Color_Images", "Segmentation"])
def test_truncated_file_names_the_file(data_copy: Path, sub: str):
    path = _first(data_copy, sub=sub)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="truncated") as e:
        OffroadDataset(list_split(data_copy, "train"))[0]
    assert str(path) in str(e.value)


def test_unreadable_file_names_the_file(data_copy: Path):
    path = _first(data_copy, sub="Color_Images")
    path.write_bytes(b"this is not a png")
    with pytest.raises(DatasetError) as e:
        load_pair(list_split(data_copy, "train")[0])
    assert str(path) in str(e.value)


def test_predict_folder_accepts_split_or_plain_image_folder(synth_root: Path):
    assert len(list_images(synth_root / "val")) == 4
    assert len(list_images(synth_root / "val" / "Color_Images")) == 4
    with pytest.raises(DatasetError, match="not found"):
        list_images(synth_root / "nope")


def test_check_data_passes_on_a_clean_dataset(synth_root: Path, capsys):
    assert main(["check-data", str(synth_root), "--workers", "2"]) == 0
    assert "no problems found" in capsys.readouterr().out


def _break_size(root: Path) -> Path:
    p = _first(root)
    write_png(p, read_mask(p)[:10, :10])
    return p


def _break_depth(root: Path) -> Path:
    p = _first(root, split="val")
    write_png(p, np.zeros((48, 80), np.uint8))
    return p


def _break_truncate(root: Path) -> Path:
    p = _first(root, sub="Color_Images")
    p.write_bytes(p.read_bytes()[:100])
    return p


def _break_pairing(root: Path) -> Path:
    p = _first(root)
    p.unlink()
    return Path(p.stem)


@pytest.mark.parametrize("breaker", [_break_size, _break_depth, _break_truncate, _break_pairing])
def test_check_data_fails_on_each_broken_variant_naming_the_file(data_copy: Path, breaker, capsys):
    bad = breaker(data_copy)
    assert main(["check-data", str(data_copy), "--workers", "2"]) == 1
    out = capsys.readouterr().out
    assert "PROBLEM" in out and str(bad) in out


def test_check_data_on_a_missing_root_is_an_error(tmp_path: Path, capsys):
    assert main(["check-data", str(tmp_path / "nope")]) == 2
    assert "desertmind synth" in capsys.readouterr().err
