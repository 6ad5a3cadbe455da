"""Writing predictions as files: raw Duality ids, class colours and an overlay, per image."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter

from desertmind.data.classes import TRAIN_TO_RAW
from desertmind.data.imageio import read_image, write_png
from desertmind.data.palette import colorize, overlay


class PredictionWriter(BasePredictionWriter):
    """For every predicted image, at its original resolution:

    - ``OUT/raw/NAME.png``: uint16 mask of Duality raw ids (scored like the ground truth),
    - ``OUT/color/NAME.png``: the mask in the class colours,
    - ``OUT/overlay/NAME.png``: the image blended with the colour mask (``alpha`` of colour).

    Each file is written atomically (temporary file, then rename): an interrupted run leaves
    whole PNGs only.
    """

    def __init__(self, out_dir: str, alpha: float = 0.5) -> None:
        super().__init__(write_interval="batch")
        self.out_dir = Path(out_dir)
        self.alpha = alpha
        self.written = 0

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           prediction: dict, batch_indices: Sequence[int] | None, batch: dict,
                           batch_idx: int, dataloader_idx: int = 0) -> None:
        for name, path, pred in zip(prediction["name"], prediction["path"], prediction["pred"],
                                    strict=True):
            write_prediction(self.out_dir, name, read_image(path), pred.numpy(), self.alpha)
            self.written += 1


def write_prediction(out_dir: Path, name: str, image: np.ndarray, pred: np.ndarray,
                     alpha: float = 0.5) -> None:
    """Write the raw, colour and overlay PNGs of one train-id prediction."""
    write_png(out_dir / "raw" / f"{name}.png", TRAIN_TO_RAW[pred])
    write_png(out_dir / "color" / f"{name}.png", colorize(pred), rgb=True)
    write_png(out_dir / "overlay" / f"{name}.png", overlay(image, pred, alpha), rgb=True)
