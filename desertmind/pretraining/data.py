"""Unlabelled images for self-supervised pretraining: the train split's and any other folders'.

Only image files are listed and read (``Color_Images``, or a plain folder of images); no
mask is ever opened, so a folder of the test desert without labels is as good as one with
them, and a label in a folder given here can never leak into the encoder. Each image becomes
DINO's multi-crop views through ``lightly``'s :class:`~lightly.transforms.DINOTransform`: two
global crops and a few local ones, with colour jitter, blur, solarisation and grey-scale.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import lightning as L
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from desertmind.data.imageio import read_image
from desertmind.data.layout import IMAGE_DIR, list_images, missing_root_message
from desertmind.errors import ConfigError, DatasetError


class UnlabelledViews(Dataset):
    """Image files as multi-crop views: ``{"views": [global, global, local, ...]}``, each a
    float tensor (3, h, w) in RGB 0-255 (the network scales its input itself)."""

    def __init__(self, images: list[Path], transform, image_size: tuple[int, int] | None
                 = None) -> None:
        self.images = images
        self.transform = transform
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        rgb = read_image(self.images[index])
        if self.image_size is not None:
            h, w = self.image_size
            rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
        # lightly's transforms end in ToTensor (0-1) when given no normalisation
        return {"views": [v * 255.0 for v in self.transform(Image.fromarray(rgb))]}


class UnlabelledDataModule(L.LightningDataModule):
    """The images self-supervised pretraining learns from: ``root/train_dir``'s images plus
    every folder of ``unlabelled_dirs`` (never their masks).

    Args:
        root: the dataset root (the folder holding ``train/``).
        train_dir: the labelled split whose images are used (its masks are not).
        unlabelled_dirs: more folders of images, each a path or relative to ``root``: a split
            folder (its ``Color_Images``) or a plain folder of images, e.g. the test desert's.
            An evaluation on images of one of these folders is transductive, and says so.
        image_size: (height, width) every image is resized to before cropping; None: as stored.
        crop_size: the side of DINO's two global crops (square).
        local_crop_size: the side of the local crops; None: 3/7 of ``crop_size`` (DINO's
            96 for 224).
        local_views: how many local crops per image.
        batch_size: images per batch (each gives ``2 + local_views`` views).
        num_workers: DataLoader worker processes.
    """

    def __init__(self, root: str = "data/offroad", train_dir: str = "train",
                 unlabelled_dirs: list[str] | None = None,
                 image_size: tuple[int, int] | None = None, crop_size: int = 224,
                 local_crop_size: int | None = None, local_views: int = 6, batch_size: int = 32,
                 num_workers: int = 4) -> None:
        super().__init__()
        self.save_hyperparameters()
        for name, value in (("crop_size", crop_size), ("batch_size", batch_size)):
            if value < 1:
                raise ConfigError(f"data.{name}={value}: must be at least 1")
        if local_views < 0:
            raise ConfigError(f"data.local_views={local_views}: must be 0 or more")
        self.root = Path(root)
        self.local_crop_size = local_crop_size or max(1, round(crop_size * 3 / 7))
        self.dataset: UnlabelledViews | None = None
        #: every image folder and its images, listed once (:meth:`folders`)
        self._listed: dict[Path, list[Path]] | None = None

    def folders(self) -> list[Path]:
        """Every image folder read, absolute, the train split's first; each is checked once
        (it must exist and hold images) and its images listed then."""
        return list(self._listing())

    def images(self) -> list[Path]:
        """The image files of :meth:`folders`, in order."""
        return [image for images in self._listing().values() for image in images]

    def _listing(self) -> dict[Path, list[Path]]:
        if self._listed is None:
            self._listed = self._list()
        return self._listed

    def _list(self) -> dict[Path, list[Path]]:
        if not self.root.is_dir():
            raise DatasetError(missing_root_message(self.root))
        given = [self.root / self.hparams.train_dir, *map(Path, self.hparams.unlabelled_dirs
                                                          or [])]
        listed: dict[Path, list[Path]] = {}
        for folder in given:
            if not folder.is_dir() and (self.root / folder).is_dir():
                folder = self.root / folder
            if (folder / IMAGE_DIR).is_dir():
                folder = folder / IMAGE_DIR
            # missing, a file, no images: one line naming the folder
            images = [sample.image for sample in list_images(folder)]
            if folder.resolve() in listed:
                raise ConfigError(f"data.unlabelled_dirs: {folder.resolve()} is read twice "
                                  "(given again, or the train split's): its images would "
                                  "count double")
            listed[folder.resolve()] = images
        return listed

    def setup(self, stage: str) -> None:
        from lightly.transforms import DINOTransform

        if self.dataset is not None:
            return
        images = self.images()
        if len(images) < self.hparams.batch_size:
            raise DatasetError(f"{len(images)} images in {', '.join(map(str, self.folders()))}: "
                               f"fewer than data.batch_size={self.hparams.batch_size}")
        hp = self.hparams
        transform = DINOTransform(global_crop_size=hp.crop_size,
                                  local_crop_size=self.local_crop_size,
                                  n_local_views=hp.local_views, normalize=None)
        self.dataset = UnlabelledViews(images, transform,
                                       tuple(hp.image_size) if hp.image_size else None)

    def train_dataloader(self) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(self.dataset, batch_size=self.hparams.batch_size, shuffle=True,
                          drop_last=True, num_workers=workers, persistent_workers=workers > 0,
                          pin_memory=torch.cuda.is_available())

    def state_dict(self) -> dict:
        """Saved in the checkpoint: the folders whose images the encoder saw."""
        return {"folders": [str(f) for f in self.folders()]}
