"""Label-free tools for the test desert: domain randomisation, appearance transfer toward
unlabelled target images, and the guarantee that target masks are never read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from desertmind.data.datamodule import OffroadDataModule
from desertmind.data.imageio import read_image
from desertmind.data.synth import generate
from desertmind.data.transforms import build_transform
from desertmind.errors import ConfigError


@pytest.fixture(scope="module")
def two_deserts(tmp_path_factory) -> Path:
    """Source train/val and a labelled shifted split, 144x256 (FDA swaps a window of the
    spectrum proportional to the image size: too small an image leaves it nothing to swap)."""
    return generate(tmp_path_factory.mktemp("deserts") / "d", n_train=8, n_val=4, height=144,
                    width=256, seed=5, n_shifted=6)


def _mean_rgb(images: list[torch.Tensor]) -> np.ndarray:
    return np.mean([im.float().mean((1, 2)).numpy() for im in images], axis=0)


@pytest.mark.parametrize("kind", ["fda", "histogram"])
def test_appearance_transfer_moves_source_images_toward_the_target(two_deserts: Path,
                                                                   kind: str):
    def train_images(transfer: str) -> list:
        dm = OffroadDataModule(str(two_deserts), batch_size=2, num_workers=0,
                               target_dir="test_shifted", target_transfer=transfer,
                               target_transfer_p=1.0)
        dm.setup("fit")
        ds = dm.datasets["train"]
        return [ds[i]["image"] for i in range(len(ds))]

    source, moved = _mean_rgb(train_images("none")), _mean_rgb(train_images(kind))
    target = np.mean([read_image(p).reshape(-1, 3).mean(0)
                      for p in (two_deserts / "test_shifted" / "Color_Images").glob("*.png")],
                     axis=0)
    assert np.abs(moved - target).sum() < 0.6 * np.abs(source - target).sum()


def test_domain_randomisation_changes_appearance_not_labels(two_deserts: Path):
    dm = OffroadDataModule(str(two_deserts), batch_size=2, num_workers=0,
                           train_preset="domain_random")
    dm.setup("fit")
    plain = OffroadDataModule(str(two_deserts), batch_size=2, num_workers=0)
    plain.setup("fit")
    a, b = dm.datasets["train"][0], plain.datasets["train"][0]
    flipped = not (a["mask"] == b["mask"]).all()
    assert (a["mask"] == (b["mask"].flip(-1) if flipped else b["mask"])).all()
    assert not (a["image"] == (b["image"].flip(-1) if flipped else b["image"])).all()
    t = build_transform("domain_random", seed=0)
    assert "RandomGamma" in repr(t) and "RGBShift" in repr(t) and "GaussNoise" in repr(t)


def test_transfer_without_target_images_is_refused():
    with pytest.raises(ConfigError, match="data.target_dir"):
        OffroadDataModule(target_transfer="fda")
