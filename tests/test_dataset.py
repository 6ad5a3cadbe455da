"""Samples, unknown-value reporting and the data module's batches."""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch.plugins.precision import Precision

from desertmind.data.cache import open_cache
from desertmind.data.classes import remap
from desertmind.data.datamodule import OffroadDataModule
from desertmind.data.dataset import OffroadDataset
from desertmind.data.imageio import read_image, read_mask, write_png
from desertmind.data.layout import list_split
from desertmind.errors import DatasetError
from desertmind.models.network import IMAGENET_MEAN, IMAGENET_STD
from desertmind.training.module import SegmentationModule
from tests.stand_in import TINY


def test_sample_is_uint8_image_and_remapped_mask(synth_root: Path):
    ds = OffroadDataset(list_split(synth_root, "val"))
    item = ds[0]
    s = ds.samples[0]
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 48, 80)
    assert item["mask"].dtype == torch.uint8 and item["mask"].shape == (48, 80)
    assert (item["image"].permute(1, 2, 0).numpy() == read_image(s.image)).all()
    assert (item["mask"].numpy() == remap(read_mask(s.mask))).all()
    assert item["name"] == s.name


@pytest.mark.parametrize("cache", ["none", "memory", "disk"])
def test_unknown_raw_values_are_ignored_and_reported_once(data_copy: Path, tmp_path: Path,
                                                          cache: str):
    path = sorted((data_copy / "train" / "Segmentation").iterdir())[0]
    mask = read_mask(path)
    mask[:3, :5] = 4242
    mask[3, :2] = 0
    write_png(path, mask)
    samples = list_split(data_copy, "train")
    for _ in range(2):  # the second disk open reads the cache back: still reported
        decoded = open_cache(samples, cache, data_copy / "train", tmp_path / "cache", False)
    ds = OffroadDataset(samples, decoded=decoded)
    with pytest.warns(UserWarning) as record:
        item = ds[0]
    assert len(record) == 1
    msg = str(record[0].message)
    assert str(path) in msg and "4242: 15 px" in msg and "0: 2 px" in msg
    assert (item["mask"][:3, :5] == 255).all() and (item["mask"][3, :2] == 255).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds[0]  # the same values again: no second warning


def test_batches_stay_uint8_until_the_device_and_the_network_scales_them(synth_root: Path):
    dm = OffroadDataModule(str(synth_root), batch_size=3, num_workers=0)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert len(loader) == 8 // 3  # the incomplete last batch is dropped
    batch = next(iter(loader))
    assert batch["image"].dtype == torch.uint8 and batch["mask"].dtype == torch.uint8
    raw = batch["image"].clone()
    dm.trainer = SimpleNamespace(precision_plugin=Precision())
    out = dm.on_after_batch_transfer(dict(batch), 0)
    assert out["image"].dtype == torch.float32 and out["mask"].dtype == torch.int64
    torch.testing.assert_close(out["image"], raw.float())  # RGB 0-255: no caller normalises
    for scaling in ("imagenet", "unit"):  # the network scales, as it was trained to
        network = SegmentationModule(replace(TINY, input_scaling=scaling)).model
        expected = raw[0, 1].float() / 255
        if scaling == "imagenet":
            expected = (expected - IMAGENET_MEAN[1]) / IMAGENET_STD[1]
        torch.testing.assert_close(network.normalise(out["image"])[0, 1], expected)


def test_datamodule_resizes_eval_images_to_image_size(synth_root: Path):
    dm = OffroadDataModule(str(synth_root), batch_size=2, num_workers=0, image_size=(32, 40))
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (2, 3, 32, 40) and batch["mask"].shape == (2, 32, 40)


def test_datamodule_fails_at_setup_not_mid_training(tmp_path: Path, synth_root: Path):
    with pytest.raises(DatasetError, match="desertmind synth"):
        OffroadDataModule(str(tmp_path / "missing")).setup("fit")
    with pytest.raises(DatasetError, match="fewer than batch_size"):
        OffroadDataModule(str(synth_root), batch_size=9).setup("fit")
    with pytest.raises(DatasetError, match="test_dir"):
        OffroadDataModule(str(synth_root)).setup("test")


def test_datamodule_rejects_unknown_names_listing_choices():
    with pytest.raises(ValueError, match="flip_color"):
        OffroadDataModule(train_preset="fancy")
    with pytest.raises(ValueError, match="median_frequency"):
        OffroadDataModule(class_weighting="inverse")


def test_datamodule_class_weights_come_from_train_statistics(synth_root: Path, tmp_path: Path):
    dm = OffroadDataModule(str(synth_root), class_weighting="inverse_log",
                           stats_path=str(tmp_path / "stats.json"))
    w = dm.class_weights()
    counts = np.zeros(10)
    for s in list_split(synth_root, "train"):
        counts += np.bincount(remap(read_mask(s.mask)).ravel(), minlength=256)[:10]
    expected = 1 / np.log(1.02 + counts / counts.sum())
    np.testing.assert_allclose(w.numpy(), expected / expected.mean(), rtol=1e-5)
    assert (tmp_path / "stats.json").is_file()
    assert OffroadDataModule(str(synth_root)).class_weights() is None
