"""The torch Dataset over one split of the Duality off-road dataset."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from desertmind.data.cache import DecodedSplit
from desertmind.data.classes import IGNORE_INDEX, unknown_values
from desertmind.data.imageio import read_image
from desertmind.data.layout import Sample, load_pair
from desertmind.data.transforms import REFERENCE_KEY, seed_pipeline
from desertmind.errors import DatasetError


def collate(batch: list[dict]) -> dict:
    """torch's ``default_collate``, but images of different sizes get a message that names
    them (torch only says "stack expects each tensor to be equal size")."""
    sizes = {tuple(item["image"].shape[-2:]) for item in batch}
    if len(sizes) > 1:
        listed = ", ".join(f"{item['path']} ({item['image'].shape[-1]}x"
                           f"{item['image'].shape[-2]})" for item in batch)
        raise DatasetError(f"images of different sizes in one batch: {listed}. Set "
                           "data.image_size (height, width) to resize every image, e.g. "
                           "[540, 960], or use a crop preset")
    return default_collate(batch)


class OffroadDataset(Dataset):
    """Samples as dicts: ``image`` uint8 (3, H, W), ``mask`` uint8 (H, W), ``name``, ``path``
    and ``size`` (the original height and width; predictions are written back at it).

    Images stay uint8 so the host-to-device copy is 4x smaller than float; they become float
    on the device (:class:`~desertmind.data.datamodule.OffroadDataModule`) and the network
    scales them itself. Unknown raw mask
    values are ignored (255) and reported once per value and process with a warning.

    With ``decoded`` (see :mod:`desertmind.data.cache`), pairs come from the decoded cache
    instead of the PNG files, bit for bit the same arrays. With ``references`` (unlabelled
    target-domain images), each sample also gets one of them at random, for the pipeline's
    appearance transfer.

    An index may come with its own random seed, ``(index, seed)`` (what
    :class:`~desertmind.data.sampling.EpochSampler` yields): the augmentations and the
    reference image are then drawn from that seed alone, whichever process loads the sample.
    A plain index draws from the state ``seed`` started, so indexing is reproducible too.
    """

    def __init__(self, samples: list[Sample], transform: Callable | None = None,
                 decoded: DecodedSplit | None = None, references: list[Path] | None = None,
                 seed: int = 0) -> None:
        if decoded is not None and len(decoded) != len(samples):
            raise ValueError(f"decoded cache holds {len(decoded)} samples, not {len(samples)}")
        self.samples = samples
        self.decoded = decoded
        self.references = references or []
        self.transform = transform if transform is not None else A.Compose([A.ToTensorV2()])
        self.reseed(seed)
        self._reported: set[int] = set()

    def reseed(self, seed: int) -> None:
        """Set the random state of the augmentation pipeline and of the reference choice."""
        if isinstance(self.transform, A.BaseCompose):
            seed_pipeline(self.transform, seed)
        elif hasattr(self.transform, "set_random_seed"):
            self.transform.set_random_seed(seed)
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index = key
        if isinstance(key, tuple):
            index, seed = key
            self.reseed(seed)
        sample = self.samples[index]
        if self.decoded is not None:
            image, mask = self.decoded.pair(index)
            unknown = self.decoded.unknown[index]
        else:
            image, mask, raw = load_pair(sample)
            unknown = unknown_values(mask, raw) if mask is not None else {}
        meta = {"name": sample.name, "path": str(sample.image),
                "size": torch.tensor(image.shape[:2])}  # original (H, W), for predictions
        extra = {}
        if self.references:  # a random unlabelled target image, for appearance transfer
            ref = read_image(self.references[self._rng.integers(len(self.references))])
            extra[REFERENCE_KEY] = [ref.astype(np.float32) / 255]
        if mask is None:
            return {"image": self.transform(image=image, **extra)["image"], **meta}
        if unknown:
            self._report_unknown(sample, unknown)
        out = self.transform(image=image, mask=mask, **extra)
        mask_t = out["mask"]
        if not isinstance(mask_t, torch.Tensor):
            mask_t = torch.from_numpy(np.ascontiguousarray(mask_t))
        return {"image": out["image"], "mask": mask_t, **meta}

    def _report_unknown(self, sample: Sample, unknown: dict[int, int]) -> None:
        new = {v: c for v, c in unknown.items() if v not in self._reported}
        if new:
            self._reported.update(new)
            listed = ", ".join(f"{v}: {c} px" for v, c in new.items())
            warnings.warn(
                f"{sample.mask}: raw mask values not in the class table ({listed}) are "
                f"ignored (index {IGNORE_INDEX}); each value is reported once. Run "
                "`desertmind check-data` for totals over the dataset.", stacklevel=2)
