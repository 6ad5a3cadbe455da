"""Predict's progress bar counts images, the unit a user of ``desertmind predict`` thinks in
(Lightning's counts batches: "3/15" for 120 images at batch 8)."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar


class ImageProgressBar(TQDMProgressBar):
    """Lightning's TQDM bar, except that predict's advances by each batch's images, up to the
    number of images the run will predict (``limit_predict_batches`` included)."""

    def init_predict_tqdm(self):
        bar = super().init_predict_tqdm()
        bar.unit = "img"
        return bar

    def on_predict_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule,
                               batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not self.has_dataloader_changed(dataloader_idx):  # records the index too
            return
        bar = self.predict_progress_bar
        bar.reset(total=self._total_images(trainer, dataloader_idx))
        bar.set_description(f"{self.predict_description} images")

    def on_predict_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                             outputs: Any, batch: Any, batch_idx: int,
                             dataloader_idx: int = 0) -> None:
        if self.predict_progress_bar is not None:
            self.predict_progress_bar.update(len(batch["image"]))

    def _total_images(self, trainer: L.Trainer, dataloader_idx: int) -> int | None:
        loaders = trainer.predict_dataloaders
        loader = loaders[dataloader_idx] if isinstance(loaders, list | tuple) else loaders
        batches = self.total_predict_batches_current_dataloader
        try:
            images = len(loader.dataset)
        except TypeError:  # a dataset without a length: batches are all we know
            return None
        size = getattr(loader, "batch_size", None) or getattr(
            getattr(loader, "batch_sampler", None), "batch_size", None)
        if size and batches != float("inf"):
            images = min(images, int(batches) * size)
        return images
