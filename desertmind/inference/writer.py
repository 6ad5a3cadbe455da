"""Writing predictions as files: raw Duality ids, class colours and an overlay, per image."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from desertmind.data.classes import TRAIN_TO_RAW
from desertmind.data.imageio import read_image, write_png
from desertmind.data.palette import colorize, overlay
from desertmind.files import remove_stale_dirs, replace_dirs

#: the folders of one prediction set under ``--out``
OUTPUT_DIRS = ("raw", "color", "overlay")
#: the hidden folder under ``--out`` that a running predict fills (``.predicting-<pid>``)
STAGING_PREFIX = ".predicting-"


class PredictionWriter(BasePredictionWriter):
    """For every predicted image, at its original resolution:

    - ``OUT/raw/NAME.png``: uint16 mask of Duality raw ids (scored like the ground truth),
    - ``OUT/color/NAME.png``: the mask in the class colours,
    - ``OUT/overlay/NAME.png``: the image blended with the colour mask (``alpha`` of colour).

    The set appears whole or not at all. Images are written into a hidden staging folder,
    ``OUT/.predicting-<pid>/``, and moved into place by renames once every image is done,
    replacing an earlier set (an image no longer predicted does not stay behind). An error
    removes the staging folder; a killed predict leaves ``OUT`` as it was, and the next predict
    into it removes the staging folder of a process that is gone. Under DDP every process
    writes its share into rank 0's staging folder.
    """

    def __init__(self, out_dir: str, alpha: float = 0.5) -> None:
        super().__init__(write_interval="batch")
        self.out_dir = Path(out_dir)
        self.alpha = alpha
        self.written = 0
        self.staging = self.out_dir / f"{STAGING_PREFIX}{os.getpid()}"

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.staging = self.out_dir / f"{STAGING_PREFIX}{trainer.strategy.broadcast(os.getpid())}"
        if trainer.is_global_zero:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_dirs(self.out_dir, STAGING_PREFIX)
            self.staging.mkdir(exist_ok=True)
        trainer.strategy.barrier()

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.strategy.barrier()  # every process has written its share
        if trainer.is_global_zero:
            replace_dirs(self.staging, self.out_dir, OUTPUT_DIRS)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule,
                     exception: BaseException) -> None:
        if trainer.is_global_zero:
            shutil.rmtree(self.staging, ignore_errors=True)

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           prediction: dict, batch_indices: Sequence[int] | None, batch: dict,
                           batch_idx: int, dataloader_idx: int = 0) -> None:
        # evaluated at the images' own size, the batch holds their pixels (RGB 0-255): each
        # image is decoded once (one transfer for the batch); resized for the network, the
        # overlay is drawn over the file read again at its original size
        own_size = all(tuple(batch["image"].shape[-2:]) == tuple(pred.shape)
                       for pred in prediction["pred"])
        images = batch["image"].to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy() \
            if own_size else None
        for i, (name, path, pred) in enumerate(zip(prediction["name"], prediction["path"],
                                                   prediction["pred"], strict=True)):
            rgb = images[i] if images is not None else read_image(path)
            write_prediction(self.staging, name, rgb, pred.numpy(), self.alpha)
            self.written += 1


def write_prediction(out_dir: Path, name: str, image: np.ndarray, pred: np.ndarray,
                     alpha: float = 0.5) -> None:
    """Write the raw, colour and overlay PNGs of one train-id prediction."""
    write_png(out_dir / "raw" / f"{name}.png", TRAIN_TO_RAW[pred])
    write_png(out_dir / "color" / f"{name}.png", colorize(pred), rgb=True)
    write_png(out_dir / "overlay" / f"{name}.png", overlay(image, pred, alpha), rgb=True)
