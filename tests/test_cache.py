"""The decoded cache: the same samples as the PNGs, rebuilt when the data changes, refused
when it would not fit, never half-written, and the same training run with or without it."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from desertmind.data import cache as cache_mod
from desertmind.data.cache import open_cache
from desertmind.data.classes import remap
from desertmind.data.dataset import OffroadDataset
from desertmind.data.imageio import read_mask, write_png
from desertmind.data.layout import list_split
from desertmind.data.transforms import PRESETS, build_transform
from desertmind.errors import DatasetError


def _open(root: Path, mode: str, cache_dir: Path, split: str = "train"):
    return open_cache(list_split(root, split), mode, root / split, cache_dir, progress=False)


def _items(ds) -> list[dict]:
    return [ds[i] for i in range(len(ds))]


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_cached_samples_equal_the_png_samples(synth_root: Path, tmp_path: Path, mode: str):
    samples = list_split(synth_root, "train")
    plain = _items(OffroadDataset(samples))
    cached = _items(OffroadDataset(samples, decoded=_open(synth_root, mode, tmp_path)))
    for a, b in zip(plain, cached, strict=True):
        assert a["image"].dtype == b["image"].dtype == torch.uint8
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
        assert torch.equal(a["size"], b["size"]) and a["name"] == b["name"]


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_workers_read_the_cache_as_the_main_process_does(synth_root: Path, tmp_path: Path,
                                                         mode: str):
    samples = list_split(synth_root, "train")
    decoded = _open(synth_root, mode, tmp_path)

    def batches(workers: int) -> list[dict]:
        return list(DataLoader(OffroadDataset(samples, decoded=decoded), batch_size=3,
                               num_workers=workers))

    for a, b in zip(batches(0), batches(2), strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])


def test_a_disk_cache_pickles_as_its_folder_not_its_pixels(synth_root: Path, tmp_path: Path):
    decoded = _open(synth_root, "disk", tmp_path)
    pixels = int(decoded.shapes.prod(axis=1).sum()) * 4
    data = pickle.dumps(decoded)
    assert len(data) < pixels / 4  # spawned workers map the files again
    copy = pickle.loads(data)
    assert all(np.array_equal(a, b) for a, b in zip(copy.pair(0), decoded.pair(0), strict=True))


@pytest.mark.parametrize("preset", PRESETS)
def test_augmentations_never_write_into_a_shared_cache(synth_root: Path, preset: str):
    samples = list_split(synth_root, "train")
    decoded = _open(synth_root, "memory", Path("unused"))

    def digest() -> str:
        return hashlib.sha256(decoded.images.numpy().tobytes()
                              + decoded.masks.numpy().tobytes()).hexdigest()

    before = digest()
    ds = OffroadDataset(samples, build_transform(preset, None, 32, seed=0), decoded)
    for _ in range(3):
        _items(ds)
    assert digest() == before


def test_a_hit_decodes_nothing_and_a_changed_file_rebuilds(data_copy: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch):
    cache_dir = tmp_path / "cache"
    _open(data_copy, "disk", cache_dir)
    (first,) = cache_dir.iterdir()
    calls = []
    real = cache_mod.load_pair
    monkeypatch.setattr(cache_mod, "load_pair", lambda s: calls.append(s) or real(s))
    _open(data_copy, "disk", cache_dir)
    assert calls == []  # served from the files
    mask_path = sorted((data_copy / "train" / "Segmentation").iterdir())[2]
    mask = read_mask(mask_path)
    mask[:4, :4] = 800  # Rocks
    stamp = mask_path.stat().st_mtime_ns
    write_png(mask_path, mask)
    os.utime(mask_path, ns=(stamp, stamp + 10**9))  # whatever the clock's resolution
    rebuilt = _open(data_copy, "disk", cache_dir)
    assert len(calls) == len(rebuilt)
    (second,) = cache_dir.iterdir()  # the old version is gone
    assert second != first
    assert np.array_equal(rebuilt.pair(2)[1], remap(mask))


def test_a_label_edit_that_keeps_size_and_mtime_rebuilds(data_copy: Path, tmp_path: Path):
    """``cp -p`` / ``rsync -a`` of a corrected mask keeps its mtime; the key reads mask bytes."""
    import cv2

    def store(mask: np.ndarray) -> None:  # uncompressed: the file's size depends on shape only
        assert cv2.imwrite(str(target), mask, [cv2.IMWRITE_PNG_COMPRESSION, 0])

    target = sorted((data_copy / "train" / "Segmentation").iterdir())[1]
    original = read_mask(target)
    store(original)
    cache_dir = tmp_path / "cache"
    _open(data_copy, "disk", cache_dir)
    stat = target.stat()
    edited = original.copy()
    edited[:2, :2] = 800 if original[0, 0] != 800 else 100
    store(edited)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (target.stat().st_size, target.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    rebuilt = _open(data_copy, "disk", cache_dir)
    assert np.array_equal(rebuilt.pair(1)[1], remap(edited))


def test_a_cache_deleted_while_a_run_uses_it_is_one_line(synth_root: Path, tmp_path: Path):
    """A new DataLoader worker (every epoch, without persistent workers) maps the files again:
    when they are gone it says so, naming the folder, instead of numpy's traceback."""
    import pickle
    import shutil

    decoded = _open(synth_root, "disk", tmp_path)
    in_worker = pickle.loads(pickle.dumps(decoded))
    shutil.rmtree(decoded.folder)
    with pytest.raises(DatasetError, match="removed or changed while this run used it"):
        in_worker.pair(0)


@pytest.mark.parametrize("damage", ["truncated images", "index not JSON", "index a list"])
def test_a_damaged_cache_is_rebuilt_with_a_warning(synth_root: Path, tmp_path: Path, damage):
    _open(synth_root, "disk", tmp_path)
    (folder,) = tmp_path.iterdir()
    if damage == "truncated images":
        images = folder / "images.u8"
        images.write_bytes(images.read_bytes()[:-100])  # a truncated copy
    else:
        (folder / "index.json").write_text("{not json" if damage == "index not JSON" else "[1]")
    with pytest.warns(UserWarning, match="damaged; rebuilding"):
        decoded = _open(synth_root, "disk", tmp_path)
    ref = OffroadDataset(list_split(synth_root, "train"))[0]["image"].permute(1, 2, 0)
    assert np.array_equal(decoded.pair(0)[0], ref.numpy())


@pytest.mark.parametrize("name, damage", [
    ("masks.u8", lambda data: b"\xc8" * len(data)),  # class 200: out of range for the loss
    ("images.u8", lambda data: bytes(len(data))),  # black images, which would train silently
])
def test_damage_of_the_same_size_is_found_and_rebuilt(synth_root: Path, tmp_path: Path, name,
                                                      damage):
    _open(synth_root, "disk", tmp_path)
    (folder,) = tmp_path.iterdir()
    target = folder / name
    size = target.stat().st_size
    target.write_bytes(damage(target.read_bytes()))
    assert target.stat().st_size == size  # nothing a size check could see
    with pytest.warns(UserWarning, match=f"{folder}: decoded cache damaged .*synth_train_00000"):
        decoded = _open(synth_root, "disk", tmp_path)
    for i, sample in enumerate(OffroadDataset(list_split(synth_root, "train"))):
        image, mask = decoded.pair(i)
        assert np.array_equal(image, sample["image"].permute(1, 2, 0).numpy())
        assert np.array_equal(mask, sample["mask"].numpy())


def test_an_intact_cache_is_checked_once_per_process(synth_root: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch):
    _open(synth_root, "disk", tmp_path)  # built: its checksums are known
    checked = []
    real = cache_mod.DecodedSplit.checksums
    monkeypatch.setattr(cache_mod.DecodedSplit, "checksums",
                        lambda self, i: checked.append(i) or real(self, i))
    _open(synth_root, "disk", tmp_path)
    assert checked == []
    cache_mod._VERIFIED.clear()  # a new process
    _open(synth_root, "disk", tmp_path)
    assert checked == list(range(8))


def test_a_read_only_cache_folder_is_one_line_naming_it(synth_root: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch):
    def read_only(path):
        raise OSError(30, "Read-only file system", str(path))

    monkeypatch.setattr(cache_mod, "atomic_dir", read_only)  # root ignores chmod: EROFS here
    with pytest.raises(DatasetError, match=f"{tmp_path}: cannot write the decoded cache .*"
                       r"Read-only file system.*--data.cache_dir.*--data.cache none"):
        _open(synth_root, "disk", tmp_path)


def test_two_roots_with_the_same_split_name_keep_separate_caches(synth_root: Path,
                                                                 data_copy: Path, tmp_path: Path):
    _open(synth_root, "disk", tmp_path / "cache")
    _open(data_copy, "disk", tmp_path / "cache")
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_a_corrupt_image_fails_naming_it_and_leaves_no_cache(data_copy: Path, tmp_path: Path):
    bad = sorted((data_copy / "train" / "Color_Images").iterdir())[5]
    bad.write_bytes(bad.read_bytes()[:200])  # the header survives, the pixels do not
    with pytest.raises(DatasetError, match=bad.name):
        _open(data_copy, "disk", tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []  # no half-written cache, no temporary folder


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_a_cache_that_would_not_fit_is_refused_before_decoding(
        synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str):
    class Tiny:
        free = available = 1000

    monkeypatch.setattr(cache_mod.shutil, "disk_usage", lambda path: Tiny)
    monkeypatch.setattr(cache_mod.psutil, "virtual_memory", lambda: Tiny)
    monkeypatch.setattr(cache_mod, "load_pair", lambda s: pytest.fail("decoded anyway"))
    with pytest.raises(DatasetError) as e:
        _open(synth_root, mode, tmp_path)
    message = str(e.value)
    needed = 8 * 48 * 80 * 4 / 2**20  # the tiny train split, 4 bytes a pixel
    assert f"needs {needed:.1f} MiB" in message and "--data.cache none" in message
    assert (str(tmp_path) if mode == "disk" else "memory") in message
    assert list(tmp_path.iterdir()) == []


def test_an_unlabelled_split_is_not_cached(synth_root: Path, tmp_path: Path):
    from desertmind.errors import ConfigError
    samples = [s.__class__(s.name, s.image, None) for s in list_split(synth_root, "val")]
    with pytest.raises(ConfigError, match="labelled splits only"):
        open_cache(samples, "disk", synth_root / "val", tmp_path)


@pytest.mark.slow  # two fits
def test_fit_with_a_disk_cache_trains_to_the_same_result(synth_root: Path, tmp_path: Path,
                                                         fit_once):
    cache_dir = tmp_path / "cache"
    miou, weights = fit_once(synth_root, tmp_path / "png")
    miou_cached, weights_cached = fit_once(synth_root, tmp_path / "cached",
                                           "--data.cache", "disk",
                                           "--data.cache_dir", str(cache_dir))
    assert len(list(cache_dir.iterdir())) == 2  # train and val were served from the cache
    assert miou_cached == miou
    assert all(torch.equal(weights[k], weights_cached[k]) for k in weights)
